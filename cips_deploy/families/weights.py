"""A generator's weights: writing our safetensors file, and assigning a state dict exactly.

Shared by the readers (:mod:`.checkpoint`, :mod:`.official`, :mod:`.official_creps`) and by
:meth:`Generator.save <cips_deploy.families.generator.Generator.save>`; it imports none of
them, so each can import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from cips_deploy._version import __version__
from cips_deploy.errors import CipsError
from cips_deploy.runtime.atomic import atomic_path

if TYPE_CHECKING:
    from cips_deploy.families.generator import Generator

FORMAT = "cips-deploy/generator"
FORMAT_VERSION = "1"


def save_generator(generator: Generator, path: str | Path, *, overwrite: bool = True) -> None:
    """Write ``generator`` to ``path`` atomically (temporary file, then rename)."""
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in generator.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(generator.config.to_dict()),
        "provenance": json.dumps(generator.provenance),
        "package_version": __version__,
    }
    with atomic_path(path, overwrite=overwrite) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


def check_finite(generator: Generator, source: str) -> None:
    """Refuse weights holding NaN or infinities: they would render an all-black image without a word."""
    for name, tensor in generator.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CipsError(f"{source}: tensor {name!r} holds NaN or infinite values; the model is damaged.")


def load_exact_state_dict(generator: Generator, tensors: dict[str, torch.Tensor], *, source: str) -> None:
    """Assign ``tensors`` to ``generator``, insisting on exactly its names and shapes."""
    expected = generator.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise CipsError(f"{source} lacks {len(missing)} tensor(s) this generator needs, such as {missing[0]!r}.")
    if unexpected:
        raise CipsError(f"{source} has {len(unexpected)} tensor(s) this generator does not use, such as {unexpected[0]!r}.")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CipsError(
                f"{source}: tensor {name!r} has shape {list(tensor.shape)}, "
                f"but the generator expects {list(expected[name].shape)}."
            )
        if not tensor.dtype.is_floating_point:
            raise CipsError(f"{source}: tensor {name!r} is {tensor.dtype}, not a floating-point tensor.")
    generator.load_state_dict({name: tensor.float() for name, tensor in tensors.items()}, assign=True)

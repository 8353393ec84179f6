"""An example cips-deploy plugin: an engine, a backend with its own option, and a command.

Each is registered through the hook a built-in uses (``cips_deploy.hookspecs``), from this
one module, which the entry point ``example`` in pyproject.toml names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from torch import Tensor

from cips_deploy import hookimpl, load
from cips_deploy.atomic import atomic_path, check_destination
from cips_deploy.backend import Backend
from cips_deploy.errors import CipsError
from cips_deploy.exporter import Exporter
from cips_deploy.generator import Generator
from cips_deploy.topology import Parameter

# ---------------------------------------------------------------- the engine: export --engine npz


@dataclass
class NpzExport:
    """What the export command prints: the files written."""

    files: list[Path] = field(default_factory=list)


class NpzExporter(Exporter):
    name = "npz"
    description = "the generator's weights as a NumPy .npz archive (fp32 or fp16), for tools without torch"
    precisions = ("fp32", "fp16")  # every family: the archive is just the state dict

    def export(self, source: Path, *, output: Path | None, overwrite: bool, precision: str, **options: Any) -> NpzExport:
        if options.get("triton_repo") is not None:
            raise CipsError("The npz engine writes no Triton repository; drop --triton-repo.")
        output = Path(output) if output is not None else Path(Path(source).stem + ".npz")
        if output.suffix != ".npz":
            raise CipsError(f"The npz engine writes a .npz file, not {output.name}.")
        check_destination(output, overwrite=overwrite)  # before loading anything
        generator = load(source)
        self.check_request(generator.config.arch, precision)
        dtype = np.float16 if precision == "fp16" else np.float32
        arrays = {}
        for name, tensor in generator.state_dict().items():
            array = tensor.detach().cpu().numpy()
            arrays[name] = array.astype(dtype) if array.dtype.kind == "f" else array
        with atomic_path(output, overwrite=overwrite) as temporary:
            with open(temporary, "wb") as handle:  # a handle: np.savez would append .npz to a name
                np.savez(handle, **arrays)
        return NpzExport([output])


# --------------------------------------------------- the backend: render --backend posterize --levels N


class PosterizeBackend(Backend):
    name = "posterize"
    description = "the torch generator, colours posterized to --levels per channel"
    options = (Parameter("levels", int, 4, "posterize: levels per colour channel", minimum=2, maximum=256),)

    def __init__(self, model: Generator | str | Path, *, device: str = "cpu", levels: int = 4) -> None:
        generator = model if isinstance(model, Generator) else load(model)
        self.generator = generator.to(device)
        self.device = torch.device(device)
        self.config = generator.config
        self.levels = levels

    @torch.inference_mode()
    def map(self, z: Tensor, truncation: float = 1.0) -> Tensor:
        """z [B, Z] -> w [B, S] (host float32)."""
        return self.generator.map(z.to(self.device, torch.float32), truncation=truncation).float().cpu()

    @torch.inference_mode()
    def run(self, coords: Tensor, w: Tensor) -> Tensor:
        """coords [B, N, 2], w [B, S] -> rgb [B, N, 3] in [-1, 1], ``levels`` values per channel."""
        rgb = self.generator.synthesize(coords.to(self.device), w.to(self.device)).float().cpu()
        step = 2.0 / (self.levels - 1)
        return torch.round((rgb.clamp(-1.0, 1.0) + 1.0) / step) * step - 1.0


# ------------------------------------------------------------------- the command: cips-deploy colours


@click.command("colours")
@click.argument("image", type=click.Path(path_type=Path))
def colours(image: Path) -> None:
    """Count the distinct colours of IMAGE (a PNG, for example a posterized render)."""
    from PIL import Image, UnidentifiedImageError

    if not image.is_file():
        raise CipsError(f"No such image: {image}.")
    try:
        with Image.open(image) as opened:
            pixels = np.asarray(opened.convert("RGB")).reshape(-1, 3)  # [H*W, 3] uint8
            width, height = opened.size
    except (UnidentifiedImageError, OSError) as error:
        raise CipsError(f"{image} is not an image Pillow can read ({type(error).__name__}).") from None
    distinct = len(np.unique(pixels, axis=0))
    click.echo(f"{image}: {width} x {height} pixels, {distinct} distinct colours.")


# ------------------------------------------------------------------------------------ the hooks


@hookimpl
def register_exporters(register):
    register(NpzExporter())


@hookimpl
def register_backends(register):
    register(PosterizeBackend)


@hookimpl
def register_commands(cli):
    cli.add_command(colours)

"""Import checkpoints of the official CIPS implementation (saic-mdal/CIPS).

The published files (churches, ffhq256, ffhq1024, landscapes) are bare ``g_ema`` state
dicts; the official ``train.py`` writes dicts with ``g``, ``d``, ``g_ema`` and optimizer
states. Both are read with ``torch.load(weights_only=True)``, which unpickles tensors and
plain containers only, so a file that would run code is refused, never executed.

Before ``torch.load`` runs, the pickles it would unpickle are bounded
(:func:`~cips_deploy.contracts.limits.check_torch_stream`: nesting, shared objects, dict keys,
cycles, zip bombs); after it, before anything is materialised, every tensor must be backed by
its storage (a stride-0 view of one stored value claiming a paper-size grid is refused) and all
of them together claim at most ``MAX_PARAMETERS`` elements.

The architecture is inferred from the keys and shapes alone; nothing is passed by hand.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cips_deploy.families.weights import load_exact_state_dict
from cips_deploy.runtime.hashing import file_sha256
from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.contracts.limits import MAX_PARAMETERS, PickleRefused, check_torch_stream
from cips_deploy.errors import CipsError, first_line
from cips_deploy.families.generator import Generator

# Number of z samples whose mean w becomes w_avg (official checkpoints carry none).
W_AVG_SAMPLES = 10_000


def load_official(path: str | Path) -> Generator:
    """Read an official CIPS checkpoint and convert it into a :class:`Generator` on the CPU."""
    path = Path(path)
    state_dict, layout = official_state_dict(read_torch_file(path), source=str(path))
    generator = generator_from_official_state_dict(state_dict, source=str(path))
    generator.provenance = {
        "source": "official CIPS checkpoint",
        "source_file": path.name,
        "source_layout": layout,
        "source_sha256": file_sha256(path),
        "w_avg": f"mean of w over {W_AVG_SAMPLES:,} z ~ N(0, I) drawn with seed 0 (official files carry none)",
    }
    return generator


def read_torch_file(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into one sentence; its pickles
    bounded before it runs, its tensors checked (:func:`check_tensors`) before anything else."""
    try:
        # A file object, not the path: torch.load would hand a path ending in .safetensors
        # to the safetensors reader, whatever the bytes say (sniffing has decided already).
        with open(path, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 5": the sentence below says enough
            check_torch_stream(handle)  # the same open file torch.load then reads
            loaded = torch.load(handle, map_location="cpu", weights_only=True)
    except PickleRefused as error:
        raise CipsError(error.sentence(path)) from None
    except MemoryError:
        raise CipsError(f"{path} does not fit in this machine's memory.") from None
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower() or "unsupported global" in str(error).lower():
            raise CipsError(
                f"Refusing to load {path}: it contains pickled objects other than tensors, "
                "and loading them could run code."
            ) from None
        raise CipsError(f"{path} is corrupt or truncated (it does not unpickle).") from None
    except Exception as error:  # torch.load parsing hostile bytes raises anything (KeyError, struct.error, ...)
        raise CipsError(f"{path} is corrupt or truncated ({first_line(error)[:200] or type(error).__name__}).") from None
    check_tensors(loaded, str(path))
    return loaded


def check_tensors(loaded: Any, source: str) -> None:
    """Every tensor in a loaded file is dense and backed by its storage, and together they claim
    at most ``MAX_PARAMETERS`` elements, counted from their shapes whatever their strides.

    A stride-0 view makes one stored value stand for any number of elements; the first copy,
    conversion or finiteness check would allocate them all (16 KB of such views shaped like
    paper1024 became 6 GB). Saved weights are never such views. The walk visits each container
    once; the pickle check has bounded their nesting.
    """
    claimed = 0
    seen: set[int] = set()
    pending: list[tuple[Any, str]] = [(loaded, "")]
    while pending:
        item, name = pending.pop()
        if isinstance(item, Tensor):
            claimed += _backed_elements(item, name, source)
            if claimed > MAX_PARAMETERS:
                raise CipsError(f"Refusing to load {source}: its tensors claim more than {MAX_PARAMETERS:,} elements.")
        elif isinstance(item, (dict, list, tuple)) and id(item) not in seen:
            seen.add(id(item))
            entries = list(item.items() if isinstance(item, dict) else enumerate(item))
            named = [(value, f"{name}.{key}"[:120] if isinstance(key, str) else name) for key, value in entries]
            pending.extend(reversed(named))  # in the file's order: the first bad tensor is named


def _backed_elements(tensor: Tensor, name: str, source: str) -> int:
    """The elements ``tensor`` claims, if it is a dense CPU tensor whose storage holds them."""
    label = repr(name.lstrip(".")) if name else "a tensor"
    if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type != "cpu":
        raise CipsError(f"Refusing to load {source}: {label} is not a dense tensor ({tensor.layout}), as saved weights are.")
    claimed = tensor.numel()
    stored = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
    if claimed > stored:
        raise CipsError(
            f"Refusing to load {source}: tensor {label} claims {claimed:,} elements but its storage holds {stored:,} "
            "(a stride-0 or overlapping view, which saved weights never are)."
        )
    return claimed


def official_state_dict(obj: Any, *, source: str) -> tuple[dict[str, Tensor], str]:
    """Find the generator's state dict in a loaded official file: (state dict, layout)."""
    if isinstance(obj, dict) and isinstance(obj.get("g_ema"), dict):
        state_dict, layout = obj["g_ema"], "training checkpoint (g_ema)"
    elif isinstance(obj, dict) and obj and all(isinstance(value, Tensor) for value in obj.values()):
        state_dict, layout = obj, "bare g_ema state dict"
    else:
        raise CipsError(f"{source} is a PyTorch file but holds no generator state dict (no 'g_ema' and no tensors).")
    odd = next((key for key, value in state_dict.items() if not isinstance(value, Tensor)), None)
    if odd is not None:
        raise CipsError(f"{source}: the generator's entry {str(odd)!r:.60} is not a tensor.")
    # Checkpoints saved from DataParallel or DDP wrappers prefix every key with 'module.'.
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    if "lff.ffm.conv.weight" not in state_dict:
        example = next(iter(state_dict), "nothing")
        raise CipsError(f"{source} is not a CIPS generator: it has no Fourier-feature layer (first key: {example!r}).")
    return state_dict, layout


def config_from_official(state_dict: dict[str, Tensor], *, source: str = "checkpoint") -> GeneratorConfig:
    """Infer architecture, size, widths, hidden and style widths and mapping depth from shapes."""
    shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
    # Every official weight the shapes are read from is 2-D or more (convolutions are 4-D or 5-D).
    for key in ("lff.ffm.conv.weight", "emb.input", "conv1.conv.modulation.weight", "linears.0.conv.modulation.weight"):
        if key in shapes and len(shapes[key]) < 2:
            raise CipsError(f"{source}: tensor {key!r} has shape {list(shapes[key])}, not that of an official CIPS weight.")
    hidden, coordinate_inputs = shapes["lff.ffm.conv.weight"][:2]
    if coordinate_inputs != 2:
        raise CipsError(f"{source}: the Fourier layer takes {coordinate_inputs} inputs; official CIPS models take 2 (x, y).")
    n_mlp = len([key for key in shapes if re.fullmatch(r"style\.\d+\.weight", key)])
    if "conv1.conv.weight" in shapes:
        arch = "skip"
        n_blocks = len([key for key in shapes if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", key)])
        width_keys = [f"linears.{2 * i}.conv.weight" for i in range(n_blocks)]
        style_key = "conv1.conv.modulation.weight"
    elif "linears.1.conv1.conv.weight" in shapes:
        arch = "res"
        n_blocks = len([key for key in shapes if re.fullmatch(r"linears\.\d+\.conv1\.conv\.weight", key)])
        width_keys = [f"linears.{i + 1}.conv1.conv.weight" for i in range(n_blocks)]
        style_key = "linears.0.conv.modulation.weight"
    else:
        raise CipsError(f"{source} has an unknown CIPS architecture: neither CIPSskip ('conv1') nor CIPSres blocks.")
    missing = [key for key in [*width_keys, style_key] if key not in shapes]
    if n_blocks == 0 or missing:
        raise CipsError(f"{source} is an incomplete {arch} generator: {missing[0] if missing else 'no blocks'} is missing.")
    odd = [key for key in width_keys if len(shapes[key]) < 2]
    if odd:
        raise CipsError(f"{source}: tensor {odd[0]!r} has shape {list(shapes[odd[0]])}, not that of an official CIPS weight.")
    widths = tuple(shapes[key][1] for key in width_keys)
    style_dim = shapes[style_key][1]
    if "emb.input" in shapes:
        size = shapes["emb.input"][-1]
    elif arch == "skip":
        arch, size = "ne", 2 ** (n_blocks + 1)
    else:
        raise CipsError(f"{source} is a CIPSres generator without an embedding grid, which is not a known architecture.")
    return GeneratorConfig(arch=arch, size=size, hidden=hidden, style_dim=style_dim, n_mlp=n_mlp, widths=widths)


def convert_official_state_dict(
    state_dict: dict[str, Tensor], config: GeneratorConfig, *, source: str = "checkpoint"
) -> dict[str, Tensor]:
    """Rename and reshape official tensors into this project's layout.

    Official modulated convolutions store weights as [1, out, in, 1, 1]; ours are [out, in].
    The embedding grid [1, hidden, size, size] becomes pixel-major [size, size, hidden], so
    that reading it is a row gather. Every official tensor must be used exactly once.
    """
    remaining = dict(state_dict)
    converted: dict[str, Tensor] = {}

    def take(key: str) -> Tensor:
        if key not in remaining:
            raise CipsError(f"{source} is an incomplete {config.arch} generator: {key!r} is missing.")
        return remaining.pop(key)

    def matrix(tensor: Tensor) -> Tensor:
        return tensor.reshape(tensor.shape[-4], tensor.shape[-3])  # [(1,) out, in, 1, 1] -> [out, in]

    def styled_layer(official: str, ours: str) -> None:
        converted[f"{ours}.linear.weight"] = matrix(take(f"{official}.conv.weight"))
        converted[f"{ours}.linear.affine.weight"] = take(f"{official}.conv.modulation.weight")
        converted[f"{ours}.linear.affine.bias"] = take(f"{official}.conv.modulation.bias")
        converted[f"{ours}.noise_strength"] = take(f"{official}.noise.weight")
        converted[f"{ours}.bias"] = take(f"{official}.activate.bias")

    def to_rgb(official: str, ours: str) -> None:
        converted[f"{ours}.linear.weight"] = matrix(take(f"{official}.conv.weight"))
        converted[f"{ours}.linear.affine.weight"] = take(f"{official}.conv.modulation.weight")
        converted[f"{ours}.linear.affine.bias"] = take(f"{official}.conv.modulation.bias")
        converted[f"{ours}.bias"] = take(f"{official}.bias").reshape(-1)

    converted["fourier.weight"] = matrix(take("lff.ffm.conv.weight"))
    converted["fourier.bias"] = take("lff.ffm.conv.bias")
    if config.has_embedding:
        converted["embedding.grid"] = take("emb.input")[0].permute(1, 2, 0).contiguous()
    for i in range(config.n_mlp):  # official index 0 is the parameter-free PixelNorm
        converted[f"mapping.layers.{i}.weight"] = take(f"style.{i + 1}.weight")
        converted[f"mapping.layers.{i}.bias"] = take(f"style.{i + 1}.bias")
    if config.arch == "res":
        styled_layer("linears.0", "first")
        for i in range(config.n_blocks):
            styled_layer(f"linears.{i + 1}.conv1", f"blocks.{i}.layer1")
            styled_layer(f"linears.{i + 1}.conv2", f"blocks.{i}.layer2")
            if f"linears.{i + 1}.skip.0.weight" in remaining:
                converted[f"blocks.{i}.skip.weight"] = matrix(take(f"linears.{i + 1}.skip.0.weight"))
        to_rgb("to_rgb_last", "to_rgb")
    else:
        styled_layer("conv1", "first")
        for i in range(config.n_blocks):
            styled_layer(f"linears.{2 * i}", f"blocks.{i}.layer1")
            styled_layer(f"linears.{2 * i + 1}", f"blocks.{i}.layer2")
            to_rgb(f"to_rgbs.{i}", f"blocks.{i}.to_rgb")
    if remaining:
        raise CipsError(f"{source} has {len(remaining)} tensor(s) no CIPS {config.arch} generator uses, such as {next(iter(remaining))!r}.")
    return converted


def generator_from_official_state_dict(state_dict: dict[str, Tensor], *, source: str = "checkpoint") -> Generator:
    """Build a generator from an official state dict, on the device its tensors are on.

    Tensors on the ``meta`` device give a full-size generator without allocating weights,
    which is how the paper-size manifests are checked.
    """
    config = config_from_official(state_dict, source=source)
    from cips_deploy.families.model_size import check_model_size

    if next(iter(state_dict.values())).device.type != "meta":  # meta manifests allocate nothing
        check_model_size(config, f"The model in {source}")
    try:
        tensors = convert_official_state_dict(state_dict, config, source=source)
    except (IndexError, RuntimeError, ValueError):  # a reshape of a tensor of the wrong shape
        raise CipsError(f"{source} holds tensors whose shapes do not fit a CIPS {config.arch} generator.") from None
    device = next(iter(tensors.values())).device
    with torch.device("meta"):
        generator = Generator(config)
    tensors["w_avg"] = torch.zeros(config.style_dim, device=device)
    load_exact_state_dict(generator, tensors, source=source)
    generator.w_avg.copy_(generator.mean_w(W_AVG_SAMPLES, seed=0))
    return generator

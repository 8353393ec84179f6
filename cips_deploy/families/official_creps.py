"""Read official CREPS snapshots (VinAIResearch/CREPS ``network-snapshot-*.pkl``) without running them.

An official snapshot is a plain pickle of ``{G, D, G_ema, augment_pipe, training_set_kwargs}``
whose modules are StyleGAN3 "persistent" objects: each carries the full source of its
``.py`` file (``module_src``), which the official loader ``exec``s, and each tensor storage
is a nested legacy ``torch.save`` stream, which the official loader reads with
``torch.load(weights_only=False)``. Both run whatever a crafted file contains.

:class:`SnapshotUnpickler` maps exactly the globals an official snapshot references onto
harmless stand-ins (the table in ``docs/creps.md``) and refuses every other global with one
sentence naming it:

- persistent objects become :class:`PersistentStub` (the meta dict is kept; ``module_src``
  stays a string, hashed, never executed); the two plain module classes (``SynthesisInput``,
  ``Sequential``) become :class:`ModuleStub` holding their pickled ``__dict__``;
- storage blobs are read with ``torch.load(weights_only=True)``;
- numpy scalars (``numpy.core`` in numpy-1 files, ``numpy._core`` in numpy-2 files) are
  rebuilt from their raw bytes; ``EasyDict`` is a plain dict.

:func:`read_snapshot` then walks ``G_ema``'s module tree into a state dict and its
``_init_kwargs`` into a :class:`~cips_deploy.contracts.config.GeneratorConfig`, which the tensor shapes
must confirm. A ``module_src`` that is not the official file's (compared by sha256) is
reported: its weights load, its code is ignored, and a warning says the numerics are
those of the official architecture, not of the altered source.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cips_deploy.errors import CipsError, CipsWarning

# sha256 of training/networks_creps.py at VinAIResearch/CREPS ff09abc, the only published version.
OFFICIAL_CREPS_SOURCE_SHA256 = "1c2cea645d61c4b59e12d5a6333c43b0c4ac84a81ce232626e17189d5f69a5c1"
# Classes of the generator's module tree (all from networks_creps.py).
GENERATOR_CLASSES = {
    "Generator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer", "ToResLayer",
    "FullyConnectedLayer",
}
# Synthesis and mapping options of the official constructor that this project reproduces.
SYNTHESIS_OPTIONS = {"channel_base", "channel_max", "biline_channels", "num_fp16_res", "fc_clamp", "fp16_channels_last"}
MAPPING_OPTIONS = {"num_layers", "lr_multiplier", "w_avg_beta"}


class Refused(CipsError):
    """Why the unpickler stops (a clause; :func:`unpickle_snapshot` makes it a sentence with the path)."""


class SourceWarning(CipsWarning):
    """A snapshot's embedded source differs from the official file (its code is ignored)."""


class PersistentStub:
    """A persistent object's meta: ``class_name``, ``module_src`` (text, never run), its hash, ``state``."""

    def __init__(self, meta: Any) -> None:
        if not isinstance(meta, dict) or meta.get("type") != "class":
            raise Refused("it holds a persistent object that is not a class instance")
        source, class_name, state = meta.get("module_src"), meta.get("class_name"), meta.get("state")
        if not isinstance(source, str) or not isinstance(class_name, str) or not isinstance(state, dict):
            raise Refused("it holds a damaged persistent object (no source text, class name or state)")
        self.class_name = class_name
        self.source_sha256 = hashlib.sha256(source.encode("utf-8")).hexdigest()
        self.state = state

    def __setstate__(self, state: Any) -> None:  # built without its meta (NEWOBJ + BUILD): not official
        raise Refused("it holds a persistent object built without its meta")


class ModuleStub:
    """A plain (non-persistent) module referenced by name; BUILD hands it its ``__dict__``."""

    class_name = "?"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise Refused(f"it holds a damaged {self.class_name} (its state is not a dict)")
        self.state = state


class SynthesisInputStub(ModuleStub):
    class_name = "SynthesisInput"


class SequentialStub(ModuleStub):
    class_name = "Sequential"


class EasyDict(dict):
    """``dnnlib.util.EasyDict`` as data: a dict (its attribute access is not needed)."""


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """numpy's scalar reconstructor, for plain numeric dtypes only: (dtype, raw bytes) -> scalar."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise Refused("it holds a numpy scalar that is not a plain number")
    return np.frombuffer(data, dtype)[0]


def _load_storage(data: Any) -> Any:
    """A nested legacy ``torch.save`` stream of one storage, read without running code."""
    if not isinstance(data, bytes):
        raise Refused("it holds a tensor storage that is not a byte string")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure of a hostile blob is a refusal
        reason = str(error).strip().splitlines()
        detail = next((line for line in reason if "GLOBAL" in line or "global" in line), reason[0] if reason else "")
        raise Refused(f"a tensor storage in it is not plain data and could run code ({detail.strip().rstrip('.')[:160]})") from None


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None) -> Tensor:
    if not isinstance(data, Tensor):
        raise Refused("it holds a parameter that is not a tensor")
    return data


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> Tensor:
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise Refused("it holds a tensor whose storage is not a torch storage")
    return torch._utils._rebuild_tensor(storage, offset, tuple(size), tuple(stride))


_numpy_scalar_globals = {("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar")}
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentStub,
    ("training.networks_creps", "SynthesisInput"): SynthesisInputStub,
    ("torch.nn.modules.container", "Sequential"): SequentialStub,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "set"): set,  # protocols below 4 pickle _non_persistent_buffers_set this way
    **{key: _numpy_scalar for key in _numpy_scalar_globals},
}


class SnapshotUnpickler(pickle.Unpickler):
    """An unpickler that knows only the globals of an official snapshot (see the module text)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise Refused(
                f"it references {module}.{name}, which an official CREPS snapshot never does and which could run code"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise Refused("it holds persistent references, which an official CREPS snapshot never does")


@dataclass
class Snapshot:
    """What a snapshot yields: G_ema's state dict (official keys), init kwargs, facts."""

    state_dict: dict[str, Tensor]
    init_kwargs: dict[str, Any]
    source_sha256: str
    official_source: bool


def unpickle_snapshot(path: Path) -> Any:
    """The whole pickle through :class:`SnapshotUnpickler`; every failure is one sentence."""
    try:
        with open(path, "rb") as handle:
            return SnapshotUnpickler(handle).load()
    except Refused as error:
        raise CipsError(f"Refusing to load {path}: {error}.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, RuntimeError, MemoryError) as error:
        text = str(error).strip().splitlines()
        raise CipsError(f"{path} is corrupt or truncated ({text[0] if text else type(error).__name__}).") from None


def read_snapshot(path: str | Path) -> Snapshot:
    """Read ``G_ema`` of an official CREPS snapshot: its state dict and init kwargs, checked."""
    path = Path(path)
    top = unpickle_snapshot(path)
    if not isinstance(top, dict) or "G_ema" not in top:
        kind = type(top).__name__ if not isinstance(top, dict) else f"a dict with keys {sorted(map(str, top))[:5]}"
        raise CipsError(f"{path} is a pickle but not a CREPS network snapshot (no 'G_ema'; it holds {kind}).")
    generator = top["G_ema"]
    if not isinstance(generator, PersistentStub) or generator.class_name != "Generator":
        raise CipsError(f"{path}: 'G_ema' is not a persistent Generator object.")
    source = generator.source_sha256
    state_dict: dict[str, Tensor] = {}
    sources: set[str] = set()
    try:
        _collect(generator, "", sources, state_dict, path)
    except RecursionError:
        raise CipsError(f"{path}: the generator's module tree is nested implausibly deep; refusing it.") from None
    args, kwargs = generator.state.get("_init_args", ()), generator.state.get("_init_kwargs", {})
    if not isinstance(kwargs, dict) or not isinstance(args, (tuple, list)):
        raise CipsError(f"{path}: the generator's init arguments are damaged.")
    init_kwargs = dict(zip(("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"), args))
    init_kwargs.update(kwargs)
    altered = sorted(sources - {OFFICIAL_CREPS_SOURCE_SHA256})
    official = not altered
    if not official:
        warnings.warn(
            f"{path.name}: the generator's embedded source is not the official networks_creps.py (sha256 {altered[0][:12]}...); "
            "its code was ignored and the weights are run by the official architecture.",
            SourceWarning,
            stacklevel=2,
        )
    return Snapshot(state_dict, init_kwargs, source, official)


def _collect(module: Any, prefix: str, sources: set[str], out: dict[str, Tensor], path: Path) -> None:
    """module stub -> its parameters and persistent buffers, under torch's state-dict names.

    Classes are known by (source file, class name): a ``FullyConnectedLayer`` of the
    discriminator's networks_stylegan2.py is not the generator's. At most two sources may
    appear in the tree, the official file and one altered copy of it (warned about).
    """
    if isinstance(module, PersistentStub):
        sources.add(module.source_sha256)
        if module.class_name not in GENERATOR_CLASSES or len(sources - {OFFICIAL_CREPS_SOURCE_SHA256}) > 1:
            raise CipsError(
                f"{path}: the generator contains a {module.class_name} that is not a class of networks_creps.py."
            )
    elif not isinstance(module, (SynthesisInputStub, SequentialStub)):
        raise CipsError(f"{path}: the generator contains a {type(module).__name__} where a module belongs.")
    state = module.state
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        tensors = state.get(group, {})
        if not isinstance(tensors, dict):
            raise CipsError(f"{path}: the module {prefix or 'G_ema'} has a damaged {group} table.")
        for name, tensor in tensors.items():
            if tensor is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(tensor, Tensor):
                raise CipsError(f"{path}: {prefix}{name} is not a tensor.")
            out[f"{prefix}{name}"] = tensor
    children = state.get("_modules", {})
    if not isinstance(children, dict):
        raise CipsError(f"{path}: the module {prefix or 'G_ema'} has a damaged child table.")
    for name, child in children.items():
        if child is not None:
            _collect(child, f"{prefix}{name}.", sources, out, path)


def config_kwargs(init_kwargs: dict[str, Any], *, source: str) -> dict[str, Any]:
    """Official ``Generator(**init_kwargs)`` -> GeneratorConfig fields (the knobs this project has).

    Refuses, in one sentence each, what it cannot reproduce: class-conditional models, other
    than RGB output, z and w of different widths, unknown options.
    """
    kwargs = dict(init_kwargs)
    mapping = dict(kwargs.pop("mapping_kwargs", {}) or {})
    try:
        z_dim, w_dim = int(kwargs.pop("z_dim")), int(kwargs.pop("w_dim"))
        c_dim, resolution = int(kwargs.pop("c_dim", 0)), int(kwargs.pop("img_resolution"))
        channels = int(kwargs.pop("img_channels", 3))
    except (KeyError, TypeError, ValueError) as error:
        raise CipsError(f"{source}: the generator's init kwargs lack or damage {error}.") from None
    if c_dim > 0:
        raise CipsError(
            f"{source} is a class-conditional CREPS (c_dim={c_dim}); cips-deploy renders unconditional models only."
        )
    if channels != 3:
        raise CipsError(f"{source} makes {channels}-channel images; cips-deploy renders RGB (3 channels) only.")
    if z_dim != w_dim:
        raise CipsError(f"{source} has z_dim {z_dim} != w_dim {w_dim}; cips-deploy needs them equal.")
    unknown = sorted(set(kwargs) - SYNTHESIS_OPTIONS) + sorted(f"mapping_kwargs.{k}" for k in set(mapping) - MAPPING_OPTIONS)
    if unknown:
        raise CipsError(f"{source} uses generator option(s) cips-deploy does not reproduce: {', '.join(unknown)}.")
    fc_clamp = kwargs.get("fc_clamp", 256)
    return dict(
        size=resolution,
        style_dim=w_dim,
        n_mlp=int(mapping.get("num_layers", 8)),
        lr_mlp=float(mapping.get("lr_multiplier", 0.01)),
        channel_base=int(kwargs.get("channel_base", 32768)),
        channel_max=int(kwargs.get("channel_max", 512)),
        biline_channels=int(kwargs.get("biline_channels", 32)),
        num_fp16_res=int(kwargs.get("num_fp16_res", 0)),
        fc_clamp=None if fc_clamp is None else float(fc_clamp),
    )


# The one renaming between the official state dict and ours (every family keeps w_avg at the top).
RENAMED = {"mapping.w_avg": "w_avg"}


def to_ours(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official G_ema keys -> ours (one to one; ``mapping.w_avg`` -> ``w_avg``)."""
    return {RENAMED.get(key, key): tensor for key, tensor in state_dict.items()}


def to_official(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our CREPS keys -> the official G_ema keys (the inverse of :func:`to_ours`)."""
    back = {ours: official for official, ours in RENAMED.items()}
    return {back.get(key, key): tensor for key, tensor in state_dict.items()}


def load_official_creps(path: str | Path):
    """An official CREPS snapshot -> :class:`~cips_deploy.families.creps.CrepsGenerator` (CPU, float32, eval).

    The config comes from the pickled init kwargs; the tensors must then have exactly the
    names and shapes that config implies (a mismatch is one sentence naming the tensor).
    """
    from cips_deploy.families.weights import load_exact_state_dict
    from cips_deploy.runtime.hashing import file_sha256
    from cips_deploy.families.creps_spec import creps_config
    from cips_deploy.families.generator import Generator

    path = Path(path)
    snapshot = read_snapshot(path)
    fields = config_kwargs(snapshot.init_kwargs, source=str(path))
    base, cap = fields.pop("channel_base"), fields.pop("channel_max")
    config = creps_config("tiny", channel_base=base, channel_max=cap, **fields)
    with torch.device("meta"):
        generator = Generator(config)
    load_exact_state_dict(generator, to_ours(snapshot.state_dict), source=str(path))
    generator.provenance = {
        "source": "official CREPS snapshot (G_ema)",
        "source_file": path.name,
        "source_sha256": file_sha256(path),
        "official_init_kwargs": _jsonable(snapshot.init_kwargs),
        "module_src": "official networks_creps.py" if snapshot.official_source
        else f"NOT the official networks_creps.py (sha256 {snapshot.source_sha256}); its code was ignored",
    }
    return generator.eval()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)

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

Running no code is not enough: a small pickle can still crash, hang or flood the reader. So,
before anything is unpickled, :func:`~cips_deploy.contracts.limits.check_pickle` bounds the
stream's nesting, its objects (shared ones counted at every use) and its memo, and refuses dict
keys that are not plain numbers or strings and cycles; every nested storage stream is checked
the same way, and for a zip bomb, before ``torch.load`` reads it. A tensor may not claim more
elements than its storage holds (a stride-0 view of one value), and all of them together at most
:data:`~cips_deploy.contracts.limits.MAX_PARAMETERS`, counted while unpickling, before anything is
materialised.

:func:`read_snapshot` then walks ``G_ema``'s module tree (as a tree: each module once) into a
state dict and its ``_init_kwargs`` into a :class:`~cips_deploy.contracts.config.GeneratorConfig`
(every value checked: whole numbers in range, finite numbers, the right types), which the tensor
shapes must confirm. A ``module_src`` that is not the official file's (compared by sha256) is
reported: its weights load, its code is ignored, and a warning says the numerics are
those of the official architecture, not of the altered source.
"""

from __future__ import annotations

import collections
import hashlib
import io
import itertools
import math
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cips_deploy.contracts.limits import (
    MAX_JSON_DEPTH,
    MAX_PARAMETERS,
    MAX_PROVENANCE_VALUES,
    OFFICIAL_CREPS_LIMITS,
    PickleRefused,
    check_parameter_count,
    check_pickle,
    check_torch_stream,
    claimed_elements,
)
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
# Module and tensor names of a torch module tree (attribute names, Sequential indices).
NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
# numpy dtypes of the scalars a snapshot pickles (float64 gains; plain numbers only).
PLAIN_DTYPES = {f"{kind}{size}" for kind, sizes in (("f", "248"), ("i", "1248"), ("u", "1248")) for size in sizes} | {"b1"}


class Refused(CipsError):
    """Why the unpickler stops (a clause; :func:`unpickle_snapshot` makes it a sentence with the path)."""


class SourceWarning(CipsWarning):
    """A snapshot's embedded source differs from the official file (its code is ignored)."""


class PersistentStub:
    """A persistent object's meta: ``class_name``, ``module_src`` (text, never run), its hash, ``state``.

    Checked in ``__new__``: NEWOBJ creates an instance without calling ``__init__``, and a stub
    without its meta must not exist.
    """

    def __new__(cls, meta: Any = None, *rest: Any) -> "PersistentStub":
        if rest or not isinstance(meta, dict) or meta.get("type") != "class":
            raise Refused("it holds a persistent object that is not a class instance")
        source, class_name, state = meta.get("module_src"), meta.get("class_name"), meta.get("state")
        if not isinstance(source, str) or not isinstance(class_name, str) or not isinstance(state, dict):
            raise Refused("it holds a damaged persistent object (no source text, class name or state)")
        stub = super().__new__(cls)
        stub.class_name = class_name[:100]
        stub.source_sha256 = hashlib.sha256(source.encode("utf-8", "replace")).hexdigest()
        stub.state = state
        return stub

    def __setstate__(self, state: Any) -> None:  # built without its meta (NEWOBJ + BUILD): not official
        raise Refused("it holds a persistent object built without its meta")


class ModuleStub:
    """A plain (non-persistent) module referenced by name; BUILD hands it its ``__dict__``."""

    class_name = "?"
    state: Any = None  # until BUILD hands it over (a pickle may never do so)

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


class DtypeStub:
    """``numpy.dtype(code, align, copy)`` of a plain number type; BUILD's state is checked, never
    handed to numpy's own ``__setstate__`` (which accepts field layouts a hostile file could bend)."""

    def __init__(self, code: Any = None, align: Any = False, copy: Any = True) -> None:
        if not isinstance(code, str) or code not in PLAIN_DTYPES:
            raise Refused("it holds a numpy dtype that is not a plain number type")
        self.dtype = np.dtype(code)

    def __setstate__(self, state: Any) -> None:
        # (version 3, byte order, no subarray, names or fields, sizes, flags): a plain little-endian number
        if not (isinstance(state, tuple) and 8 <= len(state) <= 9 and state[0] == 3 and state[1] in ("<", "|", "=")
                and state[2] is None and state[3] is None and state[4] is None):
            raise Refused("it holds a numpy dtype whose state is not that of a plain number type")


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """numpy's scalar reconstructor, for plain numeric dtypes only: (dtype, raw bytes) -> scalar."""
    if isinstance(dtype, DtypeStub):
        dtype = dtype.dtype
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise Refused("it holds a numpy scalar that is not a plain number")
    return np.frombuffer(data, dtype)[0]


def _load_storage(data: Any) -> Any:
    """A nested legacy ``torch.save`` stream of one storage, read without running code.

    Its pickles are bounded and a zip is checked for a bomb first, exactly like a top-level
    PyTorch file (with no 1 MiB allowance: a snapshot holds thousands of these).
    """
    if not isinstance(data, bytes):
        raise Refused("it holds a tensor storage that is not a byte string")
    stream = io.BytesIO(data)
    try:
        check_torch_stream(stream, slack=0)
    except PickleRefused as error:
        raise Refused(f"a tensor storage in it {error.reason}") from None
    try:
        return torch.load(stream, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure of a hostile blob is a refusal
        reason = str(error).strip().splitlines()
        detail = next((line for line in reason if "GLOBAL" in line or "global" in line), reason[0] if reason else "")
        raise Refused(f"a tensor storage in it is not plain data and could run code ({detail.strip().rstrip('.')[:160]})") from None


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None) -> Tensor:
    if not isinstance(data, Tensor):
        raise Refused("it holds a parameter that is not a tensor")
    return data


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62


def _is_shape(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) <= 16 and all(_is_index(size) for size in value)


def _check_view(storage: Any, offset: Any, size: Any, stride: Any) -> int:
    """The elements a tensor view claims, if its storage really holds them; else a refusal.

    A stride-0 view makes one stored value stand for any number of elements; materialising it
    (a copy, a conversion, a finiteness check) would then allocate them all. Weights are never
    stored that way, so a view may claim at most the elements its storage holds.
    """
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise Refused("it holds a tensor whose storage is not a torch storage")
    if not (_is_index(offset) and _is_shape(size) and _is_shape(stride) and len(size) == len(stride)):
        raise Refused("it holds a tensor with a damaged size, stride or offset")
    claimed = claimed_elements(size)
    # TypedStorage's public size methods warn that the class is deprecated; its parts do not.
    untyped = storage._untyped_storage if isinstance(storage, torch.TypedStorage) else storage
    stored = untyped.nbytes() // (storage.dtype.itemsize if isinstance(storage, torch.TypedStorage) else 1)
    if claimed > stored:
        raise Refused(
            f"a tensor in it claims {claimed:,} elements but its storage holds {stored:,} "
            "(a stride-0 or overlapping view, which saved weights never are)"
        )
    last = offset + sum((count - 1) * step for count, step in zip(size, stride))
    if claimed and last >= stored:
        raise Refused(f"a tensor in it reaches element {last:,} of a storage of {stored:,}")
    return claimed


_numpy_scalar_globals = {("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar")}
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentStub,
    ("training.networks_creps", "SynthesisInput"): SynthesisInputStub,
    ("torch.nn.modules.container", "Sequential"): SequentialStub,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_tensor_v2"): None,  # per unpickler: SnapshotUnpickler._rebuild_tensor counts
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("numpy", "dtype"): DtypeStub,
    ("builtins", "set"): set,  # protocols below 4 pickle _non_persistent_buffers_set this way
    **{key: _numpy_scalar for key in _numpy_scalar_globals},
}


class SnapshotUnpickler(pickle.Unpickler):
    """An unpickler that knows only the globals of an official snapshot (see the module text).

    Run it only on a stream that :func:`~cips_deploy.contracts.limits.check_pickle` accepted.
    ``claimed`` counts the elements of every tensor so far, against ``MAX_PARAMETERS``.
    """

    def __init__(self, handle: Any) -> None:
        super().__init__(handle)
        self.claimed = 0

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        try:
            return ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise Refused(
                f"it references {module[:100]}.{name[:100]}, which an official CREPS snapshot never does and which could run code"
            ) from None

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> Tensor:
        self.claimed += _check_view(storage, offset, size, stride)
        if self.claimed > MAX_PARAMETERS:  # G, D and G_ema together: a published snapshot holds about 1e8
            raise Refused(f"its tensors claim more than {MAX_PARAMETERS:,} elements")
        return torch._utils._rebuild_tensor(storage, offset, tuple(size), tuple(stride))

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
    """The whole pickle through :class:`SnapshotUnpickler`, once its opcodes passed
    :func:`~cips_deploy.contracts.limits.check_pickle` (read from the same open file); every
    failure is one sentence."""
    try:
        with open(path, "rb") as handle:
            check_pickle(handle)
            handle.seek(0)
            return SnapshotUnpickler(handle).load()
    except PickleRefused as error:
        raise CipsError(error.sentence(path)) from None
    except Refused as error:
        raise CipsError(f"Refusing to load {path}: {error}.") from None
    except MemoryError:
        raise CipsError(f"{path} does not fit in this machine's memory.") from None
    except Exception as error:  # noqa: BLE001 - whatever the unpickler raises on hostile bytes is damage
        text = str(error).strip().splitlines()
        raise CipsError(f"{path} is corrupt or truncated ({text[0][:200] if text else type(error).__name__}).") from None


def read_snapshot(path: str | Path) -> Snapshot:
    """Read ``G_ema`` of an official CREPS snapshot: its state dict and init kwargs, checked."""
    path = Path(path)
    top = unpickle_snapshot(path)
    if not isinstance(top, dict) or "G_ema" not in top:
        keys = ", ".join(_brief(key) for key in itertools.islice(top, 5)) if isinstance(top, dict) else ""
        kind = f"a dict with keys {keys}" if isinstance(top, dict) else type(top).__name__
        raise CipsError(f"{path} is a pickle but not a CREPS network snapshot (no 'G_ema'; it holds {kind}).")
    generator = top["G_ema"]
    if not isinstance(generator, PersistentStub) or generator.class_name != "Generator":
        raise CipsError(f"{path}: 'G_ema' is not a persistent Generator object.")
    source = generator.source_sha256
    state_dict, sources = _collect(generator, path)
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


def _collect(generator: PersistentStub, path: Path) -> tuple[dict[str, Tensor], set[str]]:
    """G_ema's module tree -> (its parameters and persistent buffers under torch's state-dict
    names, the module sources seen).

    Walked as a tree, depth first without recursion, each module once: a module reached a second
    time (a child shared by two parents, or a loop back to an ancestor) is refused, so the walk
    is linear in the file (a shared child at every level would make it exponential).
    """
    out: dict[str, Tensor] = {}
    sources: set[str] = set()
    seen: set[int] = set()  # ids of modules visited; all stay alive in the snapshot meanwhile
    pending: list[tuple[Any, str]] = [(generator, "")]
    while pending:
        module, prefix = pending.pop()
        if id(module) in seen:
            raise CipsError(
                f"{path}: the generator's module tree reaches {prefix[:-1]} a second time (a shared or looping module), "
                "which a real network never does."
            )
        seen.add(id(module))
        state = _module_state(module, prefix, sources, path)
        _take_tensors(state, prefix, out, path)
        children = state.get("_modules", {})
        if not isinstance(children, dict):
            raise CipsError(f"{path}: the module {prefix[:-1] or 'G_ema'} has a damaged child table.")
        named = [(f"{prefix}{_name(name, prefix, path)}.", child) for name, child in children.items()]
        pending.extend((child, name) for name, child in reversed(named) if child is not None)  # torch's order
    return out, sources


def _module_state(module: Any, prefix: str, sources: set[str], path: Path) -> dict:
    """A module stub's pickled ``__dict__``, once its class is known to be the generator's.

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
    if not isinstance(module.state, dict):
        raise CipsError(f"{path}: the module {prefix[:-1] or 'G_ema'} has no state.")
    return module.state


def _take_tensors(state: dict, prefix: str, out: dict[str, Tensor], path: Path) -> None:
    """A module's parameters and persistent buffers into ``out``."""
    skip = state.get("_non_persistent_buffers_set") or set()
    if not isinstance(skip, (set, frozenset, list, tuple)):
        raise CipsError(f"{path}: the module {prefix[:-1] or 'G_ema'} has a damaged buffer list.")
    for group in ("_parameters", "_buffers"):
        tensors = state.get(group, {})
        if not isinstance(tensors, dict):
            raise CipsError(f"{path}: the module {prefix[:-1] or 'G_ema'} has a damaged {group} table.")
        for name, tensor in tensors.items():
            name = _name(name, prefix, path)
            if tensor is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(tensor, Tensor):
                raise CipsError(f"{path}: {prefix}{name} is not a tensor.")
            out[f"{prefix}{name}"] = tensor


def _name(name: Any, prefix: str, path: Path) -> str:
    """A module's or tensor's name: an identifier or an index, as torch gives them."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise CipsError(f"{path}: the module {prefix[:-1] or 'G_ema'} holds a member named {_brief(name)}, not a torch name.")
    return name


def config_kwargs(init_kwargs: dict[str, Any], *, source: str) -> dict[str, Any]:
    """Official ``Generator(**init_kwargs)`` -> GeneratorConfig fields (the knobs this project has).

    z of another width than w and class-conditional models (``c_dim > 0``) are taken as they
    are. Refuses, in one sentence each, what it cannot reproduce: other than RGB output,
    unknown options; and every value of the
    wrong type or out of range (NaN, strings, fractions, 2**62, booleans), before anything is
    sized by it (limits: ``OFFICIAL_CREPS_LIMITS``).
    """
    kwargs = dict(init_kwargs)
    mapping = kwargs.pop("mapping_kwargs", None) or {}
    if not isinstance(mapping, dict):
        raise CipsError(f"{source}: the generator's mapping_kwargs is {_brief(mapping)}, not a dict.")
    mapping = {f"mapping_kwargs.{_key_text(key)}": value for key, value in mapping.items()}
    missing = [name for name in ("z_dim", "w_dim", "img_resolution") if name not in kwargs]
    if missing:
        raise CipsError(f"{source}: the generator's init kwargs lack {missing[0]!r}.")
    unknown = sorted(_key_text(key) for key in set(kwargs) - SYNTHESIS_OPTIONS - set(OFFICIAL_CREPS_LIMITS))
    unknown += sorted(set(mapping) - {f"mapping_kwargs.{key}" for key in MAPPING_OPTIONS})
    if unknown:
        raise CipsError(f"{source} uses generator option(s) cips-deploy does not reproduce: {', '.join(unknown)}.")
    values = {**kwargs, **mapping}
    whole = {name: _whole(values.get(name, default), name, source) for name, default in WHOLE_DEFAULTS.items()}
    if whole["img_channels"] != 3:
        raise CipsError(f"{source} makes {whole['img_channels']}-channel images; cips-deploy renders RGB (3 channels) only.")
    lr = _number(values.get("mapping_kwargs.lr_multiplier", 0.01), "mapping_kwargs.lr_multiplier", source, (0, 1000), "in (0, 1000]")
    fc_clamp = values.get("fc_clamp", 256)
    if fc_clamp is not None:
        fc_clamp = _number(fc_clamp, "fc_clamp", source, (0, math.inf), "above 0, or None")
    if values.get("mapping_kwargs.w_avg_beta") is not None:  # tracked in training only; checked, not used
        _number(values["mapping_kwargs.w_avg_beta"], "mapping_kwargs.w_avg_beta", source, (0, 1), "from 0 to 1, or None", closed=True)
    if not isinstance(values.get("fp16_channels_last", False), (bool, np.bool_)):  # a memory-layout flag: not used
        raise CipsError(f"{source}: the generator option fp16_channels_last must be True or False, not {_brief(values['fp16_channels_last'])}.")
    return dict(
        size=whole["img_resolution"],
        style_dim=whole["w_dim"],
        z_dim=whole["z_dim"],  # any width (None once the config sees it equals w_dim)
        c_dim=whole["c_dim"],  # class-conditional: the mapping's label embedding (mapping.embed)
        n_mlp=whole["mapping_kwargs.num_layers"],
        lr_mlp=lr,
        channel_base=whole["channel_base"],
        channel_max=whole["channel_max"],
        biline_channels=whole["biline_channels"],
        num_fp16_res=whole["num_fp16_res"],
        fc_clamp=fc_clamp,
    )


# The official constructor's defaults of the whole-number options (limits: OFFICIAL_CREPS_LIMITS).
WHOLE_DEFAULTS = {
    "z_dim": None, "w_dim": None, "img_resolution": None, "c_dim": 0, "img_channels": 3, "channel_base": 32768,
    "channel_max": 512, "biline_channels": 32, "num_fp16_res": 0, "mapping_kwargs.num_layers": 8,
}


def _whole(value: Any, name: str, source: str) -> int:
    """An official whole-number option within OFFICIAL_CREPS_LIMITS (numpy integers accepted)."""
    low, high = OFFICIAL_CREPS_LIMITS[name]
    if isinstance(value, np.integer):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise CipsError(f"{source}: the generator option {name} must be a whole number from {low:,} to {high:,}, not {_brief(value)}.")
    return value


def _number(value: Any, name: str, source: str, bounds: tuple[float, float], words: str, closed: bool = False) -> float:
    """An official real-valued option: a finite number within ``bounds`` (open below unless ``closed``)."""
    low, high = bounds
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (low <= value if closed else low < value) and value <= high
    if not ok:
        raise CipsError(f"{source}: the generator option {name} must be a finite number {words}, not {_brief(value)}.")
    return value


def _key_text(key: Any) -> str:
    """An option's name as written in a sentence (a non-string key described, not printed)."""
    return key[:60] if isinstance(key, str) else _brief(key)


def _brief(value: Any) -> str:
    """A short, safe description of an untrusted value for a sentence (never a huge repr)."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return repr(bool(value) if value is not None else None)
    if isinstance(value, (int, np.integer)):
        value = int(value)
        return repr(value) if value.bit_length() <= 128 else f"an integer of {value.bit_length():,} bits"
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, str):
        return repr(value[:40] + ("..." if len(value) > 40 else ""))
    return f"a {type(value).__name__}"[:60]


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

    The config comes from the pickled init kwargs (checked); its parameters are counted on the
    meta device and refused above ``MAX_PARAMETERS`` or the memory available; the tensors must
    then have exactly the names and shapes that config implies (a mismatch is one sentence
    naming the tensor).
    """
    from cips_deploy.families.weights import load_exact_state_dict
    from cips_deploy.runtime.hashing import file_sha256
    from cips_deploy.families.creps_spec import creps_config
    from cips_deploy.families.generator import Generator

    path = Path(path)
    snapshot = read_snapshot(path)
    fields = config_kwargs(snapshot.init_kwargs, source=str(path))
    init_kwargs = _jsonable(snapshot.init_kwargs, str(path))  # bounded before anything prints it
    base, cap = fields.pop("channel_base"), fields.pop("channel_max")
    config = creps_config("tiny", channel_base=base, channel_max=cap, **fields)
    with torch.device("meta"):
        generator = Generator(config)
    check_parameter_count(sum(tensor.numel() for tensor in generator.state_dict().values()), f"The model in {path}")
    load_exact_state_dict(generator, to_ours(snapshot.state_dict), source=str(path))
    generator.provenance = {
        "source": "official CREPS snapshot (G_ema)",
        "source_file": path.name,
        "source_sha256": file_sha256(path),
        "official_init_kwargs": init_kwargs,
        "module_src": "official networks_creps.py" if snapshot.official_source
        else f"NOT the official networks_creps.py (sha256 {snapshot.source_sha256}); its code was ignored",
    }
    return generator.eval()


def _jsonable(value: Any, source: str) -> Any:
    """The init kwargs as JSON values for the provenance, refused beyond MAX_JSON_DEPTH levels or
    MAX_PROVENANCE_VALUES values before they are expanded (a shared list at every level of a
    60-level pickle stands for 2**60 values)."""
    budget = [MAX_PROVENANCE_VALUES]

    def convert(item: Any, depth: int) -> Any:
        budget[0] -= 1
        if depth > MAX_JSON_DEPTH or budget[0] < 0:
            raise CipsError(
                f"{source}: the generator's init kwargs hold more than {MAX_PROVENANCE_VALUES:,} values or nest deeper "
                f"than {MAX_JSON_DEPTH} levels, which official kwargs never do."
            )
        if isinstance(item, dict):
            return {_brief(key) if not isinstance(key, str) else key[:100]: convert(entry, depth + 1) for key, entry in item.items()}
        if isinstance(item, (list, tuple)):
            return [convert(entry, depth + 1) for entry in item]
        if isinstance(item, np.generic):
            item = item.item()
        if isinstance(item, float) and not math.isfinite(item):
            return repr(item)  # JSON has no NaN; provenance is read back by a strict parser
        return item if isinstance(item, (int, float, str, bool, type(None))) else _brief(item)

    return convert(value, 0)

"""What a backend is: the thing that turns a coordinate batch and a style into colours.

A backend class is registered through ``register_backends`` and constructed by the renderer
as ``BackendClass(model, device=..., **options)``, where ``model`` is a
:class:`~cips_deploy.families.generator.Generator` or a path to a model file the backend reads
(a checkpoint for ``torch``; an engine for runtimes that other plugins add). It exposes the
model's :class:`~cips_deploy.contracts.config.GeneratorConfig` and two calls on host numpy
arrays (float32, C-contiguous):

- ``map(z [B, Z], truncation, c=None) -> w [B, S]``: the mapping network with truncation; ``c``
  float32 ``[B, C]`` is the one-hot class label of a class-conditional model (``config.c_dim > 0``).
  The runtime passes ``c`` only to conditional models, so a backend written for unconditional
  models alone may keep the two-argument ``map(z, truncation)``;
- ``run(coords [B, N, 2] float32, w [B, S] or [B, N, S] float32) -> rgb [B, N, 3] float32``:
  synthesis, the raw generator output (about [-1, 1]); the engine I/O of docs/architecture.md, section 2.3;
- ``run_layers(coords [B, N, 2], ws [B, L, S]) -> rgb [B, N, 3]``: synthesis with one style per
  style input of the family (``L = config.family.style_layers(config)``, in the order the layers
  run): style mixing (``render --mix-seed``), a per-layer projection (``render --w``). The
  default refuses in one sentence; the torch backend runs it for every family, an engine only
  when it was exported for it (``export --layer-styles``). :meth:`Backend.takes_layer_styles`
  says which, before a render starts;
- ``run_many(batches) -> rgb, rgb, ...``: ``run`` over an iterable of ``(coords, w)`` pairs,
  results in the same order. The renderer calls this; the default runs them one by one,
  and a backend that can overlap work (a remote server with several chunks in flight)
  overrides it, pulling a few pairs ahead.

A backend declares its options (``options``: name, type, default, help, bounds, choices;
the same :class:`~cips_deploy.contracts.topology.Parameter` that topologies declare their parameters
with). The renderer checks what a caller gives against them before constructing the
backend (:func:`resolve_options`), and the command line builds a flag for each
(``render --precision bf16`` is the torch backend's ``precision`` option), so a plugin's
backend gets options exactly as the built-in ones do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterable, Iterator

import numpy as np

from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.errors import CipsError
from cips_deploy.contracts.footprint import render_bytes_per_point
from cips_deploy.contracts.topology import Parameter


class Backend(ABC):
    """Base class of synthesis backends; plugins subclass it and register the class."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # The keyword options __init__ takes besides ``device``; defaults as in its signature.
    options: ClassVar[tuple[Parameter, ...]] = ()
    # What map and run take and return: "numpy" arrays (this contract), or "torch" tensors for
    # backends written against the old contract (cips_deploy.backend.Backend); the runtime
    # converts at its boundary without copies.
    arrays: ClassVar[str] = "numpy"
    # Model files this backend opens by itself (".onnx"): given such a file and no backend,
    # the renderer picks the backend that names its suffix.
    model_suffixes: ClassVar[tuple[str, ...]] = ()

    config: GeneratorConfig

    @abstractmethod
    def __init__(self, model: Any, *, device: str = "cpu", **options: Any) -> None:
        ...

    @abstractmethod
    def map(self, z: np.ndarray, truncation: float = 1.0, c: np.ndarray | None = None) -> np.ndarray:
        """z [B, Z] (and c [B, C] for a class-conditional model) -> w [B, S] on the host,
        truncated towards the model's average w."""

    @abstractmethod
    def run(self, coords: np.ndarray, w: np.ndarray) -> np.ndarray:
        """coords [B, N, 2] and w [B, S] or [B, N, S] (host float32) -> rgb [B, N, 3] (host float32)."""

    def run_layers(self, coords: np.ndarray, ws: np.ndarray) -> np.ndarray:
        """coords [B, N, 2] and per-layer styles ws [B, L, S] (host float32) -> rgb [B, N, 3];
        the default refuses: the backend takes one style for all layers."""
        raise CipsError(layer_styles_refusal(self))

    def takes_layer_styles(self) -> bool:
        """Whether :meth:`run_layers` runs (the default: whether a subclass overrides it)."""
        return type(self).run_layers is not Backend.run_layers

    def run_many(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[np.ndarray]:
        """rgb for each ``(coords, w)`` of ``batches``, in order; the default calls :meth:`run` one by one."""
        for coords, w in batches:
            yield self.run(coords, w)

    def bytes_per_point(self, per_point_style: bool = False) -> int:
        """Working memory per point of a chunk; the ``memory`` chunker divides its budget by it."""
        return render_bytes_per_point(self.config, per_point_style=per_point_style)

    def preferred_memory_budget(self) -> float:
        """MB of working memory per chunk when the user sets no budget (the ``memory`` chunker's default)."""
        return 256.0

    def close(self) -> None:
        """Release what the backend holds (device memory, sessions); the default holds nothing."""


def resolve_options(backend: type[Backend], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` checked against ``backend.options``: unknown names are refused in one sentence,
    strings (the command line's values) are converted to the declared type and checked
    against its bounds or choices; other values (the Python API's) pass to the backend as they are."""
    declared = {option.name: option for option in getattr(backend, "options", ())}
    if "device" in given:
        raise CipsError("The device is not a backend option: give it with --device (or device= in Python).")
    unknown = sorted(set(given) - set(declared))
    if unknown:
        known = ", ".join(declared) or "none"
        raise CipsError(f"The {backend.name} backend has no option {unknown[0]!r} (its options: {known}).")
    return {
        name: declared[name].convert(value, backend.name, "backend's option") if isinstance(value, str) else value
        for name, value in given.items()
    }

def run_chunks(backend: Any, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[np.ndarray]:
    """``backend.run_many(batches)``, or ``run`` one by one for a backend class without it."""
    run_many = getattr(backend, "run_many", None)
    if run_many is not None:
        return iter(run_many(batches))
    return (backend.run(coords, w) for coords, w in batches)


def layer_styles_refusal(backend: Any) -> str:
    """The sentence for a backend that takes one style for all layers and was given one per layer."""
    name = getattr(backend, "name", "") or type(backend).__name__
    return (
        f"The {name} backend takes one style for all layers, so it cannot mix styles or render per-layer styles "
        "(--mix-seed, a per-layer --w); render the model's checkpoint with --backend torch, or an engine exported "
        "with `cips-deploy export --layer-styles`."
    )


def takes_layer_styles(backend: Any) -> bool:
    """Whether ``backend`` (of this contract or a plugin's older one) runs per-layer styles."""
    check = getattr(backend, "takes_layer_styles", None)
    return bool(check()) if callable(check) else False

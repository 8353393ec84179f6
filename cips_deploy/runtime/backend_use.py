"""Constructing a backend for a model, choosing it when none is named, and who closes it.

Callers (the renderers, scale consistency, the commands) accept either a model (a Generator,
a checkpoint path, or an exported engine file), for which they construct a registered
backend and close it when done, or a constructed :class:`~cips_deploy.contracts.backend.Backend`,
which they reuse and never close: its owner may render with it again. :func:`backend_in_use`
is that rule, once.

"An engine says what it is": with no backend named (``None``, the default of the renderer
and the commands), :func:`choose_backend` picks the registered backend whose
``model_suffixes`` names the model file's suffix (``model.onnx`` -> ``onnxruntime``,
``model.plan`` -> ``tensorrt``), and ``torch`` for anything else (checkpoints, Generators).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from cips_deploy._compat import require_build_extra
from cips_deploy.contracts.backend import Backend, resolve_options
from cips_deploy.errors import CipsError
from cips_deploy.runtime.plugin_calls import call
from cips_deploy.runtime.plugin_manager import Registered, Registry, owner_of

# The backend of models that no registered backend claims by suffix (checkpoints, Generators).
DEFAULT_BACKEND = "torch"


def suffix_backends(registry: Registry, suffix: str) -> list[str]:
    """Names of the registered backends whose ``model_suffixes`` include ``suffix`` (registration order)."""
    suffix = suffix.lower()
    return [
        name for name, entry in registry.backends.items()
        if suffix in {each.lower() for each in getattr(entry.item, "model_suffixes", ()) or ()}
    ]


def choose_backend(registry: Registry, model: Any, name: str | None) -> str:
    """The backend name for ``model``: ``name`` when given (refused in one sentence when it is
    the torch backend and ``model`` is an engine file another backend opens), else the backend
    that declares the file's suffix, else ``torch``."""
    suffix = Path(model).suffix if isinstance(model, (str, os.PathLike)) else ""
    claimed = suffix_backends(registry, suffix) if suffix else []
    if name is not None:
        if name == DEFAULT_BACKEND and claimed and DEFAULT_BACKEND not in claimed:
            raise CipsError(
                f"{Path(model).name} is an exported {suffix} engine, which the torch backend cannot run; "
                f"leave --backend out (or name {claimed[0]})."
            )
        return name
    if claimed:
        return claimed[0]
    if DEFAULT_BACKEND not in registry.backends:  # the base install: say what a checkpoint needs
        what = f"Rendering {Path(model).name}" if suffix else "Rendering a model that is not an exported engine"
        require_build_extra(what)
    return DEFAULT_BACKEND


def make_backend(registry: Registry, name: str | None, model: Any, device: str, options: dict[str, Any]) -> Backend:
    """Construct the registered backend ``name`` (None: chosen from ``model``, :func:`choose_backend`)
    for ``model``; plugin failures are named."""
    entry = registry.get("backend", choose_backend(registry, model, name))
    return call(entry, "construction", entry.item, model, device=device, **resolve_options(entry.item, options))


@contextlib.contextmanager
def backend_in_use(
    registry: Registry, model: Any, name: str | None, device: str, options: dict[str, Any] | None = None
) -> Iterator[tuple[Backend, Registered]]:
    """Yield ``(backend, its registration)`` for ``model``: a constructed Backend as it is
    (named after the plugin that registered its class), else the backend ``name`` (None:
    chosen from the model) built for it on ``device`` with ``options`` and closed on the way out."""
    if isinstance(model, Backend):
        yield model, owner_of(registry, "backend", model) or Registered(
            "backend", getattr(model, "name", type(model).__name__), model, "given by the caller"
        )
        return
    entry = registry.get("backend", choose_backend(registry, model, name))
    runner = make_backend(registry, entry.name, model, device, options or {})
    try:
        yield runner, entry
    finally:
        runner.close()

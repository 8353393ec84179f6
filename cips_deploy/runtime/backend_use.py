"""Constructing a backend for a model, and the one rule for who closes it.

Callers (the renderers, scale consistency, the commands) accept either a model (a Generator
or a checkpoint path), for which they construct the registered backend and close it when
done, or a constructed :class:`~cips_deploy.contracts.backend.Backend`, which they reuse and never
close: its owner may render with it again. :func:`backend_in_use` is that rule, once.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from cips_deploy.contracts.backend import Backend, resolve_options
from cips_deploy.runtime.plugin_calls import call
from cips_deploy.runtime.plugin_manager import Registered, Registry, owner_of


def make_backend(registry: Registry, name: str, model: Any, device: str, options: dict[str, Any]) -> Backend:
    """Construct the registered backend ``name`` for ``model``; plugin failures are named."""
    entry = registry.get("backend", name)
    return call(entry, "construction", entry.item, model, device=device, **resolve_options(entry.item, options))


@contextlib.contextmanager
def backend_in_use(
    registry: Registry, model: Any, name: str, device: str, options: dict[str, Any] | None = None
) -> Iterator[tuple[Backend, Registered]]:
    """Yield ``(backend, its registration)`` for ``model``: a constructed Backend as it is
    (named after the plugin that registered its class), else the backend ``name`` built for
    it on ``device`` with ``options`` and closed on the way out."""
    if isinstance(model, Backend):
        yield model, owner_of(registry, "backend", model) or Registered(
            "backend", getattr(model, "name", type(model).__name__), model, "given by the caller"
        )
        return
    entry = registry.get("backend", name)
    runner = make_backend(registry, name, model, device, options or {})
    try:
        yield runner, entry
    finally:
        runner.close()

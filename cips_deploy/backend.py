"""The backend contract as plugins of 0.1 knew it: ``run`` takes and returns torch tensors.

The runtime hands backends numpy arrays (:mod:`cips_deploy.contracts.backend`). A backend
that subclasses *this* ``Backend`` (the old import path) declares ``arrays = "torch"``, so
the runtime converts at its boundary, without copies (``torch.from_numpy`` in, ``.numpy()``
out): plugins written against the old docs keep working unchanged in the full install.
New backends subclass :class:`cips_deploy.contracts.backend.Backend`.
"""

from __future__ import annotations

from typing import ClassVar

from cips_deploy.contracts.backend import Backend as ArrayBackend
from cips_deploy.contracts.backend import resolve_options, run_chunks

__all__ = ["Backend", "resolve_options", "run_chunks"]


class Backend(ArrayBackend):
    """A backend whose ``map`` and ``run`` take and return CPU torch tensors."""

    arrays: ClassVar[str] = "torch"

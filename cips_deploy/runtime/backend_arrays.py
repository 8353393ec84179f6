"""The backend boundary: the runtime's numpy arrays in, host float32 arrays out.

Backends take and return host numpy arrays (:mod:`cips_deploy.contracts.backend`). A backend
class that declares ``arrays = "torch"`` (the legacy :class:`cips_deploy.backend.Backend`, which
plugins written for 0.1 subclass) gets CPU torch tensors instead: :func:`to_backend` wraps
the arrays with ``torch.from_numpy`` (no copy) and :func:`from_backend` takes colours or styles
back with ``.detach().cpu().numpy()``, so torch is imported for such a backend only. The
renderers use these two for both ``map`` and ``run``.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, ContextManager

import numpy as np

from cips_deploy.errors import CipsError
from cips_deploy.runtime.images import host_float32


def to_backend(runner: Any, *arrays: np.ndarray) -> tuple[Any, ...]:
    """``arrays`` as ``runner`` takes them: numpy as they are, CPU torch tensors sharing their
    memory for a backend with ``arrays = "torch"``."""
    if getattr(runner, "arrays", "numpy") != "torch":
        return arrays
    import torch  # the legacy contract's backends live in torch installs

    # torch.from_numpy warns about (and must not write through) a read-only array: copy those.
    return tuple(torch.from_numpy(array if array.flags.writeable else array.copy()) for array in arrays)


def from_backend(result: Any, label: str, what: str) -> np.ndarray:
    """What a backend's ``map`` or ``run`` returned as host float32 numpy: numpy as it is (cast
    when another dtype), a torch tensor (duck-typed by ``.detach``) through ``.numpy()``,
    anything else a CipsError naming the backend (``label``) and the call (``what``)."""
    if not isinstance(result, np.ndarray) and not hasattr(result, "detach"):
        raise CipsError(f"{label} returned {type(result).__name__} from {what} instead of an array.")
    return host_float32(result)


def inference_mode() -> ContextManager[Any]:
    """``torch.inference_mode()`` when torch is already imported (a torch backend, legacy ones
    included, may then run under it without building autograd graphs), else nothing: the
    runtime never imports torch itself."""
    torch = sys.modules.get("torch")
    return torch.inference_mode() if torch is not None else contextlib.nullcontext()

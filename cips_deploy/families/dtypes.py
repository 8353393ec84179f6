"""What a user's strings mean to torch: the dtype of each precision name
(:data:`cips_deploy.contracts.precision.PRECISIONS`) and the device of a ``--device``.

One place for the torch backend, ``bench``, ``project`` and whatever else turns ``--precision``
or ``--device`` into torch objects.
"""

from __future__ import annotations

import torch

from cips_deploy.errors import CipsError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def torch_device(name: str, user: str = "The torch backend") -> torch.device:
    """``auto`` (CUDA where there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` as a
    device that exists on this machine, or one sentence saying what is available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise CipsError(f"Unknown device {name!r:.40}; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CipsError(f"Device {name!r} needs CUDA, which this machine does not have; use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CipsError(f"Device {name!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s).")
    elif device.type != "cpu":
        raise CipsError(f"{user} runs on cpu or cuda devices, not {name!r:.40}.")
    return device

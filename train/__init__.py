"""The training core: data, discriminator, losses, loop, checkpoints, DDP (the build extra).

``train(TrainOptions(data="images/", out="runs/x", preset="tiny", steps=1000))`` or
``cips-deploy train images/ --out runs/x``. The EMA generator is always also written as
``out/generator.safetensors``, loadable with :func:`cips_deploy.load`.

The names are loaded on first use, so that the ``train`` command's plugin module registers
in a torch-free install too (running it then says which extra it needs).
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {"Trainer": "cips_deploy.train.loop", "train": "cips_deploy.train.loop", "TrainOptions": "cips_deploy.train.options"}

__all__ = ["TrainOptions", "Trainer", "train"]


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'cips_deploy.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)

"""cips-deploy: deploy coordinate-based image generators (CIPS and its family).

The Python API in five calls::

    import cips_deploy
    generator = cips_deploy.load("churches_g_ema.pt")          # or create("tiny", seed=0)
    w = generator.map(cips_deploy.seed_latent(3, generator.config), truncation=0.7)
    rgb = generator.synthesize(cips_deploy.grid_coords(256, 256), w)    # [1, 65536, 3]
    image = cips_deploy.to_pil(rgb, 256, 256)[0]

Any topology, any size, chunk by chunk (uint8 [H, W, 3]), from a model or an engine::

    panorama = cips_deploy.render("model.onnx", "cylinder", height=256, width=1024, seed=3)

Importing the package imports no framework: each name is loaded on first use, so the
torch-free runtime (``pip install cips-deploy``) gets the renderer and the engines, and
``load``/``create``/``Generator`` need the ``build`` extra (torch).
"""

from __future__ import annotations

import importlib
from typing import Any

from cips_deploy import _compat
from cips_deploy._version import __version__
from cips_deploy.contracts.hookspecs import hookimpl, hookspec
from cips_deploy.errors import CipsError
from cips_deploy.runtime import plugin_manager as _plugin_manager  # noqa: F401  (families are found through it)

# Public name -> the module that defines it (imported on first use).
_LAZY = {
    "GeneratorConfig": "cips_deploy.contracts.config",
    "PRESETS": "cips_deploy.families.cips_spec",
    "preset_config": "cips_deploy.contracts.config",
    "grid_coords": "cips_deploy.runtime.coords",
    "seed_latent": "cips_deploy.runtime.seeds",
    "rgb_to_uint8": "cips_deploy.runtime.images",
    "to_pil": "cips_deploy.runtime.images",
    "render": "cips_deploy.runtime.render",
    "render_pil": "cips_deploy.runtime.render",
    "load": "cips_deploy.families.checkpoint",
    "create": "cips_deploy.families.create",
    "Generator": "cips_deploy.families.generator",
    "check_model_size": "cips_deploy.families.model_size",
}

__all__ = ["CipsError", "__version__", "hookimpl", "hookspec", *sorted(_LAZY)]

_compat.install()


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'cips_deploy' has no attribute {name!r}")
    module = _LAZY[name]
    if module.startswith("cips_deploy.families"):
        _compat.require_build_extra(name)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

"""Import paths of earlier versions, and the one sentence for a missing extra.

Until 0.1 the package was one flat folder; its modules now live in the layer they belong
to (docs/architecture.md). Plugins written against the old paths keep working: importing
``cips_deploy.topology`` gives the module ``cips_deploy.contracts.topology`` itself (same
classes, same ``isinstance``), through the finder below. ``cips_deploy.backend`` is the one
old path that is still a module of its own (``cips_deploy/backend.py``): its ``Backend`` is
the torch-tensor flavour of the contract, so old backends keep receiving torch tensors.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# old module path -> its home now
MOVED = {
    "cips_deploy.hookspecs": "cips_deploy.contracts.hookspecs",
    "cips_deploy.config": "cips_deploy.contracts.config",
    "cips_deploy.topology": "cips_deploy.contracts.topology",
    "cips_deploy.chunking": "cips_deploy.contracts.chunking",
    "cips_deploy.sinks": "cips_deploy.contracts.sinks",
    "cips_deploy.exporter": "cips_deploy.contracts.exporter",
    "cips_deploy.precision": "cips_deploy.contracts.precision",
    "cips_deploy.footprint": "cips_deploy.contracts.footprint",
    "cips_deploy.limits": "cips_deploy.contracts.limits",
    "cips_deploy.coords": "cips_deploy.runtime.coords",
    "cips_deploy.images": "cips_deploy.runtime.images",
    "cips_deploy.atomic": "cips_deploy.runtime.atomic",
    "cips_deploy.plugin_manager": "cips_deploy.runtime.plugin_manager",
    "cips_deploy.gigapixel": "cips_deploy.runtime.gigapixel",
    "cips_deploy.video": "cips_deploy.media.video",
    "cips_deploy.viewer": "cips_deploy.media.viewers",
    "cips_deploy.provenance": "cips_deploy.media.provenance",
    "cips_deploy.generator": "cips_deploy.families.generator",
    "cips_deploy.layers": "cips_deploy.families.layers",
    "cips_deploy.creps": "cips_deploy.families.creps",
    "cips_deploy.checkpoint": "cips_deploy.families.checkpoint",
    "cips_deploy.official": "cips_deploy.families.official",
    "cips_deploy.official_creps": "cips_deploy.families.official_creps",
    "cips_deploy.metrics": "cips_deploy.measure.metrics",
}

BUILD_EXTRA = 'pip install "cips-deploy[build]"'


def require_build_extra(what: str) -> None:
    """A CipsError naming the extra when torch is missing: ``what`` needs the build extra."""
    if importlib.util.find_spec("torch") is None:
        from cips_deploy.errors import CipsError

        raise CipsError(f"{what} needs PyTorch, which this install lacks; install the build extra: {BUILD_EXTRA}.")


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers an old path with the module at its new home (one module object, two names)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass  # already executed under its new name


def install() -> None:
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())

"""Install the example and the deliberately faulty plugin packages for real, with pip.

``pip install --no-deps --no-build-isolation --no-index --target DIR`` builds each project
with the setuptools already installed and writes genuine ``.dist-info`` metadata (entry
points included) into DIR; putting DIR on ``sys.path`` (or PYTHONPATH) is then all it takes
for ``importlib.metadata`` to discover the plugins, exactly as for a site-packages install.
The projects are copied first so that the build leaves nothing in the repository.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_PLUGIN = ROOT / "examples" / "cips-deploy-tiles"
ENGINE_BACKEND_COMMAND_PLUGIN = ROOT / "examples" / "cips-deploy-example"
FAULTY_PLUGIN = ROOT / "tests" / "plugin_packages" / "faulty"
PLUGIN_MODULES = ("cips_deploy_tiles", "cips_deploy_faulty", "cips_deploy_example")


def pip_install(target: Path, *projects: Path) -> Path:
    """Install ``projects`` into ``target`` (created), returning ``target``."""
    sources = target.parent / f"{target.name}-sources"
    copies = []
    for project in projects:
        copy = sources / project.name
        shutil.copytree(project, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        copies.append(str(copy))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*command, "--target", str(target), *copies], check=True, capture_output=True, text=True)
    return target


def forget_plugin_modules() -> None:
    """Drop the installed plugins' modules so that later tests cannot see them."""
    for name in list(sys.modules):
        if name.split(".")[0] in PLUGIN_MODULES:
            del sys.modules[name]

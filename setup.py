"""Which packages the wheel holds: every package under each folder, found, never listed.

pyproject.toml has the metadata; this file only maps the repository's top-level folders to
their installed names (docs/architecture.md: plugins/, exporters/ and train/ install under
cips_deploy.*) and finds every subpackage beneath them, so none can be left out of a wheel.
"""

from setuptools import find_packages, setup

FOLDERS = {
    "cips_deploy": "cips_deploy",
    "cips_deploy.plugins": "plugins",
    "cips_deploy.exporters": "exporters",
    "cips_deploy.train": "train",
}

packages, package_dir = [], {}
for name, folder in FOLDERS.items():
    package_dir[name] = folder
    packages.append(name)
    for sub in find_packages(folder):
        packages.append(f"{name}.{sub}")
        package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir)

"""Staged writes of sets of files: moved into :mod:`cips_deploy.atomic`, the one staging module.

Kept so that ``from cips_deploy.exporters.files import staged`` goes on working.
"""

from cips_deploy.atomic import StagedFolder, staged

__all__ = ["StagedFolder", "staged"]

"""A plugin whose import fails: it needs a package that is not installed."""

import cips_deploy_dependency_that_does_not_exist  # noqa: F401

"""Plugins that break in every way the renderer must survive (used by tests/plugins/test_plugins.py)."""

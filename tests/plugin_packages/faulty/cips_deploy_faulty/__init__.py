"""Plugins that break in every way the renderer must survive (used by tests/test_plugins.py)."""

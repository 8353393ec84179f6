"""Debian's chromium driven by Playwright, for the tests of pages (never `playwright install`).

.ci/run installs both; in CI (CI set) their absence fails a test, elsewhere it skips it, with
the reason.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CIPS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# No sandbox (CI runs as root), software WebGL, and none of the background traffic this closed
# network refuses.
FLAGS = ["--no-sandbox", "--enable-unsafe-swiftshader", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync"]


def missing(reason: str) -> None:
    """Fail in CI, skip elsewhere."""
    (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)


def playwright_api():
    """playwright.sync_api, once both it and Chromium are known to be there."""
    try:
        import playwright.sync_api as api
    except ImportError:
        missing("the playwright package is not installed (it is in the test extra)")
    if not Path(CHROMIUM).is_file():
        missing(f"no Chromium at {CHROMIUM} (Debian package chromium; .ci/run installs it)")
    return api

"""Calling plugin code so that its failures name the plugin.

A :class:`~cips_deploy.errors.CipsError` a plugin raises passes unchanged (it is the plugin's
own clear sentence); any other exception becomes a CipsError that names the plugin and what
it was doing (``Topology 'x' (plugin 'y') failed in layout (ValueError: ...).``), so a
plugin's bug reads as whose it is instead of a traceback from the renderer.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from cips_deploy.errors import CipsError, describe_error
from cips_deploy.runtime.plugin_manager import Registered


def call(entry: Registered, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)``, a plugin's failure named after ``entry``."""
    try:
        return function(*args, **kwargs)
    except CipsError:
        raise
    except (Exception, SystemExit) as error:  # a plugin's sys.exit() is its failure, not the user's exit
        raise CipsError(f"{entry.label} failed in {what} ({describe_error(error)}).") from error


def guarded_iter(items: Any, entry: Registered, what: str = "spans") -> Iterator[Any]:
    """Iterate a plugin's iterable (often a generator: its code runs here), naming it on failure."""
    iterator = call(entry, what, iter, items)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except CipsError:
            raise
        except Exception as error:
            raise CipsError(f"{entry.label} failed in {what} ({describe_error(error)}).") from error
        yield item

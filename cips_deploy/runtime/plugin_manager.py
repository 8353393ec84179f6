"""Find, load and isolate plugins; collect what they register into a :class:`Registry`.

The built-in plugins (``cips_deploy.plugins.*``) are registered exactly as third-party
ones: as modules with ``@hookimpl`` functions. Third-party plugins are modules named by
entry points of the group ``cips_deploy`` in any installed distribution's metadata.

A plugin that fails to import, whose hook raises, or that registers something malformed
is recorded as a problem (and reported through :class:`PluginWarning`) under its own name;
everything else it did not break keeps working. Each hook implementation is therefore
called on its own rather than through pluggy's all-or-nothing hook call.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import sys
import re
import signal
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import click
import pluggy

from cips_deploy.contracts import hookspecs
from cips_deploy._version import __version__
from cips_deploy.contracts.backend import Backend
from cips_deploy.contracts.chunking import Chunker
from cips_deploy.contracts import families
from cips_deploy.contracts.config import COORDINATE_SPACES
from cips_deploy.contracts.families import Family
from cips_deploy.errors import CipsError, describe_error
from cips_deploy.contracts.topology import Parameter, Topology

ENTRY_POINT_GROUP = "cips_deploy"
BUILTIN_PLUGINS = (
    "cips_deploy.families.cips_spec",
    "cips_deploy.families.creps_spec",
    "cips_deploy.plugins.flat",
    "cips_deploy.plugins.cylinder",
    "cips_deploy.plugins.foveated",
    "cips_deploy.plugins.rotated",
    "cips_deploy.plugins.chunkers",
    "cips_deploy.plugins.torch_backend",
    "cips_deploy.plugins.video",
    "cips_deploy.plugins.outputs",
    "cips_deploy.exporters.backends",
    "cips_deploy.exporters.engines",
    "cips_deploy.exporters.command",
    "cips_deploy.train.command",
    "cips_deploy.exporters.triton_plugin",
    "cips_deploy.exporters.web.plugin",
    "cips_deploy.plugins.openvino_backend",
)
# Each register_* hook and the kind of thing it registers.
REGISTER_HOOKS = {
    "register_families": "family",
    "register_topologies": "topology",
    "register_chunkers": "chunker",
    "register_backends": "backend",
    "register_exporters": "exporter",
    "register_outputs": "output",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PluginWarning(UserWarning):
    """A plugin could not be loaded or used; the message names it."""


@dataclass
class PluginInfo:
    """One plugin as ``cips-deploy plugins`` lists it."""

    name: str
    distribution: str | None
    version: str | None
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def broken(self) -> bool:
        return bool(self.problems)


@dataclass(frozen=True)
class Registered:
    """Something a plugin registered, with the plugin's name for error messages."""

    kind: str
    name: str
    item: Any
    plugin: str

    @property
    def label(self) -> str:
        """``Topology 'flat' (plugin 'cips_deploy.plugins.flat')``: how errors name it."""
        return f"{self.kind.capitalize()} {self.name!r} (plugin {self.plugin!r})"


class Registry:
    """Everything the loaded plugins registered, by kind and name, and what went wrong."""

    def __init__(self, plugin_manager: pluggy.PluginManager) -> None:
        self.plugin_manager = plugin_manager
        self.plugins: dict[str, PluginInfo] = {}
        self.items: dict[str, dict[str, Registered]] = {kind: {} for kind in REGISTER_HOOKS.values()}
        self.command_owners: dict[str, str] = {}  # command name -> who added it ("cips-deploy" or a plugin)

    @property
    def families(self) -> dict[str, Registered]:
        return self.items["family"]

    @property
    def topologies(self) -> dict[str, Registered]:
        return self.items["topology"]

    @property
    def chunkers(self) -> dict[str, Registered]:
        return self.items["chunker"]

    @property
    def backends(self) -> dict[str, Registered]:
        return self.items["backend"]

    @property
    def exporters(self) -> dict[str, Registered]:
        return self.items["exporter"]

    @property
    def outputs(self) -> dict[str, Registered]:
        return self.items["output"]

    @property
    def problems(self) -> list[str]:
        return [problem for info in self.plugins.values() for problem in info.problems]

    def get(self, kind: str, name: str) -> Registered:
        """The registered ``kind`` called ``name``, or a CipsError listing the choices."""
        found = self.items[kind].get(name)
        if found is not None:
            return found
        choices = ", ".join(sorted(self.items[kind])) or "none"
        broken = sorted(info.name for info in self.plugins.values() if info.broken)
        hint = f"; plugin(s) {', '.join(broken)} failed to load, see `cips-deploy plugins`" if broken else ""
        raise CipsError(f"Unknown {kind} {name!r}; available: {choices}{hint}.")

    def problem(self, plugin: str, message: str) -> None:
        """Record (and warn about) a problem with ``plugin``."""
        self.plugins[plugin].problems.append(message)
        warnings.warn(message, PluginWarning, stacklevel=3)


def load_registry(*, entry_points: bool = True, extra_plugins: Iterable[tuple[str, Any]] = ()) -> Registry:
    """A fresh registry: built-in plugins, then entry-point plugins, then ``extra_plugins``.

    ``extra_plugins`` are ``(name, module_or_object)`` pairs registered as if discovered
    (for embedding applications and tests).
    """
    manager = pluggy.PluginManager("cips_deploy")
    manager.add_hookspecs(hookspecs)
    registry = Registry(manager)
    for module_name in BUILTIN_PLUGINS:
        registry.plugins[module_name] = PluginInfo(module_name, "cips-deploy", __version__, builtin=True)
        _register(registry, module_name, lambda name=module_name: importlib.import_module(name))
    if entry_points:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            distribution = entry_point.dist
            registry.plugins.setdefault(
                entry_point.name,
                PluginInfo(
                    entry_point.name,
                    distribution.name if distribution else None,
                    distribution.version if distribution else None,
                    builtin=False,
                ),
            )
            _register(registry, entry_point.name, entry_point.load)
    for name, plugin in extra_plugins:
        registry.plugins.setdefault(name, PluginInfo(name, None, None, builtin=False))
        _register(registry, name, lambda plugin=plugin: plugin)
    for hook_name in REGISTER_HOOKS:
        _collect(registry, hook_name)
    families.install(_families_by_arch(registry))
    return registry


_default_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _default_registry
    if _default_registry is None:
        _default_registry = load_registry()
    return _default_registry


# A family lookup before any registry was loaded (cips_deploy.load of a checkpoint) loads it.
families.loader = get_registry


def register_commands(cli: click.Group, registry: Registry | None = None) -> None:
    """Let every plugin add commands to ``cli``; a plugin that raises is recorded, not fatal.

    A plugin may add commands but never replace or remove one that is already there (the
    built-ins come first): whatever it did to existing names is undone and reported.
    """
    registry = registry or get_registry()
    owners = registry.command_owners
    for name in cli.commands:
        owners.setdefault(name, "cips-deploy")
    for implementation in _implementations(registry, "register_commands"):
        plugin = implementation.plugin_name
        before = dict(cli.commands)
        try:
            with _plugin_code():
                implementation.function(cli=cli)
        except BaseException as error:  # a plugin's bug (or its sys.exit) must not take the command line down
            _reraise_user_interrupt(error)
            registry.problem(plugin, _failure(plugin, "register_commands", error))
        for name, command in before.items():
            if cli.commands.get(name) is not command:
                cli.commands[name] = command
                registry.problem(
                    plugin,
                    f"Plugin {plugin!r} tried to replace or remove the command {name!r}, which {owners[name]} "
                    "provides; the original is kept.",
                )
        for name in cli.commands:
            owners.setdefault(name, plugin)


# --------------------------------------------------------------------------- internals


def _register(registry: Registry, name: str, load: Callable[[], Any]) -> None:
    """Import (``load``) and register one plugin, recording why not if that fails."""
    try:
        with _plugin_code():
            plugin = load()
    except BaseException as error:  # SystemExit and KeyboardInterrupt at import too: it is the plugin's, not the user's
        _reraise_user_interrupt(error)
        registry.problem(name, f"Plugin {name!r} failed to import ({describe_error(error)}); it was skipped.")
        return
    try:
        registry.plugin_manager.register(plugin, name=name)
    except Exception as error:  # pluggy's validation: unknown hook names, wrong arguments
        registry.problem(name, f"Plugin {name!r} could not be registered ({describe_error(error)}); it was skipped.")
        return
    registry.plugins[name].hooks = sorted(caller.name for caller in registry.plugin_manager.get_hookcallers(plugin) or ())


def _implementations(registry: Registry, hook_name: str) -> list[pluggy.HookImpl]:
    """The hook's implementations in registration order (built-ins first, so they win clashes).

    pluggy keeps them in that order (and calls them in reverse); we call them one by one.
    """
    return list(getattr(registry.plugin_manager.hook, hook_name).get_hookimpls())


def _collect(registry: Registry, hook_name: str) -> None:
    """Call each plugin's ``hook_name`` alone; keep what it registered only if it succeeded."""
    kind = REGISTER_HOOKS[hook_name]
    for implementation in _implementations(registry, hook_name):
        plugin = implementation.plugin_name
        received: list[Any] = []
        try:
            with _plugin_code():
                implementation.function(register=received.append)
        except BaseException as error:
            _reraise_user_interrupt(error)
            registry.problem(plugin, _failure(plugin, hook_name, error))
            continue
        for item in received:
            try:
                item = _CHECKS[kind](item)
            except (TypeError, ValueError) as error:
                registry.problem(plugin, f"Plugin {plugin!r} registered an invalid {kind} ({error}); it was skipped.")
                continue
            existing = registry.items[kind].get(item.name)
            if existing is not None:
                registry.problem(
                    plugin,
                    f"Plugin {plugin!r} registered {kind} {item.name!r}, which plugin {existing.plugin!r} "
                    "already provides; the first one is kept.",
                )
                continue
            registry.items[kind][item.name] = Registered(kind, item.name, item, plugin)


@contextlib.contextmanager
def _plugin_code():
    """Run plugin code with its prints sent to stderr: stdout carries results (``--json``).

    A plugin's own ``raise KeyboardInterrupt`` is its failure and is contained; the user's
    Ctrl-C meanwhile arrives as :class:`UserInterrupt`, which is never contained.
    """
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous = signal.signal(signal.SIGINT, _user_interrupt)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


class UserInterrupt(KeyboardInterrupt):
    """Ctrl-C while plugin code ran."""


def _user_interrupt(signum: int, frame: Any) -> None:
    raise UserInterrupt()


def _reraise_user_interrupt(error: BaseException) -> None:
    if isinstance(error, UserInterrupt):
        raise error


def owner_of(registry: Registry, kind: str, item: Any) -> Registered | None:
    """The registration of ``item`` (or of its class, for a constructed backend), if any."""
    for entry in registry.items[kind].values():
        if entry.item is item or (isinstance(entry.item, type) and type(item) is entry.item):
            return entry
    return None


def _check_name(item: Any) -> None:
    name = getattr(item, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"its name {name!r} is not a word such as 'my-topology'")


def _families_by_arch(registry: Registry) -> dict[str, Family]:
    """Each architecture name -> the family that builds it; the first registration of a name wins."""
    by_arch: dict[str, Family] = {}
    for entry in registry.families.values():
        for arch in entry.item.archs:
            if arch in by_arch:
                registry.problem(
                    entry.plugin,
                    f"Plugin {entry.plugin!r} registered architecture {arch!r}, which family {by_arch[arch].name!r} "
                    "already builds; the first one is kept.",
                )
                continue
            by_arch[arch] = entry.item
    return by_arch


def _check_family(item: Any) -> Family:
    if isinstance(item, type):
        item = item()
    if not isinstance(item, Family):
        raise TypeError("families are cips_deploy.contracts.families.Family instances")
    _check_name(item)
    archs = getattr(item, "archs", None)
    if not isinstance(archs, dict) or not archs or not all(isinstance(a, str) and _NAME.match(a) for a in archs):
        raise ValueError(f"{item.name!r} declares architectures {archs!r}, not a dict of names to display names")
    return item


def _check_topology(item: Any) -> Topology:
    if isinstance(item, type):
        item = item()
    _check_name(item)
    if not isinstance(getattr(item, "description", None), str):
        raise ValueError(f"{item.name!r} has no description string")
    if not callable(getattr(item, "layout", None)):
        raise ValueError(f"{item.name!r} has no layout(request) method")
    parameters = tuple(getattr(item, "parameters", ()))
    if not all(isinstance(parameter, Parameter) for parameter in parameters):
        raise ValueError(f"{item.name!r} declares parameters that are not cips_deploy.contracts.topology.Parameter")
    spaces = tuple(getattr(item, "coordinate_spaces", ()))
    if not spaces or not set(spaces) <= set(COORDINATE_SPACES):
        raise ValueError(f"{item.name!r} declares coordinate spaces {spaces}, not a selection of {COORDINATE_SPACES}")
    return item


def _check_chunker(item: Any) -> Chunker:
    if isinstance(item, type):
        item = item()
    _check_name(item)
    if not callable(getattr(item, "spans", None)):
        raise ValueError(f"{item.name!r} has no spans(request) method")
    return item


def _check_backend(item: Any) -> type[Backend]:
    if not isinstance(item, type):
        raise TypeError(f"backends are registered as classes, not {type(item).__name__} instances")
    _check_name(item)
    for method in ("map", "run"):
        if not callable(getattr(item, method, None)):
            raise ValueError(f"{item.name!r} has no {method}() method")
    return item


def _check_exporter(item: Any) -> Any:
    if isinstance(item, type):
        item = item()
    _check_name(item)
    if not isinstance(getattr(item, "description", None), str):
        raise ValueError(f"{item.name!r} has no description string")
    if not callable(getattr(item, "export", None)):
        raise ValueError(f"{item.name!r} has no export(source, *, output, overwrite, precision, **options) method")
    for declared in ("families", "precisions"):
        values = getattr(item, declared, None)
        if not isinstance(values, (tuple, list)) or not all(isinstance(value, str) for value in values):
            raise ValueError(f"{item.name!r} declares {declared} {values!r}, not a tuple of names")
    if not item.precisions:
        raise ValueError(f"{item.name!r} declares no precision (('fp32',) at least)")
    return item


def _check_output(item: Any) -> Any:
    if isinstance(item, type):
        item = item()
    _check_name(item)
    extensions = tuple(getattr(item, "extensions", ()))
    if not extensions or not all(isinstance(e, str) and e.startswith(".") and e == e.lower() for e in extensions):
        raise ValueError(f"{item.name!r} declares extensions {extensions!r}, not lower-case suffixes such as '.tif'")
    if getattr(item, "streaming", True) and not all(callable(getattr(item, m, None)) for m in ("create", "reopen")):
        raise ValueError(f"{item.name!r} streams but has no create() and reopen() methods")
    if not getattr(item, "streaming", True) and not callable(getattr(item, "save", None)):
        raise ValueError(f"{item.name!r} does not stream but has no save(image, path) method")
    return item


_CHECKS = {
    "family": _check_family,
    "topology": _check_topology,
    "chunker": _check_chunker,
    "backend": _check_backend,
    "exporter": _check_exporter,
    "output": _check_output,
}


def _failure(plugin: str, hook_name: str, error: BaseException) -> str:
    return f"Plugin {plugin!r} raised in {hook_name} ({describe_error(error)}); what it registers there is unavailable."

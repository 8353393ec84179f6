"""Find, load and isolate plugins; collect what they register into a :class:`Registry`.

The built-in plugins (``cips_deploy.plugins.*``) are registered exactly as third-party
ones: as modules with ``@hookimpl`` functions. Third-party plugins are modules named by
entry points of the group ``cips_deploy`` in any installed distribution's metadata.

A plugin that fails to import, whose hook raises, or that registers something malformed
is recorded as a problem (and reported through :class:`PluginWarning`) under its own name;
everything else it did not break keeps working. Each hook implementation is therefore
called on its own rather than through pluggy's all-or-nothing hook call, and every piece of
plugin code (its import, each hook, the checks that read what it registered) runs inside
:func:`~cips_deploy.runtime.plugin_calls.plugin_code`: whatever it raises, however its
exception prints, and whatever it writes to stdout, it is the plugin's, by name.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import re
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
from cips_deploy.errors import CipsError, did_you_mean
from cips_deploy.contracts.topology import Parameter, Topology
from cips_deploy.runtime.plugin_calls import UserInterrupt, call, error_text, plugin_code, reraise_user_interrupt, shown  # noqa: F401  (UserInterrupt: its old home)

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
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # fullmatch only: `$` would also accept "flat\n"
_FAILED = object()  # what _guarded returns when the plugin code failed


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

    def attribute(self, name: str, default: Any = None, convert: Callable[[Any], Any] | None = None) -> Any:
        """The item's attribute ``name`` (``default`` if it has none), passed through ``convert``:
        reading a plugin's attribute runs its code (a property), so a failure, whatever its
        ``str()`` does, is reported by the name the item was registered under (:func:`~cips_deploy.runtime.plugin_calls.call`)."""
        def read() -> Any:
            value = getattr(self.item, name, default)
            return convert(value) if convert is not None else value

        return call(self, f"reading {name}", read)


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
        raise CipsError(f"Unknown {kind} {shown(name)}{did_you_mean(name, self.items[kind])}; available: {choices}{hint}.")

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
        for entry_point in _entry_points():
            distribution = entry_point.dist
            registry.plugins.setdefault(
                entry_point.name,
                PluginInfo(
                    entry_point.name,
                    _metadata_text(lambda: distribution.name) if distribution else None,
                    _metadata_text(lambda: distribution.version) if distribution else None,
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
    families.importer = lambda family, load: _import_family(registry, family, load)
    return registry


def _import_family(registry: Registry, family: Family, load: Callable[[], Any]) -> Any:
    """``load()``, the first import of a registered family's module: a third-party plugin's code,
    so its stdout is kept off ours (``--json``) and any failure, ``SystemExit`` included, is one
    sentence naming the family and its plugin. The built-in families' imports pass as they are
    (a missing build extra is named by the command line, with the pip command)."""
    entry = next((each for each in registry.families.values() if each.item is family), None)
    if entry is None or (entry.plugin in registry.plugins and registry.plugins[entry.plugin].builtin):
        return load()
    try:
        with plugin_code(entry.plugin, f"while importing family {entry.name!r}'s generator"):
            return call(entry, "importing its generator", load)
    except KeyboardInterrupt as error:  # the plugin's own; the user's Ctrl-C (UserInterrupt) passes
        reraise_user_interrupt(error)
        raise CipsError(f"{entry.label} failed in importing its generator ({error_text(error)}).") from None


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
        _guarded(registry, plugin, "in register_commands", lambda: implementation.function(cli=cli),
                 lambda text: _failure(plugin, "register_commands", text))
        for name, command in before.items():
            if cli.commands.get(name) is not command:
                cli.commands[name] = command
                registry.problem(
                    plugin,
                    f"Plugin {plugin!r} tried to replace or remove the command {name!r}, which {owners[name]} "
                    "provides; the original is kept.",
                )
        for name in list(cli.commands):
            if not isinstance(name, str) or not isinstance(cli.commands[name], click.Command):
                del cli.commands[name]  # not a command click could run or list: --help would die on it
                registry.problem(plugin, f"Plugin {plugin!r} added something other than a click command as {shown(name)}; it was removed.")
                continue
            owners.setdefault(name, plugin)


# --------------------------------------------------------------------------- internals


def _guarded(registry: Registry, plugin: str, what: str | None, function: Callable[[], Any], failure: Callable[[str], str]) -> Any:
    """``function()`` run as ``plugin``'s code; if it fails in any way, record ``failure(description)``
    as the plugin's problem and return ``_FAILED``.

    Everything is contained, ``SystemExit`` and the plugin's own ``KeyboardInterrupt``
    included: it is the plugin's, not the user's. Only the user's Ctrl-C (UserInterrupt) passes.
    ``what`` names the moment in "Plugin 'x' printed ..."; None: the caller is already inside
    :func:`plugin_code`.
    """
    try:
        with plugin_code(plugin, what) if what is not None else contextlib.nullcontext():
            return function()
    except BaseException as error:
        reraise_user_interrupt(error)
        registry.problem(plugin, failure(error_text(error)))
        return _FAILED


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """The installed entry points of the group; a damaged distribution's metadata is warned about, not fatal."""
    try:
        return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as error:  # a malformed entry_points.txt or METADATA of any installed distribution
        warnings.warn(f"The installed plugins could not be listed ({error_text(error)}); only the built-in ones are loaded.",
                      PluginWarning, stacklevel=3)
        return []


def _metadata_text(read: Callable[[], Any]) -> str | None:
    """A distribution's name or version as text, or None when its metadata lacks or garbles it."""
    try:
        value = read()
    except Exception:
        return None
    return value if isinstance(value, str) else None


def _register(registry: Registry, name: str, load: Callable[[], Any]) -> None:
    """Import (``load``) and register one plugin, recording why not if that fails."""
    plugin = _guarded(registry, name, "at import", load,
                      lambda text: f"Plugin {name!r} failed to import ({text}); it was skipped.")
    if plugin is _FAILED:
        return
    # pluggy's validation (unknown hook names, wrong arguments) reads the plugin's attributes: its code runs too
    hooks = _guarded(registry, name, "while being registered", lambda: _hooks_of(registry, plugin, name),
                     lambda text: f"Plugin {name!r} could not be registered ({text}); it was skipped.")
    if hooks is not _FAILED:
        registry.plugins[name].hooks = hooks


def _hooks_of(registry: Registry, plugin: Any, name: str) -> list[str]:
    """Register ``plugin`` with pluggy; the names of the hooks it implements."""
    registry.plugin_manager.register(plugin, name=name)
    return sorted(caller.name for caller in registry.plugin_manager.get_hookcallers(plugin) or ())


def _implementations(registry: Registry, hook_name: str) -> list[pluggy.HookImpl]:
    """The hook's implementations in registration order (built-ins first, so they win clashes).

    pluggy keeps them in that order (and calls them in reverse); we call them one by one.
    """
    return list(getattr(registry.plugin_manager.hook, hook_name).get_hookimpls())


def _collect(registry: Registry, hook_name: str) -> None:
    """Call each plugin's ``hook_name`` alone; keep what it registered only if it succeeded."""
    for implementation in _implementations(registry, hook_name):
        # the checks read what it registered (properties, a registered class's constructor): its code too
        with plugin_code(implementation.plugin_name, f"in {hook_name}"):
            _collect_one(registry, hook_name, implementation)


def _collect_one(registry: Registry, hook_name: str, implementation: pluggy.HookImpl) -> None:
    """One plugin's ``hook_name``: call it, check each item it registered, keep the valid ones."""
    kind = REGISTER_HOOKS[hook_name]
    plugin = implementation.plugin_name
    received: list[Any] = []
    called = _guarded(registry, plugin, None, lambda: implementation.function(register=received.append),
                      lambda text: _failure(plugin, hook_name, text))
    if called is _FAILED:
        return
    for item in received:
        checked = _guarded(registry, plugin, None, lambda item=item: _checked(kind, item),
                           lambda text: f"Plugin {plugin!r} registered a {kind} that could not be checked ({text}); it was skipped.")
        if checked is _FAILED:
            continue
        if isinstance(checked, _Invalid):
            registry.problem(plugin, f"Plugin {plugin!r} registered an invalid {kind} ({checked}); it was skipped.")
            continue
        item, name = checked
        existing = registry.items[kind].get(name)
        if existing is not None:
            registry.problem(
                plugin,
                f"Plugin {plugin!r} registered {kind} {name!r}, which plugin {existing.plugin!r} "
                "already provides; the first one is kept.",
            )
            continue
        registry.items[kind][name] = Registered(kind, name, item, plugin)


class _Invalid(Exception):
    """What a check found wrong with a registered item (as opposed to what its code raised)."""


def _checked(kind: str, item: Any) -> tuple[Any, str] | _Invalid:
    """``(item, its name)`` if ``item`` is a valid ``kind``, else the :class:`_Invalid` saying why.

    The name is read once, here, and copied as a plain ``str``: the registry and every message
    use that copy, so a ``name`` property cannot fail (or change) later.
    """
    try:
        return _CHECKS[kind](item)
    except _Invalid as invalid:
        return invalid


def owner_of(registry: Registry, kind: str, item: Any) -> Registered | None:
    """The registration of ``item`` (or of its class, for a constructed backend), if any."""
    for entry in registry.items[kind].values():
        if entry.item is item or (isinstance(entry.item, type) and type(item) is entry.item):
            return entry
    return None


def _name_of(item: Any) -> str:
    """The item's ``name`` as a plain str, if it is a word such as 'my-topology'."""
    name = getattr(item, "name", None)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _Invalid(f"its name {shown(name)} is not a word such as 'my-topology'")
    return str.__str__(name)  # an exact str: a str subclass could override __eq__ or __hash__


def _families_by_arch(registry: Registry) -> dict[str, Family]:
    """Each architecture name -> the family that builds it; the first registration of a name wins."""
    by_arch: dict[str, Family] = {}
    for entry in list(registry.families.values()):
        archs = _guarded(registry, entry.plugin, "in register_families", lambda entry=entry: _arch_names(entry.item),
                         lambda text: f"Plugin {entry.plugin!r} registered family {entry.name!r}, whose architectures "
                                      f"could not be read ({text}); it was skipped.")
        if archs is _FAILED:
            del registry.families[entry.name]
            continue
        for arch in archs:
            if arch in by_arch:
                registry.problem(
                    entry.plugin,
                    f"Plugin {entry.plugin!r} registered architecture {arch!r}, which family {by_arch[arch].name!r} "
                    "already builds; the first one is kept.",
                )
                continue
            by_arch[arch] = entry.item
    return by_arch


def _arch_names(family: Any) -> list[str]:
    """A family's architecture names, checked again: reading ``archs`` runs the plugin's code."""
    archs = getattr(family, "archs", None)
    if not isinstance(archs, dict) or not archs or not all(isinstance(a, str) and _NAME.fullmatch(a) for a in archs):
        raise _Invalid(f"it declares architectures {shown(archs)}, not a dict of names to display names")
    return [str.__str__(arch) for arch in archs]


def _check_family(item: Any) -> tuple[Family, str]:
    if isinstance(item, type):
        item = item()
    if not isinstance(item, Family):
        raise _Invalid("families are cips_deploy.contracts.families.Family instances")
    name = _name_of(item)
    try:
        _arch_names(item)
    except _Invalid as invalid:
        raise _Invalid(f"{name!r}: {invalid}") from None
    return item, name


def _check_topology(item: Any) -> tuple[Topology, str]:
    if isinstance(item, type):
        item = item()
    name = _name_of(item)
    if not isinstance(getattr(item, "description", None), str):
        raise _Invalid(f"{name!r} has no description string")
    if not callable(getattr(item, "layout", None)):
        raise _Invalid(f"{name!r} has no layout(request) method")
    parameters = tuple(getattr(item, "parameters", ()))
    if not all(isinstance(parameter, Parameter) for parameter in parameters):
        raise _Invalid(f"{name!r} declares parameters that are not cips_deploy.contracts.topology.Parameter")
    spaces = tuple(getattr(item, "coordinate_spaces", ()))
    if not spaces or not all(isinstance(space, str) for space in spaces) or not set(spaces) <= set(COORDINATE_SPACES):
        raise _Invalid(f"{name!r} declares coordinate spaces {shown(spaces)}, not a selection of {COORDINATE_SPACES}")
    return item, name


def _check_chunker(item: Any) -> tuple[Chunker, str]:
    if isinstance(item, type):
        item = item()
    name = _name_of(item)
    if not callable(getattr(item, "spans", None)):
        raise _Invalid(f"{name!r} has no spans(request) method")
    return item, name


def _check_backend(item: Any) -> tuple[type[Backend], str]:
    if not isinstance(item, type):
        raise _Invalid(f"backends are registered as classes, not {type(item).__name__} instances")
    name = _name_of(item)
    for method in ("map", "run"):
        if not callable(getattr(item, method, None)):
            raise _Invalid(f"{name!r} has no {method}() method")
    options = getattr(item, "options", ())
    if not isinstance(options, (tuple, list)) or not all(isinstance(option, Parameter) for option in options):
        # the command line turns each option into a flag while it starts: anything else would stop it
        raise _Invalid(f"{name!r} declares options {shown(options)}, not a tuple of cips_deploy.contracts.topology.Parameter")
    return item, name


def _check_exporter(item: Any) -> tuple[Any, str]:
    if isinstance(item, type):
        item = item()
    name = _name_of(item)
    if not isinstance(getattr(item, "description", None), str):
        raise _Invalid(f"{name!r} has no description string")
    if not callable(getattr(item, "export", None)):
        raise _Invalid(f"{name!r} has no export(source, *, output, overwrite, precision, **options) method")
    for declared in ("families", "precisions"):
        values = getattr(item, declared, None)
        if not isinstance(values, (tuple, list)) or not all(isinstance(value, str) for value in values):
            raise _Invalid(f"{name!r} declares {declared} {shown(values)}, not a tuple of names")
    if not item.precisions:
        raise _Invalid(f"{name!r} declares no precision (('fp32',) at least)")
    return item, name


def _check_output(item: Any) -> tuple[Any, str]:
    if isinstance(item, type):
        item = item()
    name = _name_of(item)
    extensions = tuple(getattr(item, "extensions", ()))
    if not extensions or not all(isinstance(e, str) and e.startswith(".") and e == e.lower() for e in extensions):
        raise _Invalid(f"{name!r} declares extensions {shown(extensions)}, not lower-case suffixes such as '.tif'")
    if getattr(item, "streaming", True) and not all(callable(getattr(item, m, None)) for m in ("create", "reopen")):
        raise _Invalid(f"{name!r} streams but has no create() and reopen() methods")
    if not getattr(item, "streaming", True) and not callable(getattr(item, "save", None)):
        raise _Invalid(f"{name!r} does not stream but has no save(image, path) method")
    return item, name


_CHECKS = {
    "family": _check_family,
    "topology": _check_topology,
    "chunker": _check_chunker,
    "backend": _check_backend,
    "exporter": _check_exporter,
    "output": _check_output,
}


def _failure(plugin: str, hook_name: str, text: str) -> str:
    return f"Plugin {plugin!r} raised in {hook_name} ({text}); what it registers there is unavailable."

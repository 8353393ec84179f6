"""``cips-deploy plugins`` and ``cips-deploy topologies``; plugin commands are added here too."""

from __future__ import annotations

import json
import warnings
from typing import Any, Callable

import click

from cips_deploy.contracts.limits import strict_json
from cips_deploy._version import __version__
from cips_deploy.runtime.plugin_calls import error_text, plugin_code, reraise_user_interrupt
from cips_deploy.runtime.plugin_manager import PluginWarning, Registered, Registry, get_registry, register_commands
from cips_deploy.contracts.topology import describe_parameter, parameters_as_dicts
from cips_deploy.cli.group import cli


def load_plugins_for_cli(group: click.Group) -> Registry:
    """Load the plugins, let them add commands to ``group``, print their problems as warnings.

    Problems are printed as ``Warning: ...`` lines on stderr (not Python's warning format):
    a broken third-party plugin is the user's environment, not a bug in their command.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginWarning)
        registry = get_registry()
        register_commands(group, registry)
    for warning in caught:
        if issubclass(warning.category, PluginWarning):
            click.echo(f"Warning: {warning.message}", err=True)
            continue
        try:  # a plugin's own warning, shown as Python shows it; its text is the plugin's code too
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        except Exception as error:
            click.echo(f"Warning: a plugin issued a warning that cannot be shown ({error_text(error)}).", err=True)
    return registry


def listed(entry: Registered, read: Callable[[], Any]) -> Any:
    """``read()``, which reads what ``entry`` declares (its properties are the plugin's code), or
    None after a one-line warning that names the plugin: one broken entry does not take the
    listing down, and what the plugin prints never reaches stdout (``--json``)."""
    try:
        with plugin_code(entry.plugin, f"while {entry.kind} {entry.name!r} was listed"):
            return read()
    except BaseException as error:  # SystemExit too; the user's Ctrl-C passes
        reraise_user_interrupt(error)
        click.echo(f"Warning: {entry.label} could not be listed ({error_text(error)}); it was left out.", err=True)
        return None


# What a plugin can provide, in the order the listing shows it (registry kind -> label).
PROVIDED_KINDS = {"command": "command", "exporter": "engine", "topology": "topology", "chunker": "chunker",
                  "backend": "backend", "output": "output format"}
CORE = "cips_deploy.cli"  # the commands the core defines itself, listed as their own provider


def provided_by(registry: Registry) -> dict[str, dict[str, list[str]]]:
    """Plugin name -> label (``command``, ``engine``, ...) -> the names it provides, sorted."""
    provided: dict[str, dict[str, list[str]]] = {}
    owners = [("command", name, owner) for name, owner in registry.command_owners.items()]
    owners += [(kind, entry.name, entry.plugin) for kind in PROVIDED_KINDS if kind != "command"
               for entry in registry.items[kind].values()]
    for kind, name, plugin in owners:
        plugin = CORE if plugin == "cips-deploy" else plugin
        provided.setdefault(plugin, {}).setdefault(PROVIDED_KINDS[kind], []).append(name)
    return {plugin: {label: sorted(names) for label, names in kinds.items()} for plugin, kinds in provided.items()}


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def plugins_command(as_json: bool) -> None:
    """List plugins: name, distribution, version, hooks, what each provides; broken ones are flagged.

    The first entry, cips_deploy.cli, is the core's own commands.
    """
    registry = get_registry()
    provided = provided_by(registry)
    core = {"name": CORE, "distribution": "cips-deploy", "version": __version__, "builtin": True, "hooks": [],
            "problems": []}
    rows = [
        {
            "name": info.name,
            "distribution": info.distribution,
            "version": info.version,
            "builtin": info.builtin,
            "hooks": info.hooks,
            "problems": info.problems,
        }
        for info in registry.plugins.values()
    ]
    rows = [core, *rows] if CORE in provided else rows
    for row in rows:  # JSON keys: command, engine, topology, chunker, backend, output_format
        row["provides"] = {label.replace(" ", "_"): provided.get(row["name"], {}).get(label, [])
                           for label in PROVIDED_KINDS.values()}
    if as_json:
        click.echo(strict_json(rows))
        return
    for row in rows:
        origin = f"{row['distribution'] or 'unknown distribution'} {row['version'] or ''}".strip()
        status = "BROKEN" if row["problems"] else ("built-in" if row["builtin"] else "ok")
        click.echo(f"{row['name']}  [{status}]  {origin}")
        if row["hooks"]:
            click.echo(f"    hooks: {', '.join(row['hooks'])}")
        elif row["name"] != CORE:
            click.echo("    hooks: none")
        for key, names in row["provides"].items():
            if names:
                click.echo(f"    {key.replace('_', ' ')}{'s' if len(names) > 1 else ''}: {', '.join(names)}")
        for problem in row["problems"]:
            click.echo(f"    problem: {problem}")


@cli.command("topologies")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def topologies_command(as_json: bool) -> None:
    """List topologies: description, parameters and the coordinate spaces they support."""
    registry = get_registry()
    entries = sorted(registry.topologies.values(), key=lambda entry: entry.name)
    listings = [listing for entry in entries if (listing := listed(entry, lambda entry=entry: topology_listing(entry)))]
    if as_json:
        click.echo(strict_json([row for row, _ in listings]))
        return
    if listings:
        click.echo("\n\n".join("\n".join(lines) for _, lines in listings))


def topology_listing(entry: Registered) -> tuple[dict[str, Any], list[str]]:
    """One topology's JSON row and its lines of text, both read in one go (plugin code runs here)."""
    topology = entry.item
    row = {
        "name": entry.name,
        "plugin": entry.plugin,
        "description": topology.description,
        "coordinate_spaces": list(topology.coordinate_spaces),
        "parameters": parameters_as_dicts(topology),
    }
    row = json.loads(json.dumps(row, default=str))  # plain data now: a value that cannot be written fails here
    lines = [
        f"{entry.name}: {topology.description}",
        f"    coordinate spaces: {', '.join(topology.coordinate_spaces)}    plugin: {entry.plugin}",
        *(f"    -p {describe_parameter(parameter)}" for parameter in topology.parameters),
    ]
    return row, lines

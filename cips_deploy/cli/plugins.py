"""``cips-deploy plugins`` and ``cips-deploy topologies``; plugin commands are added here too."""

from __future__ import annotations

import json
import warnings

import click

from cips_deploy._version import __version__
from cips_deploy.runtime.plugin_manager import PluginWarning, Registry, get_registry, register_commands
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
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return registry


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
        click.echo(json.dumps(rows, indent=2))
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
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": entry.name,
                        "plugin": entry.plugin,
                        "description": entry.item.description,
                        "coordinate_spaces": list(entry.item.coordinate_spaces),
                        "parameters": parameters_as_dicts(entry.item),
                    }
                    for entry in entries
                ],
                indent=2,
                default=str,
            )
        )
        return
    for number, entry in enumerate(entries):
        if number:
            click.echo()
        topology = entry.item
        click.echo(f"{entry.name}: {topology.description}")
        click.echo(f"    coordinate spaces: {', '.join(topology.coordinate_spaces)}    plugin: {entry.plugin}")
        for parameter in topology.parameters:
            click.echo(f"    -p {describe_parameter(parameter)}")

"""``cips-deploy plugins`` and ``cips-deploy topologies``; plugin commands are added here too."""

from __future__ import annotations

import json
import warnings

import click

from ..plugin_manager import PluginWarning, Registry, get_registry, register_commands
from ..topology import describe_parameter, parameters_as_dicts
from . import cli


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


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def plugins_command(as_json: bool) -> None:
    """List plugins: name, distribution, version, hooks; broken ones are flagged."""
    registry = get_registry()
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
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        origin = f"{row['distribution'] or 'unknown distribution'} {row['version'] or ''}".strip()
        status = "BROKEN" if row["problems"] else ("built-in" if row["builtin"] else "ok")
        click.echo(f"{row['name']}  [{status}]  {origin}")
        click.echo(f"    hooks: {', '.join(row['hooks']) or 'none'}")
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

"""Command-line flags built from the options that backends declare.

Every option a registered backend declares (``Backend.options``) becomes a flag of the
commands that construct backends (``render``, ``video``: marked by :func:`with_backend_flags`): ``--precision`` is the torch backend's
``precision`` option, and a plugin's backend gets flags the same way. Backends that declare
an option of the same name share its flag; the chosen backend checks the value
(:func:`cips_deploy.contracts.backend.resolve_options`), and a flag the chosen backend does not
declare is refused in one sentence. ``--backend-option NAME=VALUE`` reaches every option too.
"""

from __future__ import annotations

from typing import Any

import click

from cips_deploy.errors import CipsError
from cips_deploy.runtime.plugin_manager import Registry


_METAVARS = {str: "TEXT", int: "INTEGER", float: "FLOAT", bool: "BOOLEAN"}


def with_backend_flags(command: click.Command) -> click.Command:
    """Mark a command that constructs a backend: it receives every backend option's flag in
    ``**backend_flags`` (added once the plugins are loaded) and passes them through
    :func:`merge_backend_flags`. Plugin commands use it the same way."""
    command.takes_backend_flags = True  # type: ignore[attr-defined]
    return command


def add_flags_to_marked_commands(group: click.Group, registry: Registry) -> None:
    """:func:`add_backend_flags` for every command of ``group`` marked by :func:`with_backend_flags`."""
    for command in group.commands.values():
        if getattr(command, "takes_backend_flags", False):
            add_backend_flags(command, registry)


def add_backend_flags(command: click.Command, registry: Registry) -> None:
    """Append a ``--name`` flag to ``command`` for each option name the backends declare.

    A name that the command already uses for something else keeps its meaning; that
    option is then reached through ``--backend-option`` only.
    """
    taken = {param.name for param in command.params}
    declared: dict[str, list[tuple[str, Any]]] = {}
    for entry in registry.backends.values():
        for option in getattr(entry.item, "options", ()):
            declared.setdefault(option.name, []).append((entry.name, option))
    for name, providers in sorted(declared.items()):
        if name in taken or not name.isidentifier():
            continue
        helps = "; ".join(f"{backend}: {option.help}" for backend, option in providers)
        choices = sorted({choice for _, option in providers for choice in (option.choices or ())})
        metavar = "|".join(choices) if choices else _METAVARS.get(providers[0][1].type, "VALUE")
        flag = "--" + name.replace("_", "-")
        command.params.append(click.Option([flag, name], default=None, metavar=metavar, help=f"Backend option. {helps}"))


def merge_backend_flags(options: dict[str, str], flags: dict[str, Any]) -> dict[str, str]:
    """The ``--backend-option`` assignments with the backend flags that were given added."""
    merged = dict(options)
    for name, value in flags.items():
        if value is None:
            continue
        if name in merged and merged[name] != value:
            raise CipsError(f"--{name.replace('_', '-')} {value} contradicts --backend-option {name}={merged[name]}.")
        merged[name] = value
    return merged

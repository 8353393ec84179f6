"""The ``cips-deploy`` command line.

Each command lives in its own module of this package and fits on a screen; it adds itself
to the group of :mod:`.group`. Plugins add commands through the ``register_commands`` hook.
Every :class:`CipsError` (bad input) is printed as one sentence with a non-zero exit; nothing
else is caught, so bugs keep their tracebacks.
"""

from __future__ import annotations

from cips_deploy.cli import backend_flags, bench, checkpoints, compare, inspect, plugins, render, scale_consistency  # noqa: F401  (each registers its commands)
from cips_deploy.cli import project  # noqa: F401  (registers `project`)
from cips_deploy.cli.group import CipsGroup, add_choice_suggestions, cli  # noqa: F401


_registry = plugins.load_plugins_for_cli(cli)  # plugins' register_commands hooks; broken plugins print a warning
backend_flags.add_flags_to_marked_commands(cli, _registry)  # --precision and every other backend option
add_choice_suggestions(cli)  # last: the plugins' commands and the backend flags are all there now


def main() -> None:
    cli(prog_name="cips-deploy")

"""The ``cips-deploy`` command line.

Each command lives in its own module of this package and fits on a screen. Plugins add
commands through the ``register_commands`` hook. Every :class:`CipsError` (bad input) is
printed as one sentence with a non-zero exit; nothing else is caught, so bugs keep their
tracebacks.
"""

from __future__ import annotations

import sys
import warnings

import click

from cips_deploy._version import __version__
from cips_deploy.errors import CipsError, CipsWarning


class CipsGroup(click.Group):
    """A click group that turns user errors into one line and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            with warnings.catch_warnings():
                shown = warnings.showwarning

                def one_line(message, category, *args, **kwargs):  # CipsWarning: one line, like errors
                    if issubclass(category, CipsWarning):
                        click.echo(f"Warning: {message}", err=True)
                    else:
                        shown(message, category, *args, **kwargs)

                warnings.showwarning = one_line
                return super().invoke(ctx)
        except CipsError as error:
            raise click.ClickException(str(error)) from None
        except KeyboardInterrupt as error:
            click.echo("Interrupted.", err=True)
            sys.exit(getattr(error, "exit_code", 130))  # 128 + the signal; Ctrl-C: 130


@click.group(cls=CipsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cips-deploy")
def cli() -> None:
    """Deploy coordinate-based image generators (CIPS and its family)."""


from cips_deploy.cli import bench, checkpoints  # noqa: E402,F401  (each module registers its commands)
from cips_deploy.cli import plugins, render  # noqa: E402,F401  (registers plugins, topologies and render)
from cips_deploy.cli import scale_consistency  # noqa: E402,F401  (registers scale-consistency)
from cips_deploy.cli import backend_flags  # noqa: E402

_registry = plugins.load_plugins_for_cli(cli)  # plugins' register_commands hooks; broken plugins print a warning
backend_flags.add_flags_to_marked_commands(cli, _registry)  # --precision and every other backend option


def main() -> None:
    cli(prog_name="cips-deploy")

"""The ``cips-deploy`` click group: every command module adds itself to :data:`cli`."""

from __future__ import annotations

import sys
import warnings

import click

from cips_deploy._version import __version__
from cips_deploy._compat import BUILD_EXTRA
from cips_deploy.errors import CipsError, CipsWarning

# The build extra's packages (pyproject.toml), as a missing one is named in its error.
BUILD_PACKAGES = {"torch": "PyTorch", "safetensors": "safetensors", "onnx": "the onnx package"}


class CipsGroup(click.Group):
    """A click group that turns user errors into one line and exit status 1: a CipsError, and a
    command that needs the build extra in the torch-free install (its import of torch fails)."""

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
        except ModuleNotFoundError as error:
            if error.name not in BUILD_PACKAGES:
                raise  # a bug or a broken install: keep the traceback
            command = ctx.invoked_subcommand or "This command"
            raise click.ClickException(
                f"`cips-deploy {command}` needs {BUILD_PACKAGES[error.name]}, which this install lacks; install the "
                f"build extra: {BUILD_EXTRA}."
            ) from None
        except KeyboardInterrupt as error:
            click.echo("Interrupted.", err=True)
            sys.exit(getattr(error, "exit_code", 130))  # 128 + the signal; Ctrl-C: 130


@click.group(cls=CipsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cips-deploy")
def cli() -> None:
    """Deploy coordinate-based image generators (CIPS and its family)."""

"""The ``cips-deploy`` click group: every command module adds itself to :data:`cli`."""

from __future__ import annotations

import sys
import warnings
from typing import Any, Iterator

import click

from cips_deploy._version import __version__
from cips_deploy._compat import BUILD_EXTRA
from cips_deploy.errors import CipsError, CipsWarning, printable
from cips_deploy.runtime.plugin_calls import error_text, message_of
from cips_deploy.runtime.plugin_manager import did_you_mean

# The build extra's packages (pyproject.toml), as a missing one is named in its error.
BUILD_PACKAGES = {"torch": "PyTorch", "safetensors": "safetensors", "onnx": "the onnx package"}


def one_sentence(error: CipsError) -> str:
    """The error's sentence; a plugin's CipsError whose ``__str__`` fails still ends in one."""
    text = message_of(error) or f"A command failed with an error whose message cannot be shown ({error_text(error)})."
    return printable(text)


class CipsGroup(click.Group):
    """A click group that turns user errors into one line and exit status 1: a CipsError, and a
    command that needs the build extra in the torch-free install (its import of torch fails)."""

    def invoke(self, ctx: click.Context):
        try:
            with warnings.catch_warnings():
                shown = warnings.showwarning

                def one_line(message, category, *args, **kwargs):  # CipsWarning: one line, like errors
                    if issubclass(category, CipsWarning):
                        click.echo(printable(f"Warning: {message}"), err=True)
                    else:
                        shown(message, category, *args, **kwargs)

                warnings.showwarning = one_line
                return super().invoke(ctx)
        except CipsError as error:
            raise click.ClickException(one_sentence(error)) from None
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

    def resolve_command(self, ctx: click.Context, args: list[str]):
        """click's lookup, with the closest command names suggested for a misspelt one."""
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError:
            name = args[0] if args else None
            hint = did_you_mean(name, self.list_commands(ctx)) if name not in self.commands else ""
            if not hint:
                raise
            raise click.UsageError(f"No such command {name!r}{hint}.", ctx) from None


def add_choice_suggestions(group: click.Group) -> None:
    """Let every choice option of every command suggest the closest names for a misspelt value
    (``--engine onx``: did you mean 'onnx'?).

    The choice types belong to the commands' modules (plugins' among them), and several are
    shared, so the group adds the suggestion to each choice instance once, after the plugins
    have added their commands. Needs click 8.2 (``get_invalid_choice_message``); older
    versions keep click's plain message.
    """
    for command in _commands(group):
        for param in command.params:
            choice = param.type
            if isinstance(choice, click.Choice) and hasattr(choice, "get_invalid_choice_message"):
                if not getattr(choice.get_invalid_choice_message, "suggests", False):
                    choice.get_invalid_choice_message = _suggesting(choice)  # type: ignore[method-assign]


def _suggesting(choice: click.Choice) -> Any:
    """``choice``'s invalid-choice message with ``(did you mean 'x'?)`` before its full stop."""
    plain = choice.get_invalid_choice_message

    def message(value: Any, ctx: click.Context | None) -> str:
        text = plain(value=value, ctx=ctx)
        hint = did_you_mean(value, [str(name) for name in choice.choices])
        return f"{text.rstrip('.')}{hint}." if hint else text

    message.suggests = True  # type: ignore[attr-defined]
    return message


def _commands(group: click.Group) -> Iterator[click.Command]:
    """``group``'s commands, those of nested groups included."""
    for command in list(group.commands.values()):
        yield command
        if isinstance(command, click.Group):
            yield from _commands(command)


@click.group(cls=CipsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cips-deploy")
def cli() -> None:
    """Deploy coordinate-based image generators (CIPS and its family)."""

"""Attack family: plugins. A plugin can add, never replace or silence the built-ins; its
sys.exit or KeyboardInterrupt at import is contained; its prints never reach stdout (results,
--json); its failures are named after it."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
import warnings

import click
import numpy as np
import pytest

import cips_deploy
from cips_deploy import hookimpl
from cips_deploy.contracts.backend import Backend
from cips_deploy.errors import CipsError
from cips_deploy.runtime.plugin_manager import PluginWarning, load_registry, register_commands
from cips_deploy.runtime.render import render_detailed

from ..helpers.attack_tools import fake_distribution, run_cli


class _Hijacker:
    @hookimpl
    def register_commands(self, cli):
        @cli.command("render")
        def fake_render():
            click.echo("owned")

        cli.commands.pop("info", None)
        cli.add_command(click.Command("extra", callback=lambda: None))


class _Exits:
    @hookimpl
    def register_topologies(self, register):
        raise SystemExit(3)

    @hookimpl
    def register_commands(self, cli):
        raise KeyboardInterrupt


class _Noisy:
    @hookimpl
    def register_chunkers(self, register):
        print("hello from a plugin")


class _Failing(Backend):
    name = "failing"
    description = "raises in run"

    def __init__(self, model, *, device="cpu", **options):
        self.config = cips_deploy.create("tiny").config

    def map(self, z, truncation=1.0):
        return np.zeros((1, self.config.style_dim), dtype=np.float32)

    def run(self, coords, w):
        raise ValueError("kaput")


class _RegistersFailing:
    @hookimpl
    def register_backends(self, register):
        register(_Failing)


def _registry(*plugins):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        return load_registry(entry_points=False, extra_plugins=list(plugins))


def test_a_plugin_cannot_replace_or_remove_a_command():
    group = click.Group("cips-deploy")
    render = group.command("render")(lambda: None)
    info = group.command("info")(lambda: None)
    registry = _registry(("hijack", _Hijacker()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        register_commands(group, registry)
    assert group.commands["render"] is render and group.commands["info"] is info
    assert "extra" in group.commands  # adding is allowed
    problems = registry.plugins["hijack"].problems
    assert any("tried to replace or remove the command 'render', which cips-deploy provides" in p for p in problems)
    assert any("'info'" in p for p in problems)


def test_system_exit_and_keyboard_interrupt_in_hooks_are_contained():
    registry = _registry(("exits", _Exits()))
    group = click.Group("cips-deploy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        register_commands(group, registry)
    problems = registry.plugins["exits"].problems
    assert any("SystemExit: 3" in p for p in problems) and any("KeyboardInterrupt" in p for p in problems)
    assert "flat" in registry.topologies


class _InterruptedByTheUser:
    @hookimpl
    def register_topologies(self, register):
        os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C arrives while plugin code runs
        time.sleep(5)


def test_the_users_ctrl_c_during_plugin_code_is_not_contained():
    """A plugin's own KeyboardInterrupt is its failure (above); a real SIGINT is the user's and stops the command."""
    # Python's own Ctrl-C handler, as in a terminal: a shell starts background jobs with SIGINT
    # ignored (`pytest &`), and then no Ctrl-C reaches the process at all.
    started_with = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            _registry(("interrupted", _InterruptedByTheUser()))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, started_with)


def test_plugin_prints_go_to_stderr(capsys):
    _registry(("noisy", _Noisy()))
    captured = capsys.readouterr()
    assert captured.out == "" and "hello from a plugin" in captured.err


def test_a_constructed_backend_is_named_after_its_plugin():
    registry = _registry(("failing-plugin", _RegistersFailing()))
    backend = registry.backends["failing"].item(None)
    with pytest.raises(CipsError, match=r"Backend 'failing' \(plugin 'failing-plugin'\) failed in run \(ValueError: kaput\)"):
        render_detailed(backend, "flat", 4, 4, registry=registry)


PLUGINS = {
    "exits_at_import": "import sys\nsys.exit(3)\n",
    "interrupts_at_import": "raise KeyboardInterrupt\n",
    "noisy_hijacker": textwrap.dedent(
        """
        import click
        from cips_deploy import hookimpl
        print("noise at import")

        @hookimpl
        def register_topologies(register):
            print("noise in a hook")

        @hookimpl
        def register_commands(cli):
            print("noise in register_commands")

            @cli.command("render")
            def fake():
                click.echo("hijacked")
        """
    ),
}


@pytest.mark.slow
def test_hostile_installed_plugins_cannot_take_the_command_line(tmp_path):
    site = fake_distribution(
        tmp_path / "site", "hostile-plugins", PLUGINS, {name: name for name in PLUGINS}
    )
    env = {"PYTHONPATH": str(site)}
    helped = run_cli("--help", cwd=tmp_path, env=env)
    assert helped.returncode == 0 and "render" in helped.stdout, helped.stderr
    listed = run_cli("plugins", "--json", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}  # stdout is pure JSON
    assert "SystemExit: 3" in rows["exits_at_import"]["problems"][0]
    assert "KeyboardInterrupt" in rows["interrupts_at_import"]["problems"][0]
    assert any("'render'" in problem for problem in rows["noisy_hijacker"]["problems"])
    assert "noise at import" in listed.stderr
    topologies = run_cli("topologies", "--json", cwd=tmp_path, env=env)
    assert {row["name"] for row in json.loads(topologies.stdout)} >= {"flat", "cylinder"}
    rendered = run_cli("render", "--preset", "tiny", "--height", "8", "-q", "-o", "x.png", cwd=tmp_path, env=env)
    assert rendered.returncode == 0 and "hijacked" not in rendered.stdout and (tmp_path / "x.png").is_file()

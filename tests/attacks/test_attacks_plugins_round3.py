"""Attack family: plugins, round 3 (issue 26).

Whatever a plugin's exception does when printed (``__str__`` or ``__repr__`` raise, a
megabyte of message), whatever its ``name`` does (raises, exits, changes, ends in a newline),
whatever it writes to stdout (``print``, ``os.write(1, ...)``, ``sys.__stdout__``) and however
it tries to leave (``SystemExit(0)`` from a chunker's spans), the result is one sentence that
names the plugin and an honest exit status; ``--json`` output stays pure JSON. Also: names that
end in a newline are refused (``$`` matches before one), and a misspelt name gets a
"did you mean".
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
import warnings
from abc import ABCMeta
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

import cips_deploy
from cips_deploy import hookimpl
from cips_deploy.cli import cli
from cips_deploy.cli.group import CipsGroup
from cips_deploy.contracts.chunking import Chunker
from cips_deploy.contracts.topology import GridLayout, Topology
from cips_deploy.errors import CipsError
from cips_deploy.exporters.triton import model_name
from cips_deploy.plugins.flat import Flat
from cips_deploy.runtime import plugin_manager
from cips_deploy.runtime.plugin_calls import error_text
from cips_deploy.runtime.plugin_manager import PluginWarning, load_registry, register_commands
from cips_deploy.runtime.render import render_detailed

from ..helpers import coordinates_backend
from ..helpers.attack_tools import fake_distribution, refused, run_cli

ROOT = Path(__file__).resolve().parents[2]
DEMO_ENGINE = ROOT / "cips_deploy" / "models" / "demo-panorama.onnx"


def _registry(*plugins):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        return load_registry(entry_points=False, extra_plugins=[("coordinates", coordinates_backend), *plugins])


def _problems(registry, plugin: str) -> str:
    return " | ".join(registry.plugins[plugin].problems)


# --------------------------------------------------------------------------- exceptions that will not print


class Unprintable(Exception):
    """An exception whose ``str()`` and ``repr()`` both raise."""

    def __str__(self):
        raise RuntimeError("str() refused")

    def __repr__(self):
        raise RuntimeError("repr() refused")


class Unreprable:
    """An object whose ``repr()`` raises."""

    def __repr__(self):
        raise RuntimeError("repr() refused")


class _RaisesUnprintable:
    @hookimpl
    def register_topologies(self, register):
        raise Unprintable()


class _ExitsUnprintably:
    @hookimpl
    def register_chunkers(self, register):
        raise SystemExit(Unprintable())  # str(SystemExit(x)) is str(x): it raises too


class _RaisesHuge:
    @hookimpl
    def register_outputs(self, register):
        raise ValueError("x" * 1_000_000)


class _RaisesManyLines:
    @hookimpl
    def register_exporters(self, register):
        raise ValueError("first line\n" + "stack dump line\n" * 10_000)


def test_exceptions_that_cannot_be_printed_are_described_by_plugin():
    registry = _registry(
        ("unprintable", _RaisesUnprintable()), ("exits", _ExitsUnprintably()),
        ("huge", _RaisesHuge()), ("lines", _RaisesManyLines()),
    )
    assert registry.plugins["unprintable"].problems == [
        "Plugin 'unprintable' raised in register_topologies (Unprintable: (its message cannot be shown)); "
        "what it registers there is unavailable."
    ]
    assert "'exits' raised in register_chunkers (SystemExit: (its message cannot be shown))" in _problems(registry, "exits")
    huge = _problems(registry, "huge")
    assert "'huge' raised in register_outputs (ValueError: xxx" in huge and len(huge) < 500 and "...)" in huge
    lines = _problems(registry, "lines")  # the first line only: one sentence, not a dump
    assert "(ValueError: first line)" in lines and "stack dump" not in lines
    assert {"flat", "cylinder"} <= set(registry.topologies) and "png" in registry.outputs  # the others still work


def test_error_text_never_raises_whatever_the_exception_does():
    class NotAString(Exception):
        def __str__(self):
            return 42  # str() raises TypeError on this

    class SneakyString(str):
        def strip(self, *args):
            raise RuntimeError("strip refused")

    class Sneaky(Exception):
        def __str__(self):
            return SneakyString("looks like a message")

    assert error_text(Unprintable()) == "Unprintable: (its message cannot be shown)"
    assert error_text(NotAString()) == "NotAString: (its message cannot be shown)"
    assert error_text(Sneaky()) == "Sneaky: looks like a message"
    assert error_text(ValueError("")) == "ValueError"


# --------------------------------------------------------------------------- names that misbehave


class _NameRaises(Flat):
    @property
    def name(self):
        raise RuntimeError("no name today")


class _ChunkerNameExits(Chunker):
    description = "Its name property exits the interpreter."

    @property
    def name(self):
        raise SystemExit(0)

    def spans(self, request):
        return [(0, request.n_points)]


class _NamedByMetaclass(ABCMeta):
    @property
    def name(cls):  # a data descriptor on the metaclass: wins over the class attribute
        raise RuntimeError("no backend name")


class _BackendNameRaises(coordinates_backend.Coordinates, metaclass=_NamedByMetaclass):
    pass


class _NameUnreprable(Flat):
    name = Unreprable()


class _NameWithNewline(Flat):
    name = "flat2\n"


class _ChunkerNameWithNewline(Chunker):
    name = "whole\n"
    description = "One span."

    def spans(self, request):
        return [(0, request.n_points)]


class _RegistersBadNames:
    @hookimpl
    def register_topologies(self, register):
        register(_NameRaises())
        register(_NameUnreprable())
        register(_NameWithNewline())

    @hookimpl
    def register_chunkers(self, register):
        register(_ChunkerNameExits())
        register(_ChunkerNameWithNewline())

    @hookimpl
    def register_backends(self, register):
        register(_BackendNameRaises)


def test_names_that_raise_exit_or_do_not_print_are_refused_by_plugin():
    registry = _registry(("bad-names", _RegistersBadNames()))
    problems = registry.plugins["bad-names"].problems
    assert "registered a topology that could not be checked (RuntimeError: no name today)" in problems[0]
    assert "registered an invalid topology (its name <a Unreprable that cannot be shown> is not a word" in problems[1]
    assert "registered an invalid topology (its name 'flat2\\n' is not a word" in problems[2]
    assert "registered a chunker that could not be checked (SystemExit: 0)" in problems[3]
    assert "registered an invalid chunker (its name 'whole\\n' is not a word" in problems[4]
    assert "registered a backend that could not be checked (RuntimeError: no backend name)" in problems[5]
    assert len(problems) == 6 and all(p.startswith("Plugin 'bad-names' ") for p in problems)
    assert set(registry.topologies) == {"flat", "cylinder", "foveated", "rotated"}
    assert set(registry.chunkers) == {"fixed", "memory", "rows"}
    rendered = render_detailed(coordinates_backend.Coordinates(None), "flat", 4, 4, registry=registry)
    assert rendered.image.shape == (4, 4, 3)


class _NameOnce(Topology):
    """A name that answers once, then raises: the registry and the renderer must not ask again."""

    description = "Answers its name once."
    coordinate_spaces = ("plane", "cylinder")
    reads = 0

    @property
    def name(self):
        type(self).reads += 1
        if type(self).reads > 1:
            raise RuntimeError("the name was read twice")
        return "once"

    def layout(self, request):
        u = np.linspace(-1, 1, request.width, dtype=np.float32)
        v = np.linspace(-1, 1, request.height, dtype=np.float32)
        return GridLayout(u, v)


class _RegistersNameOnce:
    @hookimpl
    def register_topologies(self, register):
        register(_NameOnce())


def test_a_name_is_read_once_at_registration(monkeypatch):
    registry = _registry(("once", _RegistersNameOnce()))
    assert registry.topologies["once"].name == "once" and type(registry.topologies["once"].name) is str
    rendered = render_detailed(coordinates_backend.Coordinates(None), "once", 4, 6, registry=registry)
    assert rendered.image.shape == (4, 6, 3)
    monkeypatch.setattr(plugin_manager, "_default_registry", registry)
    listed = CliRunner().invoke(cli, ["topologies", "--json"])
    assert listed.exit_code == 0, listed.output
    assert "once" in {row["name"] for row in json.loads(listed.stdout)}


# --------------------------------------------------------------------------- output to stdout


class _LoudTopology(Flat):
    name = "loud"

    @property
    def description(self):
        os.write(1, b"fd write while described\n")  # runs while it is checked and while it is listed
        return "A topology that writes to file descriptor 1 whenever its description is read."


class _Prints:
    @hookimpl
    def register_topologies(self, register):
        print("python print in a hook")
        os.write(1, b"fd write in a hook\n")
        register(_LoudTopology())

    @hookimpl
    def register_chunkers(self, register):
        sys.__stdout__.write("buffered write to sys.__stdout__\n")  # flushed only later: still the plugin's

    @hookimpl
    def register_commands(self, cli):
        print("\x1b[31mred\rprint in register_commands")


def test_prints_at_every_level_go_to_stderr_under_the_plugins_name(capfd):
    print("ours, before", flush=True)
    registry = _registry(("printer", _Prints()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)  # printing is not a problem of the plugin
        register_commands(click.Group("g"), registry)
    print("ours, after", flush=True)
    out, err = capfd.readouterr()
    assert out == "ours, before\nours, after\n"
    expected = [
        "Plugin 'printer' printed in register_topologies: python print in a hook",
        "Plugin 'printer' printed in register_topologies: fd write in a hook",
        "Plugin 'printer' printed in register_topologies: fd write while described",
        "Plugin 'printer' printed in register_chunkers: buffered write to sys.__stdout__",
        "Plugin 'printer' printed in register_commands: ?[31mred\n",  # no terminal escapes; \r ends a line
        "Plugin 'printer' printed in register_commands: print in register_commands",
    ]
    positions = [err.index(line) for line in expected]
    assert positions == sorted(positions), err  # in the order they were written, Python and fd 1 alike
    assert registry.plugins["printer"].problems == [] and "loud" in registry.topologies


def test_a_flood_of_output_is_cut_short(capfd):
    class Flood:
        @hookimpl
        def register_topologies(self, register):
            os.write(1, b"line\n" * 100_000)

    _registry(("flood", Flood()))
    out, err = capfd.readouterr()
    assert out == ""
    assert err.count("Plugin 'flood' printed in register_topologies: line") == 20
    assert re.search(r"Plugin 'flood' printed more in register_topologies: \d+ line\(s\) and \d+ byte\(s\) not shown\.", err)


def test_listing_keeps_a_plugins_output_off_stdout(monkeypatch, capfd):
    registry = _registry(("printer", _Prints()))
    capfd.readouterr()
    monkeypatch.setattr(plugin_manager, "_default_registry", registry)
    for args in (["topologies", "--json"], ["plugins", "--json"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        json.loads(result.stdout)  # pure JSON
    listed = CliRunner().invoke(cli, ["topologies"])
    assert "loud: A topology that writes" in listed.stdout and "fd write" not in listed.stdout
    assert "Plugin 'printer' printed while topology 'loud' was listed: fd write while described" in listed.stderr
    assert capfd.readouterr().out == ""  # and nothing reached the real file descriptor 1


class _DescriptionBreaksLater(Flat):
    name = "fragile"
    reads = 0

    @property
    def description(self):
        type(self).reads += 1
        if type(self).reads > 1:
            raise SystemExit("gone")
        return "Fine at registration, gone when listed."


class _RegistersFragile:
    @hookimpl
    def register_topologies(self, register):
        register(_DescriptionBreaksLater())


def test_a_topology_that_fails_when_listed_is_left_out_by_name(monkeypatch):
    registry = _registry(("fragile-plugin", _RegistersFragile()))
    monkeypatch.setattr(plugin_manager, "_default_registry", registry)
    for args, read in ((["topologies", "--json"], lambda out: {row["name"] for row in json.loads(out)}),
                       (["topologies"], lambda out: set(re.findall(r"^(\S+): ", out, re.M)))):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output
        assert read(result.stdout) == {"flat", "cylinder", "foveated", "rotated"}
        assert ("Warning: Topology 'fragile' (plugin 'fragile-plugin') could not be listed (SystemExit: gone); "
                "it was left out.") in result.stderr


# --------------------------------------------------------------------------- leaving the interpreter at render time


class _SpansExitAfterOne(Chunker):
    name = "exits-later"
    description = "A generator of spans that exits the interpreter after the first span."

    def spans(self, request):
        yield (0, 1)
        raise SystemExit(0)


class _SpansExitAtOnce(Chunker):
    name = "exits-at-once"
    description = "spans() itself exits the interpreter."

    def spans(self, request):
        sys.exit(0)


class _SpansGeneratorExit(Chunker):
    name = "generator-exit"
    description = "A generator of spans that raises GeneratorExit."

    def spans(self, request):
        yield (0, 1)
        raise GeneratorExit


class _SpansInterrupted(Chunker):
    name = "interrupted"
    description = "A generator of spans interrupted by Ctrl-C."

    def spans(self, request):
        yield (0, 1)
        raise KeyboardInterrupt


class _UnprintableCipsError(CipsError):
    def __str__(self):
        raise RuntimeError("str() refused")


class _SpansUnprintableCipsError(Chunker):
    name = "unprintable-error"
    description = "Raises a CipsError whose message cannot be shown."

    def spans(self, request):
        yield (0, 1)
        raise _UnprintableCipsError()


class _SpansHugeCipsError(Chunker):
    name = "huge-error"
    description = "Raises a CipsError of 100,000 characters: a dump, not a sentence."

    def spans(self, request):
        raise CipsError("z" * 100_000)


class _ExitingChunkers:
    @hookimpl
    def register_chunkers(self, register):
        for chunker in (_SpansExitAfterOne, _SpansExitAtOnce, _SpansGeneratorExit, _SpansInterrupted,
                        _SpansUnprintableCipsError, _SpansHugeCipsError):
            register(chunker())


@pytest.mark.parametrize("chunker, message", [
    ("exits-later", "Chunker 'exits-later' (plugin 'exiting') failed in spans (SystemExit: 0)."),
    ("exits-at-once", "Chunker 'exits-at-once' (plugin 'exiting') failed in spans (SystemExit: 0)."),
    ("generator-exit", "Chunker 'generator-exit' (plugin 'exiting') failed in spans (GeneratorExit)."),
    ("unprintable-error", "Chunker 'unprintable-error' (plugin 'exiting') failed (_UnprintableCipsError: (its message"),
    ("huge-error", "Chunker 'huge-error' (plugin 'exiting') failed (CipsError: zzz"),
])
def test_a_chunker_that_exits_fails_the_render_by_name(chunker, message):
    registry = _registry(("exiting", _ExitingChunkers()))
    with pytest.raises(CipsError) as caught:
        render_detailed(coordinates_backend.Coordinates(None), "flat", 4, 4, registry=registry, chunker=chunker)
    assert str(caught.value).startswith(message) and len(str(caught.value)) < 500


def test_ctrl_c_in_a_chunker_is_not_swallowed():
    registry = _registry(("exiting", _ExitingChunkers()))
    with pytest.raises(KeyboardInterrupt):
        render_detailed(coordinates_backend.Coordinates(None), "flat", 4, 4, registry=registry, chunker="interrupted")


@pytest.mark.parametrize("chunker", ["exits-later", "unprintable-error"])
def test_render_command_with_an_exiting_chunker_fails_and_writes_nothing(tmp_path, monkeypatch, chunker):
    """It exited 0, wrote nothing and said nothing."""
    monkeypatch.setattr(plugin_manager, "_default_registry", _registry(("exiting", _ExitingChunkers())))
    refused(
        ["render", "--checkpoint", str(DEMO_ENGINE), "--backend", "coordinates", "--chunker", chunker,
         "--height", "8", "--width", "8", "-q", "-o", "x.png"],
        f"Chunker '{chunker}' (plugin 'exiting') failed", cwd=tmp_path,
    )


def test_a_plugin_commands_unprintable_error_is_still_one_sentence():
    group = CipsGroup("cips-deploy")

    @group.command("boom")
    def boom():
        raise _UnprintableCipsError()

    @group.command("fine")
    def fine():
        raise CipsError("A plain sentence.")

    result = CliRunner().invoke(group, ["boom"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output == ("Error: A command failed with an error whose message cannot be shown "
                             "(_UnprintableCipsError: (its message cannot be shown)).\n")
    assert CliRunner().invoke(group, ["fine"]).output == "Error: A plain sentence.\n"


# --------------------------------------------------------------------------- names ending in a newline


@pytest.mark.parametrize("name", ["abc\n", "abc\n\n", "abc\r", "\nabc", "ab\nc", "a" * 100 + "\n"])
def test_triton_names_with_line_breaks_are_refused(name):
    with pytest.raises(CipsError, match="must be 1 to 100 letters, digits"):
        model_name(name, default_from="model.onnx")


def test_triton_plain_names_still_pass():
    assert model_name("abc", default_from="x") == "abc" and model_name("a" * 100, default_from="x") == "a" * 100
    assert model_name(None, default_from="my model.onnx\n") == "my_model_onnx"


def test_triton_name_with_a_newline_is_refused_by_the_command(tmp_path):
    checkpoint = tmp_path / "t.safetensors"
    cips_deploy.create("tiny", seed=1).save(checkpoint)
    work = tmp_path / "work"
    work.mkdir()
    refused(["export", str(checkpoint), "--triton-repo", "repo", "--name", "abc\n", "--no-validate"],
            "The Triton model name 'abc\\n' must be 1 to 100 letters", cwd=work)


# --------------------------------------------------------------------------- did you mean


@pytest.mark.parametrize("kind, name, suggestion", [
    ("topology", "cylindre", "'cylinder'"),
    ("topology", "FLAT", "'flat'"),
    ("chunker", "memroy", "'memory'"),
    ("backend", "onxruntime", "'onnxruntime'"),
    ("output", "pgn", "'png'"),
    ("exporter", "onx", "'onnx'"),
])
def test_a_misspelt_name_gets_a_suggestion(registry, kind, name, suggestion):
    with pytest.raises(CipsError) as caught:
        registry.get(kind, name)
    assert f"Unknown {kind} {name!r} (did you mean {suggestion}" in str(caught.value)
    assert "; available: " in str(caught.value) and str(caught.value).endswith(".")


def test_a_name_unlike_any_gets_no_suggestion(registry):
    with pytest.raises(CipsError, match=r"^Unknown topology 'sphere'; available: cylinder, flat, foveated, rotated\.$"):
        registry.get("topology", "sphere")


def test_the_command_line_suggests_names(tmp_path):
    refused(["render", "--preset", "tiny", "-t", "cylindre", "-o", "x.png"], "(did you mean 'cylinder'?)", cwd=tmp_path)
    engine = CliRunner().invoke(cli, ["export", "--engine", "onx", "-o", str(tmp_path / "x.onnx")])
    assert engine.exit_code == 2 and "(did you mean 'onnx'?)" in engine.output
    arch = CliRunner().invoke(cli, ["render", "--preset", "tiny", "--arch", "crepss"])
    assert arch.exit_code == 2 and "(did you mean 'creps'" in arch.output
    command = CliRunner().invoke(cli, ["rendr"])
    assert command.exit_code == 2 and "No such command 'rendr' (did you mean 'render'?)." in command.output
    unlike = CliRunner().invoke(cli, ["export", "--engine", "zzz"])
    assert unlike.exit_code == 2 and "did you mean" not in unlike.output


# --------------------------------------------------------------------------- the installed command line


HOSTILE = {
    "unprintable_at_import": textwrap.dedent(
        """
        class Unprintable(Exception):
            def __str__(self):
                raise RuntimeError("str() refused")
            def __repr__(self):
                raise RuntimeError("repr() refused")
        raise Unprintable()
        """
    ),
    "huge_at_import": 'raise ValueError("y" * 1_000_000)\n',
    "loud_at_import": textwrap.dedent(
        """
        import os
        import sys
        from cips_deploy import hookimpl
        from cips_deploy.plugins.flat import Flat
        print("python print at import")
        os.write(1, b"fd write at import\\n")
        sys.__stdout__.write("buffered write at import\\n")

        class Loud(Flat):
            name = "loud"

            @property
            def description(self):
                os.write(1, b"fd write while listed\\n")
                return "Writes to stdout when described."

        @hookimpl
        def register_topologies(register):
            os.write(1, b"fd write in a register hook\\n")
            register(Loud())
        """
    ),
    "nameless": textwrap.dedent(
        """
        from cips_deploy import hookimpl
        from cips_deploy.contracts.chunking import Chunker
        from cips_deploy.plugins.flat import Flat

        class NameRaises(Flat):
            @property
            def name(self):
                raise RuntimeError("no name today")

        class ChunkerNameExits(Chunker):
            description = "exits"
            @property
            def name(self):
                raise SystemExit(0)
            def spans(self, request):
                return [(0, request.n_points)]

        @hookimpl
        def register_topologies(register):
            register(NameRaises())

        @hookimpl
        def register_chunkers(register):
            register(ChunkerNameExits())
        """
    ),
}


@pytest.mark.slow
def test_hostile_installed_plugins_leave_help_listings_and_json_intact(tmp_path):
    site = fake_distribution(tmp_path / "site", "hostile-round3", HOSTILE, {name: name for name in HOSTILE})
    env = {"PYTHONPATH": str(site)}
    helped = run_cli("--help", cwd=tmp_path, env=env)
    assert helped.returncode == 0 and "render" in helped.stdout and "Traceback" not in helped.stderr, helped.stderr
    assert "Warning: Plugin 'unprintable_at_import' failed to import (Unprintable: (its message cannot be shown))" in helped.stderr
    assert "Plugin 'loud_at_import' printed at import: fd write at import" in helped.stderr
    assert "Plugin 'loud_at_import' printed at import: buffered write at import" in helped.stderr
    assert "Plugin 'loud_at_import' printed in register_topologies: fd write in a register hook" in helped.stderr
    assert "write" not in helped.stdout

    listed = run_cli("plugins", "--json", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}  # stdout is pure JSON
    assert rows["unprintable_at_import"]["problems"] == [
        "Plugin 'unprintable_at_import' failed to import (Unprintable: (its message cannot be shown)); it was skipped."
    ]
    assert len(rows["huge_at_import"]["problems"][0]) < 500
    assert "could not be checked (RuntimeError: no name today)" in rows["nameless"]["problems"][0]
    assert "could not be checked (SystemExit: 0)" in rows["nameless"]["problems"][1]
    assert rows["loud_at_import"]["problems"] == [] and rows["loud_at_import"]["provides"]["topology"] == ["loud"]

    topologies = run_cli("topologies", "--json", cwd=tmp_path, env=env)
    assert topologies.returncode == 0, topologies.stderr
    assert {row["name"] for row in json.loads(topologies.stdout)} == {"flat", "cylinder", "foveated", "rotated", "loud"}
    assert "Plugin 'loud_at_import' printed while topology 'loud' was listed: fd write while listed" in topologies.stderr

    info = run_cli("info", str(DEMO_ENGINE), "--json", cwd=tmp_path, env=env)
    assert info.returncode == 0 and json.loads(info.stdout)["coordinate_space"] == "cylinder", info.stderr

    rendered = run_cli("render", "--height", "8", "-q", "-o", "x.png", cwd=tmp_path, env=env)
    assert rendered.returncode == 0 and (tmp_path / "x.png").is_file(), rendered.stderr
    assert "write" not in rendered.stdout


# --------------------------------------------------------------------------- the gallery's numbers


def test_the_gallerys_scale_consistency_numbers_are_what_the_command_measures():
    """docs/gallery.md states the PSNR of its scale-consistency figure; the command must give it."""
    text = (ROOT / "docs" / "gallery.md").read_text()
    stated = re.search(r"PSNR ([\d.]+) dB for CIPS and ([\d.]+) dB for CREPS", " ".join(text.split()))
    assert stated, "the gallery no longer states its numbers in the expected words"
    for arch, expected in (("skip", float(stated.group(1))), ("creps", float(stated.group(2)))):
        result = CliRunner().invoke(cli, ["scale-consistency", "--preset", "tiny", "--arch", arch, "--size", "64",
                                          "--factor", "4", "--seed", "1", "--samples", "1", "--json"])
        assert result.exit_code == 0, result.output
        measured = json.loads(result.stdout)["mean"]["psnr"]
        assert round(measured, 1) == expected, (arch, measured)


def test_describing_an_error_never_raises_whatever_its_str_does():
    """Outside plugin code too: the CLI's last line of defence describes any exception."""
    from cips_deploy.errors import describe_error, first_line

    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no")

    class NotText(Exception):
        def __str__(self):
            return 42  # str() then raises TypeError

    for error in (Unprintable(), NotText()):
        assert first_line(error) == ""
        assert describe_error(error) == type(error).__name__
    assert describe_error(ValueError("first\nsecond")) == "ValueError: first"


def test_a_misspelt_output_format_gets_a_suggestion(tmp_path):
    from ..helpers.attack_tools import invoke

    result = invoke(["render", "--preset", "tiny", "--height", "8", "--format", "pgn", "-o", "x.png"], tmp_path)
    assert result.exit_code == 1 and "Unknown output format 'pgn' (did you mean 'png'?)" in result.output
    result = invoke(["render", "--preset", "tiny", "--height", "8", "--format", "zzz", "-o", "x.png"], tmp_path)
    assert result.exit_code == 1 and "did you mean" not in result.output and "available: dzi, png, tiff" in result.output
    assert list(tmp_path.iterdir()) == []

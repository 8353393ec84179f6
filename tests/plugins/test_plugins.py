"""The plugin system: built-ins through the hooks, entry-point discovery, fault isolation."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import warnings

import click
import numpy as np
import pytest

import cips_deploy
from cips_deploy import hookimpl
from cips_deploy.contracts import hookspecs
from cips_deploy.errors import CipsError
from cips_deploy.runtime.plugin_manager import PluginWarning, load_registry, register_commands
from cips_deploy.plugins.flat import Flat
from cips_deploy.runtime.render import render, render_detailed

from ..helpers.plugin_install import EXAMPLE_PLUGIN, FAULTY_PLUGIN, forget_plugin_modules, pip_install


@pytest.fixture(scope="module")
def tiny():
    return cips_deploy.create("tiny", seed=0)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example and the faulty plugin packages, pip-installed and on sys.path."""
    target = pip_install(tmp_path_factory.mktemp("plugins") / "site", EXAMPLE_PLUGIN, FAULTY_PLUGIN)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    yield target
    sys.path.remove(str(target))
    importlib.invalidate_caches()
    forget_plugin_modules()


@pytest.fixture(scope="module")
def registry(installed):
    """A registry loaded from the real entry points, broken plugins included."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_registry()
    loaded.caught_warnings = [str(warning.message) for warning in caught if warning.category is PluginWarning]
    return loaded


# ------------------------------------------------------------------------- built-ins


@pytest.mark.runtime
def test_hookspecs_are_the_register_hooks():
    names = {"register_topologies", "register_chunkers", "register_backends", "register_exporters", "register_outputs", "register_commands"}
    for name in names:
        function = getattr(hookspecs, name)
        assert function.__doc__ and "\n" not in function.__doc__.strip(), name
    assert cips_deploy.hookimpl is hookspecs.hookimpl


def test_builtins_are_registered_through_the_hooks_like_any_plugin():
    registry = load_registry(entry_points=False)
    assert {"flat", "cylinder", "foveated", "rotated"} <= set(registry.topologies)
    assert {"fixed", "rows", "memory"} <= set(registry.chunkers)
    assert "torch" in registry.backends
    assert {"png", "tiff", "dzi"} <= set(registry.outputs)
    assert registry.outputs["dzi"].plugin == "cips_deploy.plugins.outputs"
    assert registry.topologies["cylinder"].plugin == "cips_deploy.plugins.cylinder"
    assert registry.chunkers["rows"].plugin == "cips_deploy.plugins.chunkers"
    info = registry.plugins["cips_deploy.plugins.flat"]
    assert (info.distribution, info.version, info.hooks) == ("cips-deploy", cips_deploy.__version__, ["register_topologies"])
    assert registry.problems == []


# ------------------------------------------------------------ third-party discovery


def test_example_plugin_is_found_through_entry_point_metadata(installed, registry):
    entry_points = {entry.name: entry for entry in importlib.metadata.entry_points(group="cips_deploy")}
    assert entry_points["tiles"].value == "cips_deploy_tiles"
    assert entry_points["tiles"].dist.name == "cips-deploy-tiles"
    info = registry.plugins["tiles"]
    assert (info.distribution, info.version, info.hooks, info.problems) == (
        "cips-deploy-tiles", "0.1.0", ["register_topologies"], []
    )
    assert registry.topologies["tiles"].plugin == "tiles"


def test_renders_through_the_example_plugin(tiny, registry):
    image = render(tiny, "tiles", 48, 64, seed=1, registry=registry, columns=2, rows=1, mirror=True)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    # Two mirrored tiles: the right half is the left half flipped.
    left, right = image[:, :32].astype(int), image[:, 32:][:, ::-1].astype(int)
    assert np.abs(left - right).mean() < 0.5
    assert image.std() > 5  # not a blank picture
    with pytest.raises(CipsError, match="tiles topology needs a plane-space model"):
        render(cips_deploy.create("tiny", coordinate_space="cylinder"), "tiles", 8, 8, registry=registry)


def test_without_entry_points_the_example_plugin_is_absent(installed):
    assert "tiles" not in load_registry(entry_points=False).topologies


# ------------------------------------------------------------------------- faults


def test_broken_plugins_are_reported_by_name(registry):
    problems = " ".join(registry.problems)
    assert "'faulty-import' failed to import (ModuleNotFoundError" in problems
    assert "'faulty-hook' raised in register_topologies (RuntimeError: the topology table is corrupt)" in problems
    assert "'faulty-points' registered an invalid topology ('no-description' has no description string)" in problems
    assert sorted(name for name, info in registry.plugins.items() if info.broken) == [
        "faulty-hook", "faulty-import", "faulty-points"
    ]
    assert set(registry.caught_warnings) == set(registry.problems)


def test_a_failing_hook_keeps_nothing_of_that_hook_but_its_other_hooks_work(tiny, registry):
    assert "half-registered" not in registry.topologies  # registered, then the hook raised
    assert registry.chunkers["halves"].plugin == "faulty-hook"
    result = render_detailed(tiny, "flat", 16, 16, chunker="halves", registry=registry)
    assert result.chunks == 2


@pytest.mark.parametrize(
    "topology, message",
    [
        ("wrong-shape", r"Topology 'wrong-shape' \(plugin 'faulty-points'\) returned points of shape \[256, 3\]"),
        ("wrong-dtype", r"Topology 'wrong-dtype' \(plugin 'faulty-points'\) returned points of dtype int64"),
        ("nan-points", r"Topology 'nan-points' \(plugin 'faulty-points'\) returned 1 point\(s\) with NaN"),
        ("crashing", r"Topology 'crashing' \(plugin 'faulty-points'\) failed in layout \(KeyError"),
        ("bad-image", r"Topology 'bad-image' \(plugin 'faulty-points'\) assembled an image of shape \[2, 2, 3\]"),
    ],
)
def test_malformed_topologies_are_named_and_the_rest_keep_working(tiny, registry, topology, message):
    with pytest.raises(CipsError, match=message):
        render(tiny, topology, 16, 16, registry=registry)
    for healthy in ("flat", "rotated", "foveated", "tiles"):
        assert render(tiny, healthy, 16, 16, registry=registry).shape == (16, 16, 3)


def test_a_malformed_chunker_is_named(tiny, registry):
    with pytest.raises(CipsError, match=r"Chunker 'overlapping' \(plugin 'faulty-points'\) produced the span \(0, 256\)"):
        render(tiny, "flat", 16, 16, chunker="overlapping", registry=registry)


def test_unknown_names_list_the_choices_and_mention_broken_plugins(tiny, registry):
    with pytest.raises(CipsError, match=r"Unknown topology 'half-registered'; available: .*flat.*faulty-hook.*cips-deploy plugins"):
        render(tiny, "half-registered", 8, 8, registry=registry)


class _RegistersFlatAgain:
    @hookimpl
    def register_topologies(self, register):
        register(Flat())


class _RegistersGarbage:
    @hookimpl
    def register_topologies(self, register):
        register(object())

    @hookimpl
    def register_backends(self, register):
        register("not a class")


@pytest.mark.runtime
def test_name_clashes_and_garbage_are_refused_without_harm():
    with pytest.warns(PluginWarning):
        registry = load_registry(entry_points=False, extra_plugins=[("again", _RegistersFlatAgain()), ("garbage", _RegistersGarbage())])
    assert registry.topologies["flat"].plugin == "cips_deploy.plugins.flat"
    problems = " ".join(registry.problems)
    assert "'again' registered topology 'flat', which plugin 'cips_deploy.plugins.flat' already provides" in problems
    assert "'garbage' registered an invalid topology" in problems
    assert "'garbage' registered an invalid backend (backends are registered as classes" in problems


class _AddsCommand:
    @hookimpl
    def register_commands(self, cli):
        @cli.command("hello")
        def hello():
            click.echo("hello from a plugin")


class _CommandHookRaises:
    @hookimpl
    def register_commands(self, cli):
        raise ValueError("no commands today")


@pytest.mark.runtime
def test_register_commands_adds_commands_and_survives_a_raising_plugin():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        registry = load_registry(entry_points=False, extra_plugins=[("adds", _AddsCommand()), ("raises", _CommandHookRaises())])
        group = click.Group("test")
        register_commands(group, registry)
    assert "hello" in group.commands
    assert registry.plugins["raises"].problems == [
        "Plugin 'raises' raised in register_commands (ValueError: no commands today); what it registers there is unavailable."
    ]

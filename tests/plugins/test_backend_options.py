"""Backends declare their options; the renderer checks them and the CLI builds flags from them."""

from __future__ import annotations

import inspect

import click
import pytest
from click.testing import CliRunner

import cips_deploy
from cips_deploy import CipsError, hookimpl
from cips_deploy.backend import Backend as TorchTensorBackend
from cips_deploy.contracts.backend import resolve_options
from cips_deploy.cli.backend_flags import add_backend_flags, merge_backend_flags
from cips_deploy.runtime.plugin_manager import load_registry
from cips_deploy.contracts.topology import Parameter


class EchoBackend(TorchTensorBackend):
    """A third party's backend written for the torch runtime (the legacy contract: tensors in and
    out): the torch generator, with a gain option."""

    name = "echo"
    description = "test backend"
    options = (Parameter("gain", float, 1.0, "multiply colours", minimum=0.0),
               Parameter("mode", str, "plain", "how", choices=("plain", "fancy")))

    def __init__(self, model, *, device="cpu", gain=1.0, mode="plain"):
        self.generator = model
        self.config = model.config
        self.gain, self.mode = gain, mode

    def map(self, z, truncation=1.0):
        return self.generator.map(z, truncation)

    def run(self, coords, w):
        return self.generator.synthesize(coords, w) * self.gain


class EchoPlugin:
    @hookimpl
    def register_backends(self, register):
        register(EchoBackend)


@pytest.mark.runtime
def test_options_are_checked_and_converted_before_construction():
    assert resolve_options(EchoBackend, {"gain": "0.5"}) == {"gain": 0.5}
    assert resolve_options(EchoBackend, {"gain": 2}) == {"gain": 2}  # Python values pass as they are
    for given, message in (
        ({"gain": "-1"}, "The echo backend's option gain must be at least 0"),
        ({"gain": "loud"}, "The echo backend's option gain must be a number"),
        ({"mode": "odd"}, "must be one of plain, fancy"),
        ({"volume": "3"}, "The echo backend has no option 'volume' (its options: gain, mode)."),
        ({"device": "cpu"}, "The device is not a backend option"),
    ):
        with pytest.raises(CipsError) as caught:
            resolve_options(EchoBackend, given)
        assert message in str(caught.value)


def test_a_plugin_backend_gets_flags_like_the_built_ins(tiny):
    registry = load_registry(entry_points=False, extra_plugins=[("echo-plugin", EchoPlugin())])
    received = {}

    @click.command()
    @click.option("--backend-option", "backend_options", multiple=True)
    def command(backend_options, **flags):
        received.update(merge_backend_flags({}, flags))

    add_backend_flags(command, registry)
    names = {param.name for param in command.params}
    assert {"gain", "mode", "precision", "providers", "opset", "engine"} <= names
    result = CliRunner().invoke(command, ["--gain", "0.25", "--mode", "fancy"])
    assert result.exit_code == 0, result.output
    assert received == {"gain": "0.25", "mode": "fancy"}
    assert "echo: multiply colours" in CliRunner().invoke(command, ["--help"]).output
    # The renderer resolves them for the chosen backend: the option changes the colours.
    plain = cips_deploy.render(tiny, "flat", 8, 8, backend="echo", registry=registry, backend_options={"gain": "1"})
    dark = cips_deploy.render(tiny, "flat", 8, 8, backend="echo", registry=registry, backend_options={"gain": "0"})
    assert plain.std() > 0 and (dark == 128).all()


@pytest.mark.runtime
def test_merging_flags_refuses_contradictions():
    assert merge_backend_flags({"precision": "bf16"}, {"precision": "bf16", "gain": None}) == {"precision": "bf16"}
    with pytest.raises(CipsError, match="--precision fp32 contradicts --backend-option precision=bf16"):
        merge_backend_flags({"precision": "bf16"}, {"precision": "fp32"})


@pytest.mark.runtime
def test_built_in_declarations_match_their_constructors():
    """A declared default that drifted from the constructor's would mislead --help."""
    registry = load_registry(entry_points=False)
    for entry in registry.backends.values():
        signature = inspect.signature(entry.item.__init__)
        for option in entry.item.options:
            assert option.name in signature.parameters, (entry.name, option.name)
            assert signature.parameters[option.name].default == option.default, (entry.name, option.name)

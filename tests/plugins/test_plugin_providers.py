"""Commands and engines through the hooks: who provides what (`cips-deploy plugins`), and
`export --engine` offering and dispatching to every registered exporter."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from cips_deploy import hookimpl

from cips_deploy.runtime import plugin_manager
from cips_deploy.cli import cli
from cips_deploy.errors import CipsError
from cips_deploy.contracts.exporter import Exporter
from cips_deploy.runtime.plugin_manager import PluginWarning, load_registry


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)


def test_commands_and_engines_are_provided_by_their_packages():
    listed = {row["name"]: row["provides"] for row in json.loads(invoke("plugins", "--json").output)}
    assert listed["cips_deploy.exporters.command"]["command"] == ["export"]
    assert listed["cips_deploy.train.command"]["command"] == ["train"]
    assert listed["cips_deploy.exporters.engines"]["engine"] == ["onnx", "trt"]
    assert listed["cips_deploy.plugins.outputs"]["output_format"] == ["dzi", "png", "tiff"]
    assert listed["cips_deploy.plugins.chunkers"]["chunker"] == ["fixed", "memory", "rows"]
    assert "render" in listed["cips_deploy.cli"]["command"] and "export" not in listed["cips_deploy.cli"]["command"]
    text = invoke("plugins").output
    assert "cips_deploy.exporters.engines  [built-in]  cips-deploy" in text and "    engines: onnx, trt" in text
    assert "cips_deploy.plugins.flat  [built-in]  cips-deploy" in text and "    topology: flat" in text


class Copier(Exporter):
    """A test engine: copies the checkpoint's bytes and records what the command passed."""

    name = "copy"
    description = "copies the checkpoint"
    families = ("skip",)
    precisions = ("fp32", "fp16")
    calls: list = []

    def export(self, source, *, output, overwrite, precision, **options):
        self.check_request("skip", precision)
        self.calls.append((source, output, overwrite, precision, options))
        output = Path(output or "copy.bin")
        output.write_bytes(Path(source).read_bytes())

        class Result:
            files = [output]

        return Result()


class EnginePlugin:
    @staticmethod
    @hookimpl
    def register_exporters(register):
        register(Copier())
        register(object())  # malformed: no name, no export(); recorded, the rest is kept


@pytest.fixture
def engine_registry(monkeypatch):
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always", PluginWarning)
        registry = load_registry(entry_points=False, extra_plugins=[("test-engine", EnginePlugin)])
    monkeypatch.setattr(plugin_manager, "_default_registry", registry)
    return registry


def test_export_offers_and_dispatches_to_a_registered_engine(engine_registry, tmp_path):
    assert list(engine_registry.exporters) == ["onnx", "trt", "web", "copy"]
    assert "invalid exporter" in engine_registry.plugins["test-engine"].problems[0]
    assert "[onnx|trt|web|copy]" in invoke("export", "--help").output
    source = tmp_path / "model.bin"
    source.write_bytes(b"weights")
    result = invoke("export", source, "--engine", "copy", "-o", tmp_path / "out.bin", "--precision", "fp16", "--opset", "18")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"Wrote {tmp_path / 'out.bin'}"
    assert (tmp_path / "out.bin").read_bytes() == b"weights"
    _, output, overwrite, precision, options = Copier.calls[-1]
    assert (output, overwrite, precision, options["opset"], options["validate"]) == (tmp_path / "out.bin", False, "fp16", 18, True)
    refused = invoke("export", source, "--engine", "copy", "--precision", "bf16")
    assert refused.exit_code == 1 and refused.output.strip() == "Error: The copy engine is built in fp32, fp16, not bf16."
    listed = {row["name"]: row["provides"] for row in json.loads(invoke("plugins", "--json").output)}
    assert listed["test-engine"]["engine"] == ["copy"]


def test_exporter_check_request_names_the_families():
    with pytest.raises(CipsError, match=r"^The copy engine exports skip generators, not creps\.$"):
        Copier().check_request("creps", "fp32")

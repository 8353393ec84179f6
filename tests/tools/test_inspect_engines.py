"""`cips-deploy inspect` (and `info`) on what the exporters write, without torch: ONNX engines
(external data too), TensorRT plans' sidecars, Triton repositories, web sites, engine folders."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil

import pytest
from click.testing import CliRunner

from cips_deploy.cli import cli
from cips_deploy.exporters.metadata import read_onnx_props
from cips_deploy.models import CREPS_DEMO_ENGINE, DEMO_ENGINE, DEMO_MODEL

pytestmark = pytest.mark.runtime


def inspect(*args, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["inspect", *map(str, args)])
    assert result.exit_code == code, result.output
    return result.output


def facts_of(path) -> dict:
    return json.loads(inspect(path, "--json"))


@pytest.fixture
def no_torch(monkeypatch):
    """As in a base install: ``importlib.util.find_spec("torch")`` finds nothing."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "torch" else real(name, *args))


def test_an_onnx_engine_says_what_it_is(no_torch):
    facts = facts_of(DEMO_ENGINE)
    assert facts["format"] == "ONNX model" and facts["ir_version"] >= 7 and facts["opsets"] == {"ai.onnx": 17}
    assert facts["producer"].startswith("cips-deploy")
    assert facts["inputs"] == [{"name": "coords", "dtype": "float32", "shape": ["batch", "points", 2]},
                               {"name": "w", "dtype": "float32", "shape": ["batch", 64]}]
    assert facts["outputs"] == [{"name": "rgb", "dtype": "float32", "shape": ["batch", "points", 3]}]
    assert facts["role"] == "synthesis" and facts["architecture"] == "CIPSskip" and facts["coordinate_space"] == "cylinder"
    assert facts["precision"] == "fp32" and facts["quality"] is None and facts["content_hash"] == "verified"
    assert facts["source_file"] == DEMO_MODEL.name and facts["engines_beside_it"] == "mapping, spatial"
    assert facts["size_bytes"] == DEMO_ENGINE.stat().st_size
    assert sum(facts["operators"].values()) == facts["nodes"] and facts["operators"]["MatMul"] > 0
    assert facts["parameters"] is None and "needs PyTorch" in facts["note"]  # the family computes them


def test_graph_facts_agree_with_the_onnx_package():
    onnx = pytest.importorskip("onnx")
    import numpy as np

    for path in (DEMO_ENGINE, CREPS_DEMO_ENGINE.with_name("creps-demo.compose.onnx")):
        facts, model = facts_of(path), onnx.load(str(path))
        histogram = {}
        for node in model.graph.node:
            histogram[node.op_type] = histogram.get(node.op_type, 0) + 1
        assert facts["operators"] == histogram and facts["ir_version"] == model.ir_version
        assert facts["initializers"]["count"] == len(model.graph.initializer)
        assert facts["initializers"]["elements"] == sum(int(np.prod(t.dims)) for t in model.graph.initializer)
        assert [i["name"] for i in facts["inputs"]] == [i.name for i in model.graph.input]


def test_the_line_factored_engines():
    main = facts_of(CREPS_DEMO_ENGINE)
    assert main["engines_beside_it"] == "mapping, lines, compose" and main["family"] == "CREPS"
    lines = facts_of(CREPS_DEMO_ENGINE.with_name("creps-demo.lines.onnx"))
    assert lines["role"] == "lines" and [i["name"] for i in lines["inputs"]] == ["v", "u", "w"]
    assert lines["outputs"][0]["shape"][:2] == ["batch", "rows"]
    compose = facts_of(CREPS_DEMO_ENGINE.with_name("creps-demo.compose.onnx"))
    assert compose["role"] == "compose" and compose["outputs"][0]["shape"] == ["batch", "pixels", 3]


def test_info_is_inspect():
    result = CliRunner().invoke(cli, ["info", str(DEMO_ENGINE), "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == facts_of(DEMO_ENGINE)
    text = inspect(DEMO_ENGINE)
    assert "coords  float32  [batch, points, 2]" in text and "content_hash" in text and "verified" in text


def test_external_data(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(DEMO_ENGINE))
    path = tmp_path / "external.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="external.onnx.data",
              size_threshold=0)
    facts = facts_of(path)
    assert facts["initializers"]["external_files"] == ["external.onnx.data"]
    assert facts["size_bytes"] == path.stat().st_size + (tmp_path / "external.onnx.data").stat().st_size
    assert facts["content_hash"] == "verified"  # the hash covers the weights wherever they are stored
    (tmp_path / "external.onnx.data").write_bytes(b"\0" * 16)
    assert facts_of(path)["content_hash"].startswith("FAILED")


def test_json_is_strict_where_a_psnr_is_infinite(tmp_path):
    """An engine identical to its reference has an infinite PSNR; --json writes null (jq and
    JavaScript's JSON.parse refuse the Infinity token that Python's json writes by default)."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(DEMO_ENGINE))
    report = {"mode": "fp16", "seeds": [0, 1], "side": 64, "truncation": 1.0, "psnr_db": [float("inf"), 80.0],
              "max_abs": [0.0, 1e-4], "min_psnr": 40.0}
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        "cips_deploy.quality": json.dumps(report)})
    onnx.save(model, str(tmp_path / "identical.onnx"))
    text = inspect(tmp_path / "identical.onnx", "--json")

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    facts = json.loads(text, parse_constant=refuse)
    assert facts["quality"]["worst_psnr_db"] == 80.0 and facts["quality"]["passed"] is True
    report["psnr_db"] = [float("inf")] * 2
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        "cips_deploy.quality": json.dumps(report)})
    onnx.save(model, str(tmp_path / "identical.onnx"))
    facts = json.loads(inspect(tmp_path / "identical.onnx", "--json"), parse_constant=refuse)
    assert facts["quality"]["worst_psnr_db"] is None and facts["quality"]["passed"] is True


def test_a_plan_is_described_from_its_sidecar(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not really a plan")
    sidecar = {
        "format": "cips-deploy/tensorrt-engine", "format_version": "1", "tensorrt_version": "10.0", "gpu": {"name": "X"},
        "precision": "fp16", "profile": {"coords": {"min": [1, 1, 2], "opt": [1, 4096, 2], "max": [1, 65536, 2]}},
        "max_batch": 1, "chunk_size": 65536, "io": {"role": "synthesis"},
        "plan_sha256": hashlib.sha256(plan.read_bytes()).hexdigest(), "metadata": read_onnx_props(DEMO_ENGINE),
    }
    (tmp_path / "model.plan.json").write_text(json.dumps(sidecar))
    facts = facts_of(plan)
    assert facts["format"] == "TensorRT plan" and facts["precision"] == "fp16" and facts["plan_sha256"] == "matches the sidecar"
    assert facts["architecture"] == "CIPSskip" and facts["profile"]["coords"]["max"] == [1, 65536, 2]
    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt is not installed" in facts["tensorrt_engine"]["skipped"]
    plan.write_bytes(b"changed")
    assert facts_of(plan)["plan_sha256"] == "DIFFERS from the sidecar"
    (tmp_path / "model.plan.json").unlink()
    assert "has no sidecar" in inspect(plan, code=1)


def test_a_triton_repository(tmp_path):
    from cips_deploy.exporters.triton import write_engine_repository

    write_engine_repository(tmp_path / "repo", DEMO_ENGINE, name="pano")
    facts = facts_of(tmp_path / "repo")
    models = {model["name"]: model for model in facts["models"]}
    assert facts["format"] == "Triton model repository" and {"pano", "pano_mapping"} <= set(models)
    assert models["pano"]["role"] == "synthesis" and models["pano_mapping"]["role"] == "mapping"
    assert [i["name"] for i in models["pano"]["inputs"]] == ["coords", "w"] and models["pano"]["max_batch_size"] > 0
    assert models["pano"]["versions"]["1"][0]["file"].startswith("model")


def test_a_web_site_and_an_engine_folder(tmp_path):
    result = CliRunner().invoke(cli, ["export", "--engine", "web", "-o", str(tmp_path / "site")])
    assert result.exit_code == 0, result.output
    site = facts_of(tmp_path / "site")
    assert site["format"] == "cips-deploy web site" and site["model"]["arch"] == "skip"
    assert {role: e["sha256"] for role, e in site["engines"].items()} == {"mapping": "matches the manifest",
                                                                          "synthesis": "matches the manifest"}
    folder = tmp_path / "engines"
    folder.mkdir()
    for name in ("creps-demo.onnx", "creps-demo.mapping.onnx", "creps-demo.lines.onnx", "creps-demo.compose.onnx"):
        shutil.copy(CREPS_DEMO_ENGINE.with_name(name), folder / name)
    facts = facts_of(folder)
    assert facts["format"] == "engine folder" and len(facts["engines"]) == 4
    assert sorted(e["role"] for e in facts["engines"]) == ["compose", "lines", "mapping", "synthesis"]
    assert facts["size_bytes"] == sum(p.stat().st_size for p in folder.iterdir())


def test_an_onnx_model_that_is_not_ours(tmp_path):
    onnx = pytest.importorskip("onnx")
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, ["n", None, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, ["n", None, 4])
    model = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                                   producer_name="someone", opset_imports=[onnx.helper.make_opsetid("", 18)])
    onnx.save(model, str(tmp_path / "plain.onnx"))
    facts = facts_of(tmp_path / "plain.onnx")
    assert facts["inputs"] == [{"name": "x", "dtype": "float16", "shape": ["n", None, 4]}]
    assert facts["operators"] == {"Relu": 1} and facts["producer"] == "someone" and "not a cips-deploy engine" in facts["note"]


def _if_model(onnx, depth: int, body_ops=("Add", "Mul")):
    """A model whose If nests ``depth`` levels deep in its then-branches; every leaf branch holds ``body_ops`` and a weight."""
    helper, FLOAT = onnx.helper, onnx.TensorProto.FLOAT
    out = helper.make_tensor_value_info("y", FLOAT, [4])
    weight = helper.make_tensor("k", FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    nodes = [helper.make_node(body_ops[0], ["x", "k"], ["t"]), helper.make_node(body_ops[1], ["t", "k"], ["y"])]
    leaf = branch = helper.make_graph(nodes, "leaf", [], [out], initializer=[weight])
    for level in range(depth):  # the then-branch nests; the else-branch is a leaf (the file grows linearly)
        node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=leaf)
        branch = helper.make_graph([node], f"level{level}", [], [out])
    inputs = [helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []), helper.make_tensor_value_info("x", FLOAT, [4])]
    graph = helper.make_graph(list(branch.node), "main", inputs, [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_operators_inside_if_branches_are_counted(tmp_path):
    onnx = pytest.importorskip("onnx")
    onnx.save(_if_model(onnx, 1), str(tmp_path / "branchy.onnx"))
    facts = facts_of(tmp_path / "branchy.onnx")
    # The main graph has one If; each of its two branches an Add, a Mul and a 4-element weight.
    assert facts["operators"] == {"Add": 2, "Mul": 2, "If": 1} and facts["nodes"] == 5
    assert facts["initializers"]["count"] == 2 and facts["initializers"]["elements"] == 8
    assert [t["name"] for t in facts["inputs"]] == ["c", "x"]  # the branches add none


def test_subgraphs_nested_without_end_are_refused(tmp_path):
    from cips_deploy.runtime.protobuf import field

    # Written by hand: the onnx package itself cannot build this (protobuf stops at 100 levels of
    # messages); a hostile file can. GraphProto.node 1 > NodeProto.attribute 5 > AttributeProto.g 6 > ...
    graph = field(1, field(4, "Relu"))
    for _ in range(200):
        graph = field(1, field(4, "If") + field(5, field(1, "then_branch") + field(6, graph)))
    (tmp_path / "deep.onnx").write_bytes(field(1, 8) + field(7, graph))  # ir_version 8, graph
    output = inspect(tmp_path / "deep.onnx", code=1)
    assert "nest deeper than 64" in output and len(output.strip().splitlines()) == 1


@pytest.mark.parametrize("name, content, message", [
    ("missing.onnx", None, "No such"),
    ("text.onnx", b"\xff\xff\xff\xff not protobuf", "is not an ONNX model"),
    ("empty.onnx", b"", "is not an ONNX model: it states no IR version"),
    ("other.onnx", b"\x12\x05hello", "is not an ONNX model: it states no IR version"),  # valid protobuf, no model
    ("empty", "folder", "holds no config.pbtxt, manifest.json, .onnx or .plan"),
])
def test_bad_input_is_one_sentence(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    output = inspect(path, code=1)
    assert message in output and "Traceback" not in output and len(output.strip().splitlines()) == 1


def test_a_checkpoint_without_torch_says_so(no_torch):
    output = inspect(DEMO_MODEL, code=1)
    assert "needs PyTorch" in output and len(output.strip().splitlines()) == 1

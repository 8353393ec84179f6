"""Triton model repositories, parsed with Triton's own model-config protobuf (from tritonclient)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import tempfile
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from google.protobuf import text_format

import cips_deploy
from cips_deploy.errors import CipsError
from cips_deploy.exporters.metadata import build_metadata
from cips_deploy.exporters.pipeline import export_checkpoint
from cips_deploy.exporters.spec import synthesis_spec
from cips_deploy.cli import cli
from cips_deploy.exporters.triton import MODEL_PY, config_pbtxt, triton_name


def model_config_pb2():
    """tritonclient's generated model_config_pb2, loaded by path: importing the
    ``tritonclient.grpc`` package would demand grpcio, which parsing does not need."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None:
        pytest.skip("tritonclient (test extra) is not installed: it ships Triton's model_config_pb2")
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pb2():
    return model_config_pb2()


def parse(pb2, path: Path):
    return text_format.Parse(path.read_text(), pb2.ModelConfig())


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    folder = tmp_path_factory.mktemp("triton")
    checkpoint = folder / "tiny.safetensors"
    cips_deploy.create("tiny", coordinate_space="cylinder", seed=8).save(checkpoint)
    summary = export_checkpoint(checkpoint, engine="onnx", triton_repo=folder / "repo", triton_model_name="panorama")
    return folder / "repo", summary


def test_onnx_repository_layout_and_config(pb2, repository):
    repo, summary = repository
    assert summary.files == []  # only the repository was asked for
    assert sorted(p.name for p in repo.iterdir()) == ["panorama", "panorama_ensemble", "panorama_mapping"]
    config = parse(pb2, repo / "panorama" / "config.pbtxt")
    assert config.name == "panorama" and config.backend == "onnxruntime" and config.max_batch_size == 8
    assert config.HasField("dynamic_batching")  # equal-size requests merge along the batch axis
    inputs = {i.name: (i.data_type, list(i.dims)) for i in config.input}
    assert inputs == {"coords": (pb2.TYPE_FP32, [-1, 2]), "w": (pb2.TYPE_FP32, [64])}  # B left out of dims
    assert [(o.name, list(o.dims)) for o in config.output] == [("rgb", [-1, 3])]
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, pb2.ModelInstanceGroup.KIND_AUTO)]
    assert config.parameters["cips_deploy.coordinate_space"].string_value == "cylinder"
    assert config.parameters["cips_deploy.role"].string_value == "synthesis"
    mapping = parse(pb2, repo / "panorama_mapping" / "config.pbtxt")
    assert [(i.name, list(i.dims)) for i in mapping.input] == [("z", [64])]
    assert mapping.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU
    ensemble = parse(pb2, repo / "panorama_ensemble" / "config.pbtxt")
    assert ensemble.platform == "ensemble" and [i.name for i in ensemble.input] == ["z", "coords"]
    steps = ensemble.ensemble_scheduling.step
    assert [step.model_name for step in steps] == ["panorama_mapping", "panorama"]
    assert steps[0].output_map["w"] == steps[1].input_map["w"]  # the mapping's w feeds synthesis
    assert sorted(p.name for p in (repo / "panorama_ensemble").iterdir()) == [".cips-deploy-output", "1", "config.pbtxt"]  # and the owner marker


def test_python_backend_repository(pb2, tmp_path):
    """--triton-backend python: model.py beside model.onnx, on the CPU, for servers without onnxruntime."""
    checkpoint = tmp_path / "t.safetensors"
    cips_deploy.create("tiny", seed=1).save(checkpoint)
    export_checkpoint(checkpoint, triton_repo=tmp_path / "repo", triton_backend="python", validate=False)
    for name in ("t", "t_mapping"):
        version = tmp_path / "repo" / name / "1"
        assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "model.py"]
        assert (version / "model.py").read_bytes() == MODEL_PY.read_bytes()
        assert (version / "model.py").stat().st_ino != MODEL_PY.stat().st_ino  # a copy, never a link into the package
        config = parse(pb2, tmp_path / "repo" / name / "config.pbtxt")
        assert config.backend == "python" and config.max_batch_size == 8
        assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU


def test_backend_must_fit_the_engine(tmp_path):
    checkpoint = tmp_path / "t.safetensors"
    cips_deploy.create("tiny", seed=1).save(checkpoint)
    with pytest.raises(CipsError, match="cannot be served by Triton's tensorrt backend"):
        export_checkpoint(checkpoint, triton_repo=tmp_path / "repo", triton_backend="tensorrt", validate=False)
    with pytest.raises(CipsError, match="add --triton-repo"):
        export_checkpoint(checkpoint, output=tmp_path / "t.onnx", triton_backend="python", validate=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]


@pytest.mark.parametrize("name", ["../../{u}", "/", "..", "a/b", "{u}/../..", ".hidden", "", "x" * 101, "ünï"])
def test_model_name_cannot_leave_the_repository(tmp_path, monkeypatch, name):
    """issue 11: --name was joined onto a folder before it was checked (../../x wrote /x.onnx)."""
    unique = f"cips-traversal-{uuid.uuid4().hex[:8]}"
    name = name.format(u=unique)
    checkpoint = tmp_path / "t.safetensors"
    cips_deploy.create("tiny", seed=1).save(checkpoint)
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    temp_before = set(Path(tempfile.gettempdir()).iterdir())
    result = CliRunner().invoke(cli, ["export", str(checkpoint), "--triton-repo", "repo", "--name", name, "--no-validate"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "must be 1 to 100 letters, digits" in result.output
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["a", "a/b", "t.safetensors"]
    for folder in (Path("/"), tmp_path, Path(tempfile.gettempdir())):
        assert not list(folder.glob(f"{unique}*")) and not (folder / ".onnx").exists()
    staging = [p for p in Path(tempfile.gettempdir()).iterdir() if p.name.startswith(".cips-export") and p not in temp_before]
    assert staging == []


def test_existing_repository_file_is_refused_before_work(tmp_path):
    checkpoint = tmp_path / "t.safetensors"
    cips_deploy.create("tiny", seed=1).save(checkpoint)
    (tmp_path / "repo").write_text("not a folder")
    with pytest.raises(CipsError, match="it is a file"):
        export_checkpoint(checkpoint, triton_repo=tmp_path / "repo")


def test_repository_model_runs(repository):
    repo, _ = repository
    session = ort.InferenceSession(str(repo / "panorama" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    w = np.zeros((1, 64), np.float32)
    (rgb,) = session.run(["rgb"], {"coords": np.zeros((1, 7, 2), np.float32), "w": w})
    assert rgb.shape == (1, 7, 3)


def test_existing_model_needs_force(repository, tmp_path):
    repo, _ = repository
    checkpoint = tmp_path / "t.safetensors"
    cips_deploy.create("tiny", seed=1).save(checkpoint)
    with pytest.raises(CipsError, match="already exists; pass --force"):
        export_checkpoint(checkpoint, engine="onnx", triton_repo=repo, triton_model_name="panorama", validate=False)


def test_external_data_travels_with_the_model(pb2, tmp_path):
    checkpoint = tmp_path / "t.safetensors"
    cips_deploy.create("tiny", seed=1).save(checkpoint)
    export_checkpoint(checkpoint, engine="onnx", output=tmp_path / "t.onnx", triton_repo=tmp_path / "repo",
                      external_data=True, validate=False, overwrite=True)
    version = tmp_path / "repo" / "t" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "t.onnx.data"]  # the name the model refers to
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "coords"
    assert parse(pb2, tmp_path / "repo" / "t" / "config.pbtxt").name == "t"


def test_tensorrt_and_spatial_config(pb2, tmp_path):
    generator = cips_deploy.create("tiny", seed=0)
    generator.provenance = {"source_file": 'odd "name"\\ and ünïcode\n'}
    spec = synthesis_spec(generator.config, spatial_style=True)
    metadata = build_metadata(generator, spec, opset=17, source_file='ünï "quoted"\\path\n.pt')
    path = tmp_path / "config.pbtxt"
    path.write_text(config_pbtxt("tiny", "tensorrt", spec, metadata, "KIND_GPU", max_batch_size=4))
    config = parse(pb2, path)
    assert config.backend == "tensorrt" and config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
    assert config.max_batch_size == 4 and list(next(i for i in config.input if i.name == "w").dims) == [-1, 64]
    # Every metadata value survives the text format exactly (quotes, backslashes, newlines, UTF-8).
    assert {key: value.string_value for key, value in config.parameters.items()} == metadata.to_strings()
    assert config.parameters["cips_deploy.source_file"].string_value == 'ünï "quoted"\\path\n.pt'


def test_triton_names():
    assert triton_name("churches g_ema.v2") == "churches_g_ema_v2"
    with pytest.raises(CipsError):
        triton_name("...")


def test_next_start_sweeps_what_a_killed_serve_left(tmp_path, monkeypatch):
    """Workspaces and shared-memory regions of dead processes go; those of living ones stay."""
    from cips_deploy.exporters import triton_server

    dead = _dead_pid()
    alive = os.getpid()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(triton_server, "SHM", shm)
    (tmp_path / f"cips-triton.{dead}.ab_c").mkdir()
    (tmp_path / f"cips-triton.{alive}.def").mkdir()
    (shm / f"cips_triton_{dead}_ab_c_1234").write_bytes(b"")
    (shm / f"cips_triton_{alive}_def_5678").write_bytes(b"")
    (shm / "someone_elses_region").write_bytes(b"")
    fresh = triton_server.new_workspace()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"cips-triton.{alive}.def", fresh.name, "shm"])
    assert sorted(p.name for p in shm.iterdir()) == [f"cips_triton_{alive}_def_5678", "someone_elses_region"]


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_triton_backend_options_are_checked_before_connecting(tiny):
    """Bad options end in one sentence without any server (no connection is attempted)."""
    from cips_deploy.exporters.triton_backend import TritonBackend, parse_urls

    assert parse_urls("127.0.0.1:8001, localhost:9001") == ["127.0.0.1:8001", "localhost:9001"]
    for text, message in (("", "host:port"), ("grpc://h:1", "no scheme"), ("h:0", "not host:port"),
                          ("h:1,h:1", "names a server twice"), ("a/b:1", "not host:port")):
        with pytest.raises(CipsError, match=message):
            parse_urls(text)
    with pytest.raises(CipsError, match="needs --backend-option model=NAME"):
        TritonBackend(tiny)  # a Generator has no file name to derive the served name from
    with pytest.raises(CipsError, match="must be 1 to 100 letters"):
        TritonBackend(tiny, model="../x")
    with pytest.raises(CipsError, match="inflight must be a whole number"):
        TritonBackend(tiny, model="x", inflight="2.5")


def test_a_per_layer_style_repository_has_no_ensembles(pb2, tmp_path):
    """--layer-styles: the synthesis and grid models take ws [B, L, S]; ensembles (which map one
    z to one style) are not written, for a CREPS model's grid either."""
    checkpoint = tmp_path / "creps.safetensors"
    cips_deploy.create("tiny", arch="creps", seed=1).save(checkpoint)
    repo = tmp_path / "repo"
    export_checkpoint(checkpoint, output=tmp_path / "creps.onnx", triton_repo=repo, validate=False, layer_styles=True)
    assert sorted(path.name for path in repo.iterdir()) == ["creps", "creps_compose", "creps_lines", "creps_mapping"]
    config = cips_deploy.create("tiny", arch="creps").config
    layers = config.family.style_layers(config)
    for model in ("creps", "creps_lines", "creps_compose"):
        served = parse(pb2, repo / model / "config.pbtxt")
        assert list(next(i for i in served.input if i.name == "w").dims) == [layers, 64]

"""Backend specs (cips_deploy/runtime/backend_specs.py): files, BACKEND:TARGET[,KEY=VALUE], address backends."""

from __future__ import annotations

import pytest

from cips_deploy.errors import CipsError
from cips_deploy.models import DEMO_ENGINE
from cips_deploy.runtime.backend_specs import BackendSpec, open_backend, parse_backend_spec

pytestmark = pytest.mark.runtime


def test_a_plain_file_names_no_backend():
    assert parse_backend_spec("model.onnx") == BackendSpec("model.onnx", None, "model.onnx")
    assert parse_backend_spec("C:model.onnx").backend is None  # one letter: a drive, not a backend


def test_a_spec_names_backend_model_options_and_device():
    spec = parse_backend_spec("torch:ckpt.safetensors,precision=bf16, device = cuda:1")
    assert (spec.backend, spec.model, spec.options, spec.device) == ("torch", "ckpt.safetensors", {"precision": "bf16"}, "cuda:1")
    assert parse_backend_spec("openvino:dir/m.onnx").options == {}


def test_an_existing_file_wins_over_the_spec_reading(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "torch:odd.onnx").write_bytes(b"")
    assert parse_backend_spec("torch:odd.onnx").backend is None


def test_an_address_backend_takes_host_port_and_name():
    spec = parse_backend_spec("triton:127.0.0.1:8001/pano,source=pano.onnx,protocol=http")
    assert spec.backend == "triton" and spec.model == "pano.onnx"
    assert spec.options == {"url": "127.0.0.1:8001", "model": "pano", "protocol": "http"}
    assert parse_backend_spec("triton:host:8000/pano").model is None  # the caller supplies the source


@pytest.mark.parametrize("text, message", [
    ("torch:", "names no model"),
    ("torch:m.pt,precision", "KEY=VALUE"),
    ("torch:m.pt,a=1,a=2", "twice"),
    ("triton:nohost", "HOST:PORT/MODEL"),
    ("triton:h:1/m,url=h:2", "gives url twice"),
    ("onnxruntime:m.onnx,source=x.onnx", "source= is for address backends"),
    ("", "empty"),
])
def test_malformed_specs_are_one_sentence(text, message):
    with pytest.raises(CipsError, match=message) as refused:
        parse_backend_spec(text)
    assert "\n" not in str(refused.value)


def test_open_backend_builds_through_the_registry(registry):
    backend = open_backend(registry, parse_backend_spec(f"onnxruntime:{DEMO_ENGINE},providers=cpu"))
    try:
        assert backend.name == "onnxruntime" and backend.config.coordinate_space == "cylinder"
    finally:
        backend.close()
    with pytest.raises(CipsError, match="did you mean 'onnxruntime'"):
        open_backend(registry, parse_backend_spec(f"onnxrt:{DEMO_ENGINE}"))
    with pytest.raises(CipsError, match="has no option 'colour'"):
        open_backend(registry, parse_backend_spec(f"onnxruntime:{DEMO_ENGINE},colour=red"))
    with pytest.raises(CipsError, match="No such model file"):
        open_backend(registry, parse_backend_spec("missing.onnx"))
    with pytest.raises(CipsError, match="needs source=FILE"):
        open_backend(registry, parse_backend_spec("triton:127.0.0.1:1/pano"))

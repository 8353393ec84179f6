"""Official CREPS snapshots with z_dim != w_dim and class labels (c_dim > 0): parity with the
official outputs, checkpoints, and the ONNX engines with the label input ``c``.

The snapshots and their reference outputs were made with the official code
(tests/fixtures/official-creps-cond/README.md, benchmarks/make_official_creps_cond_fixtures.py).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import cips_deploy
from cips_deploy.errors import CipsError
from cips_deploy.families.official_creps import read_snapshot, to_official
from cips_deploy.runtime.coords import grid_from_axes
from cips_deploy.runtime.styles import class_label

FIXTURES = Path(__file__).parents[1] / "fixtures" / "official-creps-cond"
SNAPSHOTS = ["creps_r16_z32_w64", "creps_r16_cond3"]
TOLERANCE = 5e-5  # the bar for official parity in float32 (measured: about 5e-7)

_cache: dict = {}


def snapshot(name: str):
    """(our generator, the official reference cases) of a fixture snapshot, loaded once."""
    if name not in _cache:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an official file loads without any warning
            generator = cips_deploy.load(FIXTURES / f"{name}.pkl")
        _cache[name] = generator, torch.load(FIXTURES / f"{name}_ref.pt", weights_only=True)
    return _cache[name]


def official_render(generator, case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Our w [2, S] and rgb in the official layout [2, 3, N, N] for a reference case."""
    u, v = 2 * case["coords"][0, :, 1, 0] - 1, 2 * case["coords"][0, :, 0, 0] - 1  # official [0, 1] -> ours
    points = torch.from_numpy(grid_from_axes(u.numpy(), v.numpy())).expand(2, -1, -1).contiguous()
    with torch.no_grad():
        w = generator.map(case["z"], truncation=case["truncation_psi"], c=case.get("c"))
        rgb = generator.synthesize(points, w)
    n = u.numel()
    return w, rgb.reshape(2, n, n, 3).permute(0, 3, 1, 2)


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_snapshots_load_with_their_z_and_label_widths(name):
    generator, _ = snapshot(name)
    config = generator.config
    assert (config.latent_dim, config.style_dim, config.c_dim) == (32, 64, 3 if "cond" in name else 0)
    official = read_snapshot(FIXTURES / f"{name}.pkl")
    ours = to_official(generator.state_dict())  # one to one, the label embedding included
    assert set(ours) == set(official.state_dict) and all(torch.equal(ours[k], official.state_dict[k]) for k in ours)
    assert ("mapping.embed.weight" in ours) == ("cond" in name)
    assert ours["mapping.fc0.weight"].shape == (64, 32 + (64 if "cond" in name else 0))


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_every_case_matches_the_official_forward(name):
    generator, refs = snapshot(name)
    for case_name, case in refs.items():
        w, rgb = official_render(generator, case)
        assert (w - case["ws"][:, 0]).abs().max() <= 1e-6, case_name  # the mapping: the same operations
        assert (case["ws"] == case["ws"][:, :1]).all()  # one w for every layer (no mixing in these cases)
        assert (rgb - case["rgb"]).abs().max() <= TOLERANCE, case_name


def test_classes_render_differently_and_each_as_the_official_code():
    generator, refs = snapshot("creps_r16_cond3")
    zero, one = refs["class0_psi1_fp32"], refs["class1_psi1_fp32"]
    assert torch.equal(zero["z"], one["z"]) and zero["c"][:, 0].all() and one["c"][:, 1].all()
    _, ours_zero = official_render(generator, zero)
    _, ours_one = official_render(generator, one)
    assert (ours_zero - ours_one).abs().max() > 0.1  # the label changes the picture...
    assert (ours_zero - zero["rgb"]).abs().max() <= TOLERANCE  # ...exactly as the official code does
    assert (ours_one - one["rgb"]).abs().max() <= TOLERANCE
    # The runtime's label is the one gen_images.py builds.
    np.testing.assert_array_equal(class_label(generator.config, 1), one["c"][:1].numpy())


def test_map_asks_for_a_label_exactly_where_there_is_one():
    conditional, refs = snapshot("creps_r16_cond3")
    plain, _ = snapshot("creps_r16_z32_w64")
    z = refs["class0_psi1_fp32"]["z"]
    with pytest.raises(CipsError, match=r"class-conditional \(3 classes\): give a label c \[B, 3\]"):
        conditional.map(z)
    with pytest.raises(CipsError, match=r"label c must have shape \[2, 3\], not \[2, 4\]"):
        conditional.map(z, c=torch.zeros(2, 4))
    with pytest.raises(CipsError, match="unconditional: it takes no class label"):
        plain.map(z, c=torch.zeros(2, 3))
    with pytest.raises(CipsError, match=r"z must have shape \[B, 32\]"):
        plain.map(torch.zeros(2, 64))
    # numpy labels (the runtime's) work as tensors do
    w = conditional.map(z.numpy(), c=np.eye(3, dtype=np.float32)[[0, 0]])
    assert torch.equal(w, conditional.map(z, c=refs["class0_psi1_fp32"]["c"]))


def test_our_checkpoint_keeps_z_dim_and_c_dim(tmp_path):
    generator, refs = snapshot("creps_r16_cond3")
    generator.save(tmp_path / "cond.safetensors")
    again = cips_deploy.load(tmp_path / "cond.safetensors")
    assert again.config == generator.config and again.config.c_dim == 3 and again.config.latent_dim == 32
    case = refs["class2_psi0.7_fp32"]
    assert (official_render(again, case)[1] - case["rgb"]).abs().max() <= TOLERANCE


def test_mean_w_draws_latents_and_classes():
    generator, _ = snapshot("creps_r16_cond3")
    mean = generator.mean_w(n_samples=64)
    assert mean.shape == (64,) and torch.isfinite(mean).all()


# ----------------------------------------------------------------------- engines


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from cips_deploy.exporters import export_onnx

    generator, _ = snapshot("creps_r16_cond3")
    return export_onnx(generator, tmp_path_factory.mktemp("cond") / "cond.onnx")


@pytest.mark.slow
def test_the_mapping_engine_takes_the_label_and_matches_torch(exported):
    import onnx

    from cips_deploy.exporters import OnnxEngine
    from cips_deploy.exporters.metadata import read_onnx_metadata

    assert exported.report.ok
    mapping_cases = [case.case for case in exported.report.cases if case.engine == "mapping"]
    assert "each of the 3 classes" in mapping_cases  # validated against the torch mapping, every class
    graph = onnx.load(str(exported.mapping), load_external_data=False).graph
    shapes = {value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] for value in graph.input}
    assert shapes == {"z": ["batch", 32], "c": ["batch", 3]}
    meta = read_onnx_metadata(exported.synthesis)
    assert (meta.z_dim, meta.c_dim, meta.style_dim) == (32, 3, 64)

    generator, refs = snapshot("creps_r16_cond3")
    engine = OnnxEngine(exported.synthesis)
    case = refs["classes01_scale1.5_psi0.7_fp32"]
    w = engine.map(case["z"].numpy(), truncation=0.7, c=case["c"].numpy())
    assert np.abs(w - case["ws"][:, 0].numpy()).max() <= 1e-5
    with pytest.raises(CipsError, match="class-conditional"):
        engine.map(case["z"].numpy(), truncation=0.7)


@pytest.mark.slow
def test_onnxruntime_renders_a_class_as_torch_does(exported):
    generator, _ = snapshot("creps_r16_cond3")
    engine = str(exported.synthesis)
    images = {k: cips_deploy.render(engine, "flat", 16, 16, seed=5, truncation=0.7, class_index=k) for k in (0, 1)}
    assert np.abs(images[0].astype(int) - images[1].astype(int)).max() > 10  # two classes, two pictures
    torch_image = cips_deploy.render(generator, "flat", 16, 16, seed=5, truncation=0.7, class_index=1, backend="torch")
    assert np.abs(images[1].astype(int) - torch_image.astype(int)).max() <= 1  # 8-bit rounding at most
    with pytest.raises(CipsError, match=r"class-conditional \(3 classes\): give --class N"):
        cips_deploy.render(engine, "flat", 16, 16, seed=5)
    if importlib.util.find_spec("openvino") is not None:  # the OpenVINO backend feeds c to the same engine
        openvino = cips_deploy.render(engine, "flat", 16, 16, seed=5, truncation=0.7, class_index=1, backend="openvino")
        assert np.abs(openvino.astype(int) - images[1].astype(int)).max() <= 1


@pytest.mark.slow
def test_triton_mapping_models_and_ensembles_take_the_label(exported, tmp_path):
    from google.protobuf import text_format

    from cips_deploy.exporters.triton import write_engine_repository

    from ..exporters.test_triton import model_config_pb2

    pb2 = model_config_pb2()
    write_engine_repository(tmp_path / "repo", exported.synthesis, name="cond")

    def config(model: str):
        return text_format.Parse((tmp_path / "repo" / model / "config.pbtxt").read_text(), pb2.ModelConfig())

    mapping = config("cond_mapping")
    assert [(i.name, list(i.dims)) for i in mapping.input] == [("z", [32]), ("c", [3])]
    assert [(o.name, list(o.dims)) for o in mapping.output] == [("w", [64])]
    assert mapping.parameters["cips_deploy.c_dim"].string_value == "3"
    for ensemble, inputs in (("cond_ensemble", ["z", "c", "coords"]), ("cond_grid", ["z", "c", "v", "u"])):
        joined = config(ensemble)
        assert [i.name for i in joined.input] == inputs
        first = joined.ensemble_scheduling.step[0]
        assert first.model_name == "cond_mapping" and dict(first.input_map) == {"z": "z", "c": "c"}

"""Official CREPS snapshots: safe reading, exact state dicts, parity with the official outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cips_deploy
from cips_deploy.cli import cli
from cips_deploy.families.creps_spec import creps_config
from cips_deploy.runtime.coords import grid_from_axes
from cips_deploy.families.creps import CrepsGenerator, to_unit
from cips_deploy.errors import CipsError
from cips_deploy.families.official_creps import SourceWarning, config_kwargs, read_snapshot, to_official

SNAPSHOTS = ["creps_r16_snapshot", "creps_r32_fp16_snapshot"]
MALICIOUS = ["global", "module_src", "storage_blob"]
PROBE = Path(__file__).parents[1] / "helpers" / "creps_payload_probe.py"


@pytest.fixture(scope="module")
def facts(official_creps_dir):
    return json.loads((official_creps_dir / "fixtures.json").read_text())


_cache: dict = {}


def snapshot(directory: Path, name: str) -> tuple[CrepsGenerator, dict]:
    if name not in _cache:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an official file loads without any warning
            generator = cips_deploy.load(directory / f"{name}.pkl")
        _cache[name] = generator, torch.load(directory / f"{name}_ref.pt", weights_only=True)
    return _cache[name]


def grid_of(case: dict) -> tuple[Tensor, Tensor, Tensor]:  # noqa: F821 - annotation only
    """A case's official coordinate buffer -> (u [N] columns, v [N] rows, our points [1, N*N, 2])."""
    u, v = 2 * case["coords"][0, :, 1, 0] - 1, 2 * case["coords"][0, :, 0, 0] - 1
    return u, v, torch.from_numpy(grid_from_axes(u.numpy(), v.numpy()))  # the runtime builds grids in numpy


def official_image(rgb: Tensor, n: int) -> Tensor:
    """Our rgb [B, n*n, 3] -> the official layout [B, 3, n, n]."""
    return rgb.reshape(rgb.shape[0], n, n, 3).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------- reading


@pytest.mark.parametrize("name", ["creps_r16_snapshot", "creps_r16_released_numpy1", "creps_r32_fp16_snapshot"])
def test_snapshots_give_g_ema_with_the_official_state_dict(official_creps_dir, facts, name):
    file_facts = facts["files"][f"{name}.pkl"]
    official = read_snapshot(official_creps_dir / f"{name}.pkl")
    assert official.official_source and official.init_kwargs == file_facts["G_ema_init_kwargs"]
    generator = cips_deploy.load(official_creps_dir / f"{name}.pkl")
    assert isinstance(generator, CrepsGenerator)
    assert generator.num_parameters == file_facts["num_parameters_G_ema"]
    assert generator.num_ws == file_facts["num_ws"]
    assert [generator.config.widths[i] for i in range(len(file_facts["channels"]))] == list(file_facts["channels"].values())
    assert {f"b{q}" for q in generator.fp16_blocks} == {k for k, v in file_facts["use_fp16"].items() if v and not k.startswith("block")}
    # One to one (w_avg renamed), dead parameters included: the state dict round-trips exactly.
    ours = to_official(generator.state_dict())
    assert list(ours) != [] and set(ours) == set(official.state_dict)
    assert all(torch.equal(ours[key], official.state_dict[key]) for key in ours)
    assert torch.linalg.norm(generator.w_avg).item() == pytest.approx(file_facts["w_avg_norm"], rel=1e-6)
    assert generator.provenance["module_src"] == "official networks_creps.py"


def test_the_numpy1_file_is_the_numpy2_file(official_creps_dir):
    a, _ = snapshot(official_creps_dir, "creps_r16_snapshot")
    b = cips_deploy.load(official_creps_dir / "creps_r16_released_numpy1.pkl")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("size", [256, 512, 1024])
def test_paper_presets_are_the_official_paper_generators(official_creps_dir, size):
    shapes = json.loads((official_creps_dir / "official_paper_shapes.json").read_text())["configs"][f"paper_{size}"]
    with torch.device("meta"):
        generator = cips_deploy.Generator(creps_config(f"paper{size}"))
    assert generator.num_parameters == shapes["num_parameters"]
    ours = {key: list(tensor.shape) for key, tensor in to_official(generator.state_dict()).items()}
    assert ours == {key: entry["shape"] for key, entry in shapes["state_dict"].items()}
    assert generator.num_ws == shapes["num_ws"]
    flops = shapes["flops"]
    assert 2 * generator.line_macs() == flops["analytic_line_flops_per_position"]
    assert 2 * generator.pixel_macs() == flops["analytic_pixel_flops"]


# ------------------------------------------------------------------------ parity


def cases(kind: str) -> list[tuple[str, str]]:
    names = ["scale1_psi1", "scale1_psi0.7", "scale2_psi1", "scale1.5_psi0.7", "stylemix"]
    extra = ["rowcol_distinct", "random_coords"] if kind == "fp32" else []
    return [(snap, f"{case}_{kind}") for snap in SNAPSHOTS for case in names + extra]


@pytest.mark.parametrize("name, case", cases("fp32"))
def test_fp32_cases_on_the_grid_and_the_per_point_path(official_creps_dir, name, case):
    generator, refs = snapshot(official_creps_dir, name)
    ref = refs[case]
    if "z" in ref:  # mapping and truncation: bitwise the official ws
        w = generator.map(ref["z"], truncation=ref["truncation_psi"])
        assert torch.equal(generator.layer_styles(w), ref["ws"])
    ws = ref["ws"]  # per-layer styles (mixed ones for stylemix)
    u, v, points = grid_of(ref)
    n = u.numel()
    with torch.no_grad():
        per_point = generator.synthesize_ws(points.expand(2, -1, -1), ws)
        rows = generator.line_features("row", v.expand(2, -1), ws)
        columns = generator.line_features("column", u.expand(2, -1), ws)
        grid = generator.compose_block(rows, columns, ws)
    assert (official_image(per_point, n) - ref["rgb"]).abs().max() <= 1e-5
    assert (official_image(grid, n) - ref["rgb"]).abs().max() <= 1e-5
    assert torch.equal(grid, per_point)  # the same operations per pixel


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_scattered_points(official_creps_dir, name):
    generator, refs = snapshot(official_creps_dir, name)
    ref = refs["points_fp32"]
    points = torch.stack([2 * ref["t_col"] - 1, 2 * ref["t_row"] - 1], dim=-1)[None].expand(2, -1, -1)
    with torch.no_grad():
        rgb = generator.synthesize_ws(points, ref["ws"])
    assert (rgb.permute(0, 2, 1) - ref["rgb"]).abs().max() <= 1e-5


@pytest.mark.parametrize("name, case", cases("native"))
def test_native_mixed_precision_cases(official_creps_dir, name, case):
    generator, refs = snapshot(official_creps_dir, name)
    ref = refs[case]
    u, v, points = grid_of(ref)
    with torch.no_grad():
        rgb = generator.synthesize_ws(points.expand(2, -1, -1), ref["ws"], dtype=torch.float16)
        fp32 = generator.synthesize_ws(points.expand(2, -1, -1), ref["ws"])
    error = (official_image(rgb, u.numel()) - ref["rgb"]).abs().max()
    assert error <= 5e-3
    assert (rgb - fp32).abs().max() > 1e-5  # float16 did run


def test_coordinates_round_trip_the_official_t(official_creps_dir):
    _, refs = snapshot(official_creps_dir, "creps_r32_fp16_snapshot")
    for case in ("scale1.5_psi0.7_fp32", "random_coords_fp32", "rowcol_distinct_fp32"):
        t = refs[case]["coords"].flatten()
        assert (to_unit(2 * t - 1) - t).abs().max() <= 6e-8  # half an ulp of u


def test_reference_path_computes_the_official_outputs(official_creps_dir):
    generator, refs = snapshot(official_creps_dir, "creps_r16_snapshot")
    for case in ("scale1_psi1_fp32", "scale1.5_psi0.7_fp32"):
        ref = refs[case]
        u, v, points = grid_of(ref)
        planar = points.reshape(1, u.numel(), u.numel(), 2).permute(0, 3, 1, 2).expand(2, -1, -1, -1)
        with torch.no_grad():
            rgb = generator.reference_synthesize(planar, ref["ws"][:, 0])
        assert (rgb - ref["rgb"]).abs().max() <= 1e-5


def test_seeds_draw_the_z_of_gen_images(official_creps_dir):
    generator, refs = snapshot(official_creps_dir, "creps_r16_snapshot")
    z = refs["scale1_psi1_fp32"]["z"]
    for index, seed in enumerate(refs["scale1_psi1_fp32"]["seeds"]):
        assert torch.equal(torch.from_numpy(cips_deploy.seed_latent(int(seed), generator.config))[0], z[index])
    with pytest.raises(CipsError, match=r"2\*\*32 - 1"):
        cips_deploy.seed_latent(2**32, generator.config)


@pytest.mark.parametrize("case, side", [("scale1_psi0.7_fp32", 16), ("scale1.5_psi0.7_fp32", 24), ("scale2_psi1_fp32", 32)])
def test_cli_renders_what_gen_images_renders(official_creps_dir, tmp_path, case, side):
    """gen_images.py --seeds 0 --scale s is our flat render at int(R s) x int(R s)."""
    generator, refs = snapshot(official_creps_dir, "creps_r16_snapshot")
    ref = refs[case]
    path = tmp_path / "seed0.png"
    result = CliRunner().invoke(cli, ["render", "--checkpoint", str(official_creps_dir / "creps_r16_snapshot.pkl"), "--seed", "0",
                                      "--truncation", str(ref["truncation_psi"]), "--height", str(side), "--width", str(side),
                                      "-o", str(path)])
    assert result.exit_code == 0, result.output
    from PIL import Image

    image = np.asarray(Image.open(path)).astype(int)
    expected = cips_deploy.rgb_to_uint8(ref["rgb"][:1].permute(0, 2, 3, 1).reshape(1, -1, 3)).reshape(side, side, 3).astype(int)
    assert np.abs(image - expected).max() <= 1  # 1e-6 can flip a rounding
    if side != 16:
        return
    for topology, size in (("rotated", ["--height", "12", "--width", "20"]), ("flat", ["--height", "24", "--width", "48"])):
        out = tmp_path / f"{topology}.png"
        result = CliRunner().invoke(cli, ["render", "--checkpoint", str(official_creps_dir / "creps_r16_snapshot.pkl"), "-t", topology,
                                          *size, "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert Image.open(out).size == (int(size[3]), int(size[1]))


def test_import_official_and_info(official_creps_dir, tmp_path):
    source = official_creps_dir / "creps_r32_fp16_snapshot.pkl"
    out = tmp_path / "creps.safetensors"
    result = CliRunner().invoke(cli, ["import-official", str(source), "-o", str(out)])
    assert result.exit_code == 0, result.output
    generator, _ = snapshot(official_creps_dir, "creps_r32_fp16_snapshot")
    loaded = cips_deploy.load(out)
    assert loaded.config == generator.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), generator.state_dict().values()))
    result = CliRunner().invoke(cli, ["info", str(source)])
    assert result.exit_code == 0 and "CREPS" in result.output and "line_flops_per_position" in result.output
    assert "467,017" in result.output and "fp16_line_blocks" in result.output


# ----------------------------------------------------------------------- hostile


@pytest.mark.parametrize("kind", MALICIOUS)
def test_malicious_snapshots_never_run_and_their_payload_is_live(official_creps_dir, tmp_path, kind):
    marker = Path(f"/tmp/creps_fixture_pwned_{kind}")
    assert not marker.exists()
    path = official_creps_dir / f"malicious_{kind}.pkl"
    if kind == "module_src":  # the weights load, the altered code is ignored, with a warning
        with pytest.warns(SourceWarning, match="not the official"):
            generator = cips_deploy.load(path)
        assert "NOT the official" in generator.provenance["module_src"]
    else:
        with pytest.raises(CipsError) as refused:
            cips_deploy.load(path)
        assert "posix.system" in str(refused.value) and "\n" not in str(refused.value)
    result = CliRunner().invoke(cli, ["info", str(path)])
    assert (result.exit_code == 0) == (kind == "module_src") and "Traceback" not in result.output
    if kind == "module_src":  # the CLI says it in one line
        assert "Warning: malicious_module_src.pkl: the generator's embedded source is not the official" in result.output
    assert not marker.exists()
    # The payload is real: unpickled the way plain pickle would (stand-ins recording instead
    # of running `system`), the file calls system("touch <marker>").
    record = tmp_path / "calls.txt"
    subprocess.run([sys.executable, str(PROBE), str(path), str(record)], check=True, timeout=120, capture_output=True)
    assert f"touch {marker}" in record.read_text()
    assert not marker.exists()


class Harmless:
    """Pickles as a call of os.getcwd: any global outside the official table is refused."""

    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_other_pickles_are_refused_in_one_sentence(tmp_path):
    plain = tmp_path / "list.pkl"
    plain.write_bytes(__import__("pickle").dumps([1, 2, 3], protocol=4))
    with pytest.raises(CipsError, match="not a CREPS network snapshot"):
        cips_deploy.load(plain)
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(plain.read_bytes()[:-3])
    with pytest.raises(CipsError, match="corrupt or truncated"):
        cips_deploy.load(truncated)
    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(__import__("pickle").dumps(Harmless(), protocol=4))
    with pytest.raises(CipsError, match=r"references posix\.getcwd"):
        cips_deploy.load(hostile)


def test_conditional_and_z_dim_configurations_are_taken_and_unknown_ones_refused():
    kwargs = dict(z_dim=64, w_dim=64, c_dim=0, img_resolution=16, img_channels=3, mapping_kwargs={"num_layers": 2})
    assert config_kwargs(kwargs, source="f")["n_mlp"] == 2
    # The whole official configuration space: labels and z of another width (tests/core/test_conditional.py).
    assert config_kwargs({**kwargs, "c_dim": 10}, source="f")["c_dim"] == 10
    assert config_kwargs({**kwargs, "z_dim": 32}, source="f")["z_dim"] == 32
    with pytest.raises(CipsError, match="architecture"):
        config_kwargs({**kwargs, "architecture": "resnet"}, source="f")
    with pytest.raises(CipsError, match="RGB"):
        config_kwargs({**kwargs, "img_channels": 1}, source="f")


def test_scale_consistency_runs_on_an_official_snapshot(official_creps_dir):
    result = CliRunner().invoke(cli, ["scale-consistency", str(official_creps_dir / "creps_r16_snapshot.pkl"), "--size", "16",
                                      "--factor", "2", "--samples", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert len(report["per_sample"]) == 2 and report["mean"]["psnr"] > 20


def test_exported_engine_reproduces_the_official_outputs(official_creps_dir, tmp_path):
    from cips_deploy.exporters import OnnxEngine, export_onnx

    generator, refs = snapshot(official_creps_dir, "creps_r16_snapshot")
    result = export_onnx(cips_deploy.load(official_creps_dir / "creps_r16_snapshot.pkl"), tmp_path / "r16.onnx")
    assert result.report.ok
    engine = OnnxEngine(result.synthesis)
    ref = refs["scale1.5_psi0.7_fp32"]
    u, v, points = grid_of(ref)
    coords = points.expand(2, -1, -1).contiguous().numpy()  # the engines run on numpy
    rgb = engine.synthesize(coords, engine.map(ref["z"].numpy(), truncation=0.7))
    assert (official_image(torch.from_numpy(rgb), u.numel()) - ref["rgb"]).abs().max() <= 1e-4


@pytest.mark.parametrize(
    "change, message",
    [
        ({"channel_max": 32}, "has shape"),  # the kwargs say narrower blocks than the tensors have
        ({"img_resolution": 32}, "lacks"),  # one more block than the file holds
        ({"c_dim": 10}, "lacks 2 tensor.s. this generator needs, such as 'mapping.embed"),  # labels, but no label embedding
        ({"z_dim": 32}, "has shape"),  # fc0 is wider than a 32-wide z
        ({"mapping_kwargs": {"num_layers": 2, "embed_features": 8}}, "mapping_kwargs.embed_features"),
    ],
)
def test_init_kwargs_must_agree_with_the_tensors(official_creps_dir, monkeypatch, change, message):
    import cips_deploy.families.official_creps as official_creps

    real = official_creps.read_snapshot(official_creps_dir / "creps_r16_snapshot.pkl")
    altered = official_creps.Snapshot(real.state_dict, {**real.init_kwargs, **change}, real.source_sha256, True)
    monkeypatch.setattr(official_creps, "read_snapshot", lambda path: altered)
    with pytest.raises(CipsError, match=message) as refused:
        cips_deploy.load(official_creps_dir / "creps_r16_snapshot.pkl")
    assert "\n" not in str(refused.value)

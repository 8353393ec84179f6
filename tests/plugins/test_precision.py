"""Low-precision synthesis: the torch backend's ``precision`` option and ``synthesize(dtype=...)``.

bf16 keeps 8 significant bits, so every layer's product rounds its inputs by about 2**-9
relative; random-weight models amplify that (tiny presets: relative L2 errors of 0.7-2.4%
over model seeds, styles and architectures), trained ones do not (the bundled demo model:
0.3%). The tolerances below are stated where they are used. Speed is measured by
``cips-deploy bench --precision``, never asserted here.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cips_deploy
from cips_deploy.families import layers
from cips_deploy.measure.bench import BenchCase, matmul_peak_gflops, run_case
from cips_deploy.models import DEMO_MODEL
from cips_deploy.cli import cli
from cips_deploy.runtime.coords import grid_coords
from cips_deploy.errors import CipsError
from cips_deploy.plugins.torch_backend import TorchBackend

COORDS = torch.from_numpy(grid_coords(24, 24))  # [1, 576, 2]: tensors for the generator, arrays for the backend


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Benchmarks set torch's thread count in this process; give the next test its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def styles(generator, seeds=(0, 1, 2, 3)) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [generator.map(torch.randn(1, generator.config.style_dim, generator=torch.Generator().manual_seed(s))) for s in seeds]


def run(backend: TorchBackend, coords: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The backend on host float32 arrays (its contract), its colours back as a tensor to compare."""
    rgb = backend.run(np.ascontiguousarray(coords.numpy()), np.ascontiguousarray(w.numpy()))
    assert isinstance(rgb, np.ndarray) and rgb.dtype == np.float32
    return torch.from_numpy(rgb)


def relative_error(low: torch.Tensor, reference: torch.Tensor) -> float:
    return ((low - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("arch", ["skip", "res", "ne", "creps"])
def test_bf16_is_close_to_fp32_on_tiny(arch):
    # Tolerance: relative L2 error 3e-2 (observed on these seeds: 0.0054-0.0114). A random
    # tiny model's output spans about [-12, 12], so an absolute bound would say little.
    generator = cips_deploy.create("tiny", arch=arch, seed=0)
    fp32, bf16 = TorchBackend(generator), TorchBackend(generator, precision="bf16")
    for w in styles(generator):
        reference, low = run(fp32, COORDS, w), run(bf16, COORDS, w)
        assert low.dtype == torch.float32 and low.shape == reference.shape
        assert relative_error(low, reference) <= 3e-2


def test_bf16_is_within_1e2_of_fp32_on_the_trained_demo_model():
    # Trained weights, the case the option is for. Tolerances: mean |difference| 1e-2
    # (observed 0.0010-0.0013) and max |difference| 2/127.5, i.e. 2/255 of the 8-bit image
    # (observed 0.0072-0.0097).
    generator = cips_deploy.load(DEMO_MODEL)
    coords = torch.from_numpy(grid_coords(24, 48, u_range=(-1.0, 1.0)))
    fp32, bf16 = TorchBackend(generator), TorchBackend(generator, precision="bf16")
    for w in styles(generator):
        difference = (run(bf16, coords, w) - run(fp32, coords, w)).abs()
        assert difference.mean().item() <= 1e-2
        assert difference.max().item() <= 2 / 127.5


def test_per_point_styles_in_bf16_are_close_to_fp32(tiny_skip):
    (w,) = styles(tiny_skip, seeds=(5,))
    per_point = w[:, None].expand(1, COORDS.shape[1], -1).contiguous()
    reference = run(TorchBackend(tiny_skip), COORDS, w)
    low = run(TorchBackend(tiny_skip, precision="bf16"), COORDS, per_point)
    assert relative_error(low, reference) <= 3e-2


def test_bf16_renders_are_bitwise_identical_whatever_the_chunking(tiny_skip):
    backend = TorchBackend(tiny_skip, precision="bf16")
    (w,) = styles(tiny_skip, seeds=(1,))
    whole = run(backend, COORDS, w)
    for size in (64, 100, 333):
        parts = torch.cat([run(backend, COORDS[:, i : i + size], w) for i in range(0, COORDS.shape[1], size)], dim=1)
        assert torch.equal(parts, whole)


def test_creps_bf16_fast_path_is_its_per_point_path_whatever_the_chunking():
    """CREPS in bf16: the line cache composes each pixel with the per-point path's operations."""
    generator = cips_deploy.create("tiny", arch="creps", seed=1)
    backend = TorchBackend(generator, precision="bf16")
    (w,) = styles(generator, seeds=(2,))
    with torch.inference_mode():
        per_point = generator.synthesize(COORDS, w, dtype=torch.bfloat16)
        fp32 = generator.synthesize(COORDS, w)
    whole = run(backend, COORDS, w)
    assert torch.equal(whole, per_point)
    assert 0 < relative_error(whole, fp32) <= 3e-2  # bfloat16 products, not float32 ones
    for size in (64, 100, 333):
        fresh = TorchBackend(generator, precision="bf16")
        parts = torch.cat([run(fresh, COORDS[:, i : i + size], w) for i in range(0, COORDS.shape[1], size)], dim=1)
        assert torch.equal(parts, whole)


def test_rounded_weights_are_reused_only_for_the_same_style_and_parameters(tiny_skip):
    generator = copy.deepcopy(tiny_skip)
    backend = TorchBackend(generator, precision="bf16")
    w0, w1 = styles(generator, seeds=(0, 1))
    first = run(backend, COORDS, w0)
    assert torch.equal(run(backend, COORDS, w0), first)
    other = run(backend, COORDS, w1)
    assert not torch.equal(other, first)
    assert torch.equal(run(TorchBackend(copy.deepcopy(tiny_skip), precision="bf16"), COORDS, w1), other)
    with torch.no_grad():  # weights changed in place (a training step, load_state_dict)
        for parameter in generator.parameters():
            parameter.mul_(1.01)
    changed = run(backend, COORDS, w1)
    assert not torch.equal(changed, other)
    assert torch.equal(run(TorchBackend(copy.deepcopy(generator), precision="bf16"), COORDS, w1), changed)


def test_a_generator_made_under_inference_mode_runs_in_bf16(tiny_skip):
    with torch.inference_mode():
        generator = cips_deploy.create("tiny", seed=0)
    (w,) = styles(tiny_skip, seeds=(4,))
    expected = run(TorchBackend(tiny_skip, precision="bf16"), COORDS, w)
    assert torch.equal(run(TorchBackend(generator, precision="bf16"), COORDS, w), expected)


def test_default_precision_is_the_float32_path_bit_for_bit(tiny):
    (w,) = styles(tiny, seeds=(2,))
    with torch.inference_mode():
        plain = tiny.synthesize(COORDS, w)
        assert torch.equal(tiny.synthesize(COORDS, w, dtype=torch.float32), plain)
    assert torch.equal(run(TorchBackend(tiny), COORDS, w), plain)
    assert torch.equal(run(TorchBackend(tiny, precision="fp32"), COORDS, w), plain)
    assert TorchBackend(tiny).precision == "fp32"


def test_synthesize_in_bf16_with_gradients_off_and_on(tiny):
    (w,) = styles(tiny, seeds=(3,))
    with torch.no_grad():
        reference = tiny.synthesize(COORDS, w)
        low = tiny.synthesize(COORDS, w, dtype=torch.bfloat16)
    assert low.dtype == torch.float32 and relative_error(low, reference) <= 3e-2
    graded = tiny.synthesize(COORDS, w.clone().requires_grad_(), dtype=torch.bfloat16)
    # Without gradients a CPU layer runs product, bias and activation as one oneDNN call
    # (layers.FUSE_BF16_CPU), which rounds once where baddbmm rounds twice: equal to bf16 accuracy.
    assert graded.dtype == torch.float32 and relative_error(graded.detach(), low) <= 1e-2
    layers.FUSE_BF16_CPU, fused = False, layers.FUSE_BF16_CPU
    try:
        with torch.no_grad():
            unfused = tiny.synthesize(COORDS, w, dtype=torch.bfloat16)
    finally:
        layers.FUSE_BF16_CPU = fused
    assert torch.equal(graded.detach(), unfused)


def test_fused_bf16_layers_equal_the_unfused_ones_to_bf16_accuracy(tiny_skip):
    from cips_deploy.families.layers import StyledLayer

    if not layers.FUSE_BF16_CPU:
        pytest.skip("this torch has no oneDNN fused linear")
    layer = tiny_skip.blocks[0].layer1
    assert isinstance(layer, StyledLayer)
    (w,) = styles(tiny_skip, seeds=(5,))
    x = torch.randn(1, 300, layer.linear.weight.shape[1]).bfloat16()
    with torch.no_grad():
        fused = layer(x, w)
        layers.FUSE_BF16_CPU = False
        try:
            unfused = layer(x, w)
        finally:
            layers.FUSE_BF16_CPU = True
    assert fused.dtype == unfused.dtype == torch.bfloat16 and fused.shape == unfused.shape
    assert relative_error(fused.float(), unfused.float()) <= 1e-2


@pytest.mark.parametrize(
    "options, message",
    [
        ({"precision": "fp64"}, "precision is fp32, bf16 or fp16"),
        ({"precision": ""}, "precision is fp32, bf16 or fp16"),
        ({"precision": torch.float64}, "precision is fp32, bf16 or fp16"),
        ({"precision": "fp16"}, "fp16 needs a CUDA device"),
        ({"precision": torch.float16}, "fp16 needs a CUDA device"),
        ({"precision": "bf16", "dtype": "bf16"}, "no option"),
    ],
)
def test_precision_option_errors_are_one_clear_sentence(tiny, options, message):
    with pytest.raises(CipsError, match=message):
        TorchBackend(tiny, **options)


@pytest.mark.parametrize("value, name", [("bf16", "bf16"), (" BF16 ", "bf16"), ("fp32", "fp32"), (torch.bfloat16, "bf16"), (torch.float32, "fp32")])
def test_precision_option_takes_strings_and_dtypes(tiny, value, name):
    assert TorchBackend(tiny, precision=value).precision == name


def test_creps_takes_bf16_refuses_other_dtypes_and_keeps_working_in_fp32():
    """CREPS runs float32, bfloat16 or the official float16 mixed precision (fp16: CUDA on the backend)."""
    creps = cips_deploy.create("tiny", arch="creps", seed=0)
    assert TorchBackend(creps, precision="bf16").precision == "bf16"
    (w,) = styles(creps, seeds=(0,))
    with pytest.raises(CipsError, match="float32, bfloat16 or the official float16 mixed precision, not torch.float64"):
        creps.synthesize(COORDS, w, dtype=torch.float64)
    with torch.inference_mode():
        plain = creps.synthesize(COORDS, w)
        assert torch.equal(creps.synthesize(COORDS, w, dtype=torch.float32), plain)
    assert torch.equal(run(TorchBackend(creps, precision="fp32"), COORDS, w), plain)


def test_synthesize_refuses_other_dtypes(tiny):
    with pytest.raises(CipsError, match="float32, bfloat16 or float16"):
        tiny.synthesize(COORDS, styles(tiny, seeds=(0,))[0], dtype=torch.float64)


def test_bench_case_records_its_precision():
    result = run_case(BenchCase(model="preset:tiny", resolution=16, chunk=128, repeats=1, warmup=0, threads=1, precision="bf16"))
    assert result["precision"] == "bf16" and result["pixels_per_second"] > 0
    assert matmul_peak_gflops(size=64, repeats=1, dtype="bf16") > 0
    with pytest.raises(CipsError, match="fp32 only"):
        run_case(BenchCase(model="preset:tiny", backend="reference", resolution=16, repeats=1, warmup=0, precision="bf16"))


def test_bench_cli_takes_precisions_and_reports_both_peaks(monkeypatch):
    import cips_deploy.measure.bench as bench_cli  # the command imports these from there when it runs

    monkeypatch.setattr(bench_cli, "run_case_isolated", run_case)  # in process: no worker start-up
    import cips_deploy.measure.peaks as peaks  # the peak of each precision: the best kernel of every installed runtime

    monkeypatch.setattr(peaks, "kernel_peaks", lambda precision, threads, **kw: {"torch": {"fp32": 100.0, "bf16": 200.0}[precision]})
    args = ["bench", "--preset", "tiny", "--resolution", "16", "--chunk-size", "128", "--repeats", "1", "--warmup", "0", "--threads", "1"]
    outcome = CliRunner().invoke(cli, args + ["--precision", "bf16", "--precision", "fp32", "--json"], catch_exceptions=False)
    report = json.loads(outcome.output)
    assert report["matmul_peaks_gflops"] == {"fp32": 100.0, "bf16": 200.0}
    assert [r["precision"] for r in report["results"]] == ["bf16", "fp32"]
    for result in report["results"]:
        assert result["fraction_of_matmul_peak"] == pytest.approx(result["gflops"] / report["matmul_peaks_gflops"][result["precision"]])
    table = CliRunner().invoke(cli, args + ["--precision", "bf16"], catch_exceptions=False).output
    assert "bf16 peak: 200.0" in table and " bf16 " in table.splitlines()[-1]
    refused = CliRunner().invoke(cli, ["bench", "--preset", "tiny", "--precision", "fp16"])
    assert refused.exit_code != 0 and "needs a CUDA --device" in refused.output


def test_render_cli_passes_precision_to_the_torch_backend(tmp_path):
    def invoke(*extra: str):
        return CliRunner().invoke(cli, ["render", "--preset", "tiny", "--height", "16", "-q", "--force", "-o", str(tmp_path / "out.png"), *extra])

    assert invoke("--precision", "bf16").exit_code == 0
    assert invoke("--precision", "bf16", "--backend-option", "precision=bf16").exit_code == 0
    contradiction = invoke("--precision", "bf16", "--backend-option", "precision=fp32")
    assert contradiction.exit_code != 0 and "contradicts" in contradiction.output
    refused = invoke("--precision", "fp16")
    assert refused.exit_code != 0 and "fp16 needs a CUDA device" in refused.output

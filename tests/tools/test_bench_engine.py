"""``cips-deploy bench ENGINE``: latency per call at chosen shapes, peaks of every installed
runtime, and the flag on a case above its peak. No timing is asserted: only the shape of the
report and the arithmetic between its figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cips_deploy.cli import cli
from cips_deploy.errors import CipsError
from cips_deploy.measure import engine_bench, peaks
from cips_deploy.models import DEMO_MODEL

ENGINE = DEMO_MODEL.with_suffix(".onnx")


@pytest.fixture
def fixed_peaks(monkeypatch):
    """Peaks without measuring (fast): ``value`` GFLOP/s for every kernel of the precision."""
    state = {"value": 50.0}
    monkeypatch.setattr(peaks, "kernel_peaks", lambda precision, threads, **kw: {
        kernel: state["value"] * (1 + i) for i, kernel in enumerate(peaks.KERNELS.get(precision, ()))})
    return state


@pytest.mark.runtime
def test_shapes_parse_and_bad_ones_are_one_sentence():
    assert engine_bench.parse_shapes("1x16384, 4X2048") == [engine_bench.Shape(1, 16384), engine_bench.Shape(4, 2048)]
    assert engine_bench.parse_shapes(["2x8", "2x8,1x1"]) == [engine_bench.Shape(2, 8), engine_bench.Shape(1, 1)]
    for bad in ("16384", "1x", "x5", "0x5", "1x0", "-1x5", "1x1e3", f"4096x{1 << 24}", ""):
        with pytest.raises(CipsError):
            engine_bench.parse_shapes(bad)


@pytest.mark.runtime
def test_latency_statistics_and_the_timing_loop():
    stats = engine_bench.latency_stats([0.001 * k for k in range(1, 101)])
    assert stats["mean_ms"] == pytest.approx(50.5) and stats["p50_ms"] == pytest.approx(50.5)
    assert stats["p90_ms"] == pytest.approx(90.1) and stats["p99_ms"] == pytest.approx(99.01)
    assert stats["min_ms"] == pytest.approx(1) and stats["max_ms"] == pytest.approx(100)
    now = [0.0]

    def clock():
        return now[0]

    calls, prepared = [], []

    def call(arg):
        calls.append(arg)
        now[0] += 0.5  # every call takes half a second on the fake clock

    def prepare():
        prepared.append(len(prepared))
        return prepared[-1]

    times = engine_bench.time_calls(call, prepare, warmup=2, iterations=3, duration=0, clock=clock)
    assert times == [0.5] * 3 and len(calls) == 5 and calls == prepared  # a fresh style every call
    times = engine_bench.time_calls(call, prepare, warmup=0, iterations=1, duration=2.2, clock=clock)
    assert len(times) == 5  # until 2.2 s have passed: 5 half-second calls


@pytest.mark.runtime
def test_the_product_graph_is_a_real_matmul_for_onnxruntime():
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 8, 8), np.float32)
    session = ort.InferenceSession(peaks.product_model(8), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"a": a, "b": b})[0], a @ b, rtol=1e-5, atol=1e-5)
    # Small values: AVX2 u8 x s8 kernels saturate pairs of products at int16 (the speed is the same).
    ua, sb = rng.integers(0, 16, (8, 8), dtype=np.uint8), rng.integers(-8, 8, (8, 8), dtype=np.int8)
    session = ort.InferenceSession(peaks.product_model(8, "MatMulInteger"), providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run(None, {"a": ua, "b": sb})[0], ua.astype(np.int32) @ sb.astype(np.int32))
    measured = peaks.kernel_peaks("fp32", 1, size=64, repeats=1)
    assert "onnxruntime" in measured and all(value > 0 for value in measured.values())
    best, kernel, every = peaks.machine_peak("fp32", 1, size=64, repeats=1)
    assert kernel in every and best == max(every.values())


@pytest.mark.runtime
def test_bench_an_onnx_engine_reports_latency_per_shape(fixed_peaks):
    args = ["bench", str(ENGINE), "--shapes", "1x256,2x64", "--iterations", "3", "--warmUp", "1", "--threads", "1", "--json"]
    outcome = CliRunner().invoke(cli, args)
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.output)
    assert report["kind"] == "calls" and report["threads"] == 1
    assert report["peaks"]["fp32"]["kernel"] in peaks.KERNELS["fp32"]
    (result,) = report["results"]
    assert result["backend"] == "onnxruntime" and result["options"]["threads"] == "1"
    assert [row["shape"] for row in result["shapes"]] == ["1x256", "2x64"]
    for row in result["shapes"]:
        assert row["calls"] >= 3
        assert row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["points_per_second"] == pytest.approx(row["batch"] * row["points"] / (row["mean_ms"] / 1000))
        assert row["pixels_per_second"] == row["points_per_second"]
    table = CliRunner().invoke(cli, args[:-1])
    assert table.exit_code == 0 and "p99" in table.output and "1x256" in table.output


def test_a_case_above_its_peak_is_flagged(fixed_peaks):
    spec = f"torch:{DEMO_MODEL}"
    args = ["bench", spec, "--shapes", "1x128", "--iterations", "2", "--warmup", "0", "--threads", "1"]
    fixed_peaks["value"] = 1e-9  # a peak no computation can stay under
    outcome = CliRunner().invoke(cli, args + ["--json"])
    assert outcome.exit_code == 0, outcome.output
    row = json.loads(outcome.output)["results"][0]["shapes"][0]
    assert row["gflops"] > 0 and row["fraction_of_peak"] > 1 and row["over_peak"] is True
    assert "measurement error" in CliRunner().invoke(cli, args).output
    fixed_peaks["value"] = 1e9
    row = json.loads(CliRunner().invoke(cli, args + ["--json"]).output)["results"][0]["shapes"][0]
    assert row["over_peak"] is False and 0 < row["fraction_of_peak"] < 1
    # The peak is the best kernel of the precision, not torch's alone.
    report = json.loads(CliRunner().invoke(cli, args + ["--json"]).output)
    assert report["peaks"]["fp32"]["gflops"] == max(report["peaks"]["fp32"]["kernels"].values())


def test_whole_images_take_the_best_peak_and_the_renderers_own_chunks(fixed_peaks, monkeypatch):
    import cips_deploy.measure.bench as bench_module

    monkeypatch.setattr(bench_module, "run_case_isolated", bench_module.run_case)  # in process
    args = ["bench", "--preset", "tiny", "--resolution", "16", "--repeats", "1", "--warmup", "0", "--threads", "1", "--json"]
    report = json.loads(CliRunner().invoke(cli, args, catch_exceptions=False).output)
    (result,) = report["results"]
    best = max(report["peaks"]["fp32"]["kernels"].values())
    assert result["matmul_peak_gflops"] == best and result["fraction_of_matmul_peak"] == pytest.approx(result["gflops"] / best)
    assert result["chunk"] == 256 and result["over_peak"] is False  # 16 x 16: one call of the renderer's default chunk


@pytest.mark.runtime
@pytest.mark.parametrize("args, message", [
    (["nothing-here.onnx"], "No such model file"),
    (["onnxruntime:nothing.onnx,bogus=1"], "no option 'bogus'"),
    ([str(ENGINE), "--reference"], "--reference times whole images"),
    (["--duration", "2"], "--duration times backend calls"),
    ([str(ENGINE), "--shapes", "3"], "A shape is BATCHxPOINTS"),
    (["onnxruntime:" + str(ENGINE), "--backend", "torch"], "names its backend"),
])
def test_bad_input_is_one_sentence(args, message, fixed_peaks):
    outcome = CliRunner().invoke(cli, ["bench", *args, "--iterations", "1"])
    assert outcome.exit_code == 1 and message in outcome.output and "Traceback" not in outcome.output


@pytest.mark.runtime
def test_the_onnxruntime_backend_runs_on_the_threads_it_is_given():
    from cips_deploy.runtime.backend_use import make_backend
    from cips_deploy.runtime.plugin_manager import get_registry

    backend = make_backend(get_registry(), "onnxruntime", str(ENGINE), "cpu", {"threads": "1"})
    engine = next(iter(backend._engines.values()))
    assert engine.session.get_session_options().intra_op_num_threads == 1

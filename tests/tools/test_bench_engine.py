"""``cips-deploy bench ENGINE``: latency per call at chosen shapes, peaks of every installed
runtime, the peak of the precision that does an engine's products, and the flag on a case
above its peak. No timing is asserted: only the shape of the report and the arithmetic
between its figures."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cips_deploy.cli import cli
from cips_deploy.errors import CipsError
from cips_deploy.measure import engine_bench, peaks
from cips_deploy.models import DEMO_MODEL

ENGINE = DEMO_MODEL.with_suffix(".onnx")
# Each precision's fixed peak apart from the others', so that a fraction shows which it is against.
SCALE = {"fp32": 1.0, "bf16": 0.75, "fp16": 0.5, "int8": 2.0}
# The precision of the onnxruntime kernel doing each kind of engine's products (exporters/ort_runtime.py).
PEAK_OF = {"fp32": "fp32", "fp16": "fp16", "int8": "int8", "int8-static": "int8"}


@pytest.fixture
def fixed_peaks(monkeypatch):
    """Peaks without measuring (fast): ``value`` x the precision's SCALE x 1, 2, ... GFLOP/s
    for its kernels (the best is the last)."""
    state = {"value": 50.0}
    monkeypatch.setattr(peaks, "kernel_peaks", lambda precision, threads, **kw: {
        kernel: state["value"] * SCALE[precision] * (1 + i) for i, kernel in enumerate(peaks.KERNELS.get(precision, ()))})
    return state


def stamped_engine(folder, precision: str):
    """The demo engine (and its mapping engine) with ``precision`` in its metadata, as
    exporters/quantize.py stamps a reduced one: the entry appended to the file (a repeated
    field may come anywhere); the content hash covers the graph only, so it still verifies."""
    from cips_deploy.exporters import onnx_proto
    from cips_deploy.exporters.metadata import PRECISION_KEY

    path = folder / f"demo-{precision}.onnx"
    path.write_bytes(ENGINE.read_bytes() + onnx_proto.metadata_entry(PRECISION_KEY, precision))
    shutil.copyfile(ENGINE.with_suffix(".mapping.onnx"), path.with_suffix(".mapping.onnx"))
    return path


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
    session = ort.InferenceSession(peaks.product_model(8, "int8"), providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run(None, {"a": ua, "b": sb})[0], ua.astype(np.int32) @ sb.astype(np.int32))
    # float16 in and out: onnxruntime 1.32 runs it on a CPU (Casts around its fp32 kernel where it has no fp16 one).
    ha, hb = a.astype(np.float16), b.astype(np.float16)
    session = ort.InferenceSession(peaks.product_model(8, "fp16"), providers=["CPUExecutionProvider"])
    (product,) = session.run(None, {"a": ha, "b": hb})
    assert product.dtype == np.float16
    np.testing.assert_allclose(product.astype(np.float32), ha.astype(np.float32) @ hb.astype(np.float32), rtol=1e-2, atol=1e-2)
    assert peaks.onnxruntime_peak("fp16", 1, size=64, repeats=1) > 0
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
    assert result["peak_precision"] == result["precision"] == "fp32"
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


@pytest.mark.runtime
@pytest.mark.parametrize("precision", ["fp16", "int8", "int8-static"])
def test_a_reduced_engine_is_measured_against_the_peak_of_its_products(precision, fixed_peaks, tmp_path):
    engine = stamped_engine(tmp_path, precision)
    args = ["bench", str(engine), "--shapes", "1x256", "--iterations", "2", "--warmup", "0", "--threads", "1"]
    outcome = CliRunner().invoke(cli, args + ["--json"])
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.output)
    (result,) = report["results"]
    applies = PEAK_OF[precision]
    assert result["precision"] == precision and result["peak_precision"] == applies
    peak = report["peaks"][applies]
    assert peak["gflops"] == pytest.approx(50.0 * SCALE[applies] * len(peaks.KERNELS[applies]))  # the best kernel's
    (row,) = result["shapes"]
    if result["flops_per_point"] is None:  # the torch-free install: no FLOP count, no fraction
        assert row["gflops"] is None and row["fraction_of_peak"] is None
    else:
        assert row["gflops"] == pytest.approx(result["flops_per_point"] * row["points_per_second"] / 1e9)
        assert row["fraction_of_peak"] == pytest.approx(row["gflops"] / peak["gflops"])
    table = CliRunner().invoke(cli, args).output
    line = next(text for text in table.splitlines() if text.startswith("onnxruntime"))
    assert line.split()[1] == precision and line.split()[-1] == applies


@pytest.mark.runtime
def test_the_backends_say_which_precision_does_the_products(tmp_path):
    from cips_deploy.runtime.backend_use import make_backend
    from cips_deploy.runtime.plugin_manager import get_registry

    class Named:
        def __init__(self, **attributes):
            self.__dict__.update(attributes)

    assert engine_bench.backend_precision(Named(precision="bf16"), {}) == "bf16"  # torch: its own
    assert engine_bench.backend_precision(Named(precision="f32", product_precision="int8"), {}) == "int8"  # OpenVINO, static int8
    assert engine_bench.backend_precision(Named(), {"precision": "fp16"}) == "fp16"
    assert engine_bench.backend_precision(Named(precision="int4"), {}) == "fp32"  # no kernel of its own
    assert engine_bench.case_precision(Named(precision="f32"), {}) == "fp32"
    for precision, applies in PEAK_OF.items():
        engine = ENGINE if precision == "fp32" else stamped_engine(tmp_path, precision)
        backend = make_backend(get_registry(), "onnxruntime", str(engine), "cpu", {})
        try:
            assert (backend.precision, backend.product_precision) == (precision, applies)
            assert engine_bench.backend_precision(backend, {}) == applies
        finally:
            backend.close()


@pytest.mark.runtime
def test_one_varint_encoder_for_the_core_and_the_exporters():
    from cips_deploy.exporters import onnx_proto
    from cips_deploy.runtime import protobuf

    assert onnx_proto.encode_varint is protobuf.encode_varint and onnx_proto.length_field is protobuf.length_field
    assert [protobuf.encode_varint(n) for n in (0, 1, 127, 128, 300, 2**32)] == [
        b"\x00", b"\x01", b"\x7f", b"\x80\x01", b"\xac\x02", b"\x80\x80\x80\x80\x10"]
    assert protobuf.field(1, 150) == b"\x08\x96\x01" and protobuf.field(2, "testing") == b"\x12\x07testing"
    value, end = onnx_proto.read_varint(protobuf.encode_varint(2**63 - 1), 0, 9)
    assert value == 2**63 - 1 and end == 9  # the reader takes back what the writer wrote
    for bad in (lambda: protobuf.encode_varint(-1), lambda: protobuf.field(0, 1)):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(TypeError):
        protobuf.field(1, 1.5)


@pytest.mark.parametrize("precision", sorted(peaks.PRODUCTS))
def test_the_product_graphs_are_onnx_that_onnx_reads(precision):
    onnx = pytest.importorskip("onnx")

    model = onnx.load_from_string(peaks.product_model(16, precision))
    onnx.checker.check_model(model, full_check=True)  # types and shapes inferred as declared
    op, types = peaks.PRODUCTS[precision]
    (node,) = model.graph.node
    assert node.op_type == op and list(node.input) == ["a", "b"] and list(node.output) == ["y"]
    declared = list(model.graph.input) + list(model.graph.output)
    assert [value.type.tensor_type.elem_type for value in declared] == list(types)
    assert all([d.dim_value for d in value.type.tensor_type.shape.dim] == [16, 16] for value in declared)
    assert model.ir_version == 8 and model.opset_import[0].version == 17
    assert types[0] == {"fp32": onnx.TensorProto.FLOAT, "fp16": onnx.TensorProto.FLOAT16, "int8": onnx.TensorProto.UINT8}[precision]


@pytest.mark.slow
def test_the_reduced_exports_products_are_what_the_peaks_assume(tmp_path):
    """The demo exported as a user does, in each reduced precision: the graph holds the
    products exporters/ort_runtime.py's table says (float16 MatMuls; float32 per-point MatMuls
    beside MatMulInteger affines; QLinearMatMul once onnxruntime has fused the QDQ pairs)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxconverter_common", reason="fp16 engines need onnxconverter-common (the test extra has it)")
    import onnxruntime as ort

    from cips_deploy.runtime.backend_use import make_backend
    from cips_deploy.runtime.plugin_manager import get_registry

    def ops(model, op):
        return [node for node in model.graph.node if node.op_type == op]

    fp32 = onnx.load(str(ENGINE))
    point_products = len(ops(fp32, "MatMul"))  # the Fourier features' and every layer's per-point product
    flags = {"fp16": ["--precision", "fp16"], "int8": ["--quantize", "int8"], "int8-static": ["--quantize", "int8-static"]}
    for precision, extra in flags.items():
        path = tmp_path / f"{precision}.onnx"
        outcome = CliRunner().invoke(cli, ["export", str(DEMO_MODEL), "-o", str(path), *extra])
        assert outcome.exit_code == 0, outcome.output
        model = onnx.load(str(path))
        if precision == "fp16":
            inferred = onnx.shape_inference.infer_shapes(model).graph
            types = {value.name: value.type.tensor_type.elem_type for value in inferred.value_info}
            halves = [node for node in ops(model, "MatMul") if types.get(node.input[0]) == onnx.TensorProto.FLOAT16]
            assert len(halves) == point_products - 1  # all but the Fourier features (kept float32)
        elif precision == "int8":
            weights = {tensor.name for tensor in model.graph.initializer}
            # Every per-point product but the Fourier features' is int8, with its constant weight
            # (the export traces the style on the inputs).
            integer = ops(model, "MatMulInteger")
            assert len(integer) == point_products - 1 and all(node.input[1] in weights for node in integer)
        else:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            assert ops(onnx.load(options.optimized_model_filepath), "QLinearMatMul")
        backend = make_backend(get_registry(), "onnxruntime", str(path), "cpu", {})
        try:
            assert (backend.precision, backend.product_precision) == (precision, PEAK_OF[precision])
        finally:
            backend.close()


@pytest.mark.runtime
def test_openvino_says_its_products_precision(tmp_path):
    pytest.importorskip("openvino")
    from cips_deploy.runtime.backend_use import make_backend
    from cips_deploy.runtime.plugin_manager import get_registry

    # Its own inference precision (f32 here) for fp16 and dynamic int8 engines; int8 for a static
    # int8 engine's QDQ products, which its low-precision transformations run in int8.
    for precision, applies in {"fp16": "fp32", "int8": "fp32", "int8-static": "int8"}.items():
        backend = make_backend(get_registry(), "openvino", str(stamped_engine(tmp_path, precision)), "cpu", {})
        try:
            assert backend.engine_precision == precision
            assert (engine_bench.case_precision(backend, {}), engine_bench.backend_precision(backend, {})) == ("fp32", applies)
        finally:
            backend.close()

"""The machine's matrix-product peak: the fastest product kernel any installed backend reaches.

A %peak figure is only true when its peak is a speed the case itself could have had. The
engines do not run torch's products: onnxruntime runs its own MLAS kernels and OpenVINO runs
oneDNN, and on some CPUs those beat torch's fp32 product by far (BENCHMARKS.md, issue 24: an
onnxruntime engine at "172% of peak" was 172% of *torch's* 2048^3 product). So the peak of a
precision is the best of every installed runtime's square product at that precision, each
measured in this process, with the same thread count as the cases beside it:

- ``torch``: ``a @ b`` (fp32, bf16, fp16: fast on CUDA, emulated on most CPUs), when torch is installed;
- ``onnxruntime``: a one-node ``MatMul`` graph (fp32; fp16 in float16), ``MatMulInteger``
  (int8: u8 x s8), both operands fed at run time as in most engines (their folded weights
  depend on the style; an int8 engine's weights are constants, which onnxruntime prepacks:
  that measured the same, 2048^3 on 2 threads of the AVX2 EPYC, 2026-12-07: fp32 132 against
  141 GFLOP/s run-time, int8 300 against 296 GOP/s). An fp16 product is whatever this onnxruntime does with a float16
  ``MatMul`` on this CPU: MLAS's fp16 kernel where the build has one (ARM64 ones), else, as on
  x86 (onnxruntime 1.32 on an AVX2 EPYC: checked), Casts around its fp32 kernel, which is
  also what it does with an fp16 engine's products; either way the figure is the speed of
  the kernel that does them;
- ``openvino``: the same ``MatMul`` graph compiled for the CPU with
  ``INFERENCE_PRECISION_HINT`` f32 or bf16, when openvino is installed.

The rule: a case is measured against the peak of the kernel that does its products, which
is not always the precision an engine is stored in
(:func:`cips_deploy.measure.engine_bench.backend_precision`). The backend says which (its
``product_precision``, else its ``precision``): only the runtime knows what it makes of an
engine's graph.

The graphs are written here as raw protobuf (a few fields of ``onnx.proto``, through the
writer of :mod:`cips_deploy.runtime.protobuf`), so the peak needs neither torch nor the onnx
package: ``bench ENGINE`` works in the torch-free install.
A case above the peak of its own run is a measurement error (a different thread count, a
load change between the peak and the case, a wrong FLOP count): ``bench`` flags it.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from cips_deploy.runtime.protobuf import field as _field

# ONNX TensorProto element types (onnx.proto: TensorProto.DataType).
FLOAT, UINT8, INT8, INT32, FLOAT16 = 1, 2, 3, 6, 10

# Which runtimes have a product kernel of each precision (names as the backends spell them).
KERNELS = {
    "fp32": ("torch", "onnxruntime", "openvino"),
    "bf16": ("torch", "openvino"),
    # torch on CUDA (on a CPU too, where it may be slow: the best kernel wins); onnxruntime's
    # float16 MatMul on a CPU, which fp16 engines run (see the module text).
    "fp16": ("torch", "onnxruntime"),
    "int8": ("onnxruntime",),
}

# The one-node product graph of each precision onnxruntime measures: op, and the element
# types of a, b and y.
PRODUCTS = {
    "fp32": ("MatMul", (FLOAT, FLOAT, FLOAT)),
    "fp16": ("MatMul", (FLOAT16, FLOAT16, FLOAT16)),
    "int8": ("MatMulInteger", (UINT8, INT8, INT32)),
}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it; a module blocked in
    ``sys.modules`` reads as absent)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def default_threads() -> int:
    """The thread count a case gets when the user names none: the CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# -- a one-node ONNX graph, as protobuf bytes ------------------------------------------------


def _value_info(name: str, elem_type: int, shape: tuple[int, ...]) -> bytes:
    dims = b"".join(_field(1, _field(1, size)) for size in shape)  # Dimension.dim_value
    tensor_type = _field(1, elem_type) + _field(2, dims)  # TypeProto.Tensor: elem_type, shape
    return _field(1, name) + _field(2, _field(1, tensor_type))  # ValueInfoProto: name, type


def product_model(size: int, precision: str = "fp32") -> bytes:
    """ONNX bytes of ``y [size, size] = a @ b``, a and b ``[size, size]`` graph inputs, in
    ``precision`` (:data:`PRODUCTS`: fp32 and fp16 ``MatMul``; int8 ``MatMulInteger``, a uint8,
    b int8, y int32). Opset 17, IR version 8."""
    if precision not in PRODUCTS:
        raise ValueError(f"no product graph of precision {precision!r}; there are {', '.join(PRODUCTS)}")
    op, (a_type, b_type, y_type) = PRODUCTS[precision]
    node = _field(1, "a") + _field(1, "b") + _field(2, "y") + _field(3, "product") + _field(4, op)
    graph = (
        _field(1, node) + _field(2, "peak")
        + _field(11, _value_info("a", a_type, (size, size))) + _field(11, _value_info("b", b_type, (size, size)))
        + _field(12, _value_info("y", y_type, (size, size)))
    )
    opset = _field(1, "") + _field(2, 17)
    return _field(1, 8) + _field(2, "cips-deploy") + _field(7, graph) + _field(8, opset)


# -- timing ------------------------------------------------------------------------------------


def _median_seconds(call: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    call()  # warm-up: kernels chosen, buffers allocated, weights packed
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def torch_peak(precision: str, threads: int, size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """GFLOP/s of torch's ``size``-cubed product in ``precision``."""
    import torch

    from cips_deploy.families.dtypes import DTYPES

    if threads and torch.device(device).type == "cpu":
        torch.set_num_threads(threads)
    a = torch.randn(size, size).to(device, DTYPES[precision])
    b = torch.randn(size, size).to(device, DTYPES[precision])
    cuda = torch.device(device).type == "cuda"
    seconds = _median_seconds(lambda: a @ b, repeats, torch.cuda.synchronize if cuda else (lambda: None))
    return 2 * size**3 / seconds / 1e9


def onnxruntime_peak(precision: str, threads: int, size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s (GOP/s for int8) of onnxruntime's CPU ``MatMul`` (fp32, fp16) or ``MatMulInteger`` (int8)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(product_model(size, precision), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    if precision in ("fp32", "fp16"):
        dtype = np.float16 if precision == "fp16" else np.float32
        feeds = {name: rng.standard_normal((size, size), np.float32).astype(dtype) for name in ("a", "b")}
    else:
        feeds = {"a": rng.integers(0, 256, (size, size), dtype=np.uint8), "b": rng.integers(-127, 128, (size, size), dtype=np.int8)}
    seconds = _median_seconds(lambda: session.run(None, feeds), repeats)
    return 2 * size**3 / seconds / 1e9


def openvino_peak(precision: str, threads: int, size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of OpenVINO's CPU ``MatMul``, compiled with the f32 or bf16 precision hint."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    with tempfile.TemporaryDirectory(prefix="cips-peak-") as folder:
        path = Path(folder) / "peak.onnx"
        path.write_bytes(product_model(size))
        model = core.read_model(str(path))
    properties = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    if threads:
        properties["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(model, "CPU", properties)
    request = compiled.create_infer_request()
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((size, size), np.float32), "b": rng.standard_normal((size, size), np.float32)}
    seconds = _median_seconds(lambda: request.infer(feeds), repeats)
    return 2 * size**3 / seconds / 1e9


PROBE_SIZE = 512
MAX_PRODUCT_SECONDS = 1.0

MEASURES = {"torch": torch_peak, "onnxruntime": onnxruntime_peak, "openvino": openvino_peak}


def kernel_peaks(precision: str, threads: int, *, size: int = 2048, repeats: int = 5, device: str = "cpu") -> dict[str, float]:
    """GFLOP/s of every installed runtime's product kernel at ``precision`` and ``threads``.

    On a CUDA ``device`` only torch's product is measured (the CPU runtimes are another
    machine, as far as a GPU case is concerned). A runtime whose kernel fails to build here
    (no bf16 in this OpenVINO, say) is left out, not an error."""
    peaks = {}
    for kernel in KERNELS.get(precision, ()):
        if (device != "cpu" and kernel != "torch") or not installed(kernel):
            continue
        measure = MEASURES[kernel]
        extra = {"device": device} if kernel == "torch" else {}
        try:
            # A CPU without native bf16 emulates it at well under 1 GFLOP/s, where one 2048^3
            # product takes a minute: a probe at 512^3 picks the largest size that takes
            # about a second (a smaller product reads a little lower: the figure stays a floor).
            probe = measure(precision, threads, PROBE_SIZE, 1, **extra)
            chosen = size
            while chosen > PROBE_SIZE and 2 * chosen**3 / (probe * 1e9) > MAX_PRODUCT_SECONDS:
                chosen //= 2
            peaks[kernel] = measure(precision, threads, chosen, repeats, **extra) if chosen > PROBE_SIZE else probe
        except Exception:  # noqa: BLE001 - a runtime without this kernel here has no peak to offer
            continue
    return peaks


def machine_peak(precision: str, threads: int, **kwargs) -> tuple[float, str, dict[str, float]]:
    """(GFLOP/s, the kernel that reached it, every kernel's figure): the precision's peak."""
    peaks = kernel_peaks(precision, threads, **kwargs)
    if not peaks:
        return float("nan"), "none", {}
    best = max(peaks, key=peaks.__getitem__)
    return peaks[best], best, peaks


# A case is flagged when it runs faster than its peak: above 100% is impossible (a thread
# count or a load that differs between the peak and the case, or a wrong FLOP count).
OVER_PEAK = 1.0


def over_peak(fraction: float | None) -> bool:
    """Whether a case's fraction of its peak is impossible (a measurement error)."""
    return fraction is not None and fraction > OVER_PEAK


def machine_facts(threads: int | None = None) -> dict[str, object]:
    """What the figures were measured on: the CPU, its cores, the threads of the cases and the
    versions of the installed runtimes (read from their metadata: nothing is imported)."""
    from importlib import metadata

    cpu = ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import platform

    facts: dict[str, object] = {"cpu": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                "threads": threads or default_threads()}
    for package in ("torch", "onnxruntime", "openvino"):
        try:
            facts[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            facts[package] = None
    return facts

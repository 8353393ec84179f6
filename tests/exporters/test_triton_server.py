"""A real Triton Inference Server (the CPU one bundled in nvidia-pytriton) and the ``triton`` backend.

Every server runs on 127.0.0.1 at free ports. CI installs the server (``.ci/run``); these
tests skip only where it cannot be found at all.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cips_deploy
from cips_deploy.cli import cli
from cips_deploy.errors import CipsError
from cips_deploy.exporters.backends import OnnxRuntimeBackend
from cips_deploy.exporters.pipeline import export_checkpoint
from cips_deploy.exporters.triton_backend import TritonBackend
from cips_deploy.runtime.render import render_detailed

pytestmark = pytest.mark.slow


def _server_or_skip():
    from cips_deploy.exporters import triton_server

    try:
        triton_server.find_server()
    except CipsError as error:
        pytest.skip(f"no Triton server can be installed here: {error}")
    for protocol in ("grpc", "http"):
        try:
            __import__(f"tritonclient.{protocol}")
        except (ImportError, RuntimeError):
            pytest.skip(f"tritonclient[{protocol}] (test extra) is not installed")
    return triton_server


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for each in sockets:
            each.bind(("127.0.0.1", 0))
        return [each.getsockname()[1] for each in sockets]
    finally:
        for each in sockets:
            each.close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("triton-server") / "pano.safetensors"
    cips_deploy.create("tiny", coordinate_space="cylinder", seed=11).save(path)
    return path


@pytest.fixture(scope="module")
def repository(checkpoint) -> Path:
    repo = checkpoint.parent / "repo"
    export_checkpoint(checkpoint, triton_repo=repo, triton_backend="python", validate=False)
    return repo


@pytest.fixture(scope="module")
def server(repository):
    triton_server = _server_or_skip()
    http, grpc = free_ports(2)
    with triton_server.LocalServer(repository, http_port=http, grpc_port=grpc) as running:
        yield running


@pytest.fixture(scope="module")
def local(checkpoint):
    backend = OnnxRuntimeBackend(checkpoint)
    yield backend
    backend.close()


def test_panorama_equals_the_local_onnxruntime_render(server, checkpoint, local, tmp_path):
    backend = TritonBackend(checkpoint, url=server.grpc_url)
    try:
        # Raw colours, chunk by chunk, with several chunks in flight at once.
        rng = np.random.default_rng(0)
        chunks = [(rng.uniform(-1, 1, (1, n, 2)).astype(np.float32), rng.standard_normal((1, 64)).astype(np.float32))
                  for n in (500, 500, 500, 123, 1)]
        served = list(backend.run_many(chunks))
        for (coords, w), rgb in zip(chunks, served):
            assert isinstance(rgb, np.ndarray) and rgb.dtype == np.float32
            assert float(np.abs(rgb - local.run(coords, w)).max()) <= 1e-6
        z = rng.standard_normal((3, 64)).astype(np.float32)
        assert np.array_equal(backend.map(z, 0.7), local.map(z, 0.7))
    finally:
        backend.close()
    # The PNG through the command line, gRPC and HTTP, against the local render.
    outputs = {}
    for label, options in {"ort": ["--backend", "onnxruntime"],
                           "grpc": ["--backend", "triton", "--backend-option", f"url={server.grpc_url}"],
                           "http": ["--backend", "triton", "--backend-option", f"url={server.http_url}",
                                    "--backend-option", "protocol=http", "--backend-option", "inflight=3"]}.items():
        outputs[label] = tmp_path / f"{label}.png"
        result = CliRunner().invoke(cli, [
            "render", "--checkpoint", str(checkpoint), "-t", "cylinder", "--height", "48", "--chunk-size", "700",
            "--seed", "5", "-o", str(outputs[label]), "-q", *options])
        assert result.exit_code == 0, result.output
    # The pixels are identical; the files differ only in their provenance (backend and options).
    from PIL import Image

    pixels = {label: np.asarray(Image.open(path).convert("RGB")) for label, path in outputs.items()}
    assert np.array_equal(pixels["grpc"], pixels["ort"]) and np.array_equal(pixels["http"], pixels["ort"])
    assert any("triton" in value for value in Image.open(outputs["grpc"]).text.values())


def test_two_concurrent_renders_and_two_urls(server, checkpoint, local):
    expected = render_detailed(local, "cylinder", 32, 128, seed=3, chunk_size=300).image
    # One server named twice (127.0.0.1 and localhost): chunks alternate between the two URLs.
    port = server.grpc_port
    results, errors = {}, []

    def one(label: str, url: str) -> None:
        try:
            backend = TritonBackend(checkpoint, url=url, inflight=2)
            try:
                results[label] = render_detailed(backend, "cylinder", 32, 128, seed=3, chunk_size=300).image
            finally:
                backend.close()
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=one, args=("a", f"127.0.0.1:{port}")),
               threading.Thread(target=one, args=("b", f"127.0.0.1:{port},localhost:{port}"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and sorted(results) == ["a", "b"]
    assert np.array_equal(results["a"], expected) and np.array_equal(results["b"], expected)


def served_chunks(server) -> int:
    """How many synthesis requests ``server`` has answered (its inference statistics)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics("pano", as_json=True)
    finally:
        client.close()
    return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))


def test_chunks_spread_over_two_servers_and_survive_losing_one(repository, checkpoint, local, tmp_path, monkeypatch, caplog):
    """Two real servers share a streamed render; one killed mid-render hands its chunks to the other."""
    triton_server = _server_or_skip()
    ports = free_ports(4)
    first = triton_server.LocalServer(repository, http_port=ports[0], grpc_port=ports[1])
    second = triton_server.LocalServer(repository, http_port=ports[2], grpc_port=ports[3])
    settings = dict(topology="cylinder", height=64, width=256, seed=4, chunk_size=512)  # 32 chunks
    expected = render_detailed(local, "cylinder", 64, 256, seed=4, chunk_size=512).image
    from cips_deploy.runtime.gigapixel import render_to_file

    tifffile = pytest.importorskip("tifffile")
    with first, second:
        urls = {"url": f"{first.grpc_url},{second.grpc_url}", "inflight": "2"}
        shared = tmp_path / "shared.tif"
        render_to_file(checkpoint, shared, backend="triton", backend_options=urls, **settings)
        assert np.array_equal(tifffile.imread(shared), expected)
        counts = [served_chunks(server) for server in (first, second)]
        assert sum(counts) == 32 and min(counts) >= 8, counts  # each server rendered its share

        original = TritonBackend.run_many

        def losing_run_many(self, batches):
            for index, rgb in enumerate(original(self, batches)):
                if index == 2:  # chunks are in flight on both servers: the second one dies now
                    os.killpg(second.process.pid, signal.SIGKILL)
                    second.process.wait()
                yield rgb

        monkeypatch.setattr(TritonBackend, "run_many", losing_run_many)
        survived = tmp_path / "survived.tif"
        with caplog.at_level("WARNING", logger="cips_deploy.exporters.triton_backend"):
            render_to_file(checkpoint, survived, backend="triton", backend_options=urls, **settings)
        assert np.array_equal(tifffile.imread(survived), expected)
        warnings = [record.getMessage() for record in caplog.records]
        assert len(warnings) == 1 and f"The Triton server at {second.grpc_url} stopped answering" in warnings[0]
        assert f"its chunks go to the other server ({first.grpc_url})" in warnings[0]
        assert served_chunks(first) > counts[0] + 16  # the first server rendered the rest, the lost chunks included


def test_wrong_model_and_unreachable_server(server, checkpoint, tmp_path):
    with pytest.raises(CipsError, match=r"serves no model 'nope' \(it serves: pano, pano_ensemble, pano_mapping\)"):
        TritonBackend(checkpoint, url=server.grpc_url, model="nope")
    other = tmp_path / "other.safetensors"  # same architecture, other weights
    cips_deploy.create("tiny", coordinate_space="cylinder", seed=12).save(other)
    with pytest.raises(CipsError, match="different weights"):
        TritonBackend(other, url=server.grpc_url, model="pano")
    with pytest.raises(CipsError, match="is the mapping engine of a model, not its synthesis engine"):
        TritonBackend(checkpoint, url=server.http_url, protocol="http", model="pano_mapping")
    (closed,) = free_ports(1)
    for protocol in ("grpc", "http"):
        with pytest.raises(CipsError, match=f"Cannot reach a Triton server at 127.0.0.1:{closed}"):
            TritonBackend(checkpoint, url=f"127.0.0.1:{closed}", protocol=protocol, timeout=5)
    for options, message in (({"url": "http://x:1"}, "no scheme"), ({"inflight": "0"}, "1 to 64"),
                             ({"protocol": "udp"}, "grpc or http"), ({"timeout": "-1"}, "timeout"),
                             ({"colour": "red"}, "no option 'colour'")):
        with pytest.raises(CipsError, match=message):
            TritonBackend(checkpoint, **options)


def test_server_hung_then_killed_mid_render(repository, checkpoint, tmp_path, monkeypatch):
    """One sentence, exit status 1, and no image when the server hangs or dies between chunks."""
    triton_server = _server_or_skip()
    http, grpc = free_ports(2)
    server = triton_server.LocalServer(repository, http_port=http, grpc_port=grpc)
    server.start()
    regions = triton_server.SHM / server._shm_prefix()  # the Python backend's shared memory
    assert list(regions.parent.glob(regions.name + "*"))
    try:
        # A hung server (every process stopped): the request times out.
        backend = TritonBackend(checkpoint, url=server.grpc_url, timeout=2)
        os.killpg(server.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(CipsError, match=r"did not answer a chunk within 2 s"):
                render_detailed(backend, "cylinder", 16, 64, chunk_size=256)
        finally:
            os.killpg(server.process.pid, signal.SIGCONT)
            backend.close()

        original = TritonBackend.run_many

        def killing_run_many(self, batches):
            for index, rgb in enumerate(original(self, batches)):
                if index == 1:  # two chunks done, more in flight: the server dies now
                    os.killpg(server.process.pid, signal.SIGKILL)
                    server.process.wait()
                yield rgb

        monkeypatch.setattr(TritonBackend, "run_many", killing_run_many)
        output = tmp_path / "killed.png"
        result = CliRunner().invoke(cli, [
            "render", "--checkpoint", str(checkpoint), "-t", "cylinder", "--height", "64", "--chunk-size", "256",
            "--backend", "triton", "--backend-option", f"url={server.grpc_url}", "--backend-option", "timeout=30",
            "-o", str(output), "-q"])
        assert result.exit_code == 1
        assert result.output.count("\n") == 1 and "stopped answering a chunk" in result.output, result.output
        assert list(tmp_path.iterdir()) == []  # no image, no partial file
    finally:
        server.stop()
    assert not list(regions.parent.glob(regions.name + "*"))  # the killed server's regions are removed too


def test_numpy_2_in_the_stub_is_refused(repository, monkeypatch):
    """With numpy 2 the stub reads tensors wrongly without an error: the model refuses to load."""
    import numpy

    triton_server = _server_or_skip()
    if int(numpy.__version__.split(".")[0]) < 2:
        pytest.skip("this environment has numpy < 2; the refusal needs numpy 2 to show")
    monkeypatch.setattr(triton_server, "stub_environment", lambda: Path(sys.prefix))
    http, grpc = free_ports(2)
    with pytest.raises(CipsError) as caught:
        with triton_server.LocalServer(repository, http_port=http, grpc_port=grpc, startup_timeout=60):
            pass
    message = str(caught.value)
    assert f"numpy {numpy.__version__}" in message and "reads tensors wrongly" in message and "\n" not in message


def test_serve_stops_cleanly_on_sigterm(checkpoint, tmp_path):
    """`cips-deploy serve CKPT` answers renders and, on SIGTERM, leaves no process and no folder."""
    _server_or_skip()
    http, grpc = free_ports(2)
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = dict(os.environ, TMPDIR=str(temp))
    command = [sys.executable, "-c", "from cips_deploy.cli import main; main()", "serve", str(checkpoint), "--http-port", str(http), "--grpc-port", str(grpc)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [output.put(line) for line in process.stdout], daemon=True).start()
    server_pid = None
    try:
        banner = []
        deadline = time.monotonic() + 180
        while not (banner and banner[-1].startswith("Stop with")) and time.monotonic() < deadline:
            try:  # bounded: a serve that hangs silently fails the test at the deadline
                banner.append(output.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                break
        assert banner and banner[-1].startswith("Stop with"), "".join(banner)
        serving = next(line for line in banner if line.startswith("Serving pano, pano_ensemble, pano_mapping from"))
        server_pid = int(serving.split("(pid ")[1].split(")")[0])
        assert f"  gRPC: 127.0.0.1:{grpc}\n" in banner and f"  HTTP: http://127.0.0.1:{http}\n" in banner
        assert any(temp.iterdir())  # its workspace while it runs
        backend = TritonBackend(checkpoint, url=f"127.0.0.1:{grpc}")
        try:
            assert backend.run(np.zeros((1, 5, 2), np.float32), np.zeros((1, 64), np.float32)).shape == (1, 5, 3)
        finally:
            backend.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not _group_alive(server_pid)
    # Nothing of ours (workspace, exported repository, the server's files) is left. Kept by
    # their owners, as after any export: torch's compile cache folder, and onnxruntime's
    # ".ses" file (it writes $TMPDIR/.ses whenever it opens a session, as the export's
    # validation does).
    assert [p.name for p in temp.iterdir() if not p.name.startswith("torchinductor_") and p.name != ".ses"] == []


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ensemble_maps_and_synthesizes(server, local):
    """The ensemble model (z, coords -> rgb) equals the mapping then synthesis, psi = 1."""
    import tritonclient.grpc as grpcclient

    rng = np.random.default_rng(4)
    z, coords = rng.standard_normal((2, 64)).astype(np.float32), rng.uniform(-1, 1, (2, 300, 2)).astype(np.float32)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inputs = []
        for name, tensor in (("z", z), ("coords", coords)):
            inputs.append(grpcclient.InferInput(name, list(tensor.shape), "FP32"))
            inputs[-1].set_data_from_numpy(tensor)
        rgb = client.infer("pano_ensemble", inputs).as_numpy("rgb")
    finally:
        client.close()
    expected = local.run(coords, local.map(z))
    assert rgb.shape == (2, 300, 3) and float(np.abs(rgb - expected).max()) <= 1e-6


def test_refusals_before_start(checkpoint, repository, tmp_path):
    """A repository the bundled server cannot load, a busy port, no repository: one sentence, nothing started."""
    triton_server = _server_or_skip()
    install = triton_server.find_server()
    onnx_repo = tmp_path / "onnx-repo"
    export_checkpoint(checkpoint, triton_repo=onnx_repo, validate=False)  # onnxruntime backend: GPU containers
    http, grpc = free_ports(2)
    if "onnxruntime" not in install.available_backends():
        with pytest.raises(CipsError, match=r"has no backend for pano \(onnxruntime\), pano_mapping \(onnxruntime\): export with --triton-backend python"):
            triton_server.LocalServer(onnx_repo, http_port=http, grpc_port=grpc, install=install).start()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CipsError, match=f"Port {port} on 127.0.0.1 is in use; pass another --grpc-port"):
            triton_server.LocalServer(repository, http_port=http, grpc_port=port).start()
    with pytest.raises(CipsError, match="No such Triton model repository"):
        triton_server.LocalServer(tmp_path / "missing", http_port=http, grpc_port=grpc).start()
    result = CliRunner().invoke(cli, ["serve", str(repository), "--name", "x"])
    assert result.exit_code == 1 and "a repository's models keep their names" in result.output


def test_serving_the_bundled_engine_needs_no_checkpoint(tmp_path):
    """An exported engine is served as it is (no torch involved in writing the repository), and
    the triton backend given the engine renders what onnxruntime renders from it locally."""
    from cips_deploy.exporters.triton import write_engine_repository
    from cips_deploy.models import DEMO_ENGINE

    triton_server = _server_or_skip()
    repo = tmp_path / "repo"
    write_engine_repository(repo, DEMO_ENGINE, backend="python")
    http, grpc = free_ports(2)
    expected = render_detailed(DEMO_ENGINE, "cylinder", 16, 64, seed=2, chunk_size=300).image
    with triton_server.LocalServer(repo, http_port=http, grpc_port=grpc) as running:
        backend = TritonBackend(DEMO_ENGINE, url=running.grpc_url)
        try:
            assert backend.model == "demo-panorama"
            served = render_detailed(backend, "cylinder", 16, 64, seed=2, chunk_size=300).image
        finally:
            backend.close()
    assert np.array_equal(served, expected)


def test_per_layer_styles_are_served(checkpoint, tmp_path):
    """`export --layer-styles --triton-repo`: the served synthesis model takes ws [B, L, S]
    (style mixing), as the local engine does; no ensemble (the client maps and mixes)."""
    triton_server = _server_or_skip()
    repo, engine = tmp_path / "repo", tmp_path / "layered.onnx"
    export_checkpoint(checkpoint, output=engine, triton_repo=repo, triton_model_name="layered", triton_backend="python",
                      validate=False, layer_styles=True)
    assert sorted(path.name for path in repo.iterdir()) == ["layered", "layered_mapping"]
    local = OnnxRuntimeBackend(engine)
    layers = local._layered().spec.inputs[1].shape[1]
    http, grpc = free_ports(2)
    with triton_server.LocalServer(repo, http_port=http, grpc_port=grpc) as running:
        backend = TritonBackend(checkpoint, url=running.grpc_url, model="layered")
        try:
            assert backend.takes_layer_styles() and layers > 1
            rng = np.random.default_rng(1)
            coords = rng.uniform(-1, 1, (2, 300, 2)).astype(np.float32)
            first, second = (backend.map(rng.standard_normal((2, 64)).astype(np.float32)) for _ in range(2))
            ws = np.stack([first] * (layers // 2) + [second] * (layers - layers // 2), axis=1)  # [2, L, 64]
            mixed = backend.run_layers(coords, ws)
            assert mixed.shape == (2, 300, 3) and float(np.abs(mixed - local.run_layers(coords, ws)).max()) <= 1e-6
            assert float(np.abs(mixed - backend.run(coords, first)).max()) > 1e-3  # the mix is not one style
            assert float(np.abs(backend.run(coords, first) - local.run(coords, first)).max()) <= 1e-6
            with pytest.raises(CipsError, match=rf"takes per-layer styles w \[B, {layers}, 64\], not \[2, 1, 64\]"):
                backend.run_layers(coords, ws[:, :1])
        finally:
            backend.close()
            local.close()

"""Pixels per second through one local Triton server against the in-process onnxruntime backend.

    python benchmarks/triton_serving.py --preset small --height 128 --width 512 \
        --chunk-sizes 4096,16384 --inflight 1,2,4 --repeats 2

A random-weight cylinder model of the preset (or --checkpoint) is exported once into a
temporary repository with the Python backend and served by the bundled CPU server
(:class:`cips_deploy.exporters.triton_server.LocalServer`, 127.0.0.1, free ports). Each
case renders the same panorama with a constructed backend (connection and model checks
are not timed) and reports the best of ``--repeats`` wall times. Client and server share
this machine's cores, so the figures say what the protocol and the Python backend cost,
not what a fleet of servers gains.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import cips_deploy
from cips_deploy.exporters.backends import OnnxRuntimeBackend
from cips_deploy.exporters.pipeline import export_checkpoint
from cips_deploy.exporters.triton_backend import TritonBackend
from cips_deploy.exporters.triton_server import LocalServer
from cips_deploy.runtime.render import render_detailed


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for each in sockets:
        each.bind(("127.0.0.1", 0))
    ports = [each.getsockname()[1] for each in sockets]
    for each in sockets:
        each.close()
    return ports


def timed(backend, height: int, width: int, chunk: int, repeats: int) -> tuple[float, np.ndarray]:
    best, image = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        image = render_detailed(backend, "cylinder", height, width, seed=1, chunker="fixed", chunk_size=chunk).image
        best = min(best, time.perf_counter() - start)
    return best, image


def batching(url: str, repo: Path) -> str:
    """What the dynamic batcher did: requests against executions of the synthesis model."""
    import tritonclient.grpc as grpcclient

    name = next(p.parent.name for p in repo.glob("*/config.pbtxt") if not p.parent.name.endswith(("_mapping", "_ensemble")))
    client = grpcclient.InferenceServerClient(url)
    stats = client.get_inference_statistics(name, as_json=True)["model_stats"][0]
    client.close()
    return f"server: {int(stats.get('inference_count', 0)):,} requests of {name!r} ran in {int(stats.get('execution_count', 0)):,} executions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--chunk-sizes", default="4096,16384")
    parser.add_argument("--inflight", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    chunks = [int(part) for part in args.chunk_sizes.split(",")]
    inflights = [int(part) for part in args.inflight.split(",")]
    pixels = args.height * args.width
    print(f"torch {torch.__version__}; {pixels:,} pixels per render, best of {args.repeats}")
    with tempfile.TemporaryDirectory(prefix="cips-bench-triton.") as folder:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = Path(folder) / f"{args.preset}.safetensors"
            cips_deploy.create(args.preset, coordinate_space="cylinder", seed=0).save(checkpoint)
        repo = Path(folder) / "repo"
        export_checkpoint(checkpoint, triton_repo=repo, triton_backend="python", validate=False)
        http, grpc = free_ports(2)
        local = OnnxRuntimeBackend(checkpoint)
        print("| backend | chunk (points) | in flight | seconds | pixels/s | same image |")
        print("| --- | --- | --- | --- | --- | --- |")
        references = {}
        for chunk in chunks:
            seconds, references[chunk] = timed(local, args.height, args.width, chunk, args.repeats)
            print(f"| onnxruntime (in process) | {chunk} | - | {seconds:.2f} | {pixels / seconds:,.0f} | reference |")
        local.close()
        with LocalServer(repo, http_port=http, grpc_port=grpc) as server:
            for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
                for chunk in chunks:
                    for inflight in inflights:
                        backend = TritonBackend(checkpoint, url=url, protocol=protocol, inflight=inflight)
                        try:
                            seconds, image = timed(backend, args.height, args.width, chunk, args.repeats)
                        finally:
                            backend.close()
                        same = "yes" if np.array_equal(image, references[chunk]) else "NO"
                        print(f"| triton {protocol} | {chunk} | {inflight} | {seconds:.2f} | {pixels / seconds:,.0f} | {same} |")
            print(batching(server.grpc_url, repo))


if __name__ == "__main__":
    main()

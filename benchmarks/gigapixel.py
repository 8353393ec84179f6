"""Peak memory and time of streamed renders (``cips-deploy render -o X.tif|X.dzi``).

Each render runs as its own ``cips-deploy render`` process; the peak RSS printed is the
largest of that process and its workers (``getrusage(RUSAGE_CHILDREN)``, read after each
run in a fresh interpreter so that earlier runs do not count).

    python benchmarks/gigapixel.py --height 4096 --width 4096 --format tif
    python benchmarks/gigapixel.py --height 8192 --width 32768 --format dzi --workers 2
    python benchmarks/gigapixel.py --height 16384 --width 65536 --backend coordinates

``--backend coordinates`` swaps synthesis for a backend that colours points by their
coordinates (no network): what remains is the output pipeline (layout, chunker, cells,
sink), whose memory is the question at sizes the demo model would take hours to render.
Other arguments after ``--`` go to ``cips-deploy render`` unchanged (e.g. ``-- --resume``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests" / "helpers"  # the coordinates backend, shared with the tests

RUNNER = '''
import sys
from cips_deploy.runtime.plugin_manager import get_registry, load_registry
import cips_deploy.runtime.plugin_manager as manager
import coordinates_backend  # tests/helpers/coordinates_backend.py
manager._default_registry = load_registry(extra_plugins=[("coordinates", coordinates_backend)])
from cips_deploy.cli import main
sys.argv[0] = "cips-deploy"
main()
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=4096)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--format", choices=["tif", "dzi", "png"], default="tif")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--backend", choices=["torch", "coordinates"], default="torch")
    parser.add_argument("--output", type=Path, default=None, help="where to write (default: a temporary folder, removed)")
    parser.add_argument("extra", nargs="*", help="more cips-deploy render arguments (after --)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gigapixel-bench-") as scratch:
        output = args.output or Path(scratch) / f"bench.{args.format}"
        command = ["-t", "cylinder", "--height", str(args.height), "--width", str(args.width), "-o", str(output), "-q"]
        command += ["--workers", str(args.workers), *args.extra]
        environment = dict(os.environ)
        if args.backend == "coordinates":
            program = [sys.executable, "-c", RUNNER, "render", "--backend", "coordinates", "--backend-option",
                       "space=cylinder", *command]
            environment["PYTHONPATH"] = str(TESTS) + os.pathsep + environment.get("PYTHONPATH", "")
        else:
            # The torch backend by name: without it, render takes the demo's ONNX engine (its default since 0.2).
            program = [sys.executable, "-c", "from cips_deploy.cli import main; main()", "render", "--backend", "torch", *command]
        start = time.perf_counter()
        result = subprocess.run(program, capture_output=True, text=True, env=environment)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        print(json.dumps({
            "height": args.height, "width": args.width, "format": args.format, "workers": args.workers,
            "backend": args.backend, "returncode": result.returncode, "seconds": round(seconds, 1),
            "peak_rss_mib": round(peak / 2**20, 1), "image_mib": round(args.height * args.width * 3 / 2**20, 1),
            "stdout": result.stdout.strip()[-300:], "stderr": result.stderr.strip()[-300:],
        }))


if __name__ == "__main__":
    main()

"""What the torch-free runtime costs beside the full install, measured side by side in one run.

For each environment (a venv's python: the base install ``pip install cips-deploy`` and the
full one ``pip install "cips-deploy[build]"``):

- ``cips-deploy --help``: wall time, the median of ``--repeats`` fresh processes;
- the README's quickstart render (``cips-deploy render --topology cylinder -o panorama.png``):
  wall time and peak RSS;
- a streamed BigTIFF from the demo engine (``--tif-size``, default 4096 x 16384): peak RSS;
- its site-packages on disk;

and, once, the floor: a bare loop of onnxruntime + numpy + Pillow over the same chunks of the
same points (cylinder, 32 MB chunks) through the demo engine. Whether the two installs' PNGs
are identical is printed too.

    python benchmarks/runtime_footprint.py --env base=/tmp/lean/bin/python --env full=.venv/bin/python

Peak RSS is ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` read in a fresh wrapper process after the
command (so no earlier command counts).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRAPPER = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:]).returncode
elapsed = time.perf_counter() - start
print(code, elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""

# The floor: the same points and chunks as `render -t cylinder --height 256 --width 1024`,
# through the bundled demo engines with nothing but onnxruntime, numpy and Pillow.
BARE_LOOP = """
import sys
import numpy as np, onnxruntime as ort
from PIL import Image
height, width, out, engine = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
synthesis = ort.InferenceSession(engine, providers=["CPUExecutionProvider"])
mapping = ort.InferenceSession(engine[: -len(".onnx")] + ".mapping.onnx", providers=["CPUExecutionProvider"])
z = np.random.RandomState(0).randn(1, mapping.get_inputs()[0].shape[1]).astype(np.float32)
(w,) = mapping.run(None, {"z": z})
column = np.arange(width, dtype=np.float64)
u = ((-1.0 + (2.0 * column + 1.0) / width + 1.0) % 2.0 - 1.0).astype(np.float32)
v = np.linspace(-1, 1, height, dtype=np.float32)
image = np.empty((height * width, 3), np.uint8)
chunk = 16384
for start in range(0, height * width, chunk):
    index = np.arange(start, min(start + chunk, height * width))
    coords = np.stack([u[index % width], v[index // width]], axis=-1)[None]
    (rgb,) = synthesis.run(None, {"coords": coords, "w": w})
    image[index] = np.clip((rgb[0] + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
Image.fromarray(image.reshape(height, width, 3)).save(out)
"""


def measured(python: str, *command: str) -> tuple[int, float, float]:
    """(exit code, seconds, peak RSS in MB) of ``command`` run under ``python``'s wrapper."""
    result = subprocess.run([python, "-c", WRAPPER, *command], capture_output=True, text=True, check=True)
    code, seconds, kilobytes = result.stdout.split()[-3:]
    return int(code), float(seconds), int(kilobytes) / 1024


def site_packages_mb(python: str) -> float:
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    total = sum(path.stat().st_size for path in Path(purelib).rglob("*") if path.is_file() and not path.is_symlink())
    return total / 2**20


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", action="append", required=True, metavar="NAME=PYTHON", help="an environment to measure; repeatable")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tif-size", default="4096x16384", metavar="HxW")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    height, width = (int(side) for side in args.tif_size.split("x"))
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        for spec in args.env:
            name, python = spec.split("=", 1)
            cli = str(Path(python).with_name("cips-deploy"))
            helps = [measured(python, cli, "--help")[1] for _ in range(args.repeats)]
            png = out / f"{name}.png"
            code, seconds, rss = measured(python, cli, "render", "--topology", "cylinder", "-o", str(png))
            tif = out / f"{name}.tif"
            tif_code, tif_seconds, tif_rss = measured(python, cli, "render", "-t", "cylinder", "--height", str(height),
                                                      "--width", str(width), "-o", str(tif))
            rows[name] = {
                "help_s": statistics.median(helps), "render_exit": code, "render_s": seconds, "render_rss_mb": rss,
                "png_sha256": digest(png) if png.exists() else None, "tif_exit": tif_code, "tif_s": tif_seconds,
                "tif_rss_mb": tif_rss, "site_packages_mb": site_packages_mb(python),
            }
            tif.unlink(missing_ok=True)
        first_python = args.env[0].split("=", 1)[1]
        engine = subprocess.run([first_python, "-c", "import cips_deploy.models as m; print(m.DEMO_ENGINE)"],
                                capture_output=True, text=True, check=True).stdout.strip()
        bare = measured(first_python, first_python, "-c", BARE_LOOP, "256", "1024", str(out / "bare.png"), engine)
        rows["bare onnxruntime loop"] = {"render_exit": bare[0], "render_s": bare[1], "render_rss_mb": bare[2]}
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'environment':<24} {'--help s':>9} {'render s':>9} {'render MB':>10} {'tif MB':>8} {'tif s':>8} {'site MB':>8}  png")
    for name, row in rows.items():
        def cell(key, fmt):
            return format(row[key], fmt) if key in row and row[key] is not None else "-"
        print(f"{name:<24} {cell('help_s', '9.2f')} {cell('render_s', '9.2f')} {cell('render_rss_mb', '10.0f')} "
              f"{cell('tif_rss_mb', '8.0f')} {cell('tif_s', '8.1f')} {cell('site_packages_mb', '8.0f')}  {row.get('png_sha256', '-')}")
    print(f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()

"""The exported page's WebAssembly backend in headless Chromium against onnxruntime in Python,
side by side in one run (issue 23).

For each model (the bundled CIPS and CREPS demos, and paper256 CIPS-skip and CREPS with random
weights, seed 0, exported here once):

- pixels/s of a ``size x size`` render, the median of ``--repeats`` renders of seeds 10, 11, ...
  (another seed each time, so that no path reuses the lines a CREPS grid cached for a style)
  after a warm-up render: in the page (``window.cipsDeploy.render``, timed inside the page) and in Python
  (``cips_deploy.render`` through the onnxruntime backend, timed around the call), each with
  ``--threads`` threads;
- the page's interactive view at ``--frame`` (1280 x 720): time to the first (coarse) picture
  and to the final frame, for the first view after load (engine sessions created on the way)
  and for a second view (another seed) once warm.

The site is served by ``serve-web``'s server (cross-origin isolated, so onnxruntime-web may use
``--threads`` WebAssembly threads) and driven through Playwright in Debian's chromium.

    python benchmarks/web_page.py --web-runtime .ci-npm/node_modules/onnxruntime-web/dist --threads 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import onnxruntime

import cips_deploy
from cips_deploy.exporters.web.server import make_server
from cips_deploy.exporters.web.site import write_site
from cips_deploy.models import CREPS_DEMO_ENGINE, DEMO_ENGINE

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def engines(work: Path, names: list[str]) -> dict[str, Path]:
    """name -> exported synthesis engine (paper256 models are exported into ``work`` once)."""
    found = {}
    for name in names:
        if name == "demo":
            found[name] = DEMO_ENGINE
        elif name == "creps-demo":
            found[name] = CREPS_DEMO_ENGINE
        else:
            arch = {"paper256-cips": "skip", "paper256-creps": "creps"}[name]
            engine = work / f"{name}.onnx"
            if not engine.exists():
                from cips_deploy.exporters import export_onnx

                export_onnx(cips_deploy.create("paper256", arch=arch, seed=0).eval(), engine, validate_export=False)
            found[name] = engine
    return found


def python_pixels_per_second(engine: Path, topology: str, size: int, threads: int, repeats: int) -> float:
    from cips_deploy.exporters.backends import OnnxRuntimeBackend

    original = onnxruntime.SessionOptions

    class Options(original):  # every session of the backend on `threads` intra-op threads
        def __init__(self) -> None:
            super().__init__()
            self.intra_op_num_threads = threads

    onnxruntime.SessionOptions = Options
    try:
        backend = OnnxRuntimeBackend(engine, providers="cpu")
        cips_deploy.render(backend, topology, height=64, width=64, seed=1)  # warm-up
        seconds = []
        for repeat in range(repeats):
            start = time.perf_counter()
            cips_deploy.render(backend, topology, height=size, width=size, seed=10 + repeat)
            seconds.append(time.perf_counter() - start)
        return size * size / statistics.median(seconds)
    finally:
        onnxruntime.SessionOptions = original


def page_measurements(browser, url: str, topology: str, size: int, frame: tuple[int, int], threads: int,
                      repeats: int) -> dict:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{url}?threads={threads}&size={frame[0]}x{frame[1]}&seed=0")
    page.wait_for_function("window.cipsDeploy !== undefined", timeout=60000)
    page.evaluate("window.cipsDeploy.ready")
    page.evaluate("window.cipsDeploy.idle()")
    first = page.evaluate("window.cipsDeploy.timings()")
    page.evaluate("window.cipsDeploy.setView({seed: 1})")
    page.evaluate("window.cipsDeploy.idle()")
    warm = page.evaluate("window.cipsDeploy.timings()")
    milliseconds = page.evaluate(
        """async ([topology, size, repeats]) => {
            await window.cipsDeploy.render({seed: 1, width: 64, height: 64, topology});
            const times = [];
            for (let i = 0; i < repeats; i++) {
              const start = performance.now();
              await window.cipsDeploy.render({seed: 10 + i, width: size, height: size, topology});
              times.push(performance.now() - start);
            }
            return times; }""",
        [topology, size, repeats],
    )
    milliseconds = statistics.median(milliseconds)
    runtime = page.locator("#runtime").inner_text()
    page.close()
    return {"pixels_per_second": size * size / (milliseconds / 1000), "first": first, "warm": warm, "runtime": runtime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--web-runtime", type=Path, required=True, help="node_modules/onnxruntime-web/dist")
    parser.add_argument("--models", nargs="+", default=["demo", "creps-demo", "paper256-cips", "paper256-creps"])
    parser.add_argument("--size", type=int, default=256, help="side of the pixels/s render")
    parser.add_argument("--frame", default="1280x720", help="the interactive view's size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed renders per path (the median is reported)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    frame = tuple(int(side) for side in args.frame.split("x"))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="web-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True, args=FLAGS)
        version = browser.version
        for name, engine in engines(work, args.models).items():
            topology = "cylinder" if name in ("demo", "creps-demo") else "flat"
            site = work / f"{name}-site"
            if not site.exists():
                write_site(engine, site, web_runtime=args.web_runtime, overwrite=False)
            server = make_server(site)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            try:
                page = page_measurements(browser, f"http://127.0.0.1:{server.server_address[1]}/", topology, args.size,
                                         frame, args.threads, args.repeats)
            finally:
                server.shutdown()
                server.server_close()
            python = python_pixels_per_second(engine, topology, args.size, args.threads, args.repeats)
            rows.append((name, topology, page, python))
            print(name, page, python, flush=True)
        browser.close()

    print(f"\nChromium {version} headless, {page['runtime']}; onnxruntime {onnxruntime.__version__} in Python "
          f"{platform.python_version()} with {args.threads} intra-op threads; cips-deploy {cips_deploy.__version__}.")
    print(f"\n| model | topology | page px/s ({args.size}^2) | Python onnxruntime px/s | page / Python | "
          f"{args.frame}: first picture, final (first view) | second view: first picture, final |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, topology, page, python in rows:
        first, warm = page["first"], page["warm"]
        print(f"| {name} | {topology} | {page['pixels_per_second']:,.0f} | {python:,.0f} | "
              f"{page['pixels_per_second'] / python:.0%} | {first['coarseMs'] / 1000:.2f} s, {first['finalMs'] / 1000:.2f} s | "
              f"{warm['coarseMs'] / 1000:.2f} s, {warm['finalMs'] / 1000:.2f} s |")


if __name__ == "__main__":
    main()

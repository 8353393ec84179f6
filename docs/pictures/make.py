"""Render every picture of docs/gallery.md again.

    python docs/pictures/make.py            # writes docs/pictures/*.png, *.webp (about 30 s on 2 cores)
    python docs/pictures/make.py --out /tmp/pictures
    python docs/pictures/make.py web-page   # only that picture

Each picture is made by a ``cips-deploy`` command (run in-process, exactly as typed in the
gallery) or, where a figure combines several renders, by the public Python API only
(``cips_deploy.create``/``load``/``render``), so the script keeps working when a model
family's internals change. The viewer's screenshot needs Chromium and the playwright
package (the test extra); without them that one picture is skipped, with a message.
"""

from __future__ import annotations

import argparse
import io
import shlex
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageSequence

import cips_deploy
from cips_deploy.models import CREPS_DEMO_MODEL, DEMO_ENGINE, DEMO_MODEL
from cips_deploy.cli import cli
from cips_deploy.measure.metrics import box_downsample, pixel_centre_viewport, psnr
from cips_deploy.runtime.plugin_manager import get_registry
from cips_deploy.contracts.topology import TopologyRequest, resolve_parameters

HERE = Path(__file__).resolve().parent
CHROMIUM_FLAGS = ["--no-sandbox", "--enable-unsafe-swiftshader", "--disable-background-networking", "--no-first-run"]


def run(command: str) -> None:
    """Run a ``cips-deploy ...`` command line in this process and echo it."""
    print(f"$ {command}")
    arguments = shlex.split(command)
    assert arguments[0] == "cips-deploy"
    cli.main(arguments[1:], prog_name="cips-deploy", standalone_mode=False)


def captioned(panels: list[tuple[np.ndarray, str]], gap: int = 4) -> np.ndarray:
    """Panels (uint8 [H, W, 3], same height) side by side, each with a caption underneath."""
    height = panels[0][0].shape[0]
    caption = 16
    width = sum(panel.shape[1] for panel, _ in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, height + caption), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for panel, text in panels:
        canvas.paste(Image.fromarray(panel), (x, 0))
        draw.text((x + 2, height + 2), text, fill=(0, 0, 0))
        x += panel.shape[1] + gap
    return np.asarray(canvas)


def save(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, optimize=True)
    print(f"  wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


def publish(rendered: Path, out: Path) -> None:
    """Copy a file a command wrote (into the scratch folder: commands refuse to replace a file
    without --force, and a failed run leaves the pictures as they were) into ``out``."""
    shutil.copyfile(rendered, out / rendered.name)
    print(f"  wrote {out / rendered.name} ({rendered.stat().st_size / 1024:.0f} KB)")


def panorama_and_viewer(out: Path, work: Path) -> None:
    run(f"cips-deploy render --topology cylinder --height 128 --seed 0 -o {work / 'panorama.png'}")
    publish(work / "panorama.png", out)
    run(f"cips-deploy render --topology cylinder --height 256 --seed 0 -o {work / 'large.png'} --viewer {work / 'pano.html'}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("  skipped the viewer's screenshot: the playwright package is not installed (pip install -e '.[test]')")
        return
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        print("  skipped the viewer's screenshot: no Chromium (apt-get install chromium)")
        return
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(work / "profile"), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 560, "height": 240},
        )
        page = context.new_page()
        page.goto((work / "pano.html").as_uri() + "?yaw=-30&fov=110")
        for _ in range(600):
            if page.evaluate("Number(document.body.dataset.frames || 0) >= 1"):
                break
            page.wait_for_timeout(50)
        shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"))
        context.close()
    save(shot, out / "viewer.png")


def foveated(out: Path, work: Path) -> None:
    """Samples, sample density and reconstruction of a foveated render, beside the full render."""
    options = "-p u_min=-0.3 -p u_max=0.3 -p gaze_x=0.35 -p gaze_y=0.45 -p radius=0.08 -p max_stride=16"
    run(f"cips-deploy render -t foveated --height 192 --seed 0 {options} -o {work / 'foveated.png'}")
    run(f"cips-deploy render -t flat --height 192 --seed 0 -p u_min=-0.3 -p u_max=0.3 -o {work / 'flat.png'}")
    reconstruction = np.asarray(Image.open(work / "foveated.png").convert("RGB"))
    full = np.asarray(Image.open(work / "flat.png").convert("RGB"))
    # The sampling pattern, from the topology itself (what the renderer evaluated).
    topology = get_registry().get("topology", "foveated").item
    params = resolve_parameters(topology, dict(item.split("=") for item in options.replace("-p ", "").split()))
    layout = topology.layout(TopologyRequest(192, 192, "cylinder", params))
    mask = layout.mask  # [H, W] bool: pixels evaluated by the model
    samples = np.where(mask[..., None], reconstruction, 0).astype(np.uint8)
    # Density: samples per pixel is 4**-level; show log2 spacing 0 (white) .. 4 (dark blue).
    level = layout.levels.astype(np.float32) / max(1, int(layout.levels.max()))
    density = (np.stack([1 - level, 1 - level, 1 - 0.5 * level], axis=-1) * 255).astype(np.uint8)
    fraction = mask.mean()
    picture = captioned([
        (samples, f"evaluated: {fraction:.0%} of pixels"),
        (density, "sample spacing 1-16 px"),
        (reconstruction, "reconstruction"),
        (full, "full render"),
    ])
    save(picture, out / "foveated.png")


def zoom_strip(out: Path, work: Path) -> None:
    run(
        "cips-deploy video --mode zoom --seeds 0 --frames 6 --zoom 8 --centre -0.2,-0.35 -p u_min=-0.45 -p u_max=0.05 "
        f"--height 112 --lossless -o {work / 'zoom.webp'}"
    )
    with Image.open(work / "zoom.webp") as clip:
        frames = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(clip)]
    save(captioned([(frame, f"x{8 ** (k / 5):.1f}") for k, frame in enumerate(frames)], gap=2), out / "zoom-strip.png")


def scale_consistency(out: Path) -> None:
    """The CREPS paper's figure: small render vs the large render box-filtered down, residual x10."""
    size, factor = 64, 4
    rows = []
    for arch in ("skip", "creps"):
        model = cips_deploy.create("tiny", arch=arch, seed=0)
        small = cips_deploy.render(model, "flat", size, size, seed=1, **pixel_centre_viewport(size))
        large = cips_deploy.render(model, "flat", size * factor, size * factor, seed=1, **pixel_centre_viewport(size * factor))
        down = box_downsample(large, factor)
        residual = np.clip(np.abs(small.astype(np.float64) - down) * 10, 0, 255).astype(np.uint8)
        down8 = np.clip(np.rint(down), 0, 255).astype(np.uint8)
        name = "CIPS" if arch == "skip" else "CREPS"
        print(f"  {name} tiny (random weights, model seed 0), latent seed 1: PSNR {psnr(small, down):.1f} dB")
        upscale = 2  # shown at 128 px per panel
        panels = [np.kron(image, np.ones((upscale, upscale, 1), np.uint8)) for image in (small, down8, residual)]
        rows.append(captioned([
            (panels[0], f"{name}: {size}px render"),
            (panels[1], f"{size * factor}px, box /{factor}"),
            (panels[2], "|difference| x10"),
        ]))
    save(np.concatenate(rows, axis=0), out / "scale-consistency.png")


def demo_comparison(out: Path, work: Path) -> None:
    """The bundled CIPS demo and the bundled CREPS demo (a tiny cylinder CREPS trained on
    china.jpg, docs/creps.md), the same panorama command, stacked."""
    if not CREPS_DEMO_MODEL.is_file():
        print(f"  skipped the CIPS / CREPS demo comparison: {CREPS_DEMO_MODEL} is missing")
        return
    rows = []
    for name, checkpoint in (("CIPSskip demo (bundled)", DEMO_MODEL), ("CREPS demo (bundled)", CREPS_DEMO_MODEL)):
        target = work / f"{name.split()[0].lower()}.png"
        run(f"cips-deploy render --checkpoint {checkpoint} --topology cylinder --height 64 --seed 0 -o {target}")
        rows.append(captioned([(np.asarray(Image.open(target).convert("RGB")), f"{name}, seed 0")]))
    save(np.concatenate(rows, axis=0), out / "demo-cips-creps.png")


def web_page(out: Path, work: Path, web_runtime: Path) -> None:
    """The demo's exported site in headless Chromium, zoomed and panned with the mouse."""
    if not (web_runtime / "ort.wasm.min.mjs").is_file():
        print(f"  skipped the web page's screenshot: no onnxruntime-web at {web_runtime} (npm install onnxruntime-web)")
        return
    from playwright.sync_api import sync_playwright

    from cips_deploy.exporters.web.server import make_server

    run(f"cips-deploy export --engine web -o {work / 'site'} --web-runtime {web_runtime}")
    server = make_server(work / "site")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                                 headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1000, "height": 360})
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/?seed=5&size=1024x256")
            page.wait_for_function("window.cipsDeploy !== undefined")
            page.evaluate("window.cipsDeploy.idle()")
            box = page.locator("#view").bounding_box()
            x, y = box["x"] + 0.55 * box["width"], box["y"] + 0.5 * box["height"]
            page.mouse.move(x, y)
            page.mouse.wheel(0, -190)  # zoom in about the pointer: new pixels, not magnified ones
            page.evaluate("window.cipsDeploy.idle()")
            page.mouse.down()
            page.mouse.move(x - 120, y, steps=6)  # and pan
            page.mouse.up()
            page.evaluate("window.cipsDeploy.idle()")
            print(f"  the view: {page.url.split('?')[1]}")
            shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"))
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    save(shot, out / "web-page.png")


def animations(out: Path, work: Path) -> None:
    run(f"cips-deploy video --preset tiny --arch creps --seeds 0-3 --frames 32 --height 96 --quality 70 -o {work / 'walk.webp'}")
    run(f"cips-deploy video --mode pan --seeds 0 --frames 36 --height 96 --quality 70 -o {work / 'pan.webp'}")
    for name in ("walk.webp", "pan.webp"):
        publish(work / name, out)


def projection(out: Path, work: Path) -> None:
    """A photograph (scikit-learn's china.jpg, the demo's training photograph) projected into the
    demo model (W+, the heading found by --angle auto), its panorama and its 4x render."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # found, not imported: only its data file is read
    photo = Path(spec.origin).parent / "datasets" / "images" / "china.jpg" if spec and spec.origin else None
    if photo is None or not photo.is_file():
        print("  skipped the projection: it projects scikit-learn's china.jpg (pip install scikit-learn)")
        return
    run(f"cips-deploy project {photo} --angle auto --per-layer --steps 1000 -q -o {work / 'china.npz'} "
        f"--image {work / 'china-view.png'} --video {work / 'projection.webp'}")
    with np.load(work / "china.npz", allow_pickle=False) as saved:
        u_min, u_max = (float(value) for value in saved["view"][:2])
    run(f"cips-deploy render --w {work / 'china.npz'} --backend torch -t cylinder --height 96 -q -o {work / 'projection-panorama.png'}")
    run(f"cips-deploy render --w {work / 'china.npz'} --backend torch -t flat -p u_min={u_min:.6f} -p u_max={u_max:.6f} "
        f"--height 128 -q -o {work / 'china-4x.png'}")
    with Image.open(photo) as image:
        image = image.convert("RGB")
    # The photograph 128 px high with its centre square (what --resize crop keeps) outlined;
    # that square at the 32 px the demo model was trained at: the projection's target.
    whole = image.resize((round(image.width * 128 / image.height), 128), Image.Resampling.LANCZOS)
    box = _centre_square(whole.size)
    ImageDraw.Draw(whole).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline=(255, 255, 0))
    target32 = np.asarray(image.crop(_centre_square(image.size)).resize((32, 32), Image.Resampling.LANCZOS))
    view = np.kron(np.asarray(Image.open(work / "china-view.png").convert("RGB")), np.ones((4, 4, 1), np.uint8))
    picture = captioned([
        (np.asarray(whole), "photograph (china.jpg)"),
        (np.kron(target32, np.ones((4, 4, 1), np.uint8)), "target, 32 px"),
        (view, "projection, 32 px"),
        (np.asarray(Image.open(work / "china-4x.png").convert("RGB")), "projection at 4x"),
    ])
    save(picture, out / "projection.png")
    for name in ("projection-panorama.png", "projection.webp"):
        publish(work / name, out)


def _centre_square(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box of an image's centre square (what ``project --resize crop`` keeps)."""
    width, height = size
    side = min(width, height)
    return ((width - side) // 2, (height - side) // 2, (width - side) // 2 + side, (height - side) // 2 + side)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the pictures (default: docs/pictures)")
    parser.add_argument("--web-runtime", type=Path, default=HERE.parents[1] / ".ci-npm/node_modules/onnxruntime-web/dist",
                        help="onnxruntime-web's dist folder, for the web page's screenshot")
    parser.add_argument("only", nargs="*", help="make only these pictures (functions of this file, such as web-page)")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for bundled in (DEMO_ENGINE, DEMO_MODEL):  # the commands' default model; the comparison's checkpoint
        if not bundled.exists():
            sys.exit(f"The bundled demo model {bundled} is missing; reinstall cips-deploy.")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        pictures = {
            "panorama-and-viewer": lambda: panorama_and_viewer(out, work),
            "foveated": lambda: foveated(out, work),
            "zoom-strip": lambda: zoom_strip(out, work),
            "scale-consistency": lambda: scale_consistency(out),
            "demo-comparison": lambda: demo_comparison(out, work),
            "web-page": lambda: web_page(out, work, args.web_runtime),
            "animations": lambda: animations(out, work),
            "projection": lambda: projection(out, work),
        }
        for name in args.only:
            if name not in pictures:
                sys.exit(f"No picture {name!r}; choose from {', '.join(pictures)}.")
        for name, make in pictures.items():
            if not args.only or name in args.only:
                make()


if __name__ == "__main__":
    main()

"""A 360-degree panorama viewer in one self-contained HTML file.

    write_viewer(panorama_uint8, "pano.html", title="seed 3")

The page embeds the panorama as a PNG data URL and its own script and style; it loads
nothing (a Content-Security-Policy forbids any request), so it works opened straight from
disk (``file://``) and offline. Dragging (mouse, touch, pen) or the arrow keys turn the
view; the wheel or +/- zooms.

Geometry (the same in both renderers). The panorama is the inside of a cylinder of radius
1 seen from its axis with a pinhole camera: screen pixel (x, y) (from the canvas centre,
y down, focal length f in pixels) looks at the angle ``yaw + atan2(x, f)`` and the height
``y / hypot(x, f)`` on the cylinder. Column c of a W-wide panorama is the angle
``pi * (-1 + (2c + 1) / W)`` (the ``cylinder`` topology's sector centres), so the texture
coordinate is ``s = angle / 2 pi + 1/2`` taken modulo 1: the first and last columns are
neighbours like any other pair and there is no seam. Pixels are square, so the strip's
half-height on the cylinder is ``pi * H / W``.

Renderers: WebGL2 (a fragment shader, texture wrap REPEAT across the seam) and, where WebGL2
is missing or fails, or with ``?renderer=2d``, a 2D canvas computing the same mapping per
pixel with bilinear interpolation that wraps around. ``window.cipsViewer`` exposes the
state (``renderer``, ``yaw``, ``fov``, ``setView(yawDegrees, fovDegrees)``) for scripts and
tests; ``?yaw=DEG&fov=DEG`` set the first view.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cips_deploy.errors import CipsError
from cips_deploy.media.provenance import png_info
from cips_deploy.runtime.atomic import atomic_path

# Wider panoramas are reduced (box filter, a whole factor) before embedding: WebGL
# textures are limited to 8192 or 16384 texels per side on common hardware, and a page
# embedding hundreds of MB loads slowly anyway.
MAX_EMBEDDED_WIDTH = 8192


def viewer_html(image: np.ndarray, *, title: str = "cips-deploy panorama", provenance: dict[str, str] | None = None, heading: float = 0.0) -> str:
    """The viewer page for a panorama, uint8 ``[H, W, 3]`` covering 360 degrees across W."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise CipsError("The viewer shows a uint8 [height, width, 3] panorama.")
    height, width = image.shape[:2]
    if width < 2 or height < 1:
        raise CipsError(f"A {height} x {width} image is too small for a panorama viewer.")
    picture = Image.fromarray(image, mode="RGB")
    factor = math.ceil(width / MAX_EMBEDDED_WIDTH)
    if factor > 1:
        picture = picture.reduce(factor)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=png_info(provenance))
    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    meta = {
        "width": width,
        "height": height,
        "embedded_width": picture.width,
        "embedded_height": picture.height,
        "heading": float(heading),
        "provenance": provenance or {},
    }
    # JSON inside <script>: no "<" at all (as \u003c), so neither "</script" nor "<!--" can
    # change how the HTML parser reads the script.
    values = {
        "TITLE": html.escape(title),
        "META": json.dumps(meta).replace("<", "\\u003c"),
        "DATA_URL": data_url,
    }
    # One pass, so that text from one value (a model's name) is never taken for a placeholder.
    return re.sub(r"@(TITLE|META|DATA_URL)@", lambda match: values[match.group(1)], _TEMPLATE)


def write_viewer(image: np.ndarray, path: str | Path, *, overwrite: bool = True, **options: Any) -> None:
    """Write :func:`viewer_html` to ``path`` atomically (an existing file only with ``overwrite``)."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise CipsError(f"The viewer {path} must be an .html file.")
    page = viewer_html(image, **options)
    with atomic_path(path, overwrite=overwrite) as temporary:
        temporary.write_text(page, encoding="utf-8")


_TEMPLATE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="generator" content="cips-deploy">
<title>@TITLE@</title>
<style>
html, body { margin: 0; height: 100%; background: #101010; overflow: hidden; }
#stage { position: fixed; inset: 0; cursor: grab; touch-action: none; outline: none; }
#stage.dragging { cursor: grabbing; }
canvas { display: block; width: 100%; height: 100%; }
#hint { position: fixed; left: 8px; bottom: 6px; font: 12px sans-serif; color: #ccc; pointer-events: none;
        text-shadow: 0 0 3px #000; }
</style>
</head>
<body>
<div id="stage" tabindex="0" role="img" aria-label="360-degree panorama: drag to look around"><canvas id="view"></canvas></div>
<div id="hint">@TITLE@ &middot; drag or arrow keys to look around, wheel to zoom</div>
<script id="meta" type="application/json">@META@</script>
<script>
"use strict";
(function () {
  const meta = JSON.parse(document.getElementById("meta").textContent);
  const query = new URLSearchParams(location.search);
  const stage = document.getElementById("stage");
  let canvas = document.getElementById("view");
  const TURN = 2 * Math.PI;
  const state = {
    renderer: null,
    yaw: (parseFloat(query.get("yaw")) || 0) * Math.PI / 180,   // radians; 0 looks at the image centre
    fov: Math.min(120, Math.max(20, parseFloat(query.get("fov")) || 90)) * Math.PI / 180,  // horizontal
    frames: 0,
  };
  if (query.get("hint") === "0") document.getElementById("hint").style.display = "none";
  let halfHeight = Math.PI * meta.height / meta.width;  // the strip's half-height on the radius-1 cylinder
  let draw = null;
  let pending = false;

  function resize() {
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    canvas.height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  }
  function focal() { return canvas.width / 2 / Math.tan(state.fov / 2); }
  function request() {
    if (pending || !draw) return;
    pending = true;
    requestAnimationFrame(function () { pending = false; draw(); state.frames += 1; document.body.dataset.frames = state.frames; });
  }

  // ---------------------------------------------------------------- WebGL2
  function startWebGL(image) {
    const gl = canvas.getContext("webgl2", { preserveDrawingBuffer: true, antialias: false });
    if (!gl) return null;
    const size = gl.getParameter(gl.MAX_TEXTURE_SIZE);
    let source = image;
    if (image.width > size || image.height > size) {  // shrink to what the GPU takes
      const scale = Math.min(size / image.width, size / image.height);
      source = document.createElement("canvas");
      source.width = Math.floor(image.width * scale);
      source.height = Math.max(1, Math.floor(image.height * scale));
      source.getContext("2d").drawImage(image, 0, 0, source.width, source.height);
    }
    const vertex = "#version 300 es\nin vec2 corner; void main() { gl_Position = vec4(corner, 0.0, 1.0); }";
    const fragment = [
      "#version 300 es",
      "precision highp float;",
      "uniform sampler2D pano; uniform vec2 size; uniform float yaw; uniform float focal; uniform float halfHeight;",
      "out vec4 colour;",
      "void main() {",
      "  vec2 p = vec2(gl_FragCoord.x - 0.5 * size.x, 0.5 * size.y - gl_FragCoord.y);  // y down",
      "  float angle = yaw + atan(p.x, focal);",
      "  float t = 0.5 + (p.y / length(vec2(p.x, focal))) / (2.0 * halfHeight);",
      "  if (t < 0.0 || t > 1.0) { colour = vec4(0.063, 0.063, 0.063, 1.0); return; }",
      "  float s = fract(angle / 6.283185307179586 + 0.5);",
      "  colour = vec4(textureLod(pano, vec2(s, t), 0.0).rgb, 1.0);",
      "}",
    ].join("\n");
    function compile(kind, text) {
      const shader = gl.createShader(kind);
      gl.shaderSource(shader, text);
      gl.compileShader(shader);
      if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
      return shader;
    }
    const program = gl.createProgram();
    gl.attachShader(program, compile(gl.VERTEX_SHADER, vertex));
    gl.attachShader(program, compile(gl.FRAGMENT_SHADER, fragment));
    gl.linkProgram(program);
    if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(program));
    gl.useProgram(program);
    const buffer = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
    const corner = gl.getAttribLocation(program, "corner");
    gl.enableVertexAttribArray(corner);
    gl.vertexAttribPointer(corner, 2, gl.FLOAT, false, 0, 0);
    const texture = gl.createTexture();
    gl.bindTexture(gl.TEXTURE_2D, texture);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGB8, gl.RGB, gl.UNSIGNED_BYTE, source);
    // REPEAT across u: linear filtering at the seam blends the last and first columns,
    // which are neighbours on the cylinder. No mipmaps: the seam's jump of s by 1 would
    // otherwise pick a coarse level there.
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.REPEAT);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
    const where = {};
    for (const name of ["pano", "size", "yaw", "focal", "halfHeight"]) where[name] = gl.getUniformLocation(program, name);
    gl.uniform1i(where.pano, 0);
    const error = gl.getError();
    if (error !== gl.NO_ERROR) throw new Error("WebGL error " + error);
    return function () {
      gl.viewport(0, 0, canvas.width, canvas.height);
      gl.uniform2f(where.size, canvas.width, canvas.height);
      gl.uniform1f(where.yaw, state.yaw);
      gl.uniform1f(where.focal, focal());
      gl.uniform1f(where.halfHeight, halfHeight);
      gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
    };
  }

  // ---------------------------------------------------------------- 2D canvas
  function start2D(image) {
    const ctx = canvas.getContext("2d");
    if (!ctx) return null;
    const scratch = document.createElement("canvas");
    scratch.width = image.width;
    scratch.height = image.height;
    const scratchContext = scratch.getContext("2d");
    scratchContext.drawImage(image, 0, 0);
    const pixels = scratchContext.getImageData(0, 0, image.width, image.height).data;
    const W = image.width, H = image.height;
    return function () {
      const w = canvas.width, h = canvas.height, f = focal();
      const out = ctx.createImageData(w, h);
      const data = out.data;
      for (let x = 0; x < w; x++) {
        const px = x + 0.5 - w / 2;
        let s = (state.yaw + Math.atan2(px, f)) / TURN + 0.5;
        s -= Math.floor(s);
        // texel centres sit at (c + 0.5) / W; wrap the left and right neighbours around
        const fx = s * W - 0.5;
        const c0 = Math.floor(fx), ax = fx - c0;
        const left = ((c0 % W) + W) % W, right = (left + 1) % W;
        const inverse = 1 / Math.hypot(px, f);
        for (let y = 0; y < h; y++) {
          const py = y + 0.5 - h / 2;
          const t = 0.5 + py * inverse / (2 * halfHeight);
          const o = 4 * (y * w + x);
          if (t < 0 || t > 1) { data[o] = data[o + 1] = data[o + 2] = 16; data[o + 3] = 255; continue; }
          const fy = Math.min(Math.max(t * H - 0.5, 0), H - 1);
          const r0 = Math.floor(fy), ay = fy - r0, r1 = Math.min(r0 + 1, H - 1);
          for (let k = 0; k < 3; k++) {
            const top = pixels[4 * (r0 * W + left) + k] * (1 - ax) + pixels[4 * (r0 * W + right) + k] * ax;
            const bottom = pixels[4 * (r1 * W + left) + k] * (1 - ax) + pixels[4 * (r1 * W + right) + k] * ax;
            data[o + k] = top * (1 - ay) + bottom * ay + 0.5;
          }
          data[o + 3] = 255;
        }
      }
      ctx.putImageData(out, 0, 0);
    };
  }

  // ---------------------------------------------------------------- interaction
  let dragging = null;
  stage.addEventListener("pointerdown", function (event) {
    dragging = { x: event.clientX, yaw: state.yaw };
    stage.setPointerCapture(event.pointerId);
    stage.classList.add("dragging");
    stage.focus();
  });
  stage.addEventListener("pointermove", function (event) {
    if (!dragging) return;
    // the scene follows the pointer: one canvas width of drag turns the view by one field of view
    const perPixel = state.fov / canvas.clientWidth;
    state.yaw = dragging.yaw - (event.clientX - dragging.x) * perPixel;
    request();
  });
  function release() { dragging = null; stage.classList.remove("dragging"); }
  stage.addEventListener("pointerup", release);
  stage.addEventListener("pointercancel", release);
  stage.addEventListener("wheel", function (event) {
    event.preventDefault();
    zoom(Math.exp(event.deltaY * 0.001));
  }, { passive: false });
  stage.addEventListener("keydown", function (event) {
    const step = state.fov / 12;
    if (event.key === "ArrowLeft") state.yaw -= step;
    else if (event.key === "ArrowRight") state.yaw += step;
    else if (event.key === "+" || event.key === "=") return zoom(1 / 1.1);
    else if (event.key === "-") return zoom(1.1);
    else return;
    request();
  });
  function zoom(factor) {
    state.fov = Math.min(120 * Math.PI / 180, Math.max(20 * Math.PI / 180, state.fov * factor));
    request();
  }
  window.addEventListener("resize", function () { resize(); request(); });

  window.cipsViewer = {
    get renderer() { return state.renderer; },
    get yaw() { return state.yaw * 180 / Math.PI; },
    get fov() { return state.fov * 180 / Math.PI; },
    get frames() { return state.frames; },
    meta: meta,
    setView: function (yawDegrees, fovDegrees) {
      state.yaw = yawDegrees * Math.PI / 180;
      if (fovDegrees !== undefined) state.fov = fovDegrees * Math.PI / 180;
      request();
    },
  };

  const image = new Image();
  image.onload = function () {
    resize();
    if (query.get("renderer") !== "2d") {
      try { draw = startWebGL(image); if (draw) state.renderer = "webgl2"; }
      catch (error) { console.warn("WebGL2 failed, using the 2D canvas: " + error.message); draw = null; }
    }
    if (!draw) {
      if (query.get("renderer") !== "2d") {
        // a canvas that held a WebGL context never gives a 2D one: start on a fresh canvas
        const fresh = canvas.cloneNode(false);
        canvas.replaceWith(fresh);
        canvas = fresh;
        resize();
      }
      draw = start2D(image);
      state.renderer = draw ? "2d" : "none";
    }
    document.body.dataset.renderer = state.renderer;
    request();
  };
  image.onerror = function () { console.error("The embedded panorama could not be decoded."); };
  image.src = "@DATA_URL@";
})();
</script>
</body>
</html>
"""

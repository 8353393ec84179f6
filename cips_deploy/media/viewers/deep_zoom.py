"""The Deep Zoom viewer: the self-contained HTML page written beside a pyramid (``out.html``).

The ``generator`` meta tag is cips-deploy's signature
(:data:`cips_deploy.runtime.atomic.SIGNATURE`): ``render --force`` replaces a page beside a
pyramid only when it carries it.

One file, no script or style from the network: the pyramid's geometry is written into the
page (so it works opened straight from disk, where a page may not fetch ``out.dzi``), and
tiles are ``<img>`` elements loaded from ``out_files/`` relative to the page. Drag to pan;
wheel, double-click, ``+`` / ``-`` keys or the buttons to zoom; ``0`` fits the image.

For tests and scripts the page exposes ``window.dziViewer``: ``zoomBy(factor, x, y)``,
``level()`` and the counts ``loaded``, ``failed`` and ``pending`` of tile requests.
"""

from __future__ import annotations

import html
import json
import re

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="cips-deploy">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<link rel="icon" href="data:,">
<style>
  html, body { margin: 0; height: 100%; background: #111; color: #ddd; font: 13px sans-serif; overflow: hidden; }
  #view { position: absolute; inset: 0; overflow: hidden; cursor: grab; touch-action: none; }
  #view.dragging { cursor: grabbing; }
  #view img { position: absolute; image-rendering: auto; user-select: none; -webkit-user-drag: none; }
  #bar { position: absolute; z-index: 10; left: 8px; top: 8px; background: rgba(0,0,0,.6); padding: 4px 8px; border-radius: 4px; }
  #bar button { font: inherit; min-width: 2em; }
</style>
</head>
<body>
<div id="view"></div>
<div id="bar"><button id="zoom-in" title="zoom in (+)">+</button> <button id="zoom-out" title="zoom out (-)">&minus;</button>
<button id="fit" title="fit (0)">fit</button> <span id="status"></span></div>
<script>
"use strict";
(function () {
  const DZI = __CONFIG__;  // width, height, tile, top_level, files, format
  const view = document.getElementById("view");
  const status = document.getElementById("status");
  const tiles = new Map();  // "level/column_row" -> img
  const state = { scale: 1, cx: DZI.width / 2, cy: DZI.height / 2 };  // screen px per image px; centre in image px
  const counts = { loaded: 0, failed: 0, pending: 0 };

  function levelSize(level) {
    const factor = Math.pow(2, DZI.top_level - level);
    return [Math.ceil(DZI.width / factor), Math.ceil(DZI.height / factor)];
  }
  function fitScale() { return Math.min(view.clientWidth / DZI.width, view.clientHeight / DZI.height); }
  function clampScale(scale) { return Math.min(Math.max(scale, fitScale() / 4), 16); }
  // The finest level needed: one level pixel per screen pixel or more.
  function currentLevel() {
    const level = DZI.top_level + Math.ceil(Math.log2(Math.max(state.scale, 1e-9)) - 1e-9);
    return Math.min(Math.max(level, 0), DZI.top_level);
  }

  function tile(level, column, row) {
    const key = level + "/" + column + "_" + row;
    let img = tiles.get(key);
    if (!img) {
      img = new Image();
      img.alt = "";
      img.draggable = false;
      counts.pending += 1;
      img.onload = function () { counts.pending -= 1; counts.loaded += 1; };
      img.onerror = function () { counts.pending -= 1; counts.failed += 1; console.error("Deep Zoom tile failed to load: " + img.src); };
      img.src = encodeURIComponent(DZI.files) + "/" + level + "/" + column + "_" + row + "." + DZI.format;
      tiles.set(key, img);
    }
    return img;
  }

  function place(level, z) {
    const factor = Math.pow(2, DZI.top_level - level);  // image px per level px
    const [lw, lh] = levelSize(level);
    const size = DZI.tile * factor * state.scale;  // screen px per tile
    const x0 = view.clientWidth / 2 - state.cx * state.scale, y0 = view.clientHeight / 2 - state.cy * state.scale;
    const first = [Math.max(0, Math.floor(-x0 / size)), Math.max(0, Math.floor(-y0 / size))];
    const last = [Math.min(Math.ceil(lw / DZI.tile) - 1, Math.floor((view.clientWidth - x0) / size)),
                  Math.min(Math.ceil(lh / DZI.tile) - 1, Math.floor((view.clientHeight - y0) / size))];
    const shown = [];
    for (let row = first[1]; row <= last[1]; row++) {
      for (let column = first[0]; column <= last[0]; column++) {
        const img = tile(level, column, row);
        const w = Math.min(DZI.tile, lw - column * DZI.tile) * factor * state.scale;
        const h = Math.min(DZI.tile, lh - row * DZI.tile) * factor * state.scale;
        img.style.left = (x0 + column * size) + "px";
        img.style.top = (y0 + row * size) + "px";
        img.style.width = w + "px";
        img.style.height = h + "px";
        img.style.zIndex = z;
        shown.push(img);
      }
    }
    return shown;
  }

  function draw() {
    const level = currentLevel();
    // A coarse level underneath fills the view while the current level's tiles load.
    const shown = new Set(place(Math.max(0, level - 3), 1).concat(place(level, 2)));
    for (const img of Array.from(view.children)) if (!shown.has(img)) view.removeChild(img);
    for (const img of shown) if (img.parentNode !== view) view.appendChild(img);
    for (const [key, img] of tiles) if (!shown.has(img) && tiles.size > 600) tiles.delete(key);
    status.textContent = DZI.width + " x " + DZI.height + ", level " + level + " of " + DZI.top_level +
      ", zoom " + (100 * state.scale).toFixed(state.scale < 0.1 ? 2 : 0) + "%";
  }

  function zoomBy(factor, x, y) {
    if (x === undefined) { x = view.clientWidth / 2; y = view.clientHeight / 2; }
    const ix = state.cx + (x - view.clientWidth / 2) / state.scale;  // image point under (x, y) stays there
    const iy = state.cy + (y - view.clientHeight / 2) / state.scale;
    state.scale = clampScale(state.scale * factor);
    state.cx = ix - (x - view.clientWidth / 2) / state.scale;
    state.cy = iy - (y - view.clientHeight / 2) / state.scale;
    draw();
  }
  function fit() { state.scale = fitScale(); state.cx = DZI.width / 2; state.cy = DZI.height / 2; draw(); }

  let drag = null;
  view.addEventListener("pointerdown", function (e) { drag = [e.clientX, e.clientY]; view.setPointerCapture(e.pointerId); view.classList.add("dragging"); });
  view.addEventListener("pointermove", function (e) {
    if (!drag) return;
    state.cx -= (e.clientX - drag[0]) / state.scale;
    state.cy -= (e.clientY - drag[1]) / state.scale;
    drag = [e.clientX, e.clientY];
    draw();
  });
  function endDrag() { drag = null; view.classList.remove("dragging"); }
  view.addEventListener("pointerup", endDrag);
  view.addEventListener("pointercancel", endDrag);
  view.addEventListener("wheel", function (e) { e.preventDefault(); zoomBy(Math.pow(2, -e.deltaY / 300), e.clientX, e.clientY); }, { passive: false });
  view.addEventListener("dblclick", function (e) { zoomBy(2, e.clientX, e.clientY); });
  document.getElementById("zoom-in").onclick = function () { zoomBy(2); };
  document.getElementById("zoom-out").onclick = function () { zoomBy(0.5); };
  document.getElementById("fit").onclick = fit;
  window.addEventListener("keydown", function (e) {
    if (e.key === "+" || e.key === "=") zoomBy(2);
    else if (e.key === "-") zoomBy(0.5);
    else if (e.key === "0") fit();
  });
  window.addEventListener("resize", draw);

  window.dziViewer = {
    zoomBy: zoomBy, fit: fit, level: currentLevel, state: function () { return Object.assign({}, state); },
    get loaded() { return counts.loaded; }, get failed() { return counts.failed; }, get pending() { return counts.pending; },
  };
  fit();
})();
</script>
</body>
</html>
"""


def deep_zoom_page(name: str, height: int, width: int, tile: int, top_level: int) -> str:
    """The viewer page of the pyramid ``name.dzi`` / ``name_files/`` (the page sits beside them).

    height, width: the full image in pixels; tile: the tile side in pixels; top_level: the
    pyramid's finest level (ceil(log2(max(height, width)))), whose tiles are the image's.
    """
    config = {"width": width, "height": height, "tile": tile, "top_level": top_level, "files": f"{name}_files", "format": "png"}
    # JSON inside <script>: no "<" at all (as \u003c, as the panorama viewer does), so neither
    # "</script" nor "<!--" in a file name can change how the HTML parser reads the script.
    text = json.dumps(config).replace("<", "\\u003c")
    values = {"__CONFIG__": text, "__TITLE__": html.escape(f"{name} ({width} x {height})")}
    # One pass, so that a name holding a placeholder's text is never taken for one.
    return re.sub("__CONFIG__|__TITLE__", lambda match: values[match.group(0)], PAGE)

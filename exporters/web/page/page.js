// The page: a view of the model that it synthesises itself, and window.cipsDeploy for scripts.
//
// The view is (centre u, centre v, zoom) plus seed, truncation, size and, for a class-conditional
// model, its class (`?class=N`; default 0, the page always shows some class). It names a render
// that `cips-deploy render` can repeat (window.cipsDeploy.view() gives its topology and
// parameters): on a cylinder model at zoom 1 the 360-degree panorama (the cylinder topology,
// heading = 180 * u); otherwise the flat topology's viewport u +- 1/zoom, v +- 1/zoom, which on
// a cylinder model wraps around (the model is periodic in u). Drag pans, the wheel or a pinch
// zooms about the pointer; every change is synthesised again, coarse first, then refined.

import { MAX_SEED, checkSeed } from "./numerics.js";

const manifest = await loadManifest();
const cylinderModel = manifest.model.coordinate_space === "cylinder";
const CLASSES = manifest.model.c_dim || 0; // a class-conditional model's classes; 0: unconditional
const VIEW_KEYS = ["seed", "truncation", "classIndex", "u", "v", "zoom", "width", "height"];
const MIN_ZOOM = cylinderModel ? 1 : 0.25;
const MAX_ZOOM = 4096; // beyond this, float32 coordinates of neighbouring pixels coincide
const COARSE_POINTS = 16384; // the coarse pass's size: about one chunk

const canvas = document.getElementById("view");
const context = canvas.getContext("2d");
const status = document.getElementById("status");
const controls = {
  seed: document.getElementById("seed"),
  truncation: document.getElementById("truncation"),
  truncationValue: document.getElementById("truncation-value"),
  classIndex: document.getElementById("class"),
  size: document.getElementById("size"),
  random: document.getElementById("random-seed"),
  reset: document.getElementById("reset"),
};

const view = readURL();
const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
const jobs = new Map(); // id -> the function that takes the worker's messages about that render
let nextId = 1;
let current = null; // the interactive render on screen: {id, state (its view), frame (its ImageData)}
let lastFrame = null; // {view, width, height, data}: the last finished interactive render
let timings = null;
let idleWaiters = [];

const ready = new Promise((resolve, reject) => {
  worker.onmessage = (event) => {
    const message = event.data;
    if (message.type === "ready") {
      resolve(message.runtime);
    } else if (message.type === "failed") {
      reject(new Error(message.message));
    } else if (jobs.has(message.id)) {
      jobs.get(message.id)(message);
    }
  };
  worker.onerror = (event) => reject(new Error(`The synthesis worker failed to start: ${event.message || "unknown error"}`));
  worker.postMessage({ type: "init", manifest });
});

let scheduled = true; // the first view renders once the runtime is ready
ready.then(
  (runtime) => {
    document.getElementById("runtime").textContent = `onnxruntime-web ${runtime.version}, WebAssembly, ${runtime.threads} thread${runtime.threads > 1 ? "s" : ""}`;
    setUpControls();
    scheduled = false;
    renderView();
  },
  (error) => showProblem(error.message),
);

// ---- the scripting contract

window.cipsDeploy = {
  manifest,
  ready: ready.then(() => true),
  // render({seed, width, height, topology, params, truncation, classIndex}) -> Promise<{width, height, data}>:
  // what `cips-deploy render` computes for the same arguments (classIndex: --class of a
  // class-conditional model, default 0), as RGBA bytes, row-major.
  render: (request) => ready.then(() => scriptedRender(request)),
  // The view on screen: what `cips-deploy render` would need to make it.
  view: () => describe(view),
  // Change the view (any of seed, truncation, classIndex, u, v, zoom, width, height) and render it.
  setView: (changes) => {
    Object.assign(view, checkedView({ ...view, ...checkedChanges(changes) }));
    renderView();
  },
  // A promise that resolves once the view on screen is fully rendered (changes made meanwhile included).
  idle: () => ready.then(() => (current === null && !scheduled ? undefined : new Promise((resolve) => idleWaiters.push(resolve)))),
  // The last fully rendered view: {view, width, height, data (RGBA)}.
  frame: () => lastFrame,
  // How long the last full render took: {coarseMs, finalMs, points}.
  timings: () => timings,
};

function scriptedRender(request) {
  const job = checkedRequest(request);
  return new Promise((resolve, reject) => {
    const data = new Uint8ClampedArray(job.width * job.height * 4);
    const id = nextId++;
    jobs.set(id, (message) => {
      if (message.type === "rows") {
        data.set(message.rgba, message.start * 4);
      } else if (message.type === "done") {
        jobs.delete(id);
        resolve({ width: job.width, height: job.height, data });
      } else if (message.type === "error" || message.type === "cancelled") {
        jobs.delete(id);
        reject(new Error(message.message || "The render was cancelled."));
      }
    });
    worker.postMessage({ type: "render", id, interactive: false, coarse: 0, ...job });
  });
}

// A request checked as the Python renderer checks it, with the topology's defaults filled in.
function checkedRequest(request) {
  const { seed = 0, width = 256, height = 256, topology = "flat", params = {}, truncation = 1, classIndex = CLASSES ? 0 : null } = request || {};
  checkSeed(seed);
  checkClass(classIndex);
  for (const [name, value] of [["width", width], ["height", height]]) {
    if (!Number.isInteger(value) || value < 1 || value > manifest.render.max_side) {
      throw new RangeError(`The image ${name} must be a whole number of pixels from 1 to ${manifest.render.max_side}, not ${value}.`);
    }
  }
  if (width * height > manifest.render.max_pixels) {
    throw new RangeError(`A ${width} x ${height} image is more than this page renders at once (${manifest.render.max_pixels} pixels).`);
  }
  if (typeof truncation !== "number" || !Number.isFinite(truncation)) {
    throw new RangeError(`The truncation must be a finite number, not ${truncation}.`);
  }
  const declared = manifest.topologies[topology];
  if (!declared) {
    throw new RangeError(`The page renders the topologies ${Object.keys(manifest.topologies).join(", ")}, not ${topology}.`);
  }
  if (!declared.coordinate_spaces.includes(manifest.model.coordinate_space)) {
    throw new RangeError(`The ${topology} topology needs a ${declared.coordinate_spaces.join(" or ")} model; this one is ${manifest.model.coordinate_space}.`);
  }
  const full = { ...declared.parameters };
  for (const [name, value] of Object.entries(params)) {
    if (!(name in full)) throw new RangeError(`The ${topology} topology has no parameter ${name} (its parameters: ${Object.keys(full).join(", ")}).`);
    if (typeof value !== "number" || !Number.isFinite(value)) throw new RangeError(`The ${topology} topology's ${name} must be a finite number, not ${value}.`);
    full[name] = value;
  }
  for (const axis of ["u", "v"]) {
    if (`${axis}_min` in full && full[`${axis}_min`] === full[`${axis}_max`]) {
      throw new RangeError(`The ${topology} topology's ${axis}_min and ${axis}_max are both ${full[`${axis}_min`]}; the viewport is empty.`);
    }
  }
  return { seed, width, height, topology, params: full, truncation, classIndex };
}

// The class of a class-conditional model (0 .. CLASSES - 1); null (or none) for an unconditional one.
function checkClass(classIndex) {
  if (CLASSES && !(Number.isInteger(classIndex) && classIndex >= 0 && classIndex < CLASSES)) {
    throw new RangeError(`This model is class-conditional (${CLASSES} classes): the class must be a whole number from 0 to ${CLASSES - 1}, not ${classIndex}.`);
  }
  if (!CLASSES && classIndex !== null && classIndex !== undefined) {
    throw new RangeError(`This model is unconditional: it takes no class (${classIndex}).`);
  }
}

// ---- the view and its render

// Changes a script asks of the view, checked: one sentence for anything the page cannot show.
function checkedChanges(changes) {
  const known = CLASSES ? VIEW_KEYS : VIEW_KEYS.filter((key) => key !== "classIndex");
  for (const [name, value] of Object.entries(changes || {})) {
    if (!known.includes(name)) throw new RangeError(`The view has no ${name} (it has ${known.join(", ")}).`);
    if (typeof value !== "number" || !Number.isFinite(value)) throw new RangeError(`The view's ${name} must be a finite number, not ${value}.`);
  }
  const { seed = view.seed, width = view.width, height = view.height, zoom = view.zoom, classIndex = view.classIndex } = changes || {};
  checkedRequest({ seed, width, height, topology: "flat", classIndex });
  if (zoom <= 0) throw new RangeError(`The zoom must be positive, not ${zoom}.`);
  return changes;
}

function describe(state) {
  const { topology, params } = topologyOf(state);
  const described = { seed: state.seed, truncation: state.truncation, width: state.width, height: state.height, topology, params, u: state.u, v: state.v, zoom: state.zoom };
  if (CLASSES) described.classIndex = state.classIndex; // render --class N
  return described;
}

// The topology and parameters that render a view (see the module text).
function topologyOf(state) {
  if (cylinderModel && state.zoom === 1) {
    return { topology: "cylinder", params: { heading: 180 * state.u, v_min: state.v - 1, v_max: state.v + 1 } };
  }
  const half = 1 / state.zoom;
  return { topology: "flat", params: { u_min: state.u - half, u_max: state.u + half, v_min: state.v - half, v_max: state.v + half } };
}

// The (u, v) that pixel (x, y) of the canvas samples in a view.
function sampleAt(state, x, y) {
  const { topology, params } = topologyOf(state);
  const v = params.v_min + (y / Math.max(1, state.height - 1)) * (params.v_max - params.v_min);
  if (topology === "cylinder") return { u: -1 + (2 * x + 1) / state.width + params.heading / 180, v };
  return { u: params.u_min + (x / Math.max(1, state.width - 1)) * (params.u_max - params.u_min), v };
}

function checkedView(state) {
  const zoom = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, Number(state.zoom) || 1));
  let u = Number.isFinite(state.u) ? state.u : 0;
  if (cylinderModel) u = wrap(u); // one turn of the cylinder is u in [-1, 1)
  const v = Number.isFinite(state.v) ? state.v : 0;
  return { ...state, u, v, zoom };
}

function wrap(u) {
  const turned = (((u + 1) % 2) + 2) % 2 - 1;
  return Math.abs(turned) < 1e-12 ? 0 : turned;
}

function renderView() {
  const id = nextId++;
  const state = { ...view };
  const { topology, params } = topologyOf(state);
  if (canvas.width !== state.width || canvas.height !== state.height) {
    canvas.width = state.width;
    canvas.height = state.height;
  }
  const frame = new ImageData(state.width, state.height);
  current = { id, state, frame };
  drawPreview(state);
  writeURL(state);
  const coarse = Math.max(1, Math.ceil(Math.sqrt((state.width * state.height) / COARSE_POINTS)));
  setStatus("Synthesising…");
  jobs.set(id, (message) => onRenderMessage(id, state, frame, message));
  worker.postMessage({ type: "render", id, interactive: true, coarse: coarse > 1 ? coarse : 0, seed: state.seed, truncation: state.truncation, classIndex: state.classIndex, topology, params, width: state.width, height: state.height });
}

function onRenderMessage(id, state, frame, message) {
  const onScreen = current && current.id === id;
  if (message.type === "coarse" && onScreen) {
    const small = new OffscreenCanvas(message.width, message.height);
    small.getContext("2d").putImageData(new ImageData(message.rgba, message.width, message.height), 0, 0);
    context.imageSmoothingEnabled = true;
    context.drawImage(small, 0, 0, state.width, state.height);
  } else if (message.type === "rows") {
    frame.data.set(message.rgba, message.start * 4);
    if (onScreen) {
      const top = Math.floor(message.start / state.width);
      const bottom = Math.ceil(message.stop / state.width);
      context.putImageData(frame, 0, 0, 0, top, state.width, bottom - top);
      setStatus(`Synthesising… ${Math.round((100 * message.stop) / (state.width * state.height))}%`);
    }
  } else if (message.type === "done") {
    jobs.delete(id);
    if (!onScreen) return;
    lastFrame = { view: describe(state), width: state.width, height: state.height, data: frame.data };
    const picture = new OffscreenCanvas(state.width, state.height);
    picture.getContext("2d").putImageData(frame, 0, 0);
    preview = { picture, state };
    timings = { coarseMs: message.coarseMs, finalMs: message.ms, points: message.points };
    const rate = message.points / (message.ms / 1000);
    setStatus(`${state.width} × ${state.height} in ${(message.ms / 1000).toFixed(2)} s (${formatRate(rate)} pixels/s)` + (message.coarseMs ? `, first picture after ${(message.coarseMs / 1000).toFixed(2)} s` : ""));
    settle();
  } else if (message.type === "cancelled") {
    jobs.delete(id);
  } else if (message.type === "error") {
    jobs.delete(id);
    if (onScreen) {
      showProblem(message.message);
      settle();
    }
  }
}

// Until the coarse picture of a new view arrives, show the last finished one moved and scaled to
// where its points lie in the new view (every view maps pixels to (u, v) affinely), repeated
// every turn on a cylinder model: a drag or a zoom answers at once, whatever the model costs.
let preview = null; // {picture, state}: the last finished frame and its view
function drawPreview(target) {
  if (!preview) return;
  const shown = preview.state;
  if (["seed", "truncation", "classIndex", "width", "height"].some((key) => shown[key] !== target[key])) return;
  const axes = (state) => {
    const origin = sampleAt(state, 0, 0);
    const step = sampleAt(state, 1, 1);
    return { u: origin.u, du: step.u - origin.u, v: origin.v, dv: step.v - origin.v };
  };
  const from = axes(shown);
  const to = axes(target);
  const width = (target.width * from.du) / to.du;
  const height = (target.height * from.dv) / to.dv;
  const x = (from.u - to.u) / to.du;
  const y = (from.v - to.v) / to.dv;
  const turn = cylinderModel ? 2 / to.du : Infinity; // canvas pixels per turn of the cylinder
  context.fillStyle = "#000";
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.imageSmoothingEnabled = true;
  const first = Number.isFinite(turn) ? Math.floor((-x - width) / turn) : 0;
  const last = Number.isFinite(turn) ? Math.min(first + 64, Math.ceil((canvas.width - x) / turn)) : 0;
  for (let k = first; k <= last; k++) context.drawImage(preview.picture, x + k * (Number.isFinite(turn) ? turn : 0), y, width, height);
}

function settle() {
  current = null;
  if (scheduled) return; // a newer view is on its way: idle when that one is drawn
  const waiters = idleWaiters;
  idleWaiters = [];
  waiters.forEach((resolve) => resolve());
}

// ---- input: drag pans, wheel and pinch zoom, controls

function setUpControls() {
  controls.seed.value = view.seed;
  controls.truncation.value = view.truncation;
  controls.truncationValue.textContent = view.truncation.toFixed(2);
  const sizeLabel = `${view.width}x${view.height}`;
  if (![...controls.size.options].some((option) => option.value === sizeLabel)) controls.size.add(new Option(sizeLabel.replace("x", " × "), sizeLabel), 0);
  controls.size.value = sizeLabel;
  if (CLASSES) {
    controls.classIndex.max = CLASSES - 1;
    controls.classIndex.value = view.classIndex;
    document.getElementById("class-control").hidden = false;
    controls.classIndex.addEventListener("change", () => {
      const classIndex = Number(controls.classIndex.value);
      if (Number.isInteger(classIndex) && classIndex >= 0 && classIndex < CLASSES) change({ classIndex });
      else controls.classIndex.value = view.classIndex;
    });
  }

  controls.seed.addEventListener("change", () => {
    const seed = Number(controls.seed.value);
    if (Number.isInteger(seed) && seed >= 0 && seed <= MAX_SEED) change({ seed });
    else controls.seed.value = view.seed;
  });
  controls.random.addEventListener("click", () => {
    const seed = Math.floor(Math.random() * 100000);
    controls.seed.value = seed;
    change({ seed });
  });
  controls.truncation.addEventListener("input", () => {
    const truncation = Number(controls.truncation.value);
    controls.truncationValue.textContent = truncation.toFixed(2);
    change({ truncation });
  });
  controls.size.addEventListener("change", () => {
    const [width, height] = controls.size.value.split("x").map(Number);
    change({ width, height });
  });
  controls.reset.addEventListener("click", () => change({ u: 0, v: 0, zoom: 1 }));

  const pointers = new Map(); // pointerId -> {x, y} in canvas pixels
  let gesture = null;
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    pointers.set(event.pointerId, canvasPoint(event));
    gesture = startGesture(pointers);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!pointers.has(event.pointerId)) return;
    pointers.set(event.pointerId, canvasPoint(event));
    moveGesture(gesture, pointers);
  });
  const end = (event) => {
    if (!pointers.delete(event.pointerId)) return;
    gesture = pointers.size ? startGesture(pointers) : null;
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    const point = canvasPoint(event);
    zoomAbout(point.x, point.y, Math.exp(-event.deltaY / 400));
  }, { passive: false });
  window.addEventListener("keydown", (event) => {
    const step = { ArrowLeft: [-0.1, 0], ArrowRight: [0.1, 0], ArrowUp: [0, -0.1], ArrowDown: [0, 0.1] }[event.key];
    if (step) change({ u: view.u + step[0] / view.zoom, v: view.v + step[1] / view.zoom });
    if (event.key === "+" || event.key === "=") zoomAbout(view.width / 2, view.height / 2, 1.25);
    if (event.key === "-") zoomAbout(view.width / 2, view.height / 2, 0.8);
  });
}

// A gesture remembers the view and the pointers where it began; each move recomputes the view
// from them, so rounding never accumulates over a long drag.
function startGesture(pointers) {
  const points = [...pointers.values()];
  return { view: { ...view }, points: points.map((p) => ({ ...p })) };
}

function moveGesture(gesture, pointers) {
  if (!gesture) return;
  const now = [...pointers.values()];
  const start = gesture.view;
  if (now.length === 1 && gesture.points.length === 1) {
    const from = sampleAt(start, gesture.points[0].x, gesture.points[0].y);
    const to = sampleAt(start, now[0].x, now[0].y);
    change({ u: start.u - (to.u - from.u), v: start.v - (to.v - from.v) });
  } else if (now.length >= 2 && gesture.points.length >= 2) {
    const distance = (a, b) => Math.hypot(a.x - b.x, a.y - b.y);
    const factor = distance(now[0], now[1]) / Math.max(1, distance(gesture.points[0], gesture.points[1]));
    const middle = { x: (now[0].x + now[1].x) / 2, y: (now[0].y + now[1].y) / 2 };
    change(zoomedView(start, middle.x, middle.y, factor));
  }
}

function zoomAbout(x, y, factor) {
  change(zoomedView(view, x, y, factor));
}

// The view zoomed by `factor` about canvas pixel (x, y): that pixel keeps its (u, v).
function zoomedView(state, x, y, factor) {
  const zoom = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, state.zoom * factor));
  const anchor = sampleAt(state, x, y);
  const after = sampleAt({ ...state, zoom }, x, y);
  return { zoom, u: state.u + (anchor.u - after.u), v: state.v + (anchor.v - after.v) };
}

function change(changes) {
  const next = checkedView({ ...view, ...changes });
  if (VIEW_KEYS.every((key) => next[key] === view[key])) return;
  Object.assign(view, next);
  scheduleRender();
}

function scheduleRender() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    renderView();
  });
}

function canvasPoint(event) {
  const box = canvas.getBoundingClientRect();
  return { x: ((event.clientX - box.left) * canvas.width) / box.width, y: ((event.clientY - box.top) * canvas.height) / box.height };
}

// ---- the URL names the view: ?seed=3&trunc=0.7&yaw=30&v=0&zoom=2&size=1280x720 (&class=1: a conditional model)

function readURL() {
  const query = new URLSearchParams(location.search);
  const number = (name, fallback) => (query.has(name) && Number.isFinite(Number(query.get(name))) ? Number(query.get(name)) : fallback);
  const [defaultWidth, defaultHeight] = manifest.render.default_size;
  let [width, height] = (query.get("size") || "").split("x").map(Number);
  if (!(Number.isInteger(width) && Number.isInteger(height) && width > 0 && height > 0 && width <= manifest.render.max_side && height <= manifest.render.max_side && width * height <= manifest.render.max_pixels)) {
    [width, height] = [defaultWidth, defaultHeight];
  }
  const seed = number("seed", 0);
  const u = query.has("yaw") ? number("yaw", 0) / 180 : number("u", 0);
  const classIndex = number("class", 0);
  return checkedView({
    seed: Number.isInteger(seed) && seed >= 0 && seed <= MAX_SEED ? seed : 0,
    truncation: number("trunc", 1),
    classIndex: CLASSES ? (Number.isInteger(classIndex) && classIndex >= 0 && classIndex < CLASSES ? classIndex : 0) : null,
    u,
    v: number("v", 0),
    zoom: number("zoom", 1),
    width,
    height,
  });
}

function writeURL(state) {
  const query = new URLSearchParams();
  query.set("seed", state.seed);
  if (state.truncation !== 1) query.set("trunc", state.truncation);
  if (CLASSES) query.set("class", state.classIndex);
  if (cylinderModel) query.set("yaw", 180 * state.u);
  else query.set("u", state.u);
  query.set("v", state.v);
  query.set("zoom", state.zoom);
  query.set("size", `${state.width}x${state.height}`);
  const keep = new URLSearchParams(location.search).get("threads");
  if (keep) query.set("threads", keep);
  history.replaceState(null, "", `?${query}`);
  document.getElementById("share").href = location.href;
}

// ---- small things

async function loadManifest() {
  try {
    const response = await fetch("manifest.json");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const loaded = await response.json();
    const threads = Number(new URLSearchParams(location.search).get("threads"));
    if (Number.isInteger(threads) && threads > 0) loaded.threads = threads;
    document.getElementById("model").textContent = `${loaded.model.name}: ${loaded.model.family} ${loaded.model.arch}, ${loaded.model.coordinate_space} coordinates, cips-deploy ${loaded.package_version}`;
    return loaded;
  } catch (error) {
    const why = location.protocol === "file:" ? " Pages opened from disk cannot fetch their files: serve the folder with `cips-deploy serve-web`." : "";
    const message = `Could not read manifest.json (${error.message}).${why}`;
    showProblem(message);
    throw new Error(message);
  }
}

function setStatus(text) {
  status.textContent = text;
}

function showProblem(text) {
  const problem = document.getElementById("problem");
  problem.textContent = text;
  problem.hidden = false;
  setStatus("");
}

function formatRate(rate) {
  return rate >= 1e6 ? `${(rate / 1e6).toFixed(2)} M` : `${Math.round(rate / 1000)} k`;
}

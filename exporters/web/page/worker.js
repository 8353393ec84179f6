// The page's synthesis worker: the Python chunk loop (topology -> chunker -> backend -> output)
// on onnxruntime-web, off the page's thread.
//
// Messages in:   {type: "init", manifest}
//                {type: "render", id, seed, truncation, classIndex, topology, params, width, height,
//                 interactive, coarse}       coarse: a first pass `coarse` times smaller, or 0
// Messages out:  {type: "ready", runtime} | {type: "failed", message}     (answers init)
//                {type: "coarse", id, width, height, rgba}                 the quick first picture
//                {type: "rows", id, start, stop, rgba}                     points [start, stop) of
//                                                                          the row-major image, RGBA
//                {type: "done", id, points, ms, coarseMs} | {type: "cancelled", id}
//                {type: "error", id, message}
//
// A render's points are cut into chunks of manifest.render.chunk_points (the Python runtime's
// 32 MB rule), so a 4K canvas needs no 4K tensor. Between chunks the worker yields to its
// message queue: a newer interactive render supersedes an older one at the next chunk.
// Scripted renders (window.cipsDeploy.render) are never cancelled.

import { linspace, panoramaU, seedLatent, toRGBA, truncate } from "./numerics.js";

let ort = null;
let manifest = null;
const sessions = new Map(); // role -> Promise<InferenceSession>
const styles = new Map(); // "seed/truncation/class" -> Float32Array [S]
const queue = [];
let pumping = false;
let latestInteractive = 0;

self.onmessage = (event) => {
  const message = event.data;
  if (message.type === "init") {
    init(message.manifest).then(
      (runtime) => self.postMessage({ type: "ready", runtime }),
      (error) => self.postMessage({ type: "failed", message: String(error.message || error) }),
    );
  } else if (message.type === "render") {
    if (message.interactive) latestInteractive = message.id;
    queue.push(message);
    pump();
  }
};

async function init(siteManifest) {
  manifest = siteManifest;
  const runtime = manifest.runtime;
  const base = new URL(runtime.base, new URL("./", self.location.href)).href;
  try {
    ort = await import(base + runtime.module);
  } catch (error) {
    const where = runtime.source === "cdn" ? `the CDN (${base})` : base;
    throw new Error(
      `Could not load onnxruntime-web ${runtime.version} from ${where}: ${error.message || error}. ` +
        (runtime.source === "cdn"
          ? "This page needs the network for it; export the site with --web-runtime node_modules/onnxruntime-web/dist to serve it from here."
          : "The site's ort/ folder is incomplete; export it again."),
    );
  }
  ort.env.wasm.wasmPaths = base;
  // More than one WebAssembly thread needs SharedArrayBuffer, which needs cross-origin
  // isolation (`cips-deploy serve-web` sends the COOP/COEP headers).
  const wanted = manifest.threads || Math.min(4, self.navigator.hardwareConcurrency || 1);
  ort.env.wasm.numThreads = self.crossOriginIsolated ? wanted : 1;
  ort.env.logLevel = "error";
  await session("mapping");
  return { version: ort.env.versions ? ort.env.versions.web : runtime.version, threads: ort.env.wasm.numThreads };
}

// An engine's session, created once: its bytes fetched, checked against the manifest's SHA-256.
function session(role) {
  if (!sessions.has(role)) {
    sessions.set(role, openSession(role));
  }
  return sessions.get(role);
}

async function openSession(role) {
  const engine = manifest.engines[role];
  if (!engine) throw new Error(`This site has no ${role} engine.`);
  const response = await fetch(engine.file);
  if (!response.ok) throw new Error(`Could not fetch ${engine.file}: HTTP ${response.status}.`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (bytes.length !== engine.bytes) {
    throw new Error(`${engine.file} has ${bytes.length} bytes; the manifest says ${engine.bytes}. Export the site again.`);
  }
  if (self.crypto && self.crypto.subtle) {
    const digest = new Uint8Array(await self.crypto.subtle.digest("SHA-256", bytes));
    const hex = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
    if (hex !== engine.sha256) throw new Error(`${engine.file} does not match the manifest's SHA-256; export the site again.`);
  }
  return ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
}

// ---- the job queue

async function pump() {
  if (pumping) return;
  pumping = true;
  while (queue.length) {
    const job = queue.shift();
    if (superseded(job)) {
      self.postMessage({ type: "cancelled", id: job.id });
      continue;
    }
    try {
      const finished = await runJob(job);
      self.postMessage(finished ? finished : { type: "cancelled", id: job.id });
    } catch (error) {
      self.postMessage({ type: "error", id: job.id, message: String(error.message || error) });
    }
  }
  pumping = false;
}

function superseded(job) {
  return job.interactive && job.id !== latestInteractive;
}

// Let the worker's message queue run (a newer render may arrive); a MessageChannel round trip
// is a task without setTimeout's clamping.
function yieldToMessages() {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = resolve;
    channel.port2.postMessage(null);
  });
}

async function runJob(job) {
  const started = performance.now();
  const w = await style(job.seed, job.truncation, job.classIndex); // Float32Array [S]
  let coarseMs = null;
  if (job.coarse > 1) {
    const width = Math.max(1, Math.ceil(job.width / job.coarse));
    const height = Math.max(1, Math.ceil(job.height / job.coarse));
    const rgba = new Uint8ClampedArray(width * height * 4);
    const complete = await renderGrid(job, layout(job.topology, job.params, width, height), w, (start, stop, part) =>
      rgba.set(part, start * 4),
    );
    if (!complete) return null;
    coarseMs = performance.now() - started;
    self.postMessage({ type: "coarse", id: job.id, width, height, rgba, ms: coarseMs }, [rgba.buffer]);
  }
  const grid = layout(job.topology, job.params, job.width, job.height);
  const complete = await renderGrid(job, grid, w, (start, stop, rgba) =>
    self.postMessage({ type: "rows", id: job.id, start, stop, rgba }, [rgba.buffer]),
  );
  if (!complete) return null;
  const points = job.width * job.height;
  return { type: "done", id: job.id, points, ms: performance.now() - started, coarseMs };
}

// The seed's style: z by numpy's rule, the mapping engine (with the one-hot label c [1, C] of
// a class-conditional model, as gen_images.py builds it), truncation towards w_avg.
async function style(seed, truncation, classIndex) {
  const key = `${seed}/${truncation}/${classIndex}`;
  if (!styles.has(key)) {
    const mapping = await session("mapping");
    const zDim = manifest.model.z_dim;
    const z = new ort.Tensor("float32", seedLatent(seed, zDim), [1, zDim]);
    const names = manifest.engines.mapping;
    const feeds = { [names.inputs[0]]: z };
    const classes = manifest.model.c_dim || 0;
    if (classes) {
      const label = new Float32Array(classes);
      label[classIndex] = 1;
      feeds[names.inputs[1]] = new ort.Tensor("float32", label, [1, classes]);
    }
    const result = await mapping.run(feeds);
    const w = truncate(result[names.outputs[0]].data, manifest.model.w_avg, truncation);
    if (styles.size > 64) styles.clear();
    styles.set(key, w);
  }
  return styles.get(key);
}

// A grid topology's columns u [W] and rows v [H], float32, as the Python topologies make them.
function layout(topology, params, width, height) {
  if (topology === "flat") {
    return { u: linspace(params.u_min, params.u_max, width), v: linspace(params.v_min, params.v_max, height) };
  }
  if (topology === "cylinder") {
    return { u: panoramaU(width, params.heading), v: linspace(params.v_min, params.v_max, height) };
  }
  throw new Error(`The page renders the flat and cylinder topologies, not ${topology}.`);
}

// Render the grid's points in chunks; give each chunk's RGBA to `emit(start, stop, rgba)`.
// Returns false when a newer interactive render superseded this one.
async function renderGrid(job, grid, w, emit) {
  const perChunk = manifest.render.chunk_points;
  const lineFactored = Boolean(manifest.engines.lines && manifest.engines.compose);
  const chunks = lineFactored ? await composeChunks(job, grid, w, perChunk) : pointChunks(grid, perChunk);
  if (!chunks) return false;
  for (const chunk of chunks) {
    await yieldToMessages();
    if (superseded(job)) return false;
    const rgb = await chunk.run(w);
    for (let i = 0; i < rgb.length; i++) {
      if (!Number.isFinite(rgb[i])) {
        throw new Error(`The model computed NaN or infinite colours (points ${chunk.start} to ${chunk.stop}).`);
      }
    }
    const rgba = new Uint8ClampedArray((chunk.stop - chunk.start) * 4);
    toRGBA(rgb, rgba);
    emit(chunk.start, chunk.stop, rgba);
  }
  return true;
}

// Per-point synthesis: spans of the row-major points, coords [1, n, 2] each.
function pointChunks(grid, perChunk) {
  const width = grid.u.length;
  const total = width * grid.v.length;
  const chunks = [];
  for (let start = 0; start < total; start += perChunk) {
    const stop = Math.min(total, start + perChunk);
    chunks.push({
      start,
      stop,
      run: async (w) => {
        const coords = new Float32Array((stop - start) * 2);
        for (let p = start; p < stop; p++) {
          coords[2 * (p - start)] = grid.u[p % width];
          coords[2 * (p - start) + 1] = grid.v[Math.floor(p / width)];
        }
        const synthesis = await session("synthesis");
        const io = manifest.engines.synthesis;
        const result = await synthesis.run({
          [io.inputs[0]]: new ort.Tensor("float32", coords, [1, stop - start, 2]),
          [io.inputs[1]]: new ort.Tensor("float32", w, [1, w.length]),
        });
        return result[io.outputs[0]].data;
      },
    });
  }
  return chunks;
}

// A line-factored model (CREPS): every row's and column's lines once, through the line engine
// in groups, then bands of whole rows composed through the compose engine.
async function composeChunks(job, grid, w, perChunk) {
  const lines = await session("lines");
  const io = manifest.engines.lines;
  const group = manifest.render.line_group;
  const tensorW = new ort.Tensor("float32", w, [1, w.length]);
  const features = manifest.render.line_features;
  const tables = {};
  for (const [axis, values, output] of [
    ["row", grid.v, 0],
    ["column", grid.u, 1],
  ]) {
    const table = new Float32Array(values.length * features);
    for (let start = 0; start < values.length; start += group) {
      await yieldToMessages();
      if (superseded(job)) return null;
      const part = values.subarray(start, Math.min(values.length, start + group));
      const other = new Float32Array([part[0]]); // the other axis: one throw-away value
      const [v, u] = axis === "row" ? [part, other] : [other, part];
      const result = await lines.run({
        [io.inputs[0]]: new ort.Tensor("float32", Float32Array.from(v), [1, v.length]),
        [io.inputs[1]]: new ort.Tensor("float32", Float32Array.from(u), [1, u.length]),
        [io.inputs[2]]: tensorW,
      });
      table.set(result[io.outputs[output]].data, start * features);
    }
    tables[axis] = table;
  }
  const width = grid.u.length;
  const height = grid.v.length;
  const rowsPerChunk = Math.max(1, Math.floor(perChunk / width));
  const columns = new ort.Tensor("float32", tables.column, [1, width, features]);
  const compose = await session("compose");
  const composeIO = manifest.engines.compose;
  const chunks = [];
  for (let row = 0; row < height; row += rowsPerChunk) {
    const rows = Math.min(rowsPerChunk, height - row);
    chunks.push({
      start: row * width,
      stop: (row + rows) * width,
      run: async () => {
        const rowLines = tables.row.subarray(row * features, (row + rows) * features);
        const result = await compose.run({
          [composeIO.inputs[0]]: new ort.Tensor("float32", Float32Array.from(rowLines), [1, rows, features]),
          [composeIO.inputs[1]]: columns,
          [composeIO.inputs[2]]: tensorW,
        });
        return result[composeIO.outputs[0]].data;
      },
    });
  }
  return chunks;
}

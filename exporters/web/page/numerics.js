// The numbers a render is made of, computed exactly as the Python runtime computes them, so
// that a seed and a view give the same picture in the page as `cips-deploy render`:
//
//   seedLatent(seed, Z)       numpy's RandomState(seed).randn(1, Z) cast to float32: MT19937
//                             seeded as numpy seeds it, and numpy's legacy polar Gaussian in float64
//   linspace(a, b, n)         torch.linspace's float32 kernel bit for bit (fused multiply-adds)
//   panoramaU(W, heading)     the cylinder topology's column angles (sector centres)
//   truncate(w, wAvg, psi)    w_avg + (w - w_avg) * psi, in float32
//   toRGBA(rgb, out, offset)  floor(clamp((rgb + 1) * 127.5 + 0.5, 0, 255)), each step in float32
//
// Mirrors cips_deploy/runtime/{seeds,coords,images}.py and exporters/metadata.py; the tests run
// this module under Node.js against numpy. No DOM, no onnxruntime: a page, a worker and Node
// all import it.

const f32 = Math.fround;

// ---- MT19937, seeded as numpy's RandomState(int) seeds it (mt19937_seed, not init_by_array)

const N = 624;
const M = 397;

export class MT19937 {
  constructor(seed) {
    this.state = new Uint32Array(N);
    this.index = N;
    let s = seed >>> 0;
    for (let i = 0; i < N; i++) {
      this.state[i] = s;
      // 1812433253 * (s ^ (s >>> 30)) + i + 1, modulo 2**32: Math.imul keeps the low 32 bits.
      s = (Math.imul(1812433253, (s ^ (s >>> 30)) >>> 0) + i + 1) >>> 0;
    }
    this.hasGauss = false;
    this.gauss = 0;
  }

  nextUint32() {
    const mt = this.state;
    if (this.index >= N) {
      for (let k = 0; k < N; k++) {
        const y = (mt[k] & 0x80000000) | (mt[(k + 1) % N] & 0x7fffffff);
        mt[k] = mt[(k + M) % N] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      this.index = 0;
    }
    let y = mt[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  // A double in [0, 1) from 53 random bits, as numpy's legacy_double.
  nextDouble() {
    const a = this.nextUint32() >>> 5;
    const b = this.nextUint32() >>> 6;
    return (a * 67108864.0 + b) / 9007199254740992.0;
  }

  // numpy's legacy_gauss: the polar (Marsaglia) method, which draws pairs and keeps the second.
  nextGauss() {
    if (this.hasGauss) {
      this.hasGauss = false;
      return this.gauss;
    }
    let x1, x2, r2;
    do {
      x1 = 2.0 * this.nextDouble() - 1.0;
      x2 = 2.0 * this.nextDouble() - 1.0;
      r2 = x1 * x1 + x2 * x2;
    } while (r2 >= 1.0 || r2 === 0.0);
    const f = Math.sqrt((-2.0 * Math.log(r2)) / r2);
    this.gauss = f * x1;
    this.hasGauss = true;
    return f * x2;
  }
}

export const MAX_SEED = 4294967295;

export function checkSeed(seed, what = "seed") {
  if (!Number.isInteger(seed) || seed < 0 || seed > MAX_SEED) {
    throw new RangeError(`The ${what} must be a whole number from 0 to 2**32 - 1, not ${seed}.`);
  }
}

// z for a seed: Float32Array [zDim], numpy's RandomState(seed).randn(1, zDim).astype(float32).
export function seedLatent(seed, zDim) {
  checkSeed(seed);
  const rng = new MT19937(seed);
  const z = new Float32Array(zDim);
  for (let i = 0; i < zDim; i++) z[i] = rng.nextGauss(); // the store rounds to float32
  return z;
}

// ---- float32 arithmetic that rounds like a fused multiply-add

const bits32 = new Float32Array(1);
const int32 = new Int32Array(bits32.buffer);

// The float32 next to x (a float32 value) towards +infinity (up = true) or -infinity.
function nextFloat32(x, up) {
  if (x === 0) return up ? 1.401298464324817e-45 : -1.401298464324817e-45;
  bits32[0] = x;
  int32[0] += (x > 0) === up ? 1 : -1;
  return bits32[0];
}

// a * b + c rounded once to float32, for float32 values a, b, c. The product is exact in
// float64; TwoSum gives the sum's error, which breaks the one case that rounding float64 to
// float32 gets wrong: a sum lying exactly on a float32 midpoint (cips_deploy.runtime.coords.fma32).
export function fma32(a, b, c) {
  const product = a * b;
  const total = product + c;
  const virtual = total - c;
  const error = (c - (total - virtual)) + (product - virtual);
  const rounded = f32(total);
  const neighbour = nextFloat32(rounded, total > rounded);
  const midpoint = (rounded + neighbour) / 2;
  if (total === midpoint && error !== 0) {
    return error > 0 ? Math.max(rounded, neighbour) : Math.min(rounded, neighbour);
  }
  return rounded;
}

// torch.linspace(start, end, steps) in float32, bit for bit: Float32Array [steps].
export function linspace(start, end, steps) {
  const out = new Float32Array(steps);
  const s = f32(start);
  const e = f32(end);
  if (steps <= 1) {
    out.fill(s);
    return out;
  }
  const step = f32(f32(e - s) / f32(steps - 1));
  const half = Math.floor(steps / 2);
  for (let i = 0; i < half; i++) out[i] = fma32(step, i, s);
  for (let i = half; i < steps; i++) out[i] = fma32(-step, steps - 1 - i, e);
  return out;
}

// numpy's remainder for floats: the result takes the divisor's sign.
function remainder(x, divisor) {
  const mod = x % divisor;
  if (mod === 0) return 0;
  return (divisor < 0) !== (mod < 0) ? mod + divisor : mod;
}

// The cylinder topology's columns: u = -1 + (2c + 1) / W + heading / 180, wrapped into
// [-1, 1), in float64 and then rounded to float32: Float32Array [width].
export function panoramaU(width, headingDegrees = 0) {
  const u = new Float32Array(width);
  for (let c = 0; c < width; c++) {
    const angle = -1.0 + (2.0 * c + 1.0) / width + headingDegrees / 180.0;
    u[c] = remainder(angle + 1.0, 2.0) - 1.0;
  }
  return u;
}

// Truncation in W: w_avg + (w - w_avg) * psi in float32 (psi = 1: w itself). w, wAvg: [S].
export function truncate(w, wAvg, psi) {
  if (psi === 1) return Float32Array.from(w);
  const p = f32(psi);
  const out = new Float32Array(w.length);
  for (let i = 0; i < w.length; i++) out[i] = f32(wAvg[i] + f32(f32(w[i] - wAvg[i]) * p));
  return out;
}

// Raw colours rgb [n, 3] (about [-1, 1]) -> RGBA bytes at out[offset ...], as the Python
// runtime rounds: floor(clamp((rgb + 1) * 127.5 + 0.5, 0, 255)), each step rounded to float32.
export function toRGBA(rgb, out, offset = 0) {
  const n = rgb.length / 3;
  for (let p = 0; p < n; p++) {
    for (let k = 0; k < 3; k++) {
      let value = f32(f32(f32(rgb[3 * p + k] + 1) * 127.5) + 0.5);
      value = value > 255 ? 255 : value < 0 ? 0 : value;
      out[offset + 4 * p + k] = Math.floor(value);
    }
    out[offset + 4 * p + 3] = 255;
  }
}

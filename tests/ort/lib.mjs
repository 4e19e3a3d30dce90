// Shared helpers of the ONNX Runtime interoperability tests: loading onnxruntime-node, sessions,
// deterministic inputs, fp16 conversion, error metrics, the devgpt evaluation data.
//
// onnxruntime-node is resolved from INT4Q_NODE_MODULES (CTest sets it), else from
// <repository>/build/node/node_modules (where `INT4Q_WITH_ORT=1 scripts/install-deps` puts it).
// No other dependency: Node's standard library only.
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..');

// ---- onnxruntime-node ----------------------------------------------------------------------------

let ortModule = null;
export function loadOrt() {
  if (ortModule) return ortModule;
  const dir = process.env.INT4Q_NODE_MODULES || path.join(repoRoot, 'build', 'node', 'node_modules');
  if (!existsSync(path.join(dir, 'onnxruntime-node', 'package.json'))) {
    throw new Error(
      `onnxruntime-node not found in ${dir}: run \`INT4Q_WITH_ORT=1 scripts/install-deps\` ` +
        '(or set INT4Q_NODE_MODULES to the node_modules folder that holds it)');
  }
  const require = createRequire(path.join(dir, 'noop.js'));
  ortModule = require('onnxruntime-node');
  return ortModule;
}

/// An InferenceSession with graph optimization `opt` ('basic' by default: no QDQ -> MatMulNBits
/// fusion, whose accuracy_level 4 default would add int8-activation error; 'all' to see that).
/// Threads: INT4Q_ORT_THREADS (default 1, so that parallel CTest jobs do not oversubscribe).
export async function createSession(modelPath, { opt = 'basic', threads } = {}) {
  const ort = loadOrt();
  if (!existsSync(modelPath)) throw new Error(`no such model: ${modelPath}`);
  const n = threads ?? Number(process.env.INT4Q_ORT_THREADS || 1);
  return ort.InferenceSession.create(modelPath, {
    graphOptimizationLevel: opt,
    intraOpNumThreads: n,
    interOpNumThreads: 1,
    logSeverityLevel: 3,  // errors only: ORT warns about unused initializers of some real models
  });
}

// ---- Command lines -------------------------------------------------------------------------------

/// Minimal option parser: `--name value`, `--flag`, repeated options collected in arrays when
/// `repeat` lists them; everything else is positional.
export function parseArgs(argv, { flags = [], repeat = [] } = {}) {
  const out = { _: [] };
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    if (!a.startsWith('--')) {
      out._.push(a);
      continue;
    }
    let key = a.slice(2);
    let value;
    const eq = key.indexOf('=');
    if (eq >= 0) {
      value = key.slice(eq + 1);
      key = key.slice(0, eq);
    } else if (flags.includes(key)) {
      value = true;
    } else {
      if (i + 1 >= argv.length) throw new Error(`option --${key} needs a value`);
      value = argv[++i];
    }
    if (repeat.includes(key)) (out[key] ??= []).push(value);
    else out[key] = value;
  }
  return out;
}

/// Runs `main`, printing an error's message (not its stack) and exiting 2 on an exception.
export function runMain(main) {
  main().then(
    (code) => process.exit(code ?? 0),
    (err) => {
      console.error(`error: ${err && err.message ? err.message : err}`);
      if (process.env.INT4Q_DEBUG) console.error(err.stack);
      process.exit(2);
    });
}

// ---- Deterministic numbers -----------------------------------------------------------------------

/// mulberry32: a tiny 32-bit PRNG, identical on every platform. Returns a function giving
/// uniform numbers in [0, 1).
export function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/// `count` numbers from N(0, scale^2) (Box-Muller on the PRNG), as a Float32Array.
export function normalFloats(count, seed, scale = 1) {
  const u = prng(seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - u()));
    const th = 2 * Math.PI * u();
    out[i] = scale * r * Math.cos(th);
    if (i + 1 < count) out[i + 1] = scale * r * Math.sin(th);
  }
  return out;
}

/// `count` numbers uniform in [lo, hi), as a Float32Array.
export function uniformFloats(count, seed, lo = -1, hi = 1) {
  const u = prng(seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; ++i) out[i] = lo + (hi - lo) * u();
  return out;
}

// ---- float16 (Node 20 has no Float16Array: ORT takes and gives Uint16Array) -----------------------

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/// float -> IEEE half bits, round to nearest even.
export function floatToHalf(v) {
  f32[0] = v;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);  // inf, nan
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;  // overflow
  if (e <= 0) {
    if (e < -10) return sign;  // underflow to zero
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1))) h += 1;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h += 1;  // may carry into the exponent: fine
  return sign | h;
}

/// IEEE half bits -> float.
export function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

// ---- Inputs ---------------------------------------------------------------------------------------

/// Default seed of generated inputs.
export const DEFAULT_SEED = 20250101;

/// Resolves a metadata shape to concrete dimensions: numbers stay, symbolic names take
/// dims[name] (from a spec or --dim name=value), else `fallback` (1).
function concreteShape(name, shape, dims, fallback = 1) {
  if (!Array.isArray(shape)) throw new Error(`input ${name}: unknown shape`);
  return shape.map((d) => {
    if (typeof d === 'number' && d >= 0) return d;
    if (dims && typeof d === 'string' && dims[d] !== undefined) return Number(dims[d]);
    return fallback;
  });
}

/// Loads an input spec: a JSON file
///   { "dims": {"batch": 2}, "inputs": {"name": {"dims": [...], "fill": "normal"|"uniform"|
///     "zeros"|"value"|"tokens", "scale": 1, "lo": -1, "hi": 1, "value": 16000, "seed": 7}} }
/// Every field is optional; an input without an entry gets N(0, 1) floats or devgpt tokens.
export function loadSpec(specPath) {
  if (!specPath) return {};
  return JSON.parse(readFileSync(specPath, 'utf8'));
}

/// Deterministic feeds for `session` from its input metadata, a spec and a seed. The same
/// (metadata, spec, seed) give the same feeds, so two models with the same inputs get identical
/// data. Returns { feeds, description }.
export function makeFeeds(session, spec = {}, seed = DEFAULT_SEED) {
  const ort = loadOrt();
  const feeds = {};
  const description = {};
  const meta = session.inputMetadata;
  meta.forEach((m, index) => {
    const s = (spec.inputs && spec.inputs[m.name]) || {};
    const dims = s.dims ?? concreteShape(m.name, m.shape, spec.dims);
    const count = dims.reduce((a, b) => a * b, 1);
    const inputSeed = (s.seed ?? seed + 7919 * index) >>> 0;
    const type = m.type;
    let fill = s.fill ?? (type === 'int64' || type === 'int32' ? 'tokens' : 'normal');
    let values;  // Float64Array-compatible numbers, before the type conversion
    switch (fill) {
      case 'normal':
        values = normalFloats(count, inputSeed, s.scale ?? 1);
        break;
      case 'uniform':
        values = uniformFloats(count, inputSeed, s.lo ?? -1, s.hi ?? 1);
        break;
      case 'zeros':
        values = new Float32Array(count);
        break;
      case 'value':
        values = new Float64Array(count).fill(Number(s.value));
        break;
      case 'tokens': {
        // Text bytes from devgpt_val.u8 (byte-level vocabulary): a realistic token stream.
        const text = devgptValBytes();
        const start = (inputSeed * 131) % (text.length - count - 1);
        values = Array.from(text.subarray(start, start + count));
        break;
      }
      default:
        throw new Error(`input ${m.name}: unknown fill '${fill}'`);
    }
    let data;
    switch (type) {
      case 'float32':
        data = Float32Array.from(values);
        break;
      case 'float16':
        data = Uint16Array.from(values, floatToHalf);
        break;
      case 'float64':
        data = Float64Array.from(values);
        break;
      case 'int64':
        data = BigInt64Array.from(values, (v) => BigInt(Math.round(v)));
        break;
      case 'int32':
        data = Int32Array.from(values, (v) => Math.round(v));
        break;
      case 'bool':
        data = Uint8Array.from(values, (v) => (v ? 1 : 0));
        break;
      default:
        throw new Error(`input ${m.name}: type ${type} not supported by the test harness`);
    }
    feeds[m.name] = new ort.Tensor(type, data, dims);
    description[m.name] = { type, dims, fill, seed: inputSeed };
  });
  return { feeds, description };
}

/// A tensor's data as a Float64Array (float16 decoded, int64 converted).
export function toFloat64(tensor) {
  const d = tensor.data;
  if (tensor.type === 'float16') return Float64Array.from(d, halfToFloat);
  if (tensor.type === 'int64' || tensor.type === 'uint64') return Float64Array.from(d, Number);
  return Float64Array.from(d);
}

/// Runs `session` on `feeds`; returns { name: { type, dims, data: Float64Array } } in output order.
export async function runSession(session, feeds) {
  const results = await session.run(feeds);
  const out = {};
  for (const name of session.outputNames) {
    const t = results[name];
    out[name] = { type: t.type, dims: Array.from(t.dims), data: toFloat64(t) };
  }
  return out;
}

// ---- Metrics --------------------------------------------------------------------------------------

/// Error of `b` against the reference `a` (same length):
///   max_abs, ref_max_abs (max |a|), max_rel = max_abs / ref_max_abs (scale-free),
///   rel_l2 = ||a - b|| / ||a||, cosine, nonfinite (NaN/inf count in b where a is finite).
export function errorMetrics(a, b) {
  if (a.length !== b.length) throw new Error(`size mismatch: ${a.length} vs ${b.length}`);
  let maxAbs = 0, refMax = 0, dot = 0, na = 0, nb = 0, nd = 0, nonfinite = 0;
  for (let i = 0; i < a.length; ++i) {
    const x = a[i], y = b[i];
    if (!Number.isFinite(y) && Number.isFinite(x)) {
      ++nonfinite;
      continue;
    }
    const d = Math.abs(x - y);
    if (d > maxAbs) maxAbs = d;
    if (Math.abs(x) > refMax) refMax = Math.abs(x);
    dot += x * y;
    na += x * x;
    nb += y * y;
    nd += (x - y) * (x - y);
  }
  const cosine = na === 0 && nb === 0 ? 1 : dot / Math.sqrt(na * nb || 1e-300);
  return {
    max_abs: maxAbs,
    ref_max_abs: refMax,
    max_rel: refMax > 0 ? maxAbs / refMax : maxAbs,
    rel_l2: na > 0 ? Math.sqrt(nd / na) : Math.sqrt(nd),
    cosine,
    nonfinite,
    count: a.length,
  };
}

/// Checks metrics against a tolerance {max_abs?, max_rel?, rel_l2?, min_cosine?}; returns the
/// list of violated limits (empty when within tolerance).
export function violations(metrics, tol) {
  const out = [];
  if (metrics.nonfinite > 0) out.push(`${metrics.nonfinite} non-finite values`);
  if (tol.max_abs !== undefined && !(metrics.max_abs <= tol.max_abs))
    out.push(`max_abs ${fmt(metrics.max_abs)} > ${tol.max_abs}`);
  if (tol.max_rel !== undefined && !(metrics.max_rel <= tol.max_rel))
    out.push(`max_rel ${fmt(metrics.max_rel)} > ${tol.max_rel}`);
  if (tol.rel_l2 !== undefined && !(metrics.rel_l2 <= tol.rel_l2))
    out.push(`rel_l2 ${fmt(metrics.rel_l2)} > ${tol.rel_l2}`);
  if (tol.min_rel_l2 !== undefined && !(metrics.rel_l2 >= tol.min_rel_l2))
    out.push(`rel_l2 ${fmt(metrics.rel_l2)} < ${tol.min_rel_l2}: no quantization error at all, was anything quantized?`);
  if (tol.min_cosine !== undefined && !(metrics.cosine >= tol.min_cosine))
    out.push(`cosine ${metrics.cosine.toFixed(9)} < ${tol.min_cosine}`);
  return out;
}

export function fmt(x) {
  return typeof x === 'number' ? x.toExponential(3) : String(x);
}

// ---- devgpt -------------------------------------------------------------------------------------

/// ../shared/models/devgpt beside the repository, or INT4Q_DEVGPT_DIR.
export function devgptDir() {
  return process.env.INT4Q_DEVGPT_DIR || path.resolve(repoRoot, '..', 'shared', 'models', 'devgpt');
}

let valBytes = null;
export function devgptValBytes() {
  if (!valBytes) {
    const p = path.join(devgptDir(), 'devgpt_val.u8');
    if (!existsSync(p)) throw new Error(`no devgpt validation text at ${p} (set INT4Q_DEVGPT_DIR)`);
    valBytes = new Uint8Array(readFileSync(p));
  }
  return valBytes;
}

/// The input spec of a command line: --spec FILE, then --dim NAME=VALUE (repeatable) on top.
export function specFromArgs(args) {
  const spec = loadSpec(args.spec);
  for (const d of args.dim ?? []) {
    const [k, v] = d.split('=');
    if (v === undefined) throw new Error(`--dim wants NAME=VALUE, got '${d}'`);
    (spec.dims ??= {})[k] = Number(v);
  }
  return spec;
}

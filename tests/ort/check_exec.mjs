// Compares int4q's executor with ONNX Runtime on one case folder written by int4q_ort_exec_cases
// (exec_cases.cpp): runs case.json's model in onnxruntime-node on the case's input_<k>.npy and
// compares every output with executor_output_<k>.npy.
//
//   node check_exec.mjs CASE_DIR [--opt disabled|basic] [--tol NAME] [--expect-fail]
//
// An element passes when |ort - int4q| <= atol + rtol * |ort| (integer and boolean outputs:
// equal). The report gives, per output, max abs error, max relative error (|ort - int4q| /
// |ort|, over elements with |ort| > atol) and the worst element. Exit 0 when every output
// matches, 1 on a mismatch (shape, type or values), 2 when the case cannot be run.
// --expect-fail (negative controls) inverts 0 and 1: the case must be reported as a mismatch.
// Graph optimization is 'disabled' by default, so that ONNX Runtime runs the nodes as written.
import { readFileSync } from 'node:fs';
import path from 'node:path';

import { createSession, fmt, loadOrt, parseArgs, runMain } from './lib.mjs';

// Named tolerances: elementwise |ort - int4q| <= atol + rtol * |ort|.
export const EXEC_TOLERANCES = {
  // Fused operators and small graphs on N(0, 1) data, fp32 on both sides. The two sides sum in
  // different orders (MLAS vs BLAS sgemm, float vs double statistics in the normalizations) and
  // evaluate exp/tanh/erf with different approximations: a few float ulps, relative ~1e-6, plus
  // cancellation near 0. Layout, masking or position mistakes give errors of order 1e-1.
  executor_vs_ort: { atol: 1e-5, rtol: 1e-4 },
  // Whole real models (tens of layers: CNN stacks, LSTM, transformer): the per-op differences
  // above compound through the depth; a wrong operator gives errors of order 1e-1 or more.
  real_model: { atol: 1e-4, rtol: 1e-3 },
};

/// Reads an .npy file (format 1.0-3.0, C order): { descr, shape, data } with data a typed array
/// ('<f4' Float32Array, '<f8' Float64Array, '<i4' Int32Array, '<i8' BigInt64Array, '|b1' / '|u1'
/// Uint8Array).
export function readNpy(file) {
  const buf = readFileSync(file);
  if (buf.length < 10 || buf.toString('latin1', 0, 6) !== '\x93NUMPY')
    throw new Error(`${file}: not an .npy file`);
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', start, start + headerLen);
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!descr || !fortran || shapeText === undefined) throw new Error(`${file}: bad header ${header}`);
  if (fortran === 'True') throw new Error(`${file}: Fortran order is not supported`);
  const shape = shapeText.split(',').map((s) => s.trim()).filter((s) => s.length).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const types = {
    '<f4': [Float32Array, 'float32'],
    '<f8': [Float64Array, 'float64'],
    '<i4': [Int32Array, 'int32'],
    '<i8': [BigInt64Array, 'int64'],
    '|b1': [Uint8Array, 'bool'],
    '|u1': [Uint8Array, 'uint8'],
  };
  if (!types[descr]) throw new Error(`${file}: dtype ${descr} is not supported`);
  const [Array_, ortType] = types[descr];
  const offset = start + headerLen;
  const bytes = count * Array_.BYTES_PER_ELEMENT;
  if (buf.length - offset !== bytes)
    throw new Error(`${file}: ${buf.length - offset} data bytes for ${count} x ${descr}`);
  const copy = new Uint8Array(bytes);  // aligned copy
  copy.set(buf.subarray(offset, offset + bytes));
  return { descr, ortType, shape, data: new Array_(copy.buffer) };
}

function toNumbers(data) {
  return data instanceof BigInt64Array ? Float64Array.from(data, Number) : Float64Array.from(data);
}

/// Multi-index of flat element `e` of `shape`.
function unravel(e, shape) {
  const idx = new Array(shape.length).fill(0);
  for (let k = shape.length - 1; k >= 0; --k) {
    idx[k] = e % shape[k];
    e = Math.floor(e / shape[k]);
  }
  return idx;
}

/// Compares output `name` of ORT (reference) with the executor's. Returns { ok, line }.
function compareOutput(name, ortTensor, mine, tol) {
  const ortDims = Array.from(ortTensor.dims).map(Number);
  if (ortDims.length !== mine.shape.length || ortDims.some((d, k) => d !== mine.shape[k]))
    return { ok: false, line: `${name}: shape [${ortDims}] (ORT) vs [${mine.shape}] (int4q)` };
  const ref = toNumbers(ortTensor.data), got = toNumbers(mine.data);
  const isFloat = ortTensor.type === 'float32' || ortTensor.type === 'float64';
  if (isFloat !== (mine.ortType === 'float32' || mine.ortType === 'float64'))
    return { ok: false, line: `${name}: type ${ortTensor.type} (ORT) vs ${mine.ortType} (int4q)` };
  let maxAbs = 0, maxRel = 0, worst = -1, worstExcess = -Infinity, bad = 0;
  for (let e = 0; e < ref.length; ++e) {
    const a = ref[e], b = got[e];
    const d = Math.abs(a - b);
    const limit = isFloat ? tol.atol + tol.rtol * Math.abs(a) : 0;
    const pass = Number.isNaN(a) ? Number.isNaN(b) : a === b || d <= limit;
    if (!pass) ++bad;
    if (Number.isFinite(d)) {
      maxAbs = Math.max(maxAbs, d);
      if (Math.abs(a) > tol.atol) maxRel = Math.max(maxRel, d / Math.abs(a));
    }
    const excess = pass ? d - limit : Infinity;
    if (worst < 0 || excess > worstExcess) {
      worst = e;
      worstExcess = excess;
    }
  }
  let line = `${name}: [${ortDims}] max_abs ${fmt(maxAbs)} max_rel ${fmt(maxRel)}`;
  if (worst >= 0)
    line += ` worst [${unravel(worst, ortDims)}] ORT ${ref[worst]} int4q ${got[worst]}`;
  if (bad > 0) line += `: ${bad} of ${ref.length} elements outside tolerance`;
  return { ok: bad === 0, line };
}

async function main() {
  const args = parseArgs(process.argv.slice(2), { flags: ['expect-fail'] });
  const dir = args._[0];
  if (!dir) throw new Error('usage: check_exec.mjs CASE_DIR [--opt disabled|basic] [--tol NAME] [--expect-fail]');
  const spec = JSON.parse(readFileSync(path.join(dir, 'case.json'), 'utf8'));
  const tolName = args.tol ?? spec.tolerance ?? 'executor_vs_ort';
  const tol = EXEC_TOLERANCES[tolName];
  if (!tol) throw new Error(`unknown tolerance '${tolName}' (${Object.keys(EXEC_TOLERANCES)})`);
  const ort = loadOrt();
  const modelPath = path.resolve(dir, spec.model);
  const session = await createSession(modelPath, { opt: args.opt ?? 'disabled' });
  const feeds = {};
  for (const input of spec.inputs) {
    const a = readNpy(path.join(dir, input.file));
    feeds[input.name] = new ort.Tensor(a.ortType, a.data, a.shape);
  }
  const names = spec.outputs.map((o) => o.name);
  const results = await session.run(feeds, names);
  const label = path.basename(path.resolve(dir));
  let ok = true;
  console.log(`case ${label} (tolerance ${tolName}: atol ${tol.atol}, rtol ${tol.rtol})`);
  for (const o of spec.outputs) {
    const r = compareOutput(o.name, results[o.name], readNpy(path.join(dir, o.file)), tol);
    console.log(`  ${r.ok ? 'ok  ' : 'FAIL'} ${r.line}`);
    ok = ok && r.ok;
  }
  if (args['expect-fail']) {
    console.log(ok ? `case ${label}: matched, but a mismatch was expected (negative control)`
                   : `case ${label}: mismatch detected, as expected (negative control)`);
    return ok ? 1 : 0;
  }
  if (!ok) console.log(`case ${label}: int4q's executor differs from ONNX Runtime`);
  return ok ? 0 : 1;
}

runMain(main);

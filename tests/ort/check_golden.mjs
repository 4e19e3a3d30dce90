#!/usr/bin/env node
// ort.golden_models_run: the harness itself. devgpt fp32 and ONNX Runtime's own quantized devgpt
// models (../shared/models/devgpt/ort/, written by ORT 1.30's matmul_nbits_quantizer) run in
// onnxruntime-node and score the nats/byte recorded in tolerances.mjs (DEVGPT_GOLDEN); and ORT's
// MatMulNBits and DequantizeLinear models of the same symmetric weights give the same logits
// (tolerance writer_vs_fake_devgpt), which checks the comparison path the int4q tests use.
//
//   node tests/ort/check_golden.mjs [--results DIR]
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { devgptDir, errorMetrics, fmt, parseArgs, runMain, violations } from './lib.mjs';
import { evalDevgpt } from './devgpt.mjs';
import { DEVGPT_GOLDEN, DEVGPT_GOLDEN_TOLERANCE, tolerance } from './tolerances.mjs';

function flat(list) {
  const n = list.reduce((a, x) => a + x.length, 0);
  const out = new Float64Array(n);
  let at = 0;
  for (const x of list) {
    out.set(x, at);
    at += x.length;
  }
  return out;
}

runMain(async () => {
  const args = parseArgs(process.argv.slice(2));
  const results = {};
  let failed = 0;
  const logits = {};
  for (const [name, g] of Object.entries(DEVGPT_GOLDEN)) {
    const file = path.join(devgptDir(), g.file);
    const keep = name === 'ort_mnb_b128_sym' || name === 'ort_qdq_b128_sym';
    const r = await evalDevgpt(file, { keepLogits: keep });
    if (keep) logits[name] = flat(r.logits);
    const diff = r.nats_per_byte - g.nats_per_byte;
    const ok = Math.abs(diff) <= DEVGPT_GOLDEN_TOLERANCE;
    if (!ok) ++failed;
    results[name] = { file, nats_per_byte: r.nats_per_byte, expected: g.nats_per_byte, seconds: r.seconds };
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${name.padEnd(18)} ${r.nats_per_byte.toFixed(6)} nats/byte ` +
      `(recorded ${g.nats_per_byte.toFixed(6)}, diff ${diff.toExponential(2)}, limit ${DEVGPT_GOLDEN_TOLERANCE})`);
  }
  const t = tolerance('writer_vs_fake_devgpt');
  const m = errorMetrics(logits.ort_mnb_b128_sym, logits.ort_qdq_b128_sym);
  const bad = violations(m, t);
  if (bad.length) ++failed;
  console.log(`${bad.length ? 'FAIL' : 'ok  '} ORT MatMulNBits vs DequantizeLinear b128 sym logits: max_rel ${fmt(m.max_rel)} ` +
    `rel_l2 ${fmt(m.rel_l2)} cosine ${m.cosine.toFixed(9)}${bad.length ? `  <- ${bad.join('; ')}` : ''}`);
  results.mnb_vs_qdq_b128_sym = m;
  if (args.results) {
    mkdirSync(args.results, { recursive: true });
    writeFileSync(path.join(args.results, 'golden.json'), JSON.stringify(results, null, 2) + '\n');
  }
  return failed ? 1 : 0;
});

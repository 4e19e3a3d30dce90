#!/usr/bin/env node
// ort.devgpt_<variant>: one int4q-quantized devgpt model in ONNX Runtime.
//   (i)   it runs, and its logits on the evaluation windows match those of the fake-quant model
//         of the same quantization (tolerance writer_vs_fake_devgpt): the writer's tensors decode
//         in ORT exactly like int4q's own dequantization;
//   (ii)  its nats/byte loss against fp32 lies within the bounds of DEVGPT_VARIANTS[variant]
//         (tolerances.mjs), and, where ONNX Runtime's own quantizer has the same configuration,
//         it is no worse than ORT's model (plus a small margin);
//   (iii) writes every number to RESULTS/<variant>.json (summarize_devgpt.mjs gathers them).
//
//   node tests/ort/check_devgpt.mjs --variant NAME --model Q.onnx [--fake F.onnx]
//        [--fp32 devgpt_fp32.onnx (evaluate it; default: the recorded fp32 score)] [--report Q.report.json] [--results DIR] [--sequences 64]
//        [--expect-fail logits|loss|golden]   (negative control: exit 0 only if that check fails)
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { devgptDir, errorMetrics, fmt, parseArgs, runMain, violations } from './lib.mjs';
import { evalDevgpt } from './devgpt.mjs';
import { DEVGPT_GOLDEN, DEVGPT_VARIANTS, tolerance } from './tolerances.mjs';

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

function reportSummary(file) {
  if (!file || !existsSync(file)) return undefined;
  try {
    const r = JSON.parse(readFileSync(file, 'utf8'));
    const totals = r.totals ?? r;
    return {
      weights_quantized: totals.weights_quantized ?? r.weights_quantized,
      bytes_before: totals.bytes_before ?? r.bytes_before,
      bytes_after: totals.bytes_after ?? r.bytes_after,
      seconds: totals.seconds ?? r.seconds,
      embeddings_quantized: (r.embeddings ?? []).filter((e) => e.quantized).length,
    };
  } catch {
    return undefined;
  }
}

runMain(async () => {
  const args = parseArgs(process.argv.slice(2));
  const variant = args.variant;
  if (!variant || !args.model) {
    console.error('usage: check_devgpt.mjs --variant NAME --model Q.onnx [--fake F.onnx] [--fp32 M] [--report R] [--results DIR]');
    return 2;
  }
  const spec = DEVGPT_VARIANTS[variant];
  if (!spec) throw new Error(`no bounds for devgpt variant '${variant}' in tests/ort/tolerances.mjs DEVGPT_VARIANTS`);
  const sequences = Number(args.sequences ?? 64);
  // fp32 reference: the recorded number (ort.golden_models_run checks it still holds), or an
  // evaluation of --fp32 MODEL (also needed with --sequences other than 64).
  const fp32 = args.fp32 || sequences !== 64
    ? await evalDevgpt(args.fp32 ?? path.join(devgptDir(), DEVGPT_GOLDEN.fp32.file), { sequences })
    : { nats_per_byte: DEVGPT_GOLDEN.fp32.nats_per_byte };
  const failures = [];

  const q = await evalDevgpt(args.model, { sequences, keepLogits: !!args.fake });
  const loss = q.nats_per_byte - fp32.nats_per_byte;
  const result = {
    variant,
    model: args.model,
    description: spec.description,
    fp32_nats_per_byte: fp32.nats_per_byte,
    nats_per_byte: q.nats_per_byte,
    loss,
    bounds: spec,
    sequences: q.sequences,
    eval_seconds: q.seconds,
    report: reportSummary(args.report),
  };
  console.log(`${variant}: ${q.nats_per_byte.toFixed(6)} nats/byte, fp32 ${fp32.nats_per_byte.toFixed(6)}, loss ${loss.toFixed(6)}`);

  // (i) against the fake-quant model
  if (args.fake) {
    const f = await evalDevgpt(args.fake, { sequences, keepLogits: true });
    const m = errorMetrics(flat(f.logits), flat(q.logits));
    const bad = violations(m, tolerance('writer_vs_fake_devgpt'));
    result.fake = { model: args.fake, nats_per_byte: f.nats_per_byte, logits: m };
    console.log(`  logits vs fake-quant ${path.basename(args.fake)}: max_abs ${fmt(m.max_abs)} max_rel ${fmt(m.max_rel)} ` +
      `rel_l2 ${fmt(m.rel_l2)} cosine ${m.cosine.toFixed(9)}; fake scores ${f.nats_per_byte.toFixed(6)}`);
    if (bad.length) failures.push({ kind: 'logits', message: `logits differ from the fake-quant model's (writer_vs_fake_devgpt): ${bad.join('; ')}` });
  }

  // (ii) loss bounds
  if (!(loss <= spec.max_loss)) failures.push({ kind: 'loss', message: `loss ${loss.toFixed(6)} nats/byte > bound ${spec.max_loss}` });
  if (!(loss >= spec.min_loss))
    failures.push({ kind: 'loss', message: `loss ${loss.toFixed(6)} nats/byte < ${spec.min_loss}: the model looks unquantized` });
  if (spec.golden) {
    const g = DEVGPT_GOLDEN[spec.golden];
    const limit = g.nats_per_byte + spec.golden_margin;
    result.golden = { name: spec.golden, nats_per_byte: g.nats_per_byte, limit };
    console.log(`  ONNX Runtime's ${spec.golden}: ${g.nats_per_byte.toFixed(6)} (int4q ${q.nats_per_byte <= g.nats_per_byte ? 'better' : 'worse'} by ${Math.abs(q.nats_per_byte - g.nats_per_byte).toFixed(6)})`);
    if (!(q.nats_per_byte <= limit))
      failures.push({ kind: 'golden', message: `${q.nats_per_byte.toFixed(6)} nats/byte is worse than ONNX Runtime's ${spec.golden} (${g.nats_per_byte.toFixed(6)}) by more than ${spec.golden_margin}` });
  }
  // The quantize report: the weights (and embedding tables) were quantized even where the loss
  // cannot tell (8 bits score like fp32).
  for (const [key, field] of [['min_weights_quantized', 'weights_quantized'], ['min_embeddings_quantized', 'embeddings_quantized']]) {
    if (spec[key] === undefined) continue;
    const got = result.report?.[field];
    if (!(got >= spec[key])) failures.push({ kind: 'report', message: `report: ${field} ${got} < ${spec[key]}` });
  }
  console.log(`  bounds: ${spec.min_loss} <= loss <= ${spec.max_loss}`);

  result.ok = failures.length === 0;
  result.failures = failures;
  if (args.results && !args['expect-fail']) {
    mkdirSync(args.results, { recursive: true });
    writeFileSync(path.join(args.results, `${variant}.json`), JSON.stringify(result, null, 2) + '\n');
  }
  for (const f of failures) console.log(`${args['expect-fail'] ? 'failure' : 'FAIL'} ${variant} [${f.kind}]: ${f.message}`);
  if (args['expect-fail']) {
    // Negative control: the named check must fail on this model.
    const hit = failures.some((f) => f.kind === args['expect-fail']);
    console.log(hit ? `expected '${args['expect-fail']}' failure: ok (the bound can fail)`
                    : `FAIL: expected a '${args['expect-fail']}' failure, got ${failures.length ? failures.map((f) => f.kind).join(', ') : 'none'}`);
    return hit ? 0 : 1;
  }
  return failures.length ? 1 : 0;
});

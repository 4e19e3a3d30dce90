#!/usr/bin/env node
// Runs models in ONNX Runtime on identical inputs and compares their outputs.
//
//   node tests/ort/compare.mjs REF.onnx CAND.onnx [CAND2.onnx ...] [--tol NAME]
//        [--max-abs X] [--max-rel X] [--rel-l2 X] [--min-cosine X]
//        [--fp32 ORIGINAL.onnx --fp32-tol NAME]
//        [--spec inputs.json] [--dim NAME=VALUE ...] [--seed N] [--runs N] [--opt basic|all]
//        [--label TEXT] [--json OUT.json] [--expect-fail]
//
// Every candidate is compared with the reference (tolerance --tol, default writer_vs_fake, from
// tolerances.mjs; --max-abs etc. override single limits). With --fp32, every candidate and the
// reference are also compared with the original model under --fp32-tol (a loose bound on the
// quantization error itself). Inputs are generated once from the reference's input metadata (see
// run.mjs) and fed to every model; --runs N repeats with seeds seed..seed+N-1 and concatenates the
// outputs (for models with tiny outputs). Outputs are matched by name, else by position.
// Prints one line per comparison; --json writes all metrics. Exit 0 when all are within
// tolerance, 1 otherwise, 2 on errors (a model that does not load or run). --expect-fail turns
// the verdict around for negative controls (models that must NOT match, e.g. a different
// quantization): exit 0 when every candidate differs from the reference beyond tolerance, else 1.
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  DEFAULT_SEED, createSession, errorMetrics, fmt, makeFeeds, parseArgs, runMain, runSession,
  specFromArgs, violations,
} from './lib.mjs';
import { tolerance } from './tolerances.mjs';

function toleranceFromArgs(name, args, prefix = '') {
  const t = { ...tolerance(name) };
  const pick = (opt, key) => {
    if (args[prefix + opt] !== undefined) t[key] = Number(args[prefix + opt]);
  };
  pick('max-abs', 'max_abs');
  pick('max-rel', 'max_rel');
  pick('rel-l2', 'rel_l2');
  pick('min-cosine', 'min_cosine');
  return t;
}

/// Outputs of `session` over `feedSets`, concatenated per output.
async function collect(session, feedSets) {
  const parts = {};
  for (const feeds of feedSets) {
    const out = await runSession(session, feeds);
    for (const [name, o] of Object.entries(out)) (parts[name] ??= []).push(o);
  }
  const result = {};
  for (const [name, list] of Object.entries(parts)) {
    const n = list.reduce((a, o) => a + o.data.length, 0);
    const data = new Float64Array(n);
    let at = 0;
    for (const o of list) {
      data.set(o.data, at);
      at += o.data.length;
    }
    result[name] = { type: list[0].type, dims: list[0].dims, data };
  }
  return result;
}

function matchOutputs(refOut, candOut, candPath) {
  const refNames = Object.keys(refOut);
  const candNames = Object.keys(candOut);
  if (refNames.length !== candNames.length)
    throw new Error(`${candPath}: ${candNames.length} outputs, the reference has ${refNames.length}`);
  return refNames.map((name, i) => {
    const cand = candOut[name] ?? candOut[candNames[i]];
    return [name, refOut[name], cand];
  });
}

export async function compareModels({ ref, candidates, tol, fp32, fp32Tol, spec, seed, runs, opt }) {
  const refSession = await createSession(ref, { opt });
  const feedSets = [];
  for (let r = 0; r < runs; ++r) feedSets.push(makeFeeds(refSession, spec, seed + r).feeds);
  const refOut = await collect(refSession, feedSets);
  const rows = [];
  let failed = 0;
  const check = async (refPath, refOutputs, candPath, candOutputs, tolName, t) => {
    for (const [name, a, b] of matchOutputs(refOutputs, candOutputs, candPath)) {
      if (a.data.length !== b.data.length)
        throw new Error(`${candPath}: output ${name} has ${b.data.length} values, reference ${a.data.length}`);
      const m = errorMetrics(a.data, b.data);
      const bad = violations(m, t);
      if (bad.length) ++failed;
      rows.push({ reference: refPath, candidate: candPath, output: name, tolerance: tolName, limits: t, metrics: m, ok: bad.length === 0, violations: bad });
    }
  };
  const candOutputs = {};
  for (const c of candidates) {
    const s = await createSession(c, { opt });
    candOutputs[c] = await collect(s, feedSets);
    await check(ref, refOut, c, candOutputs[c], tol.name, tol.limits);
  }
  if (fp32) {
    const s = await createSession(fp32, { opt });
    const fpOut = await collect(s, feedSets);
    await check(fp32, fpOut, ref, refOut, fp32Tol.name, fp32Tol.limits);
    for (const c of candidates) await check(fp32, fpOut, c, candOutputs[c], fp32Tol.name, fp32Tol.limits);
  }
  return { rows, failed };
}

runMain(async () => {
  const args = parseArgs(process.argv.slice(2), { flags: ['expect-fail'], repeat: ['dim'] });
  if (args._.length < 2) {
    console.error('usage: compare.mjs REF.onnx CAND.onnx [...] [--tol NAME] [--fp32 MODEL --fp32-tol NAME] [--spec FILE] [--dim N=V] [--seed N] [--runs N] [--opt basic|all] [--json OUT]');
    return 2;
  }
  const [ref, ...candidates] = args._;
  const tolName = args.tol ?? 'writer_vs_fake';
  const fp32TolName = args['fp32-tol'];
  if (args.fp32 && !fp32TolName) throw new Error('--fp32 needs --fp32-tol NAME');
  const { rows, failed } = await compareModels({
    ref,
    candidates,
    tol: { name: tolName, limits: toleranceFromArgs(tolName, args) },
    fp32: args.fp32,
    fp32Tol: fp32TolName && { name: fp32TolName, limits: toleranceFromArgs(fp32TolName, args, 'fp32-') },
    spec: specFromArgs(args),
    seed: Number(args.seed ?? DEFAULT_SEED),
    runs: Number(args.runs ?? 1),
    opt: args.opt ?? 'basic',
  });
  const label = args.label ? `${args.label}: ` : '';
  for (const r of rows) {
    const m = r.metrics;
    console.log(`${r.ok ? 'ok  ' : 'FAIL'} ${label}${path.basename(r.candidate)} vs ${path.basename(r.reference)} [${r.output}] ` +
      `(${r.tolerance}) max_abs ${fmt(m.max_abs)} max_rel ${fmt(m.max_rel)} rel_l2 ${fmt(m.rel_l2)} cosine ${m.cosine.toFixed(9)}` +
      (r.ok ? '' : `  <- ${r.violations.join('; ')}`));
  }
  if (args.json) mkdirSync(path.dirname(args.json), { recursive: true });
  if (args.json) writeFileSync(args.json, JSON.stringify({ label: args.label, rows }, null, 2) + '\n');
  if (failed) console.log(`${failed} comparison(s) outside tolerance`);
  if (args['expect-fail']) {
    // Every candidate must be told apart from the reference by the (main) tolerance.
    const matching = candidates.filter((c) => rows.every((r) => r.candidate !== c || r.reference !== ref || r.ok));
    if (matching.length === 0) {
      console.log('expected failure: ok (the tolerance tells every candidate from the reference)');
      return 0;
    }
    console.log(`FAIL: expected these models to differ beyond the tolerance, but they match: ${matching.join(', ')}`);
    return 1;
  }
  return failed ? 1 : 0;
});

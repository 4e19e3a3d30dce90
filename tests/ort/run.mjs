#!/usr/bin/env node
// Runs one model in ONNX Runtime on deterministic inputs and writes its outputs.
//
//   node tests/ort/run.mjs MODEL.onnx [--spec inputs.json] [--seed N] [--dim NAME=VALUE ...]
//                                     [--opt basic|all] [--out DIR] [--print]
//
// Inputs come from the model's input metadata: float inputs N(0, 1) from a fixed PRNG (seeded per
// input), int64 inputs as byte tokens of devgpt_val.u8; a spec file (see lib.mjs loadSpec) or
// --dim fixes symbolic dimensions and special inputs (e.g. Silero VAD's sample rate).
// --out DIR writes DIR/outputs.json (names, types, shapes, inputs used) and DIR/<i>.f64 (each
// output as little-endian float64); without --out a summary (shape, min, max, mean) is printed.
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  DEFAULT_SEED, createSession, makeFeeds, parseArgs, runMain, runSession, specFromArgs,
} from './lib.mjs';

function summary(o) {
  let min = Infinity, max = -Infinity, sum = 0;
  for (const v of o.data) {
    if (v < min) min = v;
    if (v > max) max = v;
    sum += v;
  }
  return { type: o.type, dims: o.dims, min, max, mean: sum / o.data.length };
}

runMain(async () => {
  const args = parseArgs(process.argv.slice(2), { flags: ['print'], repeat: ['dim'] });
  if (args._.length !== 1) {
    console.error('usage: run.mjs MODEL.onnx [--spec FILE] [--seed N] [--dim NAME=VALUE] [--opt basic|all] [--out DIR]');
    return 2;
  }
  const model = args._[0];
  const spec = specFromArgs(args);
  const seed = Number(args.seed ?? DEFAULT_SEED);
  const session = await createSession(model, { opt: args.opt ?? 'basic' });
  const { feeds, description } = makeFeeds(session, spec, seed);
  const outputs = await runSession(session, feeds);
  const meta = { model, graph_optimization: args.opt ?? 'basic', seed, inputs: description, outputs: [] };
  if (args.out) mkdirSync(args.out, { recursive: true });
  Object.entries(outputs).forEach(([name, o], i) => {
    const entry = { name, ...summary(o) };
    if (args.out) {
      entry.file = `${i}.f64`;
      writeFileSync(path.join(args.out, entry.file), Buffer.from(o.data.buffer));
    }
    meta.outputs.push(entry);
  });
  if (args.out) writeFileSync(path.join(args.out, 'outputs.json'), JSON.stringify(meta, null, 2) + '\n');
  console.log(JSON.stringify(meta, null, args.print ? 2 : 0));
  return 0;
});

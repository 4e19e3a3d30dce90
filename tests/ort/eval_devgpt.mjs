#!/usr/bin/env node
// devgpt accuracy: mean next-byte NLL in nats/byte on devgpt_val.u8 (protocol in devgpt.mjs).
//
//   node tests/ort/eval_devgpt.mjs MODEL.onnx [MODEL2.onnx ...] [--sequences 64] [--opt basic|all]
//
// Prints one JSON object per model: {"model", "nats_per_byte", "perplexity", "sequences", ...}.
import { parseArgs, runMain } from './lib.mjs';
import { evalDevgpt } from './devgpt.mjs';

runMain(async () => {
  const args = parseArgs(process.argv.slice(2));
  if (args._.length === 0 || args.help) {
    console.error('usage: eval_devgpt.mjs MODEL.onnx [...] [--sequences 64] [--opt basic|all]');
    return 2;
  }
  for (const model of args._) {
    const r = await evalDevgpt(model, {
      sequences: Number(args.sequences ?? 64),
      opt: args.opt ?? 'basic',
    });
    console.log(JSON.stringify(r));
  }
  return 0;
});

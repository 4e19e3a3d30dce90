#!/usr/bin/env node
// Gathers RESULTS/golden.json and RESULTS/<variant>.json (written by check_golden.mjs and
// check_devgpt.mjs) into one JSON file and prints a Markdown table.
//
//   node tests/ort/summarize_devgpt.mjs RESULTS_DIR [--out devgpt_results.json]
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs, runMain } from './lib.mjs';
import { DEVGPT_VARIANTS } from './tolerances.mjs';

runMain(async () => {
  const args = parseArgs(process.argv.slice(2));
  const dir = args._[0];
  if (!dir) {
    console.error('usage: summarize_devgpt.mjs RESULTS_DIR [--out FILE]');
    return 2;
  }
  if (!existsSync(dir)) throw new Error(`no results in ${dir}: run the ort.* tests first`);
  const golden = existsSync(path.join(dir, 'golden.json'))
    ? JSON.parse(readFileSync(path.join(dir, 'golden.json'), 'utf8'))
    : {};
  const variants = readdirSync(dir)
    .filter((f) => f.endsWith('.json') && f !== 'golden.json')
    .map((f) => JSON.parse(readFileSync(path.join(dir, f), 'utf8')))
    .filter((r) => r.variant && DEVGPT_VARIANTS[r.variant]);  // not stale files of removed variants
  const fp32 = golden.fp32?.nats_per_byte ?? variants[0]?.fp32_nats_per_byte;

  const lines = [];
  lines.push('| model | nats/byte | loss vs fp32 | perplexity |');
  lines.push('|---|---|---|---|');
  const row = (name, nll) =>
    lines.push(`| ${name} | ${nll.toFixed(6)} | ${fp32 !== undefined ? (nll - fp32 >= 0 ? '+' : '') + (nll - fp32).toFixed(4) : ''} | ${Math.exp(nll).toFixed(4)} |`);
  if (fp32 !== undefined) row('fp32', fp32);
  for (const [name, g] of Object.entries(golden)) if (name !== 'fp32' && g.nats_per_byte !== undefined) row(`ONNX Runtime ${name}`, g.nats_per_byte);
  for (const v of variants.sort((a, b) => a.variant.localeCompare(b.variant)))
    row(`int4q ${v.variant}${v.ok ? '' : ' (FAILED)'}`, v.nats_per_byte);
  console.log(lines.join('\n'));
  if (args.out) {
    writeFileSync(args.out, JSON.stringify({ fp32, golden, variants }, null, 2) + '\n');
    console.log(`\nwrote ${args.out}`);
  }
  return 0;
});

#!/usr/bin/env node
// Test fixture step: runs `int4q quantize IN -o OUT ARGS... --report OUT.report.json --quiet`,
// after removing any OUT left by an earlier run (so that a failing quantization can never leave
// a stale model for the tests that follow), and checks that it succeeded and wrote OUT.
//
//   node tests/ort/quantize.mjs --cli PATH/TO/int4q IN.onnx OUT.onnx [-- CLI ARGS...]
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { runMain } from './lib.mjs';

runMain(async () => {
  const argv = process.argv.slice(2);
  const dash = argv.indexOf('--');
  const own = dash >= 0 ? argv.slice(0, dash) : argv;
  const cliArgs = dash >= 0 ? argv.slice(dash + 1) : [];
  const cliAt = own.indexOf('--cli');
  if (cliAt < 0 || own.length !== 4) {
    console.error('usage: quantize.mjs --cli INT4Q IN.onnx OUT.onnx [-- ARGS...]');
    return 2;
  }
  const cli = own[cliAt + 1];
  const [input, output] = own.filter((_, i) => i !== cliAt && i !== cliAt + 1);
  const report = output.replace(/\.onnx$/, '') + '.report.json';
  for (const f of [output, `${output}.data`, report]) rmSync(f, { force: true });
  mkdirSync(path.dirname(output), { recursive: true });
  if (!existsSync(cli)) throw new Error(`no int4q executable at ${cli}: build the int4q_cli target`);
  if (!existsSync(input)) throw new Error(`no input model ${input}`);

  const args = ['quantize', input, '-o', output, ...cliArgs, '--report', report, '--quiet'];
  console.log(`${cli} ${args.join(' ')}`);
  const t0 = Date.now();
  const r = spawnSync(cli, args, { stdio: 'inherit' });
  if (r.error) throw r.error;
  if (r.status !== 0) {
    console.error(`int4q quantize failed with exit code ${r.status}${r.signal ? ` (signal ${r.signal})` : ''}`);
    return 1;
  }
  if (!existsSync(output)) {
    console.error(`int4q quantize exited 0 but wrote no ${output}`);
    return 1;
  }
  let summary = '';
  if (existsSync(report)) {
    try {
      const rep = JSON.parse(readFileSync(report, 'utf8'));
      const totals = rep.totals ?? rep;
      const q = totals.weights_quantized ?? rep.weights_quantized;
      if (q !== undefined) summary += `, ${q} weights quantized`;
    } catch (e) {
      console.error(`warning: report ${report} is not valid JSON: ${e.message}`);
    }
  }
  console.log(`wrote ${output} (${statSync(output).size} bytes, ${Date.now() - t0} ms${summary})`);
  return 0;
});

// ONNX Runtime's side of bench_onnx_executor: the best time of a devgpt-style forward pass
// (int64 token ids [batch, seq] -> outputs), on `threads` intra-op threads, graph optimizations
// on ('all', ORT's default), in onnxruntime-node from INT4Q_NODE_MODULES.
//
//   node bench/ort_forward.mjs MODEL TOKENS_FILE BATCH SEQ THREADS REPEATS
// Prints one line: {"best_ms": ..., "threads": ...}
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

const [model, tokens, batch, seq, threads, repeats] = process.argv.slice(2);
const modules = process.env.INT4Q_NODE_MODULES;
if (!modules) throw new Error('set INT4Q_NODE_MODULES to the node_modules holding onnxruntime-node');
const require = createRequire(path.join(modules, 'noop.js'));
const ort = require('onnxruntime-node');
const session = await ort.InferenceSession.create(model, {
  intraOpNumThreads: +threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
const bytes = fs.readFileSync(tokens);
const n = +batch * +seq;
const ids = new BigInt64Array(n);
for (let i = 0; i < n; i++) ids[i] = BigInt(bytes[i % bytes.length]);
const feeds = { [session.inputNames[0]]: new ort.Tensor('int64', ids, [+batch, +seq]) };
await session.run(feeds);  // warm-up
let best = Infinity;
for (let r = 0; r < +repeats; r++) {
  const t = performance.now();
  await session.run(feeds);
  best = Math.min(best, performance.now() - t);
}
console.log(JSON.stringify({ best_ms: best, threads: +threads }));

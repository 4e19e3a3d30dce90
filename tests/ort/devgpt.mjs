// The devgpt quality metric (../shared/models/README.md): mean negative log-likelihood, in nats per
// byte, of the next byte over sequences of 128 bytes taken at fixed offsets of devgpt_val.u8.
//
// Protocol (fixed, so numbers are comparable across runs and tools):
//   - `n` windows of 129 bytes (default n = 64); window i starts at
//       offset_i = floor(i * (L - 129) / (n - 1))     (L = file length; offset_0 = 0 when n = 1)
//     i.e. evenly spaced from the start to the end of the file (L = 65636: stride 1039 bytes,
//     windows do not overlap).
//   - input_ids = window[0..128) as int64 [batch, 128]; the target of position t is window[t + 1]:
//     128 predictions per window, every position counted (the first ones with short context too).
//   - NLL from the logits [batch, 128, 256] by log-softmax in double precision;
//     nats_per_byte = sum of NLL / (n * 128).
//   - Batches of 16 windows (INT4Q_DEVGPT_BATCH); the result does not depend on it beyond float
//     rounding of the model itself.
import { createSession, devgptValBytes, halfToFloat, loadOrt } from './lib.mjs';

export const SEQ = 128;

export function devgptOffsets(n, length) {
  const span = length - (SEQ + 1);
  if (span < 0) throw new Error(`devgpt_val.u8 is too short (${length} bytes)`);
  if (n === 1) return [0];
  const out = [];
  for (let i = 0; i < n; ++i) out.push(Math.floor((i * span) / (n - 1)));
  return out;
}

/// NLL sum over one batch: logits Float32Array [b, SEQ, V], targets per window.
function nllSum(logits, vocab, targets) {
  let sum = 0;
  const rows = targets.length;
  for (let r = 0; r < rows; ++r) {
    const base = r * vocab;
    let max = -Infinity;
    for (let v = 0; v < vocab; ++v) if (logits[base + v] > max) max = logits[base + v];
    let s = 0;
    for (let v = 0; v < vocab; ++v) s += Math.exp(logits[base + v] - max);
    const logZ = max + Math.log(s);
    sum += logZ - logits[base + targets[r]];
  }
  return sum;
}

/// Evaluates `modelPath`. Returns { nats_per_byte, perplexity, sequences, tokens, offsets, seconds }.
/// With `keepLogits`, also the logits of every window (Float32Array per batch, in order), to
/// compare two models on exactly the same inputs.
export async function evalDevgpt(modelPath, { sequences = 64, opt = 'basic', batch, keepLogits = false } = {}) {
  const ort = loadOrt();
  const text = devgptValBytes();
  const offsets = devgptOffsets(sequences, text.length);
  const session = await createSession(modelPath, { opt });
  const inputName = session.inputNames[0];
  const outputName = session.outputNames[0];
  const bs = batch ?? Number(process.env.INT4Q_DEVGPT_BATCH || 16);
  const t0 = process.hrtime.bigint();
  let total = 0;
  const logitsKept = [];
  for (let first = 0; first < offsets.length; first += bs) {
    const chunk = offsets.slice(first, first + bs);
    const ids = new BigInt64Array(chunk.length * SEQ);
    const targets = new Uint8Array(chunk.length * SEQ);
    chunk.forEach((off, b) => {
      for (let t = 0; t < SEQ; ++t) {
        ids[b * SEQ + t] = BigInt(text[off + t]);
        targets[b * SEQ + t] = text[off + t + 1];
      }
    });
    const out = await session.run({ [inputName]: new ort.Tensor('int64', ids, [chunk.length, SEQ]) });
    const logits = out[outputName];
    const dims = logits.dims;
    if (dims.length !== 3 || dims[0] !== chunk.length || dims[1] !== SEQ)
      throw new Error(`${modelPath}: logits have shape [${dims}], expected [${chunk.length}, ${SEQ}, vocab]`);
    let data = logits.data;
    if (logits.type === 'float16') {
      data = Float32Array.from(data, halfToFloat);
    }
    total += nllSum(data, dims[2], targets);
    if (keepLogits) logitsKept.push(Float32Array.from(data));
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const tokens = offsets.length * SEQ;
  const natsPerByte = total / tokens;
  const result = {
    model: modelPath,
    nats_per_byte: natsPerByte,
    perplexity: Math.exp(natsPerByte),
    sequences: offsets.length,
    tokens,
    graph_optimization: opt,
    seconds,
  };
  if (keepLogits) result.logits = logitsKept;
  return result;
}

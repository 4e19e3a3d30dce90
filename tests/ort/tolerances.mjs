// Every tolerance and bound of the ONNX Runtime tests, named, with the reason for its value and
// what was measured (onnxruntime-node 1.30.0, CPU, x86-64; tests/ort/README.md has the tables).
//
// Metrics (lib.mjs errorMetrics), of a candidate's output against a reference's:
//   max_abs     largest |ref - cand|
//   max_rel     max_abs / max |ref| (scale-free: comparable across models)
//   rel_l2      ||ref - cand|| / ||ref||
//   min_cosine  cosine similarity of the flattened outputs, at least this
//   min_rel_l2  rel_l2 at least this: the candidate must differ from the reference (a "quantized"
//               model identical to fp32 had nothing quantized)
// A tolerance lists the limits it enforces; omitted ones are not checked.

export const TOLERANCES = {
  // Two models with byte-identical weights and graphs (e.g. `int4q quantize --preset ort` against
  // ONNX Runtime's own quantizer output): same kernels, same inputs, so the same bits.
  exact: { max_abs: 0 },

  // ---- Quantized model (MatMulNBits or DequantizeLinear-21) against the fake-quant model of the
  // same quantization (weights replaced by int4q's dequantized values), graph optimization
  // 'basic'. If the writer's tensors decode in ONNX Runtime exactly to int4q's dequantized weights,
  // only float rounding differs: MatMulNBits (accuracy_level unset = fp32) dequantizes blocks and
  // runs its own GEMM, summing in another order than MatMul's SGEMM; on another CPU, MLAS picks
  // other kernels. A wrong nibble order, zero point, scale layout or transposition gives errors of
  // the size of a quantization step (1e-2 relative and more, see the ort.*control tests), 1000x
  // above these limits.

  // Synthetic graphs (one or two layers). Measured: 0 (bit-identical) for every fp32 graph.
  writer_vs_fake: { max_rel: 2e-5, rel_l2: 5e-6, min_cosine: 0.999999 },

  // devgpt's logits (4 transformer layers, LayerNorm, softmax attention; |logits| up to ~30).
  // Measured: max_rel 1.5e-6, rel_l2 6.7e-7 (every variant).
  writer_vs_fake_devgpt: { max_rel: 2e-5, rel_l2: 5e-6, min_cosine: 0.9999999 },

  // fp16 graphs: ORT's CPU kernels compute in fp32 and round outputs to fp16 (relative step
  // 2^-11 = 4.9e-4); two roundings of slightly different values differ by one fp16 ulp.
  // Measured: MatMulNBits max_rel 5.4e-4, rel_l2 3.3e-4 (1 ulp); QDQ 0.
  writer_vs_fake_fp16: { max_rel: 2e-3, rel_l2: 1e-3, min_cosine: 0.99999 },

  // Real models (PP-OCR, Silero VAD, openWakeWord): conv front ends, softmax and sigmoid outputs.
  // Measured: max_rel <= 1.1e-6, rel_l2 <= 5.2e-7.
  writer_vs_fake_real: { max_rel: 2e-5, rel_l2: 5e-6, min_cosine: 0.99999 },

  // ---- Quantized against the original fp32 model (loose: the quantization error itself) ----

  // Synthetic graphs with uniform random weights (the worst case for 4 bits: every group
  // full-range, no outliers). Measured RTN 4-bit g16-g128: rel_l2 0.059-0.099, cosine >= 0.9955.
  synthetic_vs_fp32: { rel_l2: 0.15, min_cosine: 0.99, min_rel_l2: 1e-3 },

  // Exporter-style decoder blocks (export_styles.hpp): one attention block and MLP, RTN 4-bit
  // g32, random weights; logits and present keys/values. A loose bound on the quantization error
  // (that every weight is quantized shows in min_rel_l2 and in test_export_styles.cpp).
  export_styles_vs_fp32: { rel_l2: 0.3, min_cosine: 0.95, min_rel_l2: 1e-3 },

  // The generated 2-layer Llama (tests/models, N(0, 1/fan_in) weights), every MatMul at 4 bits
  // g32 with GPTQ or AWQ (lm_head included), logits [2, 16, 256]. Random weights have no
  // structure for calibration to exploit and the error compounds through two layers and the
  // lm_head. Measured: rel_l2 0.143-0.154, cosine >= 0.988 (gptq, awq_full, fp32 and fp16).
  // min_rel_l2 0.05: far above what an unquantized or 8-bit model shows (< 0.01).
  llama_vs_fp32: { rel_l2: 0.25, min_cosine: 0.97, min_rel_l2: 0.05 },

  // The same at 8 bits (g32 and per-channel, DequantizeLinear INT8/UINT8 and MatMulNBits bits 8;
  // embeddings included). Measured: rel_l2 0.0035-0.0056, cosine >= 0.99998. The bound is below
  // 4-bit errors (>= 0.06), so a weight written at 4 bits instead of 8 fails.
  synthetic_vs_fp32_b8: { rel_l2: 0.01, min_cosine: 0.9999, min_rel_l2: 1e-3 },
  // 2 bits (MatMulNBits bits 2, GatherBlockQuantized bits 2; g16 and g32): codes 0..3, errors
  // of a third of the range. Measured: rel_l2 0.29-0.48, cosine >= 0.897. min_rel_l2 0.2 lies
  // above every 4-bit error (<= 0.1), so a weight written at 4 bits instead of 2 fails.
  synthetic_vs_fp32_b2: { rel_l2: 0.7, min_cosine: 0.8, min_rel_l2: 0.2 },

  // PP-OCRv4 recognizer, character probabilities [1, 40, 6625] after softmax, g32, every MatMul
  // with a constant weight quantized (the 6625-class head too). Measured: max_abs 0.13 (asym) /
  // 0.11 (sym), rel_l2 0.046 / 0.081, cosine 0.9990 / 0.9981.
  ppocr_vs_fp32: { max_abs: 0.25, rel_l2: 0.15, min_cosine: 0.995, min_rel_l2: 1e-3 },

  // Silero VAD streamed over real speech (silero_stream.mjs: 16 kHz windows of 512 samples with
  // 64 of context, LSTM state carried; data/speech_16k.s16), g32, its four LSTM Gemm weights
  // (inside If branches) quantized. Bounds on the speech probability: the largest change, and the
  // share of windows whose decision (p > 0.5) flips. Measured (184 windows, 147 speech): max_abs
  // 0.138 / 0.181 and 0 / 2 flips for int4q asymmetric / symmetric (restricted) 4-bit; 8-bit
  // asymmetric 0.006, 0 flips.
  silero_stream_vs_fp32: { max_abs: 0.25, max_flip_share: 0.05, min_max_abs: 1e-4 },

  // openWakeWord head, wake-word probability over 16 input sets, g128 (K = 2400: 19 groups, the
  // last one ragged). Random N(0, 0.3^2) features put the probability on the steep part of the
  // sigmoid, the worst case. Measured: max_abs 0.13 (asym) / 0.17 (sym), rel_l2 0.041 / 0.071.
  wakeword_vs_fp32: { max_abs: 0.3, rel_l2: 0.15, min_rel_l2: 1e-3 },
};

export function tolerance(name) {
  const t = TOLERANCES[name];
  if (!t) throw new Error(`unknown tolerance '${name}' (tests/ort/tolerances.mjs has: ${Object.keys(TOLERANCES).join(', ')})`);
  return t;
}

// ---- devgpt: nats/byte ---------------------------------------------------------------------------

// ONNX Runtime 1.30's own RTN (matmul_nbits_quantizer DEFAULT/MLAS, every MatMul including
// lm_head) on devgpt, measured with eval_devgpt.mjs (64 windows, graph optimization 'basic').
// ort.golden_models_run checks the harness reproduces them; they are the baseline int4q's RTN
// must match or beat. (ORT's "symmetric" is full-range: int4q's `symmetric-full-range`.)
export const DEVGPT_GOLDEN = {
  fp32: { file: 'devgpt_fp32.onnx', nats_per_byte: 1.0872612 },
  ort_mnb_b32_sym: { file: 'ort/devgpt_ort_mnb_b32_sym.onnx', nats_per_byte: 1.1115580 },
  ort_mnb_b32_asym: { file: 'ort/devgpt_ort_mnb_b32_asym.onnx', nats_per_byte: 1.1216942 },
  ort_mnb_b128_sym: { file: 'ort/devgpt_ort_mnb_b128_sym.onnx', nats_per_byte: 1.1561034 },
  ort_mnb_b128_asym: { file: 'ort/devgpt_ort_mnb_b128_asym.onnx', nats_per_byte: 1.1647851 },
  ort_qdq_b128_sym: { file: 'ort/devgpt_ort_qdq_b128_sym.onnx', nats_per_byte: 1.1561034 },
  ort_qdq_b128_asym: { file: 'ort/devgpt_ort_qdq_b128_asym.onnx', nats_per_byte: 1.1647814 },
};
// How far a re-run may drift from the numbers above: other CPUs take other MLAS kernels (AVX2,
// AVX-512, NEON) with other summation orders; that moves the 5th-6th decimal. Anything larger
// means the harness (offsets, targets, log-softmax) changed.
export const DEVGPT_GOLDEN_TOLERANCE = 5e-4;

// ---- devgpt variants quantized by int4q (tests/ort/CMakeLists.txt lists their CLI options) -------
//
// loss = nats/byte - fp32's (DEVGPT_GOLDEN.fp32, re-checked by ort.golden_models_run).
// max_loss: about 1.5x the measured loss (never more than 2x), so that a regression fails: the
//   g128 asym model breaks the g32 asym bound (ort.devgpt_control_loss_bound), and so would
//   per-channel weights, 3 bits, a wrong scale or zero point.
// min_loss: a model that scores like fp32 was not quantized at all.
// golden: ONNX Runtime's own RTN model of the same grid (every MatMul, lm_head included); int4q
//   must match or beat it: nats/byte <= golden + golden_margin. int4q's `symmetric` (restricted,
//   codes -7..7) has no ORT counterpart; ORT's symmetric is int4q's `symmetric-full-range`.
const LOSS_FLOOR = 0.001;
const GOLDEN_MARGIN = 0.0005;
// extra: per-variant fields on top: min_loss (8-bit models score like fp32, within noise, so
//   their floor is negative), min_weights_quantized / min_embeddings_quantized (checked in the
//   quantize report: the model was quantized even when its loss cannot tell).
const v = (description, measured, max_loss, golden, extra = {}) => ({
  description,
  measured_loss: measured,
  max_loss,
  min_loss: LOSS_FLOOR,
  ...(golden ? { golden, golden_margin: GOLDEN_MARGIN } : {}),
  ...extra,
});
// 8 bits: the loss is within evaluation noise of fp32 (measured -0.0008..+0.0001, int8 RTN
// happens to score slightly better); bounds of +-0.002 are 20x below any 4-bit loss (>= 0.023).
const B8 = { min_loss: -0.002, min_weights_quantized: 17 };
export const DEVGPT_VARIANTS = {
  mnb_g32_asym: v('MatMulNBits g32 asymmetric', 0.0344, 0.052, 'ort_mnb_b32_asym'),
  mnb_g32_sym: v('MatMulNBits g32 symmetric (restricted)', 0.0705, 0.105),
  mnb_g32_symfr: v('MatMulNBits g32 symmetric-full-range', 0.0243, 0.037, 'ort_mnb_b32_sym'),
  mnb_g128_asym: v('MatMulNBits g128 asymmetric', 0.0775, 0.115, 'ort_mnb_b128_asym'),
  mnb_g128_sym: v('MatMulNBits g128 symmetric (restricted)', 0.1142, 0.17),
  mnb_g128_symfr: v('MatMulNBits g128 symmetric-full-range', 0.0688, 0.103, 'ort_mnb_b128_sym'),
  qdq_g32_asym: v('DequantizeLinear g32 asymmetric', 0.0344, 0.052, 'ort_mnb_b32_asym'),
  qdq_g32_sym: v('DequantizeLinear g32 symmetric (restricted)', 0.0705, 0.105),
  qdq_g128_asym: v('DequantizeLinear g128 asymmetric', 0.0775, 0.115, 'ort_qdq_b128_asym'),
  qdq_g128_sym: v('DequantizeLinear g128 symmetric (restricted)', 0.1142, 0.17),
  mnb_g32_asym_lmkeep: v('MatMulNBits g32 asymmetric, lm_head kept in fp32', 0.0310, 0.047),
  mnb_g128_asym_lmkeep: v('MatMulNBits g128 asymmetric, lm_head kept in fp32', 0.0732, 0.11),
  mnb_g128_asym_lmint8: v('MatMulNBits g128 asymmetric, lm_head 8-bit per-channel', 0.0734, 0.11),
  // Issue 7: 8- and 2-bit weights (every MatMul, lm_head included).
  mnb_g32_b8_asym: v('MatMulNBits 8-bit g32 asymmetric', -0.0003, 0.002, undefined, B8),
  mnb_g128_b8_asym: v('MatMulNBits 8-bit g128 asymmetric', -0.0008, 0.002, undefined, B8),
  qdq_gpc_b8_sym: v('DequantizeLinear INT8 per-channel symmetric', -0.0003, 0.002, undefined, B8),
  qdq_gpc_b8_asym: v('DequantizeLinear UINT8 per-channel asymmetric', -0.0004, 0.002, undefined, B8),
  // 2 bits RTN is unusable on devgpt (+2.23 nats/byte); the test shows it runs and decodes like
  // int4q's fake-quant, and min_loss 1.0 tells it from 4 bits.
  mnb_g32_b2_asym: v('MatMulNBits 2-bit g32 asymmetric', 2.2283, 3.3, undefined, { min_loss: 1.0, min_weights_quantized: 17 }),
  // Issue 7: --embeddings quantize (tok and pos tables: GatherBlockQuantized / DequantizeLinear +
  // Gather); costs +0.0022 at g32 and +0.016 at g128 over the _lmkeep variants above.
  mnb_g32_asym_lmkeep_emb: v('MatMulNBits g32 asymmetric, lm_head fp32, embeddings GatherBlockQuantized', 0.0333, 0.05, undefined, { min_embeddings_quantized: 2 }),
  qdq_g32_asym_lmkeep_emb: v('DequantizeLinear g32 asymmetric, lm_head fp32, embeddings DequantizeLinear + Gather', 0.0333, 0.05, undefined, { min_embeddings_quantized: 2 }),
  mnb_g128_asym_lmkeep_emb: v('MatMulNBits g128 asymmetric, lm_head fp32, embeddings GatherBlockQuantized', 0.0891, 0.134, undefined, { min_embeddings_quantized: 2 }),
  mnb_g32_b8_asym_emb: v('MatMulNBits 8-bit g32 asymmetric, embeddings 8-bit GatherBlockQuantized', 0.00004, 0.002, undefined, { ...B8, min_embeddings_quantized: 2 }),
  // GPTQ (int4q's defaults, 64 calibration windows): measured 0.0390 (RTN: 0.0775); it must
  // beat ONNX Runtime's RTN model of the same grid.
  mnb_g128_asym_gptq: v('MatMulNBits g128 asymmetric, GPTQ', 0.0390, 0.058, 'ort_mnb_b128_asym'),
  qdq_g128_asym_gptq: v('DequantizeLinear g128 asymmetric, GPTQ', 0.0390, 0.058, 'ort_qdq_b128_asym'),
};

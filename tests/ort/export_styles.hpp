// Small decoder graphs written the way the common exporters write them (issue 16), shared by
// int4q_ort_graphs (gen_graphs.cpp: quantized by the CLI and run in ONNX Runtime against the
// fake-quant twin) and tests/onnx/test_export_styles.cpp (share of weights quantized, nodes
// inserted, AWQ folds). Widths: hidden 64, 4 heads of 16, MLP 128, vocabulary 256.
//
//   torch_fold      torch.onnx with constant folding: MatMul weights stored [K, N], nn.Linear on
//                   2-D inputs as Gemm transB = 1 with a bias; the attention reshapes read
//                   Shape(normalized x), as torch writes them.
//   torch_nofold    the same without constant folding: every MatMul weight stored [N, K] behind
//                   a Transpose, Gemm weights behind an Identity.
//   mixed_fp16      mixed precision: fp16 weights Cast to float before the Transpose (fp32
//                   compute), Gemm weights fp16 -> Cast.
//   fp16            an fp16 export: fp16 compute and weights (stored [N, K] behind Transposes),
//                   one fp32 master weight Cast down to fp16; fp32 graph input and output.
//   optimum_decoder Optimum's decoder with past: input_ids, attention_mask,
//                   past_key_values.0.key/value in; logits, present.0.key/value out.
//   genai           ONNX Runtime GenAI's builder: SimplifiedLayerNormalization,
//                   RotaryEmbedding, GroupQueryAttention with past,
//                   SkipSimplifiedLayerNormalization (com.microsoft), SiLU MLP, a lm_head already
//                   MatMulNBits (left alone).
#ifndef INT4Q_TESTS_ORT_EXPORT_STYLES_HPP
#define INT4Q_TESTS_ORT_EXPORT_STYLES_HPP

#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "onnx/graph_builder.hpp"

namespace int4q {
namespace test {
namespace styles {

constexpr std::int64_t kB = 2, kS = 5, kD = 64, kHeads = 4, kHd = 16, kF = 128, kV = 256;

/// How a style writes a MatMul weight.
enum class weight_form { folded, transposed, cast_fp16, fp16 };

inline std::vector<float> values(std::int64_t rows, std::int64_t cols, std::uint32_t seed) {
  // Scaled like a trained layer (1/sqrt(fan-in)) so that activations stay O(1) through the block.
  return random_values(static_cast<std::size_t>(rows * cols), seed,
                       static_cast<float>(1.7 / std::sqrt(double(rows < cols ? rows : cols))));
}

/// The B operand of a MatMul with logical weight [K, N], written in `form`; returns its name.
inline std::string matmul_weight(graph_builder& g, weight_form form, const std::string& name,
                                 std::int64_t K, std::int64_t N, std::uint32_t seed) {
  switch (form) {
    case weight_form::folded: return g.initializer(name, onnx_float, {K, N}, values(K, N, seed));
    case weight_form::transposed:
    case weight_form::fp16:
      g.initializer(name, form == weight_form::fp16 ? onnx_float16 : onnx_float, {N, K},
                    values(N, K, seed));
      g.node("Transpose", {name}, {name + "_t"}, name + "_transpose");
      return name + "_t";
    case weight_form::cast_fp16:
      g.initializer(name, onnx_float16, {N, K}, values(N, K, seed));
      set_attr(g.node("Cast", {name}, {name + "_f"}, name + "_cast"), "to", onnx_float);
      g.node("Transpose", {name + "_f"}, {name + "_t"}, name + "_transpose");
      return name + "_t";
  }
  return "";
}

/// The B operand of a Gemm transB = 1 with weight [N, K].
inline std::string gemm_weight(graph_builder& g, weight_form form, const std::string& name,
                               std::int64_t K, std::int64_t N, std::uint32_t seed) {
  switch (form) {
    case weight_form::folded: return g.initializer(name, onnx_float, {N, K}, values(N, K, seed));
    case weight_form::transposed:
      g.initializer(name, onnx_float, {N, K}, values(N, K, seed));
      g.node("Identity", {name}, {name + "_id"}, name + "_identity");
      return name + "_id";
    case weight_form::cast_fp16:
      g.initializer(name, onnx_float16, {N, K}, values(N, K, seed));
      set_attr(g.node("Cast", {name}, {name + "_f"}, name + "_cast"), "to", onnx_float);
      return name + "_f";
    case weight_form::fp16:
      // An fp32 master weight Cast down to the fp16 compute type.
      g.initializer(name, onnx_float, {N, K}, values(N, K, seed));
      set_attr(g.node("Cast", {name}, {name + "_h"}, name + "_cast"), "to", onnx_float16);
      return name + "_h";
  }
  return "";
}

/// y = MatMul(x, B) with B written in `form`.
inline void linear(graph_builder& g, weight_form form, const std::string& name,
                   const std::string& x, const std::string& y, std::int64_t K, std::int64_t N,
                   std::uint32_t seed) {
  g.matmul(name, x, matmul_weight(g, form, name + ".weight", K, N, seed), y);
}

/// y = Gemm(x, B, bias) transB = 1 (x 2-D).
inline void gemm_linear(graph_builder& g, weight_form form, const std::string& name,
                        const std::string& x, const std::string& y, std::int64_t K, std::int64_t N,
                        std::uint32_t seed, int type) {
  const std::string b = gemm_weight(g, form, name + ".weight", K, N, seed);
  g.initializer(name + ".bias", type, {N},
                random_values(static_cast<std::size_t>(N), seed + 1, 0.1f));
  gemm_attrs a;
  a.trans_b = true;
  g.gemm(name, x, b, name + ".bias", y, a);
}

inline void layer_norm(graph_builder& g, const std::string& name, const std::string& x,
                       const std::string& y, std::uint32_t seed) {
  g.initializer(name + ".weight", onnx_float, {kD}, random_values(kD, seed, 0.2f));
  g.initializer(name + ".bias", onnx_float, {kD}, random_values(kD, seed + 1, 0.1f));
  g.node("LayerNormalization", {x, name + ".weight", name + ".bias"}, {y}, name);
}

/// torch's dynamic shapes: [B, S] of `x` as 1-D int64 pieces "<p>_b", "<p>_s".
inline void batch_and_seq(graph_builder& g, const std::string& x, const std::string& p) {
  g.node("Shape", {x}, {p + "_shape"}, p + "_Shape");
  for (const auto& [i, suffix] :
       std::vector<std::pair<std::int64_t, std::string>>{{0, "_b"}, {1, "_s"}}) {
    const std::string idx = g.initializer_i64(p + suffix + "_idx", {1}, {i});
    g.node("Gather", {p + "_shape", idx}, {p + suffix}, p + suffix + "_Gather");
  }
}

/// Reshape `x` [B, S, ...] to [B, S] + `tail` with the shape built from Shape(`shape_of`).
inline void dyn_reshape(graph_builder& g, const std::string& p, const std::string& x,
                        const std::vector<std::int64_t>& tail, const std::string& y) {
  const std::string t = g.initializer_i64(y + "_tail", {std::int64_t(tail.size())}, tail);
  auto& c = g.node("Concat", {p + "_b", p + "_s", t}, {y + "_shape"}, y + "_Concat");
  set_attr(c, "axis", std::int64_t{0});
  g.node("Reshape", {x, y + "_shape"}, {y}, y + "_Reshape");
}

inline void transpose(graph_builder& g, const std::string& x, const std::string& y,
                      const std::vector<std::int64_t>& perm) {
  set_attr(g.node("Transpose", {x}, {y}, y + "_Transpose"), "perm", perm);
}

/// One torch-style block on x [B, S, D] (fp32), then the final norm and a lm_head: logits.
/// With `past`: Optimum's past_key_values inputs and present outputs, attention_mask.
inline void torch_block(graph_builder& g, weight_form form, const std::string& x, bool past) {
  layer_norm(g, "ln_1", x, "h", 10);
  batch_and_seq(g, "h", "p");  // Shape(h): a value-free reader of the normalized tensor
  linear(g, form, "q_proj", "h", "q", kD, kD, 11);
  linear(g, form, "k_proj", "h", "k", kD, kD, 12);
  linear(g, form, "v_proj", "h", "v", kD, kD, 13);
  dyn_reshape(g, "p", "q", {kHeads, kHd}, "q4");
  dyn_reshape(g, "p", "k", {kHeads, kHd}, "k4");
  dyn_reshape(g, "p", "v", {kHeads, kHd}, "v4");
  transpose(g, "q4", "qh", {0, 2, 1, 3});
  transpose(g, "k4", "kh", {0, 2, 1, 3});
  transpose(g, "v4", "vh", {0, 2, 1, 3});
  std::string keys = "kh", vals = "vh";
  if (past) {
    set_attr(g.node("Concat", {"past_key_values.0.key", "kh"}, {"present.0.key"}, "cat_k"), "axis",
             std::int64_t{2});
    set_attr(g.node("Concat", {"past_key_values.0.value", "vh"}, {"present.0.value"}, "cat_v"),
             "axis", std::int64_t{2});
    keys = "present.0.key";
    vals = "present.0.value";
  }
  transpose(g, keys, "kT", {0, 1, 3, 2});
  g.matmul("scores_mm", "qh", "kT", "scores_raw");
  g.initializer("inv_sqrt_hd", onnx_float, {}, {0.25f});
  g.node("Mul", {"scores_raw", "inv_sqrt_hd"}, {"scores"}, "scores_scale");
  std::string probs_in = "scores";
  if (past) {
    // (1 - mask) * -1e4 as [B, 1, 1, T], added to the scores.
    set_attr(g.node("Cast", {"attention_mask"}, {"mask_f"}, "mask_cast"), "to", onnx_float);
    g.initializer("one", onnx_float, {}, {1.0f});
    g.initializer("neg", onnx_float, {}, {-1e4f});
    g.node("Sub", {"one", "mask_f"}, {"mask_inv"}, "mask_sub");
    g.node("Mul", {"mask_inv", "neg"}, {"mask_bias2"}, "mask_mul");
    g.initializer_i64("mask_axes", {2}, {1, 2});
    g.node("Unsqueeze", {"mask_bias2", "mask_axes"}, {"mask_bias"}, "mask_unsqueeze");
    g.node("Add", {"scores", "mask_bias"}, {"scores_masked"}, "mask_add");
    probs_in = "scores_masked";
  }
  set_attr(g.node("Softmax", {probs_in}, {"probs"}, "softmax"), "axis", std::int64_t{-1});
  g.matmul("attn_mm", "probs", vals, "ctx_h");
  transpose(g, "ctx_h", "ctx4", {0, 2, 1, 3});
  dyn_reshape(g, "p", "ctx4", {kD}, "ctx");
  linear(g, form, "o_proj", "ctx", "attn_out", kD, kD, 14);
  g.node("Add", {x, "attn_out"}, {"x2"}, "residual_1");
  layer_norm(g, "ln_2", "x2", "h2", 15);
  g.initializer_i64("flat_shape", {2}, {-1, kD});
  g.node("Reshape", {"h2", "flat_shape"}, {"h2_flat"}, "flatten_tokens");
  gemm_linear(g, form, "fc_in", "h2_flat", "f1", kD, kF, 16, onnx_float);
  g.node("Relu", {"f1"}, {"f1r"}, "act");
  gemm_linear(g, form, "fc_out", "f1r", "f2", kF, kD, 18, onnx_float);
  batch_and_seq(g, "x2", "r");
  dyn_reshape(g, "r", "f2", {kD}, "mlp_out");
  g.node("Add", {"x2", "mlp_out"}, {"x3"}, "residual_2");
  layer_norm(g, "ln_f", "x3", "hf", 20);
  linear(g, form, "lm_head", "hf", "logits", kD, kV, 21);
}

inline graph_builder torch_style(weight_form form) {
  graph_builder g;
  g.input("x", onnx_float, {kB, kS, kD});
  torch_block(g, form, "x", false);
  g.output("logits", onnx_float, {kB, kS, kV});
  return g;
}

/// fp16 export: x (fp32) -> Cast fp16 -> MatMul (Transpose of an fp16 [N, K]) -> MatMul ->
/// Gemm (fp32 master weight Cast to fp16) -> Cast fp32.
inline graph_builder fp16_style() {
  graph_builder g;
  g.input("x", onnx_float, {kB * kS, kD});
  set_attr(g.node("Cast", {"x"}, {"x16"}, "input_cast"), "to", onnx_float16);
  linear(g, weight_form::fp16, "fc1", "x16", "h1", kD, kF, 30);
  linear(g, weight_form::fp16, "fc2", "h1", "h2", kF, kD, 31);
  gemm_linear(g, weight_form::fp16, "fc3", "h2", "y16", kD, kD, 32, onnx_float16);
  set_attr(g.node("Cast", {"y16"}, {"y"}, "output_cast"), "to", onnx_float);
  g.output("y", onnx_float, {kB * kS, kD});
  return g;
}

constexpr std::int64_t kPast = 3;

inline graph_builder optimum_decoder() {
  graph_builder g;
  g.input("input_ids", onnx_int64, {kB, kS});
  g.input("attention_mask", onnx_int64, {kB, kPast + kS});
  g.input("past_key_values.0.key", onnx_float, {kB, kHeads, kPast, kHd});
  g.input("past_key_values.0.value", onnx_float, {kB, kHeads, kPast, kHd});
  g.initializer("transformer.wte.weight", onnx_float, {kV, kD}, values(kV, kD, 40));
  g.node("Gather", {"transformer.wte.weight", "input_ids"}, {"x"}, "wte");
  torch_block(g, weight_form::folded, "x", true);
  g.output("logits", onnx_float, {kB, kS, kV});
  g.output("present.0.key", onnx_float, {kB, kHeads, kPast + kS, kHd});
  g.output("present.0.value", onnx_float, {kB, kHeads, kPast + kS, kHd});
  return g;
}

constexpr std::int64_t kKvHeads = 2, kGenS = 4;
constexpr const char* kMs = "com.microsoft";

inline graph_builder genai() {
  graph_builder g;
  g.set_opset(1, kMs);
  const std::int64_t T = kPast + kGenS, kv = kKvHeads * kHd;
  g.input("input_ids", onnx_int64, {1, kGenS});
  g.input("attention_mask", onnx_int64, {1, T});
  g.input("position_ids", onnx_int64, {1, kGenS});
  g.input("past_key_values.0.key", onnx_float, {1, kKvHeads, kPast, kHd});
  g.input("past_key_values.0.value", onnx_float, {1, kKvHeads, kPast, kHd});
  g.initializer("model.embed_tokens.weight", onnx_float, {kV, kD}, values(kV, kD, 50));
  g.node("Gather", {"model.embed_tokens.weight", "input_ids"}, {"x"}, "embed");
  g.initializer("ln_1.weight", onnx_float, {kD}, random_values(kD, 51, 0.2f));
  set_attr(g.node("SimplifiedLayerNormalization", {"x", "ln_1.weight"}, {"h"}, "ln_1"), "epsilon",
           1e-6f);
  linear(g, weight_form::folded, "q_proj", "h", "q", kD, kD, 52);
  linear(g, weight_form::folded, "k_proj", "h", "k", kD, kv, 53);
  linear(g, weight_form::folded, "v_proj", "h", "v", kD, kv, 54);
  // RoPE caches [positions, head / 2]; positions come from the input (< 16).
  std::vector<float> cs(16 * kHd / 2), sn(cs.size());
  for (std::int64_t p = 0; p < 16; ++p)
    for (std::int64_t i = 0; i < kHd / 2; ++i) {
      const double theta = double(p) * std::pow(10000.0, -double(i) / double(kHd / 2));
      cs[std::size_t(p * kHd / 2 + i)] = static_cast<float>(std::cos(theta));
      sn[std::size_t(p * kHd / 2 + i)] = static_cast<float>(std::sin(theta));
    }
  g.initializer("cos_cache", onnx_float, {16, kHd / 2}, cs);
  g.initializer("sin_cache", onnx_float, {16, kHd / 2}, sn);
  g.node("RotaryEmbedding", {"q", "position_ids", "cos_cache", "sin_cache"}, {"q_rot"}, "q_rotary",
         kMs);
  g.node("RotaryEmbedding", {"k", "position_ids", "cos_cache", "sin_cache"}, {"k_rot"}, "k_rotary",
         kMs);
  // seqlens_k = sum(mask) - 1 (int32), total_sequence_length = mask's length (int32 scalar).
  g.initializer_i64("sum_axes", {1}, {1});
  set_attr(g.node("ReduceSum", {"attention_mask", "sum_axes"}, {"mask_sum"}, "mask_sum"),
           "keepdims", std::int64_t{0});
  g.initializer_i64("one_i64", {}, {1});
  g.node("Sub", {"mask_sum", "one_i64"}, {"seqlens_i64"}, "seqlens_sub");
  set_attr(g.node("Cast", {"seqlens_i64"}, {"seqlens_k"}, "seqlens_cast"), "to", onnx_int32);
  g.node("Shape", {"attention_mask"}, {"mask_shape"}, "mask_shape");
  g.initializer_i64("one_idx", {}, {1});
  g.node("Gather", {"mask_shape", "one_idx"}, {"total_i64"}, "total_gather");
  set_attr(g.node("Cast", {"total_i64"}, {"total_len"}, "total_cast"), "to", onnx_int32);
  auto& gqa = g.node("GroupQueryAttention",
                     {"q_rot", "k_rot", "v", "past_key_values.0.key", "past_key_values.0.value",
                      "seqlens_k", "total_len"},
                     {"attn", "present.0.key", "present.0.value"}, "gqa", kMs);
  set_attr(gqa, "num_heads", kHeads);
  set_attr(gqa, "kv_num_heads", kKvHeads);
  linear(g, weight_form::folded, "o_proj", "attn", "attn_out", kD, kD, 55);
  g.initializer("ln_2.weight", onnx_float, {kD}, random_values(kD, 56, 0.2f));
  set_attr(g.node("SkipSimplifiedLayerNormalization", {"attn_out", "x", "ln_2.weight"},
                  {"h2", "", "", "x2"}, "ln_2", kMs),
           "epsilon", 1e-6f);
  linear(g, weight_form::folded, "gate_proj", "h2", "gate", kD, kF, 57);
  linear(g, weight_form::folded, "up_proj", "h2", "up", kD, kF, 58);
  g.node("Sigmoid", {"gate"}, {"gate_sig"}, "silu_sigmoid");
  g.node("Mul", {"gate", "gate_sig"}, {"gate_act"}, "silu_mul");
  g.node("Mul", {"gate_act", "up"}, {"act"}, "gate_up_mul");
  linear(g, weight_form::folded, "down_proj", "act", "mlp_out", kF, kD, 59);
  g.initializer("ln_f.weight", onnx_float, {kD}, random_values(kD, 60, 0.2f));
  set_attr(g.node("SkipSimplifiedLayerNormalization", {"mlp_out", "x2", "ln_f.weight"}, {"hf"},
                  "ln_f", kMs),
           "epsilon", 1e-6f);
  // The lm_head as GenAI's builder writes an int4 model: MatMulNBits, block 32, no zero points.
  const std::int64_t blocks = kD / 32;
  std::vector<std::uint8_t> packed(std::size_t(kV * blocks * 16));
  for (std::size_t i = 0; i < packed.size(); ++i) packed[i] = std::uint8_t((i * 37 + 11) % 256);
  ::onnx::TensorProto b;
  b.set_name("lm_head.qweight");
  b.set_data_type(::onnx::TensorProto::UINT8);
  for (const std::int64_t d : {kV, blocks, std::int64_t{16}}) b.add_dims(d);
  b.set_raw_data(std::string(packed.begin(), packed.end()));
  g.initializer(b);
  g.initializer("lm_head.scales", onnx_float, {kV, blocks},
                random_values(std::size_t(kV * blocks), 61, 0.02f));
  auto& mnb = g.node("MatMulNBits", {"hf", "lm_head.qweight", "lm_head.scales"}, {"logits"},
                     "lm_head", kMs);
  set_attr(mnb, "K", kD);
  set_attr(mnb, "N", kV);
  set_attr(mnb, "bits", std::int64_t{4});
  set_attr(mnb, "block_size", std::int64_t{32});
  g.output("logits", onnx_float, {1, kGenS, kV});
  g.output("present.0.key", onnx_float, {1, kKvHeads, T, kHd});
  g.output("present.0.value", onnx_float, {1, kKvHeads, T, kHd});
  return g;
}

/// Every style by name.
inline const std::map<std::string, std::function<graph_builder()>>& all() {
  static const std::map<std::string, std::function<graph_builder()>> m{
      {"torch_fold", [] { return torch_style(weight_form::folded); }},
      {"torch_nofold", [] { return torch_style(weight_form::transposed); }},
      {"mixed_fp16", [] { return torch_style(weight_form::cast_fp16); }},
      {"fp16_export", fp16_style},
      {"optimum_decoder", optimum_decoder},
      {"genai", genai},
  };
  return m;
}

}  // namespace styles
}  // namespace test
}  // namespace int4q

#endif  // INT4Q_TESTS_ORT_EXPORT_STYLES_HPP

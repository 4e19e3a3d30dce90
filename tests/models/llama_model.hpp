// llama_model: Llama-shaped ONNX test models with the real architecture and random weights, for
// the tests (small widths) and the calibrated benchmark (Llama-2-7B widths, any layer count).
//
//   int4q::test::llama_options o;                  // 2 layers, hidden 64, 4 heads, 2 kv heads
//   o.layers = 4;
//   int4q::test::write_llama_model(o, "dir/llama.onnx");       // + dir/llama.onnx.data
//   ::onnx::ModelProto p = int4q::test::build_llama_model(o);  // in memory, weights inline
//
// The graph is written in plain ONNX ops, as torch.onnx.export writes a Hugging Face
// LlamaForCausalLM (eager attention, no KV cache), opset 17:
//
//   input_ids [batch, seq] int64 -> Gather(embed_tokens)
//   per layer:  h = RMSNorm(x); q, k, v = h Wq, h Wk, h Wv (MatMul, weights [in, out]);
//               Reshape [b, s, heads, d] + Transpose -> [b, heads, s, d];
//               RoPE: x * cos + rotate_half(x) * sin, rotate_half = Concat(-x2, x1) (Slice, Neg),
//               cos/sin rows gathered from [max_positions, d] tables at positions 0..s-1 (Range);
//               GQA: k, v [b, kv, s, d] -> Unsqueeze -> Expand [b, kv, heads/kv, s, d] -> Reshape;
//               softmax(q k^T / sqrt(d) + causal mask) v (mask: Where(col > row, min, 0));
//               Transpose + Reshape -> [b, s, hidden]; x += o_proj; x += down(silu(gate) * up)
//               with silu(g) = g * Sigmoid(g)
//   final RMSNorm; logits = h W_lm (untied lm_head) -> [batch, seq, vocab]
//
//   RMSNorm(x) = w * (x / sqrt(mean(x^2) + eps)): Cast to fp32, Pow 2, ReduceMean, Add eps, Sqrt,
//   Reciprocal, Mul, Cast back, Mul weight (HF computes the norm in fp32 for an fp16 model).
//
// weight_type fp16 writes what a real fp16 export writes: every weight, table and activation
// fp16 (the norm statistics in fp32). int4q's executor computes in fp32 whatever the stored type.
// ONNX Runtime's CPU provider lacks fp16 kernels for some of these ops: use fp32 there.
//
// Weights are deterministic from the seed: linear weights N(0, std^2) with std = weight_std or,
// when that is 0, 1/sqrt(fan_in) (so that a projection keeps unit-scale activations at any
// width), the embedding N(0, 1), norm weights 1 + N(0, 0.1^2). Each tensor has its own stream
// (seed, tensor index), so the values do not depend on the order tensors are generated in.
// write_llama_model streams: each tensor is drawn in chunks of 2^20 values and appended to the
// external data file, so a 7B-shaped 32-layer fp16 model (13.5 GB) is written in a few MB
// (measured: 16 MB peak RSS for the 1-layer model).
#ifndef INT4Q_TESTS_MODELS_LLAMA_MODEL_HPP
#define INT4Q_TESTS_MODELS_LLAMA_MODEL_HPP

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

namespace int4q {
namespace test {

/// Shape and storage of a generated Llama model. head_dim = hidden / heads.
struct llama_options {
  int layers = 2;
  int hidden = 64;
  int intermediate = 172;
  int heads = 4;
  int kv_heads = 2;
  int vocab = 256;
  int max_positions = 256;  ///< rows of the RoPE cos/sin tables: the longest sequence
  double rope_theta = 10000.0;
  double rms_eps = 1e-5;
  bool fp16 = false;          ///< weights and compute in fp16 (a real fp16 export), else fp32
  bool external_data = true;  ///< write_llama_model: weights in <model>.data, else inline
  std::uint64_t seed = 1;
  double weight_std = 0;  ///< std of the linear weights; 0 = 1/sqrt(fan_in)

  int head_dim() const { return hidden / heads; }
  /// Llama-2-7B's widths (hidden 4096, 32 heads, MLP 11008, vocab 32000, 4096 positions) with
  /// `layers` layers, fp16 weights in external data.
  static llama_options llama2_7b(int layers);
};

/// Throws std::invalid_argument naming the field when `o` cannot describe a model (heads not
/// dividing hidden, kv_heads not dividing heads, odd head_dim, ...).
void validate(const llama_options& o);

/// Number of parameters (embedding, norms, every linear weight, lm_head).
std::uint64_t parameter_count(const llama_options& o);

/// The model in memory with every weight inline (o.external_data is ignored). Small widths only:
/// a ModelProto holds at most 2 GB.
::onnx::ModelProto build_llama_model(const llama_options& o);

/// Writes the model to `path` and, with o.external_data, its weights to `path` + ".data"
/// (location = the data file's name, offsets 4096-aligned), one tensor at a time. Throws
/// std::runtime_error naming the file when it cannot be written.
void write_llama_model(const llama_options& o, const std::filesystem::path& path);

/// The values of initializer `name` of the model `o` describes, as float (before rounding to
/// fp16), regenerated from the seed: lets a test compute the model without reading it back.
/// Names: model.embed_tokens.weight, model.layers.<l>.{input_layernorm, post_attention_layernorm}
/// .weight, model.layers.<l>.self_attn.{q,k,v,o}_proj.weight, model.layers.<l>.mlp.{gate,up,down}
/// _proj.weight, model.norm.weight, lm_head.weight; linear weights [in, out] row-major.
std::vector<float> llama_weight(const llama_options& o, const std::string& name);

/// Writes `count` uniform random token ids in [0, vocab) to `path` as a raw token file (what
/// `int4q quantize --calib FILE --token-dtype T` reads): one byte each when vocab <= 256, else
/// two (u16, vocab <= 65536). Returns the --token-dtype value ("u8" or "u16").
std::string write_token_file(const std::filesystem::path& path, int vocab, std::uint64_t count,
                             std::uint64_t seed);

}  // namespace test
}  // namespace int4q

#endif  // INT4Q_TESTS_MODELS_LLAMA_MODEL_HPP

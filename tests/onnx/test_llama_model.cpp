// The Llama-shaped test model generator (tests/models/llama_model.hpp) against an independent
// reference: a plain-loop forward pass in double, written from the architecture (RMSNorm, RoPE
// with rotate_half, GQA attention with a causal mask, SwiGLU MLP, untied lm_head) and the weights
// regenerated from the seed. int4q's executor must give its logits; ONNX Runtime's agreement with
// the executor on the same model is checked in tests/ort (ort.exec.llama_small).
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <int4q/float16.hpp>
#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>

#include "llama_model.hpp"
#include "onnx/scratch_dir.hpp"

namespace {

using int4q::test::llama_options;
using int4q::test::llama_weight;
using dmat = std::vector<std::vector<double>>;  // [rows][cols]

/// The generator's weight `name` as double, rounded through fp16 when the model stores fp16.
std::vector<double> weight(const llama_options& o, const std::string& name) {
  const std::vector<float> w = llama_weight(o, name);
  std::vector<double> out(w.size());
  for (std::size_t e = 0; e < w.size(); ++e)
    out[e] = o.fp16 ? int4q::half_bits_to_float(int4q::float_to_half_bits(w[e])) : w[e];
  return out;
}
double round_as_stored(const llama_options& o, double v) {
  return o.fp16 ? int4q::half_bits_to_float(int4q::float_to_half_bits(static_cast<float>(v))) : v;
}

/// x [rows][k] @ w [k, n] (row-major).
dmat matmul(const dmat& x, const std::vector<double>& w, std::size_t n) {
  dmat y(x.size(), std::vector<double>(n, 0.0));
  for (std::size_t r = 0; r < x.size(); ++r)
    for (std::size_t k = 0; k < x[r].size(); ++k)
      for (std::size_t c = 0; c < n; ++c) y[r][c] += x[r][k] * w[k * n + c];
  return y;
}

dmat rms_norm(const llama_options& o, const dmat& x, const std::vector<double>& w) {
  dmat y = x;
  for (auto& row : y) {
    double ss = 0;
    for (double v : row) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(row.size()) + o.rms_eps);
    // fp16 models Cast the normalized value back to fp16 before the weight (HF: w * x.to(dtype));
    // the executor rounds at that Cast and computes every other fp16 op in fp32.
    for (std::size_t c = 0; c < row.size(); ++c) row[c] = w[c] * round_as_stored(o, row[c] * inv);
  }
  return y;
}

/// RoPE on head `h` (columns h*d .. h*d+d-1) of every row (row = position):
/// out[j] = x[j] cos(p f_j) - x[j + d/2] sin(p f_j), out[j + d/2] = x[j + d/2] cos + x[j] sin,
/// f_j = theta^(-2j/d): HF's x * cos + rotate_half(x) * sin.
void rope(const llama_options& o, dmat& x, int heads) {
  const int d = o.head_dim(), half = d / 2;
  for (std::size_t p = 0; p < x.size(); ++p) {
    for (int h = 0; h < heads; ++h) {
      double* v = &x[p][static_cast<std::size_t>(h) * d];
      for (int j = 0; j < half; ++j) {
        const double a = static_cast<double>(p) * std::pow(o.rope_theta, -2.0 * j / d);
        const double c = round_as_stored(o, std::cos(a)), s = round_as_stored(o, std::sin(a));
        const double x1 = v[j], x2 = v[j + half];
        v[j] = x1 * c - x2 * s;
        v[j + half] = x2 * c + x1 * s;
      }
    }
  }
}

/// Logits [seq][vocab] of one sequence of tokens, in double.
dmat reference_logits(const llama_options& o, const std::vector<std::int64_t>& tokens) {
  const std::size_t h = o.hidden, d = o.head_dim(), seq = tokens.size();
  const std::vector<double> embed = weight(o, "model.embed_tokens.weight");
  dmat x(seq, std::vector<double>(h));
  for (std::size_t p = 0; p < seq; ++p)
    for (std::size_t c = 0; c < h; ++c)
      x[p][c] = embed[static_cast<std::size_t>(tokens[p]) * h + c];
  for (int l = 0; l < o.layers; ++l) {
    const std::string w = "model.layers." + std::to_string(l) + ".";
    const dmat hn = rms_norm(o, x, weight(o, w + "input_layernorm.weight"));
    dmat q = matmul(hn, weight(o, w + "self_attn.q_proj.weight"), o.heads * d);
    dmat k = matmul(hn, weight(o, w + "self_attn.k_proj.weight"), o.kv_heads * d);
    const dmat v = matmul(hn, weight(o, w + "self_attn.v_proj.weight"), o.kv_heads * d);
    rope(o, q, o.heads);
    rope(o, k, o.kv_heads);
    dmat ctx(seq, std::vector<double>(o.heads * d, 0.0));
    const int group = o.heads / o.kv_heads;  // query head hh reads kv head hh / group
    for (int hh = 0; hh < o.heads; ++hh) {
      const std::size_t qo = hh * d, ko = (hh / group) * d;
      for (std::size_t i = 0; i < seq; ++i) {
        std::vector<double> s(i + 1);  // causal: keys 0..i
        double top = -1e300;
        for (std::size_t j = 0; j <= i; ++j) {
          double dot = 0;
          for (std::size_t e = 0; e < d; ++e) dot += q[i][qo + e] * k[j][ko + e];
          s[j] = dot / std::sqrt(static_cast<double>(d));
          top = std::max(top, s[j]);
        }
        double sum = 0;
        for (double& e : s) sum += (e = std::exp(e - top));
        for (std::size_t j = 0; j <= i; ++j)
          for (std::size_t e = 0; e < d; ++e) ctx[i][qo + e] += s[j] / sum * v[j][ko + e];
      }
    }
    const dmat attn = matmul(ctx, weight(o, w + "self_attn.o_proj.weight"), h);
    for (std::size_t p = 0; p < seq; ++p)
      for (std::size_t c = 0; c < h; ++c) x[p][c] += attn[p][c];
    const dmat hn2 = rms_norm(o, x, weight(o, w + "post_attention_layernorm.weight"));
    dmat gate = matmul(hn2, weight(o, w + "mlp.gate_proj.weight"), o.intermediate);
    const dmat up = matmul(hn2, weight(o, w + "mlp.up_proj.weight"), o.intermediate);
    for (std::size_t p = 0; p < seq; ++p)
      for (int c = 0; c < o.intermediate; ++c)
        gate[p][c] = gate[p][c] / (1.0 + std::exp(-gate[p][c])) * up[p][c];  // silu(g) * u
    const dmat down = matmul(gate, weight(o, w + "mlp.down_proj.weight"), h);
    for (std::size_t p = 0; p < seq; ++p)
      for (std::size_t c = 0; c < h; ++c) x[p][c] += down[p][c];
  }
  return matmul(rms_norm(o, x, weight(o, "model.norm.weight")), weight(o, "lm_head.weight"),
                o.vocab);
}

std::vector<std::int64_t> test_tokens(const llama_options& o, std::size_t batch, std::size_t seq) {
  std::vector<std::int64_t> t(batch * seq);
  for (std::size_t e = 0; e < t.size(); ++e)
    t[e] = static_cast<std::int64_t>((e * 37 + 11) % o.vocab);
  return t;
}

/// Runs `m` on tokens [batch, seq] and returns the logits value.
int4q::onnx::value run_logits(const int4q::onnx::model& m, const std::vector<std::int64_t>& tokens,
                              std::int64_t batch, std::int64_t seq) {
  int4q::onnx::executor ex(m, 1);
  auto out = ex.run({{"input_ids", int4q::onnx::value::ints({batch, seq}, tokens)}});
  return out.at("logits");
}

/// Largest |executor - reference| over the batch, and the largest |reference|.
std::pair<double, double> compare(const llama_options& o, const int4q::onnx::value& logits,
                                  const std::vector<std::int64_t>& tokens, std::size_t batch,
                                  std::size_t seq) {
  double worst = 0, scale = 0;
  for (std::size_t b = 0; b < batch; ++b) {
    const std::vector<std::int64_t> row(tokens.begin() + b * seq, tokens.begin() + (b + 1) * seq);
    const dmat ref = reference_logits(o, row);
    for (std::size_t p = 0; p < seq; ++p) {
      for (int c = 0; c < o.vocab; ++c) {
        const double got = logits.f[(b * seq + p) * o.vocab + c];
        worst = std::max(worst, std::fabs(got - ref[p][c]));
        scale = std::max(scale, std::fabs(ref[p][c]));
      }
    }
  }
  return {worst, scale};
}

void check_against_reference(const llama_options& o) {
  const std::size_t batch = 2, seq = 7;
  const auto tokens = test_tokens(o, batch, seq);
  int4q::onnx::model m;
  m.proto = int4q::test::build_llama_model(o);
  const int4q::onnx::value logits = run_logits(m, tokens, batch, seq);
  ASSERT_EQ(logits.shape, (std::vector<std::int64_t>{2, 7, o.vocab}));
  const auto [worst, scale] = compare(o, logits, tokens, batch, seq);
  // fp32 arithmetic over a few hundred terms per dot product: relative error ~1e-6; 1e-4 of
  // the logit scale leaves room and is far below any architectural slip (a wrong RoPE sign,
  // mask or kv head moves logits by 1e-2 and more of their scale). fp16: the RMSNorm output is
  // rounded to fp16 (2^-11 relative) and values near a rounding tie round apart in the double
  // reference and the fp32 executor: measured 1.6e-4 of the scale, bound 1e-3.
  const double bound = (o.fp16 ? 1e-3 : 1e-4) * scale;
  EXPECT_GT(scale, 0.1);
  EXPECT_LT(worst, bound) << "max |executor - reference| " << worst << ", scale " << scale;
}

TEST(LlamaModel, ExecutorMatchesDoubleReferenceFp32) {
  llama_options o;  // 2 layers, hidden 64, 4 heads, 2 kv heads, intermediate 172, vocab 256
  check_against_reference(o);
}

TEST(LlamaModel, ExecutorMatchesDoubleReferenceFp16Weights) {
  llama_options o;
  o.fp16 = true;
  o.seed = 5;
  check_against_reference(o);
}

TEST(LlamaModel, ExecutorMatchesReferenceWithoutGqaAndOneHead) {
  llama_options o;
  o.layers = 1;
  o.hidden = 16;
  o.heads = 1;
  o.kv_heads = 1;
  o.intermediate = 24;
  o.vocab = 40;
  check_against_reference(o);
}

// The comparison can fail: a reference with one weight changed is far outside the bound.
TEST(LlamaModel, ReferenceDetectsAnotherModel) {
  llama_options o;
  const std::size_t batch = 1, seq = 5;
  const auto tokens = test_tokens(o, batch, seq);
  int4q::onnx::model m;
  m.proto = int4q::test::build_llama_model(o);
  const auto logits = run_logits(m, tokens, batch, seq);
  llama_options other = o;
  other.seed = o.seed + 1;
  const auto [worst, scale] = compare(other, logits, tokens, batch, seq);
  EXPECT_GT(worst, 1e-2 * scale);
}

class LlamaModelFiles : public int4q::test::scratch_dir_test {};

// External data: the file written one tensor at a time loads and computes exactly what the
// in-memory model computes; the data file holds every parameter (fp16: 2 bytes each) plus the
// 4096-byte alignment padding.
TEST_F(LlamaModelFiles, ExternalDataEqualsInline) {
  llama_options o;
  o.fp16 = true;
  const auto path = dir_ / "llama.onnx";
  int4q::test::write_llama_model(o, path);
  const auto data = std::filesystem::path(path.string() + ".data");
  ASSERT_TRUE(std::filesystem::exists(data));
  const std::uint64_t params = int4q::test::parameter_count(o);
  EXPECT_GE(std::filesystem::file_size(data), params * 2);
  EXPECT_LT(std::filesystem::file_size(data), params * 2 + 4096 * 64);
  EXPECT_LT(std::filesystem::file_size(path), 64 * 1024u);  // the weights are not inline
  const auto tokens = test_tokens(o, 1, 6);
  int4q::onnx::model inline_model;
  inline_model.proto = int4q::test::build_llama_model(o);
  const auto a = run_logits(int4q::onnx::load_model(path), tokens, 1, 6);
  const auto b = run_logits(inline_model, tokens, 1, 6);
  EXPECT_EQ(a.f, b.f);
}

TEST(LlamaModel, ParameterCountOfLlama2_7b) {
  // 32 layers x (4 x 4096^2 + 3 x 4096 x 11008 + 2 x 4096) + 2 x 32000 x 4096 + 4096
  // = 6,738,415,616: Llama-2-7B's published parameter count.
  EXPECT_EQ(int4q::test::parameter_count(llama_options::llama2_7b(32)), 6738415616ull);
}

TEST(LlamaModel, BadOptionsNameTheField) {
  llama_options o;
  o.kv_heads = 3;
  EXPECT_THROW(int4q::test::build_llama_model(o), std::invalid_argument);
  try {
    int4q::test::build_llama_model(o);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("kv_heads"), std::string::npos);
  }
  o = llama_options();
  o.heads = 64;  // head_dim 1: odd
  EXPECT_THROW(int4q::test::parameter_count(o), std::invalid_argument);
  EXPECT_THROW(llama_weight(llama_options(), "no.such.weight"), std::invalid_argument);
}

TEST(LlamaModel, WeightsAreDeterministicAndScaled) {
  llama_options o;
  const auto a = llama_weight(o, "model.layers.1.mlp.down_proj.weight");
  EXPECT_EQ(a, llama_weight(o, "model.layers.1.mlp.down_proj.weight"));
  double mean = 0, sq = 0;
  for (float v : a) {
    mean += v;
    sq += double(v) * v;
  }
  mean /= a.size();
  const double sd = std::sqrt(sq / a.size() - mean * mean);
  // N(0, 1/fan_in), fan_in = 172: sd 0.0762; 11008 draws give sd within a few percent.
  EXPECT_NEAR(sd, 1.0 / std::sqrt(172.0), 0.05 / std::sqrt(172.0));
  EXPECT_NEAR(mean, 0.0, 0.05 / std::sqrt(172.0));
  o.seed = 2;
  EXPECT_NE(a, llama_weight(o, "model.layers.1.mlp.down_proj.weight"));
}

}  // namespace

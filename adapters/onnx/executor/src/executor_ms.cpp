// The executor's com.microsoft operators, and SimplifiedLayerNormalization, which ONNX Runtime
// registers in the default domain: fused normalizations (SimplifiedLayerNormalization,
// SkipLayerNormalization, SkipSimplifiedLayerNormalization), GELU variants (Gelu, BiasGelu,
// FastGelu, QuickGelu), RotaryEmbedding, MultiHeadAttention, GroupQueryAttention and
// GatherBlockQuantized.
//
// Semantics follow ONNX Runtime's contrib operator documentation (docs/ContribOperators.md) and
// its CPU kernels; tests/ort (ort.exec.*) checks every operator against onnxruntime-node.
// Attention runs in fp32: Q K^T and P V through BLAS sgemm, softmax sums in double.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <int4q/detail/blas.hpp>
#include <int4q/onnx/tensor_types.hpp>

#include "executor_detail.hpp"

namespace int4q {
namespace onnx {
namespace exec {

namespace {

// ---- Inputs, outputs, attributes --------------------------------------------------------------

const value& need_float(const node_context& c, const inputs_t& in, std::size_t k,
                        const char* what) {
  if (k >= in.size() || !in[k]) c.fail(std::string("input ") + what + " is missing");
  const value& v = *in[k];
  if (v.type != value_type::float32) c.fail(std::string("input ") + what + " must be float");
  return v;
}

const value* optional_float(const node_context& c, const inputs_t& in, std::size_t k,
                            const char* what) {
  const value* v = optional_input(in, k);
  if (v && v->type != value_type::float32) c.fail(std::string("input ") + what + " must be float");
  return v;
}

const value& need_int(const node_context& c, const inputs_t& in, std::size_t k, const char* what) {
  if (k >= in.size() || !in[k]) c.fail(std::string("input ") + what + " is missing");
  const value& v = *in[k];
  if (v.type != value_type::int64)
    c.fail(std::string("input ") + what + " must be an integer tensor");
  return v;
}

/// True when the node asks for output k (present and not "").
bool wants_output(const node_context& c, int k) {
  return c.node.output_size() > k && !c.node.output(k).empty();
}

std::string attr_string(const NodeProto& n, const std::string& name, const std::string& dflt) {
  const AttributeProto* a = find_attr(n, name);
  return a ? a->s() : dflt;
}

/// Fails unless `v` has exactly `shape`.
void check_shape(const node_context& c, const value& v, const shape_t& shape, const char* what) {
  if (v.shape != shape)
    c.fail(std::string(what) + " has shape " + dims_string(v.shape) + ", expected " +
           dims_string(shape));
}

/// A 1-D float input of `len` elements (gamma, beta, bias).
void check_vector(const node_context& c, const value& v, std::int64_t len, const char* what) {
  if (v.shape.size() != 1 || v.shape[0] != len)
    c.fail(std::string(what) + " has shape " + dims_string(v.shape) + ", expected [" +
           std::to_string(len) + "]");
}

std::size_t to_size(std::int64_t v) { return static_cast<std::size_t>(v); }

// ---- Normalizations
// --------------------------------------------------------------------------------

/// Normalizes `rows` rows of `len` elements of x in place. Layer norm: (x - mean) * inv * gamma
/// (+ beta); RMS norm: x * inv * gamma, with inv = 1 / sqrt(var + eps) or 1 / sqrt(mean(x^2) +
/// eps). gamma (and beta) are read through index vectors of `len` entries. Statistics in double.
void normalize_rows(std::vector<float>& x, std::size_t rows, std::size_t len, bool rms, double eps,
                    const value& gamma, const std::vector<std::size_t>& gi, const value* beta,
                    const std::vector<std::size_t>& bi, std::vector<float>& means,
                    std::vector<float>& inv_stds) {
  means.assign(rows, 0.0f);
  inv_stds.assign(rows, 0.0f);
  for (std::size_t r = 0; r < rows; ++r) {
    float* v = x.data() + r * len;
    double sum = 0, sum_sq = 0;
    for (std::size_t k = 0; k < len; ++k) sum += v[k];
    const double mean = sum / static_cast<double>(len);
    for (std::size_t k = 0; k < len; ++k) {
      const double d = rms ? v[k] : v[k] - mean;
      sum_sq += d * d;
    }
    const double inv = 1.0 / std::sqrt(sum_sq / static_cast<double>(len) + eps);
    means[r] = static_cast<float>(mean);
    inv_stds[r] = static_cast<float>(inv);
    for (std::size_t k = 0; k < len; ++k) {
      double y = (rms ? v[k] : v[k] - mean) * inv * gamma.f[gi[k]];
      if (beta) y += beta->f[bi[k]];
      v[k] = static_cast<float>(y);
    }
  }
}

std::vector<std::size_t> identity_index(std::size_t n) {
  std::vector<std::size_t> idx(n);
  for (std::size_t k = 0; k < n; ++k) idx[k] = k;
  return idx;
}

/// SimplifiedLayerNormalization (RMSNorm): Y = X / sqrt(mean(X^2 over axis..) + epsilon) * scale.
/// Outputs Y and inv_std_var (shape X.shape[:axis] + [1]*).
void op_simplified_layer_norm(const node_context& c, const model&, const inputs_t& in,
                              std::vector<value>& out) {
  const value& x = need_float(c, in, 0, "X");
  const value& scale = need_float(c, in, 1, "scale");
  if (x.shape.empty()) c.fail("X must have rank >= 1");
  const auto axis = to_size(normalize_axis(c, attr_int(c.node, "axis", -1), x.shape.size()));
  const double eps = attr_float(c.node, "epsilon", 1e-5f);
  std::size_t rows = 1, len = 1;
  for (std::size_t k = 0; k < axis; ++k) rows *= to_size(x.shape[k]);
  for (std::size_t k = axis; k < x.shape.size(); ++k) len *= to_size(x.shape[k]);
  const shape_t norm_shape(x.shape.begin() + static_cast<std::ptrdiff_t>(axis), x.shape.end());
  const shape_t joint = broadcast_shapes(c, {&scale.shape, &norm_shape});
  if (joint != norm_shape)
    c.fail("scale of shape " + dims_string(scale.shape) + " does not broadcast to " +
           dims_string(norm_shape));
  value y = x;
  std::vector<float> means, inv_stds;
  normalize_rows(y.f, rows, len, true, eps, scale, broadcast_index(scale.shape, norm_shape),
                 nullptr, {}, means, inv_stds);
  shape_t stat_shape(x.shape.begin(), x.shape.begin() + static_cast<std::ptrdiff_t>(axis));
  stat_shape.resize(x.shape.size(), 1);
  out.push_back(std::move(y));
  out.push_back(value::floats(stat_shape, std::move(inv_stds)));
}

/// SkipLayerNormalization and SkipSimplifiedLayerNormalization: s = input + skip (+ bias), then
/// layer norm (gamma, beta) or RMS norm (gamma) over the last axis. Outputs: output, mean,
/// inv_std_var (shape input.shape[:-1] + [1]), input_skip_bias_sum. skip may be the input's shape
/// or its trailing dimensions with leading 1s ([1, S, H], [S, H]): broadcast over the batch.
void skip_norm(const node_context& c, const inputs_t& in, std::vector<value>& out, bool rms) {
  const value& x = need_float(c, in, 0, "input");
  const value& skip = need_float(c, in, 1, "skip");
  const value& gamma = need_float(c, in, 2, "gamma");
  // SkipSimplifiedLayerNormalization has no beta: its bias is input 3.
  const value* beta = rms ? nullptr : optional_float(c, in, 3, "beta");
  const value* bias = optional_float(c, in, rms ? 3 : 4, "bias");
  if (x.shape.size() != 2 && x.shape.size() != 3)
    c.fail("input must be 2-D or 3-D, not " + dims_string(x.shape));
  const std::int64_t H = x.shape.back();
  shape_t skip_core = skip.shape;
  while (skip_core.size() > 2 && skip_core.front() == 1) skip_core.erase(skip_core.begin());
  if (skip_core.size() > x.shape.size() ||
      !std::equal(skip_core.rbegin(), skip_core.rend(), x.shape.rbegin()))
    c.fail("skip of shape " + dims_string(skip.shape) + " does not fit input " +
           dims_string(x.shape) + " (same shape, [1, S, H] or [S, H])");
  check_vector(c, gamma, H, "gamma");
  if (beta) check_vector(c, *beta, H, "beta");
  if (bias) check_vector(c, *bias, H, "bias");
  const std::size_t n = x.size(), len = to_size(H), rows = n / std::max<std::size_t>(len, 1);
  value sum = x;
  const std::size_t skip_n = skip.size();
  for (std::size_t e = 0; e < n; ++e) {
    float v = x.f[e] + skip.f[e % skip_n];
    if (bias) v += bias->f[e % len];
    sum.f[e] = v;
  }
  value y = sum;
  std::vector<float> means, inv_stds;
  const auto idx = identity_index(len);
  normalize_rows(y.f, rows, len, rms, attr_float(c.node, "epsilon", 1e-12f), gamma, idx, beta, idx,
                 means, inv_stds);
  shape_t stat_shape = x.shape;
  stat_shape.back() = 1;
  out.push_back(std::move(y));
  out.push_back(value::floats(stat_shape, std::move(means)));
  out.push_back(value::floats(stat_shape, std::move(inv_stds)));
  out.push_back(std::move(sum));
}

// ---- GELU variants
// ---------------------------------------------------------------------------------

/// y = f(x + bias) elementwise; bias (input 1) is 1-D over the last axis, required or optional.
template <class F>
void gelu_like(const node_context& c, const inputs_t& in, std::vector<value>& out, bool need_bias,
               F f) {
  const value& x = need_float(c, in, 0, "X");
  const value* bias = need_bias ? &need_float(c, in, 1, "bias") : optional_float(c, in, 1, "bias");
  value y = x;
  if (bias) {
    if (x.shape.empty()) c.fail("input must have rank >= 1 to take a bias");
    check_vector(c, *bias, x.shape.back(), "bias");
  }
  const std::size_t len = bias ? bias->size() : 1;
  for (std::size_t e = 0; e < y.f.size(); ++e) {
    const double v = bias ? double(x.f[e]) + double(bias->f[e % len]) : double(x.f[e]);
    y.f[e] = static_cast<float>(f(v));
  }
  out.push_back(std::move(y));
}

double gelu_erf(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

double gelu_tanh(double x) {
  const double k = std::sqrt(2.0 / M_PI);  // 0.7978845608...
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}

// ---- Rotary embedding
// --------------------------------------------------------------------------------

/// Rotates the first `rot` elements of head vector x into y (the rest is left as is), with
/// cos/sin rows of rot / 2 entries. Interleaved: pairs (2i, 2i+1); otherwise halves (i, i + rot/2).
void rotate(const float* x, float* y, std::size_t rot, const float* cos_row, const float* sin_row,
            bool interleaved) {
  const std::size_t half = rot / 2;
  for (std::size_t i = 0; i < half; ++i) {
    const std::size_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    const float xa = x[a], xb = x[b];
    y[a] = xa * cos_row[i] - xb * sin_row[i];
    y[b] = xb * cos_row[i] + xa * sin_row[i];
  }
}

/// cos_cache and sin_cache: both [max_position, rot / 2]. Returns rot.
std::size_t check_caches(const node_context& c, const value& cos, const value& sin) {
  if (cos.shape.size() != 2 || cos.shape != sin.shape)
    c.fail("cos_cache and sin_cache must be 2-D of one shape, not " + dims_string(cos.shape) +
           " and " + dims_string(sin.shape));
  return 2 * to_size(cos.shape[1]);
}

/// com.microsoft RotaryEmbedding: input [B, S, N*H] or [B, N, S, H]; position_ids [1] (offset:
/// position = offset + s) or [B, S]; caches [max_position, rot / 2]. Head elements past
/// rotary_embedding_dim pass through. The `scale` attribute is not applied (ONNX Runtime's CPU
/// kernel does not apply it either).
void op_rotary_embedding(const node_context& c, const model&, const inputs_t& in,
                         std::vector<value>& out) {
  const value& x = need_float(c, in, 0, "input");
  const value& pos = need_int(c, in, 1, "position_ids");
  const value& cos = need_float(c, in, 2, "cos_cache");
  const value& sin = need_float(c, in, 3, "sin_cache");
  const bool interleaved = attr_int(c.node, "interleaved", 0) != 0;
  const std::int64_t heads_attr = attr_int(c.node, "num_heads", 0);
  const std::int64_t rot_attr = attr_int(c.node, "rotary_embedding_dim", 0);
  if (attr_int(c.node, "is_packed_batching", 0) != 0) c.fail("is_packed_batching is not supported");
  if (rot_attr > 0 && heads_attr <= 0) c.fail("rotary_embedding_dim needs num_heads");
  const std::size_t cache_rot = check_caches(c, cos, sin);
  const std::size_t rot = rot_attr > 0 ? to_size(rot_attr) : cache_rot;
  if (rot != cache_rot)
    c.fail("cos_cache has " + std::to_string(cache_rot / 2) +
           " columns for a rotary dimension of " + std::to_string(rot) +
           " (needs rotary_embedding_dim / 2)");
  std::size_t B, S, N, H;
  const bool bnsh = x.shape.size() == 4;
  if (bnsh) {
    B = to_size(x.shape[0]), N = to_size(x.shape[1]), S = to_size(x.shape[2]),
    H = to_size(x.shape[3]);
    if (heads_attr > 0 && to_size(heads_attr) != N)
      c.fail("num_heads " + std::to_string(heads_attr) + " differs from input dimension 1 (" +
             std::to_string(N) + ")");
  } else if (x.shape.size() == 3) {
    B = to_size(x.shape[0]), S = to_size(x.shape[1]);
    const std::size_t D = to_size(x.shape[2]);
    H = heads_attr > 0 ? D / to_size(heads_attr) : rot;
    if (H == 0 || D % H != 0)
      c.fail("hidden size " + std::to_string(D) + " is not a multiple of the head size " +
             std::to_string(H));
    N = D / H;
  } else {
    c.fail("input must be 3-D [B, S, hidden] or 4-D [B, N, S, H], not " + dims_string(x.shape));
  }
  if (rot > H || rot % 2 != 0)
    c.fail("rotary dimension " + std::to_string(rot) + " must be even and at most the head size " +
           std::to_string(H));
  const bool offset_form = pos.size() == 1;
  if (!offset_form && pos.shape != shape_t{std::int64_t(B), std::int64_t(S)})
    c.fail("position_ids has shape " + dims_string(pos.shape) + ", expected [1] or [" +
           std::to_string(B) + ", " + std::to_string(S) + "]");
  const std::int64_t max_pos = cos.shape[0];
  value y = x;
  for (std::size_t b = 0; b < B; ++b) {
    for (std::size_t s = 0; s < S; ++s) {
      const std::int64_t p = offset_form ? pos.i[0] + std::int64_t(s) : pos.i[b * S + s];
      if (p < 0 || p >= max_pos)
        c.fail("position " + std::to_string(p) + " is outside the caches' " +
               std::to_string(max_pos) + " rows");
      const float* cr = cos.f.data() + to_size(p) * (rot / 2);
      const float* sr = sin.f.data() + to_size(p) * (rot / 2);
      for (std::size_t n = 0; n < N; ++n) {
        const std::size_t off = bnsh ? ((b * N + n) * S + s) * H : ((b * S + s) * N + n) * H;
        rotate(x.f.data() + off, y.f.data() + off, rot, cr, sr, interleaved);
      }
    }
  }
  out.push_back(std::move(y));
}

// ---- Attention
// ------------------------------------------------------------------------------------

/// scores[S, T] = scale * q[S, H] k[T, H]^T (rows contiguous).
void qk_scores(const float* q, const float* k, std::size_t S, std::size_t T, std::size_t H,
               float scale, float* scores) {
  if (S == 0 || T == 0) return;
  int4q::detail::blas::gemm(false, true, S, T, H, scale, q, H, k, H, 0.0f, scores, T);
}

/// out[S, Hv] (row stride ldo) = probs[S, T] v[T, Hv].
void apply_values(const float* probs, const float* v, std::size_t S, std::size_t T, std::size_t Hv,
                  float* out, std::size_t ldo) {
  if (S == 0 || Hv == 0) return;
  if (T == 0) {
    for (std::size_t s = 0; s < S; ++s) std::fill(out + s * ldo, out + s * ldo + Hv, 0.0f);
    return;
  }
  int4q::detail::blas::gemm(false, false, S, Hv, T, 1.0f, probs, T, v, Hv, 0.0f, out, ldo);
}

/// Softmax of row[lo, hi) in place; the rest of row[0, n) becomes 0. `sink` (if not null) is an
/// extra logit that joins the maximum and the denominator but has no value (head_sink;
/// smooth_softmax is sink 0).
void softmax_range(float* row, std::size_t n, std::size_t lo, std::size_t hi, const float* sink) {
  float mx = sink ? *sink : -std::numeric_limits<float>::infinity();
  for (std::size_t j = lo; j < hi; ++j) mx = std::max(mx, row[j]);
  double sum = sink ? std::exp(double(*sink) - mx) : 0.0;
  for (std::size_t j = lo; j < hi; ++j) {
    row[j] = std::exp(row[j] - mx);
    sum += row[j];
  }
  const double inv = sum > 0 ? 1.0 / sum : 0.0;
  for (std::size_t j = 0; j < n; ++j) row[j] = (j >= lo && j < hi) ? float(row[j] * inv) : 0.0f;
}

/// [B, L, N*H] (row-major) -> [B, N, L, H], adding bias[offset + n*H + h] when given.
std::vector<float> to_heads(const float* src, std::size_t B, std::size_t L, std::size_t N,
                            std::size_t H, std::size_t row_stride, const float* bias) {
  std::vector<float> dst(B * N * L * H);
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t l = 0; l < L; ++l)
      for (std::size_t n = 0; n < N; ++n) {
        const float* s = src + (b * L + l) * row_stride + n * H;
        float* d = dst.data() + ((b * N + n) * L + l) * H;
        for (std::size_t h = 0; h < H; ++h) d[h] = s[h] + (bias ? bias[n * H + h] : 0.0f);
      }
  return dst;
}

/// attention_bias [B or 1, N or 1, S, T]: its flat offset of row (b, n, s), or fails.
struct attention_bias_view {
  const value* v = nullptr;
  std::size_t bstride = 0, nstride = 0, T = 0;
  attention_bias_view(const node_context& c, const value* bias, std::size_t B, std::size_t N,
                      std::size_t S, std::size_t T_) {
    if (!bias) return;
    v = bias;
    T = T_;
    const shape_t& s = bias->shape;
    if (s.size() != 4 || (s[0] != 1 && to_size(s[0]) != B) || (s[1] != 1 && to_size(s[1]) != N) ||
        to_size(s[2]) != S || to_size(s[3]) != T)
      c.fail("attention_bias has shape " + dims_string(s) + ", expected [" + std::to_string(B) +
             " or 1, " + std::to_string(N) + " or 1, " + std::to_string(S) + ", " +
             std::to_string(T) + "]");
    nstride = s[1] == 1 ? 0 : S * T;
    bstride = s[0] == 1 ? 0 : to_size(s[1]) * S * T;
  }
  const float* row(std::size_t b, std::size_t n, std::size_t s) const {
    return v ? v->f.data() + b * bstride + n * nstride + s * T : nullptr;
  }
};

/// MultiHeadAttention's sizes: batch B, query length S, hidden D = N heads of H, key/value
/// length L (new rows), value head size Hv (Dv = N Hv), past length P, T = P + L keys.
struct mha_sizes {
  std::size_t B = 0, S = 0, D = 0, N = 0, H = 0, L = 0, Hv = 0, Dv = 0, P = 0, T = 0;
  bool kv_heads = false;  ///< key/value given as [B, N, L, H] (already split into heads)
};

/// Checks the shapes of MultiHeadAttention's query, key, value, bias and past against each
/// other and num_heads (`heads`), and returns the sizes.
mha_sizes mha_check_shapes(const node_context& c, const value& q, const value* key,
                           const value* val, const value* bias, const value* past_k,
                           const value* past_v, std::int64_t heads) {
  if (q.shape.size() != 3)
    c.fail("query must be [B, S, hidden] (packed QKV is not supported), not " +
           dims_string(q.shape));
  if (!key || !val) c.fail("key and value are required (packed QKV/KV is not supported)");
  mha_sizes z;
  z.B = to_size(q.shape[0]);
  z.S = to_size(q.shape[1]);
  z.D = to_size(q.shape[2]);
  z.N = to_size(heads);
  if (z.D % z.N != 0)
    c.fail("hidden size " + std::to_string(z.D) + " is not a multiple of num_heads " +
           std::to_string(z.N));
  z.H = z.D / z.N;
  z.kv_heads = key->shape.size() == 4;
  if (z.kv_heads) {
    if (val->shape.size() != 4) c.fail("key is 4-D [B, N, L, H]: value must be 4-D too");
    if (bias || past_k || past_v) c.fail("4-D key/value take no bias and no past_key/past_value");
    z.L = to_size(key->shape[2]);
    z.Hv = to_size(val->shape[3]);
    check_shape(c, *key, {q.shape[0], heads, std::int64_t(z.L), std::int64_t(z.H)}, "key");
    check_shape(c, *val, {q.shape[0], heads, std::int64_t(z.L), std::int64_t(z.Hv)}, "value");
  } else {
    if (key->shape.size() != 3 || val->shape.size() != 3)
      c.fail("key and value must be 3-D [B, L, hidden] or 4-D [B, N, L, H]");
    z.L = to_size(key->shape[1]);
    check_shape(c, *key, {q.shape[0], std::int64_t(z.L), std::int64_t(z.D)}, "key");
    if (val->shape[0] != q.shape[0] || to_size(val->shape[1]) != z.L || val->shape[2] % heads != 0)
      c.fail("value has shape " + dims_string(val->shape) + ", expected [" + std::to_string(z.B) +
             ", " + std::to_string(z.L) + ", a multiple of num_heads]");
    z.Hv = to_size(val->shape[2]) / z.N;
  }
  z.Dv = z.N * z.Hv;
  if (bias) check_vector(c, *bias, std::int64_t(2 * z.D + z.Dv), "bias");
  if ((past_k == nullptr) != (past_v == nullptr)) c.fail("past_key and past_value go together");
  if (past_k) {
    z.P = past_k->shape.size() == 4 ? to_size(past_k->shape[2]) : 0;
    check_shape(c, *past_k, {q.shape[0], heads, std::int64_t(z.P), std::int64_t(z.H)}, "past_key");
    check_shape(c, *past_v, {q.shape[0], heads, std::int64_t(z.P), std::int64_t(z.Hv)},
                "past_value");
  }
  z.T = z.P + z.L;
  return z;
}

/// "Masked" flags [B, S, T] from key_padding_mask (int [B] valid lengths, [B, T] or [B, S, T]
/// with 0 = masked), and with `causal` every key after P + s for query s.
std::vector<char> mha_masked(const node_context& c, const value* mask, const mha_sizes& z,
                             bool causal) {
  const std::size_t B = z.B, S = z.S, T = z.T;
  std::vector<char> masked(B * S * T, 0);
  if (mask) {
    if (mask->type == value_type::float32) c.fail("key_padding_mask must be an integer tensor");
    const shape_t& ms = mask->shape;
    if (ms == shape_t{std::int64_t(B)}) {
      for (std::size_t b = 0; b < B; ++b)
        for (std::size_t s = 0; s < S; ++s)
          for (std::size_t j = 0; j < T; ++j)
            masked[(b * S + s) * T + j] = j >= to_size(std::max<std::int64_t>(mask->i[b], 0));
    } else if (ms == shape_t{std::int64_t(B), std::int64_t(T)}) {
      for (std::size_t b = 0; b < B; ++b)
        for (std::size_t s = 0; s < S; ++s)
          for (std::size_t j = 0; j < T; ++j) masked[(b * S + s) * T + j] = mask->i[b * T + j] == 0;
    } else if (ms == shape_t{std::int64_t(B), std::int64_t(S), std::int64_t(T)}) {
      for (std::size_t e = 0; e < masked.size(); ++e) masked[e] = mask->i[e] == 0;
    } else {
      c.fail("key_padding_mask has shape " + dims_string(ms) + ", expected [" + std::to_string(B) +
             "], [" + std::to_string(B) + ", " + std::to_string(T) + "] or [" + std::to_string(B) +
             ", " + std::to_string(S) + ", " + std::to_string(T) + "]");
    }
  }
  if (causal)
    for (std::size_t b = 0; b < B; ++b)
      for (std::size_t s = 0; s < S; ++s)
        for (std::size_t j = z.P + s + 1; j < T; ++j) masked[(b * S + s) * T + j] = 1;
  return masked;
}

/// present_key [B, N, T, H] and present_value [B, N, T, Hv]: the past rows, then the new ones
/// (split into heads, bias added), or key and value themselves when already in heads.
void mha_present(const value& key, const value& val, const value* bias, const value* past_k,
                 const value* past_v, const mha_sizes& z, value& present_k, value& present_v) {
  const std::size_t B = z.B, N = z.N, H = z.H, Hv = z.Hv, L = z.L, P = z.P, T = z.T, D = z.D;
  if (z.kv_heads) {
    present_k.f = key.f;
    present_v.f = val.f;
    return;
  }
  const std::vector<float> kn =
      to_heads(key.f.data(), B, L, N, H, D, bias ? bias->f.data() + D : nullptr);
  const std::vector<float> vn =
      to_heads(val.f.data(), B, L, N, Hv, z.Dv, bias ? bias->f.data() + 2 * D : nullptr);
  for (std::size_t bn = 0; bn < B * N; ++bn) {
    if (P > 0) {
      std::copy_n(past_k->f.data() + bn * P * H, P * H, present_k.f.data() + bn * T * H);
      std::copy_n(past_v->f.data() + bn * P * Hv, P * Hv, present_v.f.data() + bn * T * Hv);
    }
    std::copy_n(kn.data() + bn * L * H, L * H, present_k.f.data() + (bn * T + P) * H);
    std::copy_n(vn.data() + bn * L * Hv, L * Hv, present_v.f.data() + (bn * T + P) * Hv);
  }
}

/// com.microsoft MultiHeadAttention (CPU form): query [B, S, D]; key/value [B, L, D] / [B, L, Dv]
/// (or [B, N, L, H] already split into heads, then no bias and no past); bias [2D + Dv];
/// key_padding_mask int [B] (valid lengths), [B, T] or [B, S, T] (0 = masked); attention_bias
/// [B|1, N|1, S, T]; past_key/past_value [B, N, P, H]. T = P + L. Outputs: output [B, S, Dv],
/// present_key/present_value [B, N, T, H]. Masked scores get mask_filter_value added.
void op_multi_head_attention(const node_context& c, const model&, const inputs_t& in,
                             std::vector<value>& out) {
  const value& q = need_float(c, in, 0, "query");
  const value* key = optional_float(c, in, 1, "key");
  const value* val = optional_float(c, in, 2, "value");
  const value* bias = optional_float(c, in, 3, "bias");
  const value* mask = optional_input(in, 4);
  const value* attn_bias = optional_float(c, in, 5, "attention_bias");
  const value* past_k = optional_float(c, in, 6, "past_key");
  const value* past_v = optional_float(c, in, 7, "past_value");
  if (optional_input(in, 8) || optional_input(in, 9))
    c.fail(
        "past_sequence_length and cache_indirection (shared buffers, beam search) are not "
        "supported");
  if (wants_output(c, 3)) c.fail("the qk output is not supported");
  const std::int64_t heads = attr_int(c.node, "num_heads", 0);
  if (heads <= 0) c.fail("num_heads must be set and positive");
  const mha_sizes z = mha_check_shapes(c, q, key, val, bias, past_k, past_v, heads);
  const std::size_t B = z.B, S = z.S, N = z.N, H = z.H, Hv = z.Hv, Dv = z.Dv, T = z.T;
  float scale = attr_float(c.node, "scale", 0.0f);
  if (scale == 0.0f) scale = 1.0f / std::sqrt(float(H));
  const float mask_value = attr_float(c.node, "mask_filter_value", -10000.0f);
  const bool causal = attr_int(c.node, "unidirectional", 0) != 0;
  const std::vector<char> masked = mha_masked(c, mask, z, causal);
  const attention_bias_view ab(c, attn_bias, B, N, S, T);

  // Heads: Q [B, N, S, H], K [B, N, T, H], V [B, N, T, Hv] (past first, then the new rows).
  const std::vector<float> qh =
      to_heads(q.f.data(), B, S, N, H, z.D, bias ? bias->f.data() : nullptr);
  value present_k = value::floats({q.shape[0], heads, std::int64_t(T), std::int64_t(H)},
                                  std::vector<float>(B * N * T * H));
  value present_v = value::floats({q.shape[0], heads, std::int64_t(T), std::int64_t(Hv)},
                                  std::vector<float>(B * N * T * Hv));
  mha_present(*key, *val, bias, past_k, past_v, z, present_k, present_v);

  // Per head: softmax(scale Q K^T + attention_bias + mask_filter_value where masked) V.
  value y =
      value::floats({q.shape[0], q.shape[1], std::int64_t(Dv)}, std::vector<float>(B * S * Dv));
  std::vector<float> scores(S * T);
  for (std::size_t b = 0; b < B; ++b) {
    for (std::size_t n = 0; n < N; ++n) {
      const std::size_t bn = b * N + n;
      qk_scores(qh.data() + bn * S * H, present_k.f.data() + bn * T * H, S, T, H, scale,
                scores.data());
      for (std::size_t s = 0; s < S; ++s) {
        float* row = scores.data() + s * T;
        const float* add = ab.row(b, n, s);
        const char* m = masked.data() + (b * S + s) * T;
        for (std::size_t j = 0; j < T; ++j) {
          if (add) row[j] += add[j];
          if (m[j]) row[j] += mask_value;
        }
        softmax_range(row, T, 0, T, nullptr);
      }
      apply_values(scores.data(), present_v.f.data() + bn * T * Hv, S, T, Hv,
                   y.f.data() + b * S * Dv + n * Hv, Dv);
    }
  }
  out.push_back(std::move(y));
  out.push_back(std::move(present_k));
  out.push_back(std::move(present_v));
}

/// GroupQueryAttention's inputs from 12 on and attributes that int4q does not compute: fails
/// naming them.
void gqa_refuse_unsupported(const node_context& c, const inputs_t& in) {
  for (std::size_t k = 12; k < in.size(); ++k)
    if (in[k])
      c.fail("input " + std::to_string(k) + " (quantized KV cache, Q/K norm) is not supported");
  if (wants_output(c, 3) || attr_int(c.node, "qk_output", 0) != 0)
    c.fail("the output_qk output is not supported");
  if (attr_int(c.node, "causal", 1) != 1) c.fail("causal = 0 is not supported");
  if (attr_int(c.node, "sliding_window_cache", 0) != 0)
    c.fail("sliding_window_cache is not supported");
  for (const char* a : {"k_quant_type", "v_quant_type"}) {
    const std::string t = attr_string(c.node, a, "NONE");
    if (t != "NONE" && !t.empty()) c.fail(std::string(a) + " " + t + " is not supported");
  }
}

/// GroupQueryAttention's sizes: batch B, sequence S, query hidden D (packed: all of QKV), N query
/// heads sharing Nkv key/value heads in groups of N / Nkv, head size H, past length P, present
/// length Pres = max(total, P).
struct gqa_sizes {
  std::int64_t heads = 0, kv_heads = 0, total = 0;
  std::size_t B = 0, S = 0, D = 0, N = 0, Nkv = 0, group = 0, H = 0, P = 0, Pres = 0;
  bool packed = false;        ///< QKV packed in query (key and value absent)
  bool first_prompt = false;  ///< S == total: no past is read
};

/// Checks num_heads, kv_num_heads and the shapes of query, key, value, past, seqlens_k and
/// total_sequence_length, and returns the sizes.
gqa_sizes gqa_check_shapes(const node_context& c, const value& q, const value* key,
                           const value* val, const value* past_k, const value* past_v,
                           const value& seqlens, const value& total_v) {
  gqa_sizes z;
  z.heads = attr_int(c.node, "num_heads", 0);
  z.kv_heads = attr_int(c.node, "kv_num_heads", 0);
  if (z.heads <= 0 || z.kv_heads <= 0 || z.heads % z.kv_heads != 0)
    c.fail("num_heads (" + std::to_string(z.heads) +
           ") must be a positive multiple of kv_num_heads (" + std::to_string(z.kv_heads) + ")");
  if (q.shape.size() != 3) c.fail("query must be 3-D [B, S, hidden], not " + dims_string(q.shape));
  if ((key == nullptr) != (val == nullptr)) c.fail("key and value go together");
  z.packed = key == nullptr;
  z.B = to_size(q.shape[0]);
  z.S = to_size(q.shape[1]);
  z.D = to_size(q.shape[2]);
  z.N = to_size(z.heads);
  z.Nkv = to_size(z.kv_heads);
  z.group = z.N / z.Nkv;
  const std::size_t per_row = z.packed ? z.N + 2 * z.Nkv : z.N;
  if (z.D % per_row != 0)
    c.fail("query hidden size " + std::to_string(z.D) + " is not a multiple of " +
           std::to_string(per_row) + (z.packed ? " (num_heads + 2 kv_num_heads)" : " (num_heads)"));
  z.H = z.D / per_row;
  const auto H = std::int64_t(z.H);
  if (!z.packed) {
    check_shape(c, *key, {q.shape[0], q.shape[1], std::int64_t(z.Nkv) * H}, "key");
    check_shape(c, *val, {q.shape[0], q.shape[1], std::int64_t(z.Nkv) * H}, "value");
  }
  if ((past_k == nullptr) != (past_v == nullptr)) c.fail("past_key and past_value go together");
  if (past_k) {
    z.P = past_k->shape.size() == 4 ? to_size(past_k->shape[2]) : 0;
    check_shape(c, *past_k, {q.shape[0], z.kv_heads, std::int64_t(z.P), H}, "past_key");
    check_shape(c, *past_v, {q.shape[0], z.kv_heads, std::int64_t(z.P), H}, "past_value");
  }
  check_shape(c, seqlens, {q.shape[0]}, "seqlens_k");
  if (total_v.size() != 1) c.fail("total_sequence_length must hold one value");
  z.total = total_v.i[0];
  if (z.total < std::int64_t(z.S))
    c.fail("total_sequence_length " + std::to_string(z.total) + " is below the sequence length " +
           std::to_string(z.S));
  z.Pres = std::max(to_size(z.total), z.P);
  z.first_prompt = to_size(z.total) == z.S;
  return z;
}

/// Past length of each batch entry: seqlens_k[b] + 1 - S (0 for the first prompt), checked to
/// fit the past and present.
std::vector<std::size_t> gqa_past_lengths(const node_context& c, const value& seqlens,
                                          const gqa_sizes& z) {
  std::vector<std::size_t> past(z.B);
  for (std::size_t b = 0; b < z.B; ++b) {
    const std::int64_t tb = seqlens.i[b] + 1;
    const std::int64_t pb = z.first_prompt ? 0 : tb - std::int64_t(z.S);
    if (pb < 0 || to_size(pb) > z.P || to_size(pb) + z.S > z.Pres || tb > z.total)
      c.fail("seqlens_k[" + std::to_string(b) + "] = " + std::to_string(seqlens.i[b]) +
             " does not fit sequence length " + std::to_string(z.S) + ", past length " +
             std::to_string(z.P) + " and total_sequence_length " + std::to_string(z.total));
    past[b] = to_size(pb);
  }
  return past;
}

/// Rotary embedding of heads `x` [B, heads_n, S, H] in place: row s of entry b at position
/// past[b] + s, its first `rot` elements rotated by the caches' rows.
void gqa_rotate(const node_context& c, std::vector<float>& x, std::size_t heads_n,
                const gqa_sizes& z, const std::vector<std::size_t>& past, const value& cos,
                const value& sin, std::size_t rot, bool interleaved) {
  const std::int64_t max_pos = cos.shape[0];
  const std::vector<float> src = x;
  for (std::size_t b = 0; b < z.B; ++b)
    for (std::size_t s = 0; s < z.S; ++s) {
      const std::size_t p = past[b] + s;
      if (std::int64_t(p) >= max_pos)
        c.fail("position " + std::to_string(p) + " is outside the caches' " +
               std::to_string(max_pos) + " rows");
      for (std::size_t n = 0; n < heads_n; ++n) {
        const std::size_t off = ((b * heads_n + n) * z.S + s) * z.H;
        rotate(src.data() + off, x.data() + off, rot, cos.f.data() + p * (rot / 2),
               sin.f.data() + p * (rot / 2), interleaved);
      }
    }
}

/// present_key/present_value [B, Nkv, Pres, H]: entry b's past[b] past rows, then the new rows
/// `kh`/`vh` [B, Nkv, S, H], zeros after.
void gqa_present(const std::vector<float>& kh, const std::vector<float>& vh, const value* past_k,
                 const value* past_v, const gqa_sizes& z, const std::vector<std::size_t>& past,
                 value& present_k, value& present_v) {
  const std::size_t H = z.H, S = z.S, P = z.P, Pres = z.Pres;
  for (std::size_t b = 0; b < z.B; ++b)
    for (std::size_t n = 0; n < z.Nkv; ++n) {
      const std::size_t bn = b * z.Nkv + n;
      if (past[b] > 0) {
        std::copy_n(past_k->f.data() + bn * P * H, past[b] * H, present_k.f.data() + bn * Pres * H);
        std::copy_n(past_v->f.data() + bn * P * H, past[b] * H, present_v.f.data() + bn * Pres * H);
      }
      std::copy_n(kh.data() + bn * S * H, S * H, present_k.f.data() + (bn * Pres + past[b]) * H);
      std::copy_n(vh.data() + bn * S * H, S * H, present_v.f.data() + (bn * Pres + past[b]) * H);
    }
}

/// How GroupQueryAttention turns scores into probabilities: scale, softcap (0: none), local
/// window (<= 0: none), the extra softmax logit per head (head_sink, or 0 for smooth_softmax),
/// attention_bias.
struct gqa_scoring {
  float scale = 1.0f, softcap = 0.0f;
  std::int64_t window = -1;
  const value* sink = nullptr;
  bool smooth = false;
  const attention_bias_view* bias = nullptr;
};

/// output [B, S, N H]: per query head n (key/value head n / group), query s of entry b attends
/// to keys [lo, past[b] + s] (lo from the local window): softmax(softcap(scale Q K^T) + bias) V.
void gqa_attend(const std::vector<float>& qh, const value& present_k, const value& present_v,
                const gqa_sizes& z, const std::vector<std::size_t>& past, const gqa_scoring& o,
                value& y) {
  const std::size_t S = z.S, N = z.N, H = z.H, Pres = z.Pres;
  std::vector<float> scores;
  for (std::size_t b = 0; b < z.B; ++b) {
    const std::size_t T = past[b] + S;  // keys this entry can see
    scores.assign(S * T, 0.0f);
    for (std::size_t n = 0; n < N; ++n) {
      const std::size_t kv = b * z.Nkv + n / z.group;
      qk_scores(qh.data() + (b * N + n) * S * H, present_k.f.data() + kv * Pres * H, S, T, H,
                o.scale, scores.data());
      const float zero = 0.0f;
      const float* extra = o.sink ? &o.sink->f[n] : (o.smooth ? &zero : nullptr);
      for (std::size_t s = 0; s < S; ++s) {
        float* row = scores.data() + s * T;
        const std::size_t hi = past[b] + s + 1;
        const std::size_t lo = o.window > 0 && hi > to_size(o.window) ? hi - to_size(o.window) : 0;
        const float* add = o.bias->row(b, n, s);
        for (std::size_t j = lo; j < hi; ++j) {
          if (o.softcap > 0.0f) row[j] = o.softcap * std::tanh(row[j] / o.softcap);
          if (add) row[j] += add[j];
        }
        softmax_range(row, T, lo, hi, extra);
      }
      apply_values(scores.data(), present_v.f.data() + kv * Pres * H, S, T, H,
                   y.f.data() + b * S * N * H + n * H, N * H);
    }
  }
}

/// com.microsoft GroupQueryAttention (CPU form): query [B, S, N*H] (or packed QKV
/// [B, S, (N + 2 Nkv) H] when key and value are absent), key/value [B, S, Nkv*H], past_key/
/// past_value [B, Nkv, P, H], seqlens_k [B] (total length - 1 per batch entry),
/// total_sequence_length (scalar), cos_cache/sin_cache [max_position, rot / 2] for do_rotary,
/// attention_bias [B|1, N|1, S, total], head_sink [N].
///
/// The first prompt is S == total_sequence_length (no past is read); otherwise entry b holds
/// past = seqlens_k[b] + 1 - S earlier positions. Query s sits at position past + s and attends to
/// keys [0, past + s] (the causal mask), or with local_window_size = W > 0 to the last W of them,
/// [past + s - W + 1, past + s], as ONNX Runtime 1.30 does. Scores are scaled, soft-capped (softcap
/// * tanh(x / softcap)), biased, then softmaxed. present_key/present_value [B, Nkv, max(total, P),
/// H] hold the past rows, then the new (rotated) rows, zeros after.
void op_group_query_attention(const node_context& c, const model&, const inputs_t& in,
                              std::vector<value>& out) {
  const value& q = need_float(c, in, 0, "query");
  const value* key = optional_float(c, in, 1, "key");
  const value* val = optional_float(c, in, 2, "value");
  const value* past_k = optional_float(c, in, 3, "past_key");
  const value* past_v = optional_float(c, in, 4, "past_value");
  const value& seqlens = need_int(c, in, 5, "seqlens_k");
  const value& total_v = need_int(c, in, 6, "total_sequence_length");
  const value* cos = optional_float(c, in, 7, "cos_cache");
  const value* sin = optional_float(c, in, 8, "sin_cache");
  if (optional_input(in, 9)) c.fail("position_ids is not supported");
  const value* attn_bias = optional_float(c, in, 10, "attention_bias");
  const value* sink = optional_float(c, in, 11, "head_sink");
  gqa_refuse_unsupported(c, in);
  const gqa_sizes z = gqa_check_shapes(c, q, key, val, past_k, past_v, seqlens, total_v);
  const std::size_t B = z.B, S = z.S, D = z.D, N = z.N, Nkv = z.Nkv, H = z.H;
  const bool do_rotary = attr_int(c.node, "do_rotary", 0) != 0;
  const bool interleaved = attr_int(c.node, "rotary_interleaved", 0) != 0;
  std::size_t rot = 0;
  if (do_rotary) {
    if (!cos || !sin) c.fail("do_rotary needs cos_cache and sin_cache");
    rot = check_caches(c, *cos, *sin);
    if (rot > H)
      c.fail("the caches rotate " + std::to_string(rot) + " elements of a head of " +
             std::to_string(H));
  }
  gqa_scoring scoring;
  scoring.scale = attr_float(c.node, "scale", 0.0f);
  if (scoring.scale == 0.0f) scoring.scale = 1.0f / std::sqrt(float(H));
  scoring.softcap = attr_float(c.node, "softcap", 0.0f);
  scoring.window = attr_int(c.node, "local_window_size", -1);
  scoring.smooth = attr_int(c.node, "smooth_softmax", 0) != 0;
  scoring.sink = sink;
  if (sink) check_vector(c, *sink, z.heads, "head_sink");
  const attention_bias_view ab(c, attn_bias, B, N, S, to_size(z.total));
  scoring.bias = &ab;
  const std::vector<std::size_t> past = gqa_past_lengths(c, seqlens, z);

  // Heads: Q [B, N, S, H], new K and V [B, Nkv, S, H].
  const float* k_src = z.packed ? q.f.data() + N * H : key->f.data();
  const float* v_src = z.packed ? q.f.data() + (N + Nkv) * H : val->f.data();
  const std::size_t kv_stride = z.packed ? D : Nkv * H;
  std::vector<float> qh = to_heads(q.f.data(), B, S, N, H, D, nullptr);
  std::vector<float> kh = to_heads(k_src, B, S, Nkv, H, kv_stride, nullptr);
  const std::vector<float> vh = to_heads(v_src, B, S, Nkv, H, kv_stride, nullptr);
  if (do_rotary) {
    gqa_rotate(c, qh, N, z, past, *cos, *sin, rot, interleaved);
    gqa_rotate(c, kh, Nkv, z, past, *cos, *sin, rot, interleaved);
  }
  value present_k = value::floats({q.shape[0], z.kv_heads, std::int64_t(z.Pres), std::int64_t(H)},
                                  std::vector<float>(B * Nkv * z.Pres * H, 0.0f));
  value present_v = present_k;
  gqa_present(kh, vh, past_k, past_v, z, past, present_k, present_v);

  value y = value::floats({q.shape[0], q.shape[1], std::int64_t(N * H)},
                          std::vector<float>(B * S * N * H));
  gqa_attend(qh, present_k, present_v, z, past, scoring, y);
  out.push_back(std::move(y));
  out.push_back(std::move(present_k));
  out.push_back(std::move(present_v));
}

// ---- GatherBlockQuantized
// ------------------------------------------------------------------------------

/// The ONNX data type of the tensor named `name`: an initializer or a Constant node's value;
/// -1 when it is neither.
int constant_type(const model& m, const std::string& name) {
  for (const TensorProto& t : m.proto.graph().initializer())
    if (t.name() == name) return t.data_type();
  for (const NodeProto& n : m.proto.graph().node()) {
    if (n.op_type() != "Constant" || n.output_size() < 1 || n.output(0) != name) continue;
    if (const AttributeProto* a = find_attr(n, "value")) return a->t().data_type();
  }
  return -1;
}

/// Codes of a uint8 tensor holding 8 / bits codes per byte along its last axis (low bits first):
/// the last dimension grows to `last` codes.
std::vector<std::int64_t> unpack_last_axis(const node_context& c, const value& v, int bits,
                                           std::int64_t last, shape_t& shape, const char* what) {
  const std::int64_t per_byte = 8 / bits;
  shape = v.shape;
  if (shape.empty()) c.fail(std::string(what) + " must have rank >= 1");
  const std::int64_t bytes = shape.back();
  if ((last + per_byte - 1) / per_byte != bytes)
    c.fail(std::string(what) + " has " + std::to_string(bytes) + " bytes per row for " +
           std::to_string(last) + " " + std::to_string(bits) + "-bit codes");
  shape.back() = last;
  const std::size_t rows = v.size() / std::max<std::size_t>(to_size(bytes), 1);
  std::vector<std::int64_t> codes(rows * to_size(last));
  const std::int64_t mask = (1 << bits) - 1;
  for (std::size_t r = 0; r < rows; ++r)
    for (std::int64_t k = 0; k < last; ++k) {
      const std::int64_t byte = v.i[r * to_size(bytes) + to_size(k / per_byte)];
      if (byte < 0 || byte > 255) c.fail(std::string(what) + " holds a value outside uint8");
      codes[r * to_size(last) + to_size(k)] = (byte >> (bits * (k % per_byte))) & mask;
    }
  return codes;
}

/// GatherBlockQuantized's zero points, one per scale: `zp` (uint8 holding 8 / bits codes per byte
/// when `packed_bytes`, unpacked), else 2^(bits-1) for packed bytes and 0 for int4/uint4.
std::vector<std::int64_t> block_zero_points(const node_context& c, const value* zp,
                                            const value& scales, bool packed_bytes, int bits) {
  std::vector<std::int64_t> zps(scales.size(), packed_bytes ? std::int64_t(1) << (bits - 1) : 0);
  if (!zp) return zps;
  if (packed_bytes && bits < 8) {
    shape_t zshape;
    zps = unpack_last_axis(c, *zp, bits, scales.shape.back(), zshape, "zero_points");
    if (zshape != scales.shape)
      c.fail("zero_points do not match scales " + dims_string(scales.shape));
  } else {
    if (zp->shape != scales.shape)
      c.fail("zero_points has shape " + dims_string(zp->shape) + ", scales " +
             dims_string(scales.shape));
    zps = zp->i;
  }
  return zps;
}

/// Block-quantized data: codes of logical `shape`, one scale and zero point per `block`
/// elements along `qaxis` (scales and zero points of scales.shape).
struct block_quantized {
  const std::vector<std::int64_t>& codes;
  const shape_t& shape;
  const value& scales;
  const std::vector<std::int64_t>& zps;
  std::size_t qaxis, block;
};

/// Gather of the dequantized data along `gaxis`, (code - zero_point) * scale: output
/// [shape[:g], indices.shape, shape[g+1:]].
value gather_dequantized(const node_context& c, const block_quantized& d, const value& indices,
                         std::size_t gaxis) {
  const shape_t& shape = d.shape;
  const std::size_t rank = shape.size();
  const std::int64_t dim = shape[gaxis];
  shape_t ids = indices.i;
  for (std::int64_t& v : ids) v = checked_index(c, v, dim);
  std::size_t outer = 1, inner = 1;
  for (std::size_t k = 0; k < gaxis; ++k) outer *= to_size(shape[k]);
  for (std::size_t k = gaxis + 1; k < rank; ++k) inner *= to_size(shape[k]);
  value r;
  r.shape.assign(shape.begin(), shape.begin() + static_cast<std::ptrdiff_t>(gaxis));
  r.shape.insert(r.shape.end(), indices.shape.begin(), indices.shape.end());
  r.shape.insert(r.shape.end(), shape.begin() + static_cast<std::ptrdiff_t>(gaxis) + 1,
                 shape.end());
  r.f.resize(outer * ids.size() * inner);
  const shape_t dstride = strides_of(shape), sstride = strides_of(d.scales.shape);
  std::size_t o = 0;
  for (std::size_t p = 0; p < outer; ++p)
    for (const std::int64_t ix : ids)
      for (std::size_t q = 0; q < inner; ++q, ++o) {
        const std::size_t flat = (p * to_size(dim) + to_size(ix)) * inner + q;
        std::size_t rest = flat, sflat = 0;
        for (std::size_t k = 0; k < rank; ++k) {
          std::size_t coord = rest / to_size(dstride[k]);
          rest %= to_size(dstride[k]);
          if (k == d.qaxis) coord /= d.block;
          sflat += coord * to_size(sstride[k]);
        }
        r.f[o] = static_cast<float>(d.codes[flat] - d.zps[sflat]) * d.scales.f[sflat];
      }
  return r;
}

/// com.microsoft GatherBlockQuantized: Gather of `data` (uint4, int4, or uint8 holding 8 / bits
/// codes per byte along the last axis) dequantized as (code - zero_point) * scale, one scale per
/// block_size elements along quantize_axis. Without zero_points: 0 for int4 and uint4, 2^(bits-1)
/// for uint8. The data's element type is read from its initializer (or Constant node).
void op_gather_block_quantized(const node_context& c, const model& m, const inputs_t& in,
                               std::vector<value>& out) {
  const value& data = need_int(c, in, 0, "data");
  const value& indices = need_int(c, in, 1, "indices");
  const value& scales = need_float(c, in, 2, "scales");
  const value* zp = optional_input(in, 3);
  const int dtype = constant_type(m, c.node.input(0));
  if (dtype != onnx_uint4 && dtype != onnx_int4 && dtype != TensorProto::UINT8)
    c.fail(
        "data must be an initializer of type uint4, int4 or uint8 (its type decides the "
        "layout), got " +
        (dtype < 0 ? std::string("a computed value") : "type " + std::to_string(dtype)));
  const bool packed_bytes = dtype == TensorProto::UINT8;
  const int bits = packed_bytes ? static_cast<int>(attr_int(c.node, "bits", 4)) : 4;
  if (bits != 2 && bits != 4 && bits != 8)
    c.fail("bits must be 2, 4 or 8, not " + std::to_string(bits));
  const std::int64_t block = attr_int(c.node, "block_size", 128);
  if (block < 16 || (block & (block - 1)) != 0)
    c.fail("block_size must be a power of 2 and at least 16, not " + std::to_string(block));
  if (zp && zp->type != value_type::int64) c.fail("zero_points must be an integer tensor");
  if (zp && c.node.input_size() > 3 && constant_type(m, c.node.input(3)) >= 0 &&
      constant_type(m, c.node.input(3)) != dtype)
    c.fail("zero_points must have the data's element type");

  // Logical codes and shape of data, scales' shape.
  shape_t shape = data.shape;
  std::vector<std::int64_t> codes = data.i;
  const std::size_t rank = shape.size();
  if (rank == 0) c.fail("data must have rank >= 1");
  if (scales.shape.size() != rank)
    c.fail("scales has rank " + std::to_string(scales.shape.size()) + ", data rank " +
           std::to_string(rank));
  if (packed_bytes && bits < 8) {
    const std::int64_t last = data.shape.back() * (8 / bits);
    codes = unpack_last_axis(c, data, bits, last, shape, "data");
  }
  const auto gaxis = to_size(normalize_axis(c, attr_int(c.node, "gather_axis", 0), rank));
  const auto qaxis = to_size(normalize_axis(c, attr_int(c.node, "quantize_axis", 1), rank));
  for (std::size_t k = 0; k < rank; ++k) {
    const std::int64_t want = k == qaxis ? (shape[k] + block - 1) / block : shape[k];
    if (scales.shape[k] != want)
      c.fail("scales has shape " + dims_string(scales.shape) + " for data of logical shape " +
             dims_string(shape) + " with block_size " + std::to_string(block) + " along axis " +
             std::to_string(qaxis));
  }
  const std::vector<std::int64_t> zps = block_zero_points(c, zp, scales, packed_bytes, bits);
  block_quantized q{codes, shape, scales, zps, qaxis, to_size(block)};
  out.push_back(gather_dequantized(c, q, indices, gaxis));
}

}  // namespace

void add_ms_ops(std::unordered_map<std::string, op_fn>& ops) {
  // ONNX Runtime registers SimplifiedLayerNormalization in the default (ONNX) domain only: 1.30
  // refuses a com.microsoft SimplifiedLayerNormalization node ("not a registered function/op").
  ops["SimplifiedLayerNormalization"] = op_simplified_layer_norm;
  ops["com.microsoft::SkipLayerNormalization"] = [](const node_context& c, const model&,
                                                    const inputs_t& in, std::vector<value>& out) {
    skip_norm(c, in, out, false);
  };
  ops["com.microsoft::SkipSimplifiedLayerNormalization"] =
      [](const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
        skip_norm(c, in, out, true);
      };
  ops["com.microsoft::Gelu"] = [](const node_context& c, const model&, const inputs_t& in,
                                  std::vector<value>& out) {
    if (optional_input(in, 1)) c.fail("takes one input");
    gelu_like(c, in, out, false, gelu_erf);
  };
  ops["com.microsoft::BiasGelu"] = [](const node_context& c, const model&, const inputs_t& in,
                                      std::vector<value>& out) {
    gelu_like(c, in, out, true, gelu_erf);
  };
  ops["com.microsoft::FastGelu"] = [](const node_context& c, const model&, const inputs_t& in,
                                      std::vector<value>& out) {
    gelu_like(c, in, out, false, gelu_tanh);
  };
  ops["com.microsoft::QuickGelu"] = [](const node_context& c, const model&, const inputs_t& in,
                                       std::vector<value>& out) {
    const double alpha = attr_float(c.node, "alpha", 1.702f);
    gelu_like(c, in, out, false, [alpha](double x) { return x / (1.0 + std::exp(-alpha * x)); });
  };
  ops["com.microsoft::RotaryEmbedding"] = op_rotary_embedding;
  ops["com.microsoft::MultiHeadAttention"] = op_multi_head_attention;
  ops["com.microsoft::GroupQueryAttention"] = op_group_query_attention;
  ops["com.microsoft::GatherBlockQuantized"] = op_gather_block_quantized;
}

}  // namespace exec
}  // namespace onnx
}  // namespace int4q

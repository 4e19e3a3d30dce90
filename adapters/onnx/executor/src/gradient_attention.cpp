// VJPs of the executor's com.microsoft attention operators (MultiHeadAttention,
// GroupQueryAttention) for the forms a block of a prompt uses: no past key/value. Per head, with
// the probabilities P recomputed from Q and K as the forward computes them:
//   O = P V, P = softmax(X) row-wise over the keys a query sees, X = cap(scale Q K^T) + bias
//   (+ mask_filter_value where masked; cap(x) = c tanh(x / c) for softcap c, else x).
//   dV = P^T dO, dP = dO V^T, dX = P (dP - rowsum(dP P)), dbias = dX,
//   dQ = scale (dX cap') K, dK = scale (dX cap')^T Q (cap' = 1 - tanh^2, or 1).
// An extra softmax logit (head_sink, smooth_softmax) only joins the denominator: the formula
// holds with P including it. GroupQueryAttention's rotary embedding is undone on dQ and dK by the
// RotaryEmbedding operator with the sine negated (a rotation's transpose), and a key/value head
// shared by a group of query heads sums their gradients.
#include <cmath>
#include <string>
#include <vector>

#include "executor_detail.hpp"
#include "gradient_detail.hpp"

namespace int4q {
namespace onnx {
namespace exec {

namespace {

using gin_t = std::vector<std::optional<value>>;

std::size_t to_size(std::int64_t v) { return static_cast<std::size_t>(v); }

/// One head's attention: Q [S, H], K [T, H], V [T, Hv] (rows contiguous), query s seeing keys
/// [lo[s], hi[s]).
struct head_problem {
  std::size_t S = 0, T = 0, H = 0, Hv = 0;
  float scale = 1, softcap = 0;
  const float* sink = nullptr;  ///< an extra logit in each row's denominator
  std::vector<std::size_t> lo, hi;
};

/// Accumulates one head's dQ [S, H], dK [T, H], dV [T, Hv] (+=) and, when dbias is given, the
/// gradient of each row's additive bias into dbias [S, T] (+=), from dO [S, Hv] (row stride
/// ldo). add(s) is row s's additive bias (nullptr: none); masked (S x T flags, may be null)
/// rows get mask_value added.
template <class AddRow>
void head_backward(const head_problem& h, const float* q, const float* k, const float* v,
                   AddRow add, const char* masked, float mask_value, const float* dout,
                   std::size_t ldo, float* dq, float* dk, float* dv, float* dbias) {
  const std::size_t S = h.S, T = h.T;
  if (S == 0 || T == 0) return;
  std::vector<float> p(S * T, 0.0f), cap(h.softcap > 0 ? S * T : 0), dp(S * T);
  int4q::detail::blas::gemm(false, true, S, T, h.H, h.scale, q, h.H, k, h.H, 0.0f, p.data(), T);
  std::vector<double> x(T);
  for (std::size_t s = 0; s < S; ++s) {
    float* row = p.data() + s * T;
    const float* a = add(s);
    double mx = h.sink ? double(*h.sink) : -INFINITY;
    for (std::size_t j = h.lo[s]; j < h.hi[s]; ++j) {
      double xj = row[j];
      if (h.softcap > 0) {
        const double t = std::tanh(xj / h.softcap);
        xj = h.softcap * t;
        cap[s * T + j] = static_cast<float>(1.0 - t * t);
      }
      if (a) xj += a[j];
      if (masked && masked[s * T + j]) xj += mask_value;
      x[j] = xj;
      mx = std::max(mx, xj);
    }
    double sum = h.sink ? std::exp(double(*h.sink) - mx) : 0.0;
    for (std::size_t j = h.lo[s]; j < h.hi[s]; ++j) sum += std::exp(x[j] - mx);
    for (std::size_t j = 0; j < T; ++j)
      row[j] = j >= h.lo[s] && j < h.hi[s] ? static_cast<float>(std::exp(x[j] - mx) / sum) : 0.0f;
  }
  // dV += P^T dO, dP = dO V^T.
  int4q::detail::blas::gemm(true, false, T, h.Hv, S, 1.0f, p.data(), T, dout, ldo, 1.0f, dv, h.Hv);
  int4q::detail::blas::gemm(false, true, S, T, h.Hv, 1.0f, dout, ldo, v, h.Hv, 0.0f, dp.data(), T);
  for (std::size_t s = 0; s < S; ++s) {
    float* ds = dp.data() + s * T;
    const float* pr = p.data() + s * T;
    double dot = 0;
    for (std::size_t j = 0; j < T; ++j) dot += double(ds[j]) * pr[j];
    for (std::size_t j = 0; j < T; ++j) {
      double d = pr[j] * (double(ds[j]) - dot);
      if (dbias) dbias[s * T + j] += static_cast<float>(d);
      if (!cap.empty()) d *= cap[s * T + j];
      ds[j] = static_cast<float>(d);
    }
  }
  // dQ += scale dX K, dK += scale dX^T Q.
  int4q::detail::blas::gemm(false, false, S, h.H, T, h.scale, dp.data(), T, k, h.H, 1.0f, dq, h.H);
  int4q::detail::blas::gemm(true, false, T, h.H, S, h.scale, dp.data(), T, q, h.H, 1.0f, dk, h.H);
}

/// [B, L, N*H] at `src` (rows of `stride`, plus bias[n*H + h]) -> heads [B, N, L, H]; and back,
/// adding into the rows (to_rows).
std::vector<float> heads_of(const float* src, std::size_t B, std::size_t L, std::size_t N,
                            std::size_t H, std::size_t stride, const float* bias) {
  std::vector<float> dst(B * N * L * H);
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t l = 0; l < L; ++l)
      for (std::size_t n = 0; n < N; ++n)
        for (std::size_t e = 0; e < H; ++e)
          dst[((b * N + n) * L + l) * H + e] =
              src[(b * L + l) * stride + n * H + e] + (bias ? bias[n * H + e] : 0.0f);
  return dst;
}
void add_to_rows(const std::vector<float>& heads, std::size_t B, std::size_t L, std::size_t N,
                 std::size_t H, std::size_t stride, float* dst) {
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t l = 0; l < L; ++l)
      for (std::size_t n = 0; n < N; ++n)
        for (std::size_t e = 0; e < H; ++e)
          dst[(b * L + l) * stride + n * H + e] += heads[((b * N + n) * L + l) * H + e];
}

/// attention_bias [B|1, N|1, S, T]: row (b, n, s) and the matching gradient row.
struct bias_rows {
  const value* v = nullptr;
  std::size_t bstride = 0, nstride = 0, T = 0;
  bias_rows(const value* bias, std::size_t S, std::size_t T_) : v(bias), T(T_) {
    if (!bias || bias->shape.size() != 4) return;
    nstride = bias->shape[1] == 1 ? 0 : S * T;
    bstride = bias->shape[0] == 1 ? 0 : to_size(bias->shape[1]) * S * T;
  }
  std::size_t offset(std::size_t b, std::size_t n) const { return b * bstride + n * nstride; }
};

value zeros_of(const value& like) {
  return value::floats(like.shape, std::vector<float>(like.size(), 0.0f));
}

/// dL/d(output 0), refused when that output is not kept (unnamed).
const value& output_grad(const vjp_args& a) {
  if (a.grad.empty() || !a.grad[0]) a.c.fail("cannot differentiate without output 0");
  return *a.grad[0];
}

void refuse_past(const vjp_args& a, std::size_t past_k, std::size_t past_v) {
  if (optional_input(a.in, past_k) || optional_input(a.in, past_v))
    a.c.fail(
        "cannot differentiate through attention with past_key/past_value (a block of a "
        "prompt has none)");
}

/// com.microsoft MultiHeadAttention: query [B, S, D], key/value [B, L, D]/[B, L, Dv] or
/// [B, N, L, H]/[B, N, L, Hv], bias [2D + Dv], key_padding_mask, attention_bias, unidirectional;
/// no past. Outputs 1 and 2 (present key/value: the heads of key and value) pass their gradients
/// on to key and value.
void vjp_multi_head_attention(const vjp_args& a, gin_t& gin) {
  refuse_past(a, 6, 7);
  const value& q = *a.in[0];
  const value& key = *a.in[1];
  const value& val = *a.in[2];
  const value* bias = optional_input(a.in, 3);
  const value* mask = optional_input(a.in, 4);
  const value* attn_bias = optional_input(a.in, 5);
  const value& g = output_grad(a);
  const std::size_t N = to_size(attr_int(a.c.node, "num_heads", 0));
  const std::size_t B = to_size(q.shape[0]), S = to_size(q.shape[1]), D = to_size(q.shape[2]);
  const std::size_t H = D / N;
  const bool kv_heads = key.shape.size() == 4;
  const std::size_t L = to_size(kv_heads ? key.shape[2] : key.shape[1]);
  const std::size_t Hv = kv_heads ? to_size(val.shape[3]) : to_size(val.shape[2]) / N;
  const std::size_t Dv = N * Hv, T = L;
  head_problem h;
  h.S = S, h.T = T, h.H = H, h.Hv = Hv;
  h.scale = attr_float(a.c.node, "scale", 0.0f);
  if (h.scale == 0.0f) h.scale = 1.0f / std::sqrt(float(H));
  h.lo.assign(S, 0);
  h.hi.assign(S, T);
  const float mask_value = attr_float(a.c.node, "mask_filter_value", -10000.0f);
  const bool causal = attr_int(a.c.node, "unidirectional", 0) != 0;
  // Masked flags [B, S, T], as the forward builds them.
  std::vector<char> masked(B * S * T, 0);
  if (mask) {
    const shape_t& ms = mask->shape;
    for (std::size_t b = 0; b < B; ++b)
      for (std::size_t s = 0; s < S; ++s)
        for (std::size_t j = 0; j < T; ++j) {
          char& m = masked[(b * S + s) * T + j];
          if (ms.size() == 1) m = j >= to_size(std::max<std::int64_t>(mask->i[b], 0));
          if (ms.size() == 2) m = mask->i[b * T + j] == 0;
          if (ms.size() == 3) m = mask->i[(b * S + s) * T + j] == 0;
        }
  }
  if (causal)
    for (std::size_t b = 0; b < B; ++b)
      for (std::size_t s = 0; s < S; ++s)
        for (std::size_t j = s + 1; j < T; ++j) masked[(b * S + s) * T + j] = 1;
  const std::vector<float> qh =
      heads_of(q.f.data(), B, S, N, H, D, bias ? bias->f.data() : nullptr);
  const std::vector<float> kh =
      kv_heads ? key.f : heads_of(key.f.data(), B, L, N, H, D, bias ? bias->f.data() + D : nullptr);
  const std::vector<float> vh =
      kv_heads ? val.f
               : heads_of(val.f.data(), B, L, N, Hv, Dv, bias ? bias->f.data() + 2 * D : nullptr);
  std::vector<float> dqh(qh.size(), 0.0f), dkh(kh.size(), 0.0f), dvh(vh.size(), 0.0f);
  const bias_rows ab(attn_bias, S, T);
  const bool want_ab = attn_bias && a.need[5];
  value dab = want_ab ? zeros_of(*attn_bias) : value();
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t n = 0; n < N; ++n) {
      const std::size_t bn = b * N + n;
      const float* abp = attn_bias ? attn_bias->f.data() + ab.offset(b, n) : nullptr;
      head_backward(
          h, qh.data() + bn * S * H, kh.data() + bn * T * H, vh.data() + bn * T * Hv,
          [&](std::size_t s) { return abp ? abp + s * T : nullptr; }, masked.data() + b * S * T,
          mask_value, g.f.data() + b * S * Dv + n * Hv, Dv, dqh.data() + bn * S * H,
          dkh.data() + bn * T * H, dvh.data() + bn * T * Hv,
          want_ab ? dab.f.data() + ab.offset(b, n) : nullptr);
    }
  // Present key/value are the heads themselves.
  for (std::size_t o : {std::size_t(1), std::size_t(2)}) {
    if (o >= a.grad.size() || !a.grad[o]) continue;
    std::vector<float>& dst = o == 1 ? dkh : dvh;
    for (std::size_t e = 0; e < dst.size(); ++e) dst[e] += a.grad[o]->f[e];
  }
  value dq = zeros_of(q), dk = zeros_of(key), dv = zeros_of(val);
  add_to_rows(dqh, B, S, N, H, D, dq.f.data());
  if (kv_heads) {
    dk.f = dkh;
    dv.f = dvh;
  } else {
    add_to_rows(dkh, B, L, N, H, D, dk.f.data());
    add_to_rows(dvh, B, L, N, Hv, Dv, dv.f.data());
  }
  if (bias && a.need[3]) {  // the sums over rows of dq, dk, dv
    value db = zeros_of(*bias);
    for (std::size_t r = 0; r < B * S; ++r)
      for (std::size_t e = 0; e < D; ++e) db.f[e] += dq.f[r * D + e];
    for (std::size_t r = 0; r < B * L; ++r)
      for (std::size_t e = 0; e < D; ++e) db.f[D + e] += dk.f[r * D + e];
    for (std::size_t r = 0; r < B * L; ++r)
      for (std::size_t e = 0; e < Dv; ++e) db.f[2 * D + e] += dv.f[r * Dv + e];
    gin[3] = std::move(db);
  }
  if (want_ab) gin[5] = std::move(dab);
  if (a.need[0]) gin[0] = std::move(dq);
  if (a.need[1]) gin[1] = std::move(dk);
  if (a.need[2]) gin[2] = std::move(dv);
}

/// Heads [B, n, S, H] rotated as GroupQueryAttention's do_rotary rotates them (positions
/// 0..S-1: no past), by the RotaryEmbedding operator; with `back`, the sine negated: the
/// transpose of the rotation, which takes a gradient back through it.
std::vector<float> rotate_heads(const vjp_args& a, std::vector<float> heads, std::size_t B,
                                std::size_t n, std::size_t S, std::size_t H, bool back) {
  const value& cos = *a.in[7];
  value sin = *a.in[8];
  if (back)
    for (float& x : sin.f) x = -x;
  NodeProto rot;
  rot.set_op_type("RotaryEmbedding");
  rot.set_domain("com.microsoft");
  rot.set_name(a.c.node.name());
  AttributeProto* il = rot.add_attribute();
  il->set_name("interleaved");
  il->set_type(AttributeProto::INT);
  il->set_i(attr_int(a.c.node, "rotary_interleaved", 0));
  value x = value::floats({std::int64_t(B), std::int64_t(n), std::int64_t(S), std::int64_t(H)},
                          std::move(heads));
  std::vector<std::int64_t> pos(B * S);
  for (std::size_t e = 0; e < pos.size(); ++e) pos[e] = std::int64_t(e % S);
  const value positions = value::ints({std::int64_t(B), std::int64_t(S)}, pos);
  const node_context rc{rot, nullptr, nullptr};
  std::vector<value> r;
  registry().at("com.microsoft::RotaryEmbedding")(rc, a.m, {&x, &positions, &cos, &sin}, r);
  return std::move(r.at(0).f);
}

/// com.microsoft GroupQueryAttention for a first prompt (no past, S = total_sequence_length):
/// query [B, S, N H] with key/value [B, S, Nkv H], or packed QKV; do_rotary; softcap;
/// local_window_size; smooth_softmax or head_sink (no gradient to it); attention_bias.
void vjp_group_query_attention(const vjp_args& a, gin_t& gin) {
  refuse_past(a, 3, 4);
  if (optional_input(a.in, 11) && a.need[11])
    a.c.fail("cannot differentiate through GroupQueryAttention with respect to head_sink");
  const value& q = *a.in[0];
  const value* key = optional_input(a.in, 1);
  const value* val = optional_input(a.in, 2);
  const value* attn_bias = optional_input(a.in, 10);
  const value* sink = optional_input(a.in, 11);
  const value& g = output_grad(a);
  const std::size_t N = to_size(attr_int(a.c.node, "num_heads", 0));
  const std::size_t Nkv = to_size(attr_int(a.c.node, "kv_num_heads", 0));
  const std::size_t B = to_size(q.shape[0]), S = to_size(q.shape[1]), D = to_size(q.shape[2]);
  const bool packed = key == nullptr;
  const std::size_t H = D / (packed ? N + 2 * Nkv : N), group = N / Nkv, T = S;
  if (a.in[6]->i.at(0) != std::int64_t(S))
    a.c.fail(
        "cannot differentiate through GroupQueryAttention past a first prompt "
        "(total_sequence_length must equal the sequence length)");
  head_problem h;
  h.S = S, h.T = T, h.H = H, h.Hv = H;
  h.scale = attr_float(a.c.node, "scale", 0.0f);
  if (h.scale == 0.0f) h.scale = 1.0f / std::sqrt(float(H));
  h.softcap = attr_float(a.c.node, "softcap", 0.0f);
  const std::int64_t window = attr_int(a.c.node, "local_window_size", -1);
  const float zero = 0.0f;
  const bool smooth = attr_int(a.c.node, "smooth_softmax", 0) != 0;
  for (std::size_t s = 0; s < S; ++s) {
    h.hi.push_back(s + 1);
    h.lo.push_back(window > 0 && s + 1 > to_size(window) ? s + 1 - to_size(window) : 0);
  }
  const bool rotary = attr_int(a.c.node, "do_rotary", 0) != 0;
  const float* k_src = packed ? q.f.data() + N * H : key->f.data();
  const float* v_src = packed ? q.f.data() + (N + Nkv) * H : val->f.data();
  const std::size_t kv_stride = packed ? D : Nkv * H;
  std::vector<float> qh = heads_of(q.f.data(), B, S, N, H, D, nullptr);
  std::vector<float> kh = heads_of(k_src, B, S, Nkv, H, kv_stride, nullptr);
  const std::vector<float> vh = heads_of(v_src, B, S, Nkv, H, kv_stride, nullptr);
  if (rotary) {  // as the forward rotates them
    qh = rotate_heads(a, std::move(qh), B, N, S, H, false);
    kh = rotate_heads(a, std::move(kh), B, Nkv, S, H, false);
  }
  std::vector<float> dqh(qh.size(), 0.0f), dkh(kh.size(), 0.0f), dvh(vh.size(), 0.0f);
  const bias_rows ab(attn_bias, S, T);
  const bool want_ab = attn_bias && a.need[10];
  value dab = want_ab ? zeros_of(*attn_bias) : value();
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t n = 0; n < N; ++n) {
      const std::size_t bn = b * N + n, kv = b * Nkv + n / group;
      h.sink = sink ? &sink->f[n] : (smooth ? &zero : nullptr);
      const float* abp = attn_bias ? attn_bias->f.data() + ab.offset(b, n) : nullptr;
      head_backward(
          h, qh.data() + bn * S * H, kh.data() + kv * T * H, vh.data() + kv * T * H,
          [&](std::size_t s) { return abp ? abp + s * T : nullptr; }, nullptr, 0.0f,
          g.f.data() + b * S * N * H + n * H, N * H, dqh.data() + bn * S * H,
          dkh.data() + kv * T * H, dvh.data() + kv * T * H,
          want_ab ? dab.f.data() + ab.offset(b, n) : nullptr);
    }
  for (std::size_t o : {std::size_t(1), std::size_t(2)}) {  // present key/value: the heads
    if (o >= a.grad.size() || !a.grad[o]) continue;
    std::vector<float>& dst = o == 1 ? dkh : dvh;
    for (std::size_t e = 0; e < dst.size(); ++e) dst[e] += a.grad[o]->f[e];
  }
  if (rotary) {
    dqh = rotate_heads(a, std::move(dqh), B, N, S, H, true);
    dkh = rotate_heads(a, std::move(dkh), B, Nkv, S, H, true);
  }
  value dq = zeros_of(q);
  add_to_rows(dqh, B, S, N, H, D, dq.f.data());
  if (packed) {
    add_to_rows(dkh, B, S, Nkv, H, D, dq.f.data() + N * H);
    add_to_rows(dvh, B, S, Nkv, H, D, dq.f.data() + (N + Nkv) * H);
  } else {
    value dk = zeros_of(*key), dv = zeros_of(*val);
    add_to_rows(dkh, B, S, Nkv, H, Nkv * H, dk.f.data());
    add_to_rows(dvh, B, S, Nkv, H, Nkv * H, dv.f.data());
    if (a.need[1]) gin[1] = std::move(dk);
    if (a.need[2]) gin[2] = std::move(dv);
  }
  if (a.need[0]) gin[0] = std::move(dq);
  if (want_ab) gin[10] = std::move(dab);
  for (const std::size_t k : {std::size_t(7), std::size_t(8)})
    if (optional_input(a.in, k) && a.need[k])
      a.c.fail(
          "cannot differentiate through GroupQueryAttention with respect to the cos/sin "
          "caches");
}

}  // namespace

void add_attention_vjps(std::unordered_map<std::string, vjp_fn>& v) {
  v["com.microsoft::MultiHeadAttention"] = vjp_multi_head_attention;
  v["com.microsoft::GroupQueryAttention"] = vjp_group_query_attention;
}

}  // namespace exec
}  // namespace onnx
}  // namespace int4q

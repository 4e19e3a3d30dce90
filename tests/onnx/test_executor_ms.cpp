// The executor's com.microsoft operators (and SimplifiedLayerNormalization) against plain scalar
// references written here from ONNX Runtime's documented formulas (double accumulation), and
// their errors. tests/ort (ort.exec.*) checks the same operators against ONNX Runtime itself.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>

#include "onnx/graph_builder.hpp"

namespace {

using int4q::onnx::executor;
using int4q::onnx::model;
using int4q::onnx::model_error;
using int4q::onnx::value;
using int4q::test::graph_builder;
using int4q::test::onnx_float;
using int4q::test::onnx_int32;
using int4q::test::onnx_int4;
using int4q::test::onnx_int64;
using int4q::test::onnx_uint4;
using int4q::test::onnx_uint8;
using int4q::test::random_values;
using int4q::test::set_attr;
using shape_t = std::vector<std::int64_t>;

// fp32 arithmetic (BLAS sgemm sums, float exp and tanh, float storage of every intermediate)
// against double references: a few float ulps of the largest terms, values of order 1.
constexpr double kAtol = 1e-5, kRtol = 1e-5;

const char* kMs = "com.microsoft";

graph_builder ms_graph(std::int64_t ir = 8) {
  graph_builder g(17, ir);
  g.set_opset(1, kMs);
  return g;
}

std::size_t numel(const shape_t& s) {
  std::size_t n = 1;
  for (const auto d : s) n *= static_cast<std::size_t>(d);
  return n;
}

value floats(const shape_t& shape, std::uint32_t seed, float scale = 1.0f) {
  return value::floats(shape, random_values(numel(shape), seed, scale));
}

std::map<std::string, value> run(const graph_builder& g, const std::map<std::string, value>& in) {
  const model m = g.model();
  const executor ex(m);
  return ex.run(in);
}

/// got == want (shape exactly, values within kAtol + kRtol |want|).
void expect_close(const value& got, const shape_t& shape, const std::vector<double>& want,
                  const std::string& what) {
  ASSERT_EQ(got.shape, shape) << what;
  ASSERT_EQ(got.f.size(), want.size()) << what;
  for (std::size_t e = 0; e < want.size(); ++e) {
    const double tol = kAtol + kRtol * std::fabs(want[e]);
    ASSERT_LE(std::fabs(got.f[e] - want[e]), tol)
        << what << " element " << e << ": expected " << want[e] << ", got " << got.f[e]
        << " (tolerance " << tol << ")";
  }
}

/// The message of the model_error that running `g` throws ("" if none).
std::string error_of(const graph_builder& g, const std::map<std::string, value>& in) {
  try {
    run(g, in);
  } catch (const model_error& e) {
    return e.what();
  }
  return "";
}

// ---- Normalizations
// ------------------------------------------------------------------------------

/// rows x len: y = x / sqrt(mean(x^2) + eps) * gamma[k], or (x - mean) / sqrt(var + eps) * gamma
/// + beta. Also the means and inverse standard deviations.
struct norm_ref {
  std::vector<double> y, mean, inv;
};
norm_ref normalize(const std::vector<double>& x, std::size_t len, bool rms, double eps,
                   const std::vector<float>& gamma, const std::vector<float>* beta) {
  norm_ref r;
  const std::size_t rows = x.size() / len;
  for (std::size_t i = 0; i < rows; ++i) {
    double mean = 0, ss = 0;
    for (std::size_t k = 0; k < len; ++k) mean += x[i * len + k] / len;
    for (std::size_t k = 0; k < len; ++k) {
      const double d = rms ? x[i * len + k] : x[i * len + k] - mean;
      ss += d * d / len;
    }
    const double inv = 1.0 / std::sqrt(ss + eps);
    r.mean.push_back(mean);
    r.inv.push_back(inv);
    for (std::size_t k = 0; k < len; ++k) {
      const double c = rms ? x[i * len + k] : x[i * len + k] - mean;
      r.y.push_back(c * inv * gamma[k] + (beta ? (*beta)[k] : 0.0));
    }
  }
  return r;
}

std::vector<double> as_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

TEST(ExecutorMs, SimplifiedLayerNormalizationLastAxisAndAxis1) {
  for (const std::int64_t axis : {std::int64_t(-1), std::int64_t(1)}) {
    graph_builder g;  // default domain, as ONNX Runtime registers it
    const shape_t xs{2, 3, 8};
    const shape_t ss = axis == 1 ? shape_t{3, 8} : shape_t{8};
    const value scale = floats(ss, 2);
    g.input("x", onnx_float, xs);
    g.initializer("scale", onnx_float, ss, scale.f);
    auto& n = g.node("SimplifiedLayerNormalization", {"x", "scale"}, {"y", "inv"}, "rms");
    set_attr(n, "axis", axis);
    set_attr(n, "epsilon", 1e-3f);
    g.output("y", onnx_float, xs);
    g.output("inv", onnx_float, {});
    const value x = floats(xs, 1, 2.0f);
    const auto out = run(g, {{"x", x}});
    const std::size_t len = numel(ss);
    const norm_ref r = normalize(as_double(x.f), len, true, 1e-3, scale.f, nullptr);
    expect_close(out.at("y"), xs, r.y, "Y axis " + std::to_string(axis));
    const shape_t stat = axis == 1 ? shape_t{2, 1, 1} : shape_t{2, 3, 1};
    expect_close(out.at("inv"), stat, r.inv, "inv_std_var");
  }
}

TEST(ExecutorMs, SkipLayerNormalizationAllOutputs) {
  const shape_t xs{2, 3, 16};
  graph_builder g = ms_graph();
  const value gamma = floats({16}, 3), beta = floats({16}, 4), bias = floats({16}, 5);
  g.input("x", onnx_float, xs);
  g.input("skip", onnx_float, xs);
  g.initializer("gamma", onnx_float, {16}, gamma.f);
  g.initializer("beta", onnx_float, {16}, beta.f);
  g.initializer("bias", onnx_float, {16}, bias.f);
  set_attr(g.node("SkipLayerNormalization", {"x", "skip", "gamma", "beta", "bias"},
                  {"y", "mean", "inv", "sum"}, "sln", kMs),
           "epsilon", 1e-5f);
  for (const char* o : {"y", "mean", "inv", "sum"}) g.output(o, onnx_float, {});
  const value x = floats(xs, 6), skip = floats(xs, 7);
  const auto out = run(g, {{"x", x}, {"skip", skip}});
  std::vector<double> s(x.f.size());
  for (std::size_t e = 0; e < s.size(); ++e) s[e] = double(x.f[e]) + skip.f[e] + bias.f[e % 16];
  const norm_ref r = normalize(s, 16, false, 1e-5, gamma.f, &beta.f);
  expect_close(out.at("y"), xs, r.y, "output");
  expect_close(out.at("mean"), {2, 3, 1}, r.mean, "mean");
  expect_close(out.at("inv"), {2, 3, 1}, r.inv, "inv_std_var");
  expect_close(out.at("sum"), xs, s, "input_skip_bias_sum");
}

TEST(ExecutorMs, SkipLayerNormalizationBroadcastsA2DSkipOverTheBatch) {
  const shape_t xs{2, 3, 8};
  graph_builder g = ms_graph();
  const value gamma = floats({8}, 8);
  g.input("x", onnx_float, xs);
  g.input("skip", onnx_float, {3, 8});
  g.initializer("gamma", onnx_float, {8}, gamma.f);
  g.node("SkipLayerNormalization", {"x", "skip", "gamma"}, {"y"}, "sln", kMs);
  g.output("y", onnx_float, xs);
  const value x = floats(xs, 9), skip = floats({3, 8}, 10);
  const auto out = run(g, {{"x", x}, {"skip", skip}});
  std::vector<double> s(x.f.size());
  for (std::size_t e = 0; e < s.size(); ++e) s[e] = double(x.f[e]) + skip.f[e % 24];
  expect_close(out.at("y"), xs, normalize(s, 8, false, 1e-12, gamma.f, nullptr).y, "output");
}

TEST(ExecutorMs, SkipSimplifiedLayerNormalizationTakesItsBiasAsInput3) {
  const shape_t xs{4, 16};
  graph_builder g = ms_graph();
  const value gamma = floats({16}, 11), bias = floats({16}, 12);
  g.input("x", onnx_float, xs);
  g.input("skip", onnx_float, xs);
  g.initializer("gamma", onnx_float, {16}, gamma.f);
  g.initializer("bias", onnx_float, {16}, bias.f);
  set_attr(g.node("SkipSimplifiedLayerNormalization", {"x", "skip", "gamma", "bias"},
                  {"y", "", "inv", "sum"}, "ssln", kMs),
           "epsilon", 1e-6f);
  for (const char* o : {"y", "inv", "sum"}) g.output(o, onnx_float, {});
  const value x = floats(xs, 13), skip = floats(xs, 14);
  const auto out = run(g, {{"x", x}, {"skip", skip}});
  std::vector<double> s(x.f.size());
  for (std::size_t e = 0; e < s.size(); ++e) s[e] = double(x.f[e]) + skip.f[e] + bias.f[e % 16];
  const norm_ref r = normalize(s, 16, true, 1e-6, gamma.f, nullptr);
  expect_close(out.at("y"), xs, r.y, "output");
  expect_close(out.at("inv"), {4, 1}, r.inv, "inv_std_var");
  expect_close(out.at("sum"), xs, s, "input_skip_bias_sum");
}

// ---- GELU variants
// -------------------------------------------------------------------------------

void check_unary(const std::string& op, bool bias, const std::function<double(double)>& f,
                 const std::function<void(::onnx::NodeProto&)>& attrs = {}) {
  const shape_t xs{3, 10};
  graph_builder g = ms_graph();
  g.input("x", onnx_float, xs);
  const value b = floats({10}, 15);
  std::vector<std::string> ins{"x"};
  if (bias) {
    g.initializer("b", onnx_float, {10}, b.f);
    ins.push_back("b");
  }
  auto& n = g.node(op, ins, {"y"}, "act", kMs);
  if (attrs) attrs(n);
  g.output("y", onnx_float, xs);
  const value x = floats(xs, 16, 4.0f);
  std::vector<double> want;
  for (std::size_t e = 0; e < x.f.size(); ++e)
    want.push_back(f(double(x.f[e]) + (bias ? b.f[e % 10] : 0.0)));
  expect_close(run(g, {{"x", x}}).at("y"), xs, want, op);
}

TEST(ExecutorMs, GeluVariantsFollowTheirFormulas) {
  const double pi = std::acos(-1.0);
  auto erf_gelu = [](double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); };
  auto tanh_gelu = [pi](double v) {
    return 0.5 * v * (1 + std::tanh(std::sqrt(2 / pi) * (v + 0.044715 * v * v * v)));
  };
  check_unary("Gelu", false, erf_gelu);
  check_unary("BiasGelu", true, erf_gelu);
  check_unary("FastGelu", true, tanh_gelu);
  check_unary("FastGelu", false, tanh_gelu);
  check_unary("QuickGelu", false, [](double v) { return v / (1 + std::exp(-1.702 * v)); });
  check_unary(
      "QuickGelu", false, [](double v) { return v / (1 + std::exp(-0.5 * v)); },
      [](::onnx::NodeProto& n) { set_attr(n, "alpha", 0.5f); });
}

// ---- Rotary embedding
// ----------------------------------------------------------------------------

constexpr double kRopeBase = 10000.0;

/// cos/sin caches [rows, half]: angle p * base^(-i / half).
void add_caches(graph_builder& g, std::int64_t rows, std::int64_t half) {
  std::vector<float> c, s;
  for (std::int64_t p = 0; p < rows; ++p)
    for (std::int64_t i = 0; i < half; ++i) {
      const double a = double(p) * std::pow(kRopeBase, -double(i) / double(half));
      c.push_back(float(std::cos(a)));
      s.push_back(float(std::sin(a)));
    }
  g.initializer("cos", onnx_float, {rows, half}, c);
  g.initializer("sin", onnx_float, {rows, half}, s);
}

/// The head vector x rotated at position p: pairs (i, i + rot/2) or (2i, 2i + 1) turned by angle
/// p * base^(-i / (rot/2)) as complex numbers (re, im); elements from rot on unchanged.
std::vector<double> rope(std::vector<double> x, std::int64_t p, std::size_t rot, bool interleaved) {
  const std::size_t half = rot / 2;
  for (std::size_t i = 0; i < half; ++i) {
    const double a = double(p) * std::pow(kRopeBase, -double(i) / double(half));
    const std::size_t re = interleaved ? 2 * i : i, im = interleaved ? 2 * i + 1 : i + half;
    const double xr = x[re], xi = x[im];
    x[re] = xr * std::cos(a) - xi * std::sin(a);
    x[im] = xr * std::sin(a) + xi * std::cos(a);
  }
  return x;
}

struct rotary_case {
  shape_t shape;  // [B, S, N*H] or [B, N, S, H]
  std::int64_t N, H, rot;
  bool interleaved, offset;
  std::int64_t heads_attr = 0, rot_attr = 0;
};

void check_rotary(const rotary_case& rc) {
  graph_builder g = ms_graph();
  const bool bnsh = rc.shape.size() == 4;
  const std::int64_t B = rc.shape[0], S = bnsh ? rc.shape[2] : rc.shape[1];
  g.input("x", onnx_float, rc.shape);
  g.input("pos", onnx_int64, {});
  add_caches(g, 16, rc.rot / 2);
  auto& n = g.node("RotaryEmbedding", {"x", "pos", "cos", "sin"}, {"y"}, "rope", kMs);
  if (rc.interleaved) set_attr(n, "interleaved", 1);
  if (rc.heads_attr) set_attr(n, "num_heads", rc.heads_attr);
  if (rc.rot_attr) set_attr(n, "rotary_embedding_dim", rc.rot_attr);
  g.output("y", onnx_float, rc.shape);
  const value x = floats(rc.shape, 17);
  std::vector<std::int64_t> pos;
  value pv;
  if (rc.offset) {
    pv = value::ints({1}, {3});
  } else {
    for (std::int64_t e = 0; e < B * S; ++e) pos.push_back((e * 7 + 2) % 16);
    pv = value::ints({B, S}, pos);
  }
  std::vector<double> want(x.f.size());
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t s = 0; s < S; ++s)
      for (std::int64_t h = 0; h < rc.N; ++h) {
        const std::int64_t off =
            bnsh ? ((b * rc.N + h) * S + s) * rc.H : ((b * S + s) * rc.N + h) * rc.H;
        std::vector<double> head(x.f.begin() + off, x.f.begin() + off + rc.H);
        const std::int64_t p = rc.offset ? 3 + s : pos[std::size_t(b * S + s)];
        head = rope(head, p, std::size_t(rc.rot), rc.interleaved);
        std::copy(head.begin(), head.end(), want.begin() + off);
      }
  expect_close(run(g, {{"x", x}, {"pos", pv}}).at("y"), rc.shape, want, "RotaryEmbedding");
}

TEST(ExecutorMs, RotaryEmbedding3DAnd4DInterleavedPartialAndOffsetPositions) {
  check_rotary({{2, 3, 32}, 2, 16, 16, false, false});
  check_rotary({{2, 3, 32}, 2, 16, 16, true, true});
  check_rotary({{2, 2, 3, 16}, 2, 16, 16, false, false});
  check_rotary({{2, 2, 3, 16}, 2, 16, 16, true, true});
  check_rotary({{1, 4, 48}, 3, 16, 8, false, false, 3, 8});  // rotary_embedding_dim 8 of 16
  check_rotary({{1, 4, 48}, 3, 16, 8, true, true, 3, 8});
}

// ---- Attention references
// --------------------------------------------------------------------------

/// softmax(scores) . values for one query: scores over keys j with allowed[j], values [T][Hv].
/// `sink` adds exp(sink) to the denominator when not NaN.
std::vector<double> attend(const std::vector<double>& scores, const std::vector<bool>& allowed,
                           const std::vector<std::vector<double>>& values, double sink = NAN) {
  double mx = std::isnan(sink) ? -INFINITY : sink;
  for (std::size_t j = 0; j < scores.size(); ++j)
    if (allowed[j]) mx = std::max(mx, scores[j]);
  double den = std::isnan(sink) ? 0.0 : std::exp(sink - mx);
  for (std::size_t j = 0; j < scores.size(); ++j)
    if (allowed[j]) den += std::exp(scores[j] - mx);
  std::vector<double> out(values.empty() ? 0 : values[0].size(), 0.0);
  for (std::size_t j = 0; j < scores.size(); ++j) {
    if (!allowed[j]) continue;
    const double p = std::exp(scores[j] - mx) / den;
    for (std::size_t h = 0; h < out.size(); ++h) out[h] += p * values[j][h];
  }
  return out;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t k = 0; k < a.size(); ++k) s += a[k] * b[k];
  return s;
}

/// Row r, columns [c0, c0 + n) of a row-major float matrix with `cols` columns.
std::vector<double> slice(const std::vector<float>& m, std::size_t cols, std::size_t r,
                          std::size_t c0, std::size_t n) {
  return {m.begin() + std::ptrdiff_t(r * cols + c0), m.begin() + std::ptrdiff_t(r * cols + c0 + n)};
}

// ---- MultiHeadAttention
// -------------------------------------------------------------------------------

struct mha_case {
  std::int64_t B = 2, S = 3, L = 4, N = 2, H = 4, Hv = 4, P = 0;
  bool bias = false, causal = false, attn_bias = false;
  std::string mask;  // "", "1d", "2d"
  float scale = 0.0f;
};

void check_mha(const mha_case& c) {
  const std::int64_t D = c.N * c.H, Dv = c.N * c.Hv, T = c.P + c.L;
  graph_builder g = ms_graph();
  g.input("q", onnx_float, {c.B, c.S, D});
  g.input("k", onnx_float, {c.B, c.L, D});
  g.input("v", onnx_float, {c.B, c.L, Dv});
  std::vector<std::string> ins{"q", "k", "v", "", "", "", "", ""};
  std::map<std::string, value> feeds{{"q", floats({c.B, c.S, D}, 20)},
                                     {"k", floats({c.B, c.L, D}, 21)},
                                     {"v", floats({c.B, c.L, Dv}, 22)}};
  const value bias = floats({2 * D + Dv}, 23), ab = floats({c.B, 1, c.S, T}, 24);
  if (c.bias) {
    g.initializer("bias", onnx_float, {2 * D + Dv}, bias.f);
    ins[3] = "bias";
  }
  std::vector<std::int64_t> lengths{T - 1, T - 2};
  std::vector<std::int64_t> mask2(std::size_t(c.B * T), 1);
  mask2[0] = 0;
  mask2[std::size_t(2 * T - 1)] = 0;
  if (c.mask == "1d") {
    g.input("mask", onnx_int32, {c.B});
    feeds["mask"] = value::ints({c.B}, lengths);
    ins[4] = "mask";
  } else if (c.mask == "2d") {
    g.input("mask", onnx_int32, {c.B, T});
    feeds["mask"] = value::ints({c.B, T}, mask2);
    ins[4] = "mask";
  }
  if (c.attn_bias) {
    g.initializer("ab", onnx_float, {c.B, 1, c.S, T}, ab.f);
    ins[5] = "ab";
  }
  if (c.P > 0) {
    g.input("pk", onnx_float, {c.B, c.N, c.P, c.H});
    g.input("pv", onnx_float, {c.B, c.N, c.P, c.Hv});
    feeds["pk"] = floats({c.B, c.N, c.P, c.H}, 25);
    feeds["pv"] = floats({c.B, c.N, c.P, c.Hv}, 26);
    ins[6] = "pk";
    ins[7] = "pv";
  }
  while (ins.back().empty()) ins.pop_back();
  auto& n = g.node("MultiHeadAttention", ins, {"y", "present_k", "present_v"}, "mha", kMs);
  set_attr(n, "num_heads", c.N);
  if (c.causal) set_attr(n, "unidirectional", 1);
  if (c.scale != 0.0f) set_attr(n, "scale", c.scale);
  for (const char* o : {"y", "present_k", "present_v"}) g.output(o, onnx_float, {});
  const auto out = run(g, feeds);

  const double scale = c.scale != 0.0f ? c.scale : 1.0 / std::sqrt(double(c.H));
  std::vector<double> want_y(std::size_t(c.B * c.S * Dv)), want_k(std::size_t(c.B * c.N * T * c.H)),
      want_v(std::size_t(c.B * c.N * T * c.Hv));
  for (std::int64_t b = 0; b < c.B; ++b)
    for (std::int64_t h = 0; h < c.N; ++h) {
      std::vector<std::vector<double>> keys, vals;  // [T][H]: past rows, then new rows + bias
      for (std::int64_t j = 0; j < T; ++j) {
        std::vector<double> kj, vj;
        if (j < c.P) {
          kj = slice(feeds["pk"].f, std::size_t(c.H), std::size_t((b * c.N + h) * c.P + j), 0,
                     std::size_t(c.H));
          vj = slice(feeds["pv"].f, std::size_t(c.Hv), std::size_t((b * c.N + h) * c.P + j), 0,
                     std::size_t(c.Hv));
        } else {
          kj = slice(feeds["k"].f, std::size_t(D), std::size_t(b * c.L + j - c.P),
                     std::size_t(h * c.H), std::size_t(c.H));
          vj = slice(feeds["v"].f, std::size_t(Dv), std::size_t(b * c.L + j - c.P),
                     std::size_t(h * c.Hv), std::size_t(c.Hv));
          if (c.bias) {
            for (std::int64_t e = 0; e < c.H; ++e)
              kj[std::size_t(e)] += bias.f[std::size_t(D + h * c.H + e)];
            for (std::int64_t e = 0; e < c.Hv; ++e)
              vj[std::size_t(e)] += bias.f[std::size_t(2 * D + h * c.Hv + e)];
          }
        }
        std::copy(kj.begin(), kj.end(), want_k.begin() + ((b * c.N + h) * T + j) * c.H);
        std::copy(vj.begin(), vj.end(), want_v.begin() + ((b * c.N + h) * T + j) * c.Hv);
        keys.push_back(kj);
        vals.push_back(vj);
      }
      for (std::int64_t s = 0; s < c.S; ++s) {
        std::vector<double> q = slice(feeds["q"].f, std::size_t(D), std::size_t(b * c.S + s),
                                      std::size_t(h * c.H), std::size_t(c.H));
        if (c.bias)
          for (std::int64_t e = 0; e < c.H; ++e)
            q[std::size_t(e)] += bias.f[std::size_t(h * c.H + e)];
        std::vector<double> sc(static_cast<std::size_t>(T));
        std::vector<bool> allowed(static_cast<std::size_t>(T), true);
        for (std::int64_t j = 0; j < T; ++j) {
          sc[std::size_t(j)] = scale * dot(q, keys[std::size_t(j)]);
          if (c.attn_bias) sc[std::size_t(j)] += ab.f[std::size_t((b * c.S + s) * T + j)];
          if (c.causal && j > c.P + s) allowed[std::size_t(j)] = false;
          if (c.mask == "1d" && j >= lengths[std::size_t(b)]) allowed[std::size_t(j)] = false;
          if (c.mask == "2d" && mask2[std::size_t(b * T + j)] == 0) allowed[std::size_t(j)] = false;
        }
        const auto o = attend(sc, allowed, vals);
        std::copy(o.begin(), o.end(), want_y.begin() + (b * c.S + s) * Dv + h * c.Hv);
      }
    }
  expect_close(out.at("y"), {c.B, c.S, Dv}, want_y, "output");
  expect_close(out.at("present_k"), {c.B, c.N, T, c.H}, want_k, "present_key");
  expect_close(out.at("present_v"), {c.B, c.N, T, c.Hv}, want_v, "present_value");
}

TEST(ExecutorMs, MultiHeadAttentionCrossWithBiasMaskAndAttentionBias) {
  mha_case c;
  check_mha(c);
  c.bias = true;
  c.mask = "2d";
  c.attn_bias = true;
  c.Hv = 3;
  check_mha(c);
  c.mask = "1d";
  c.scale = 0.7f;
  check_mha(c);
}

TEST(ExecutorMs, MultiHeadAttentionWithPastIsCausalOverPastPlusNew) {
  mha_case c;
  c.S = 3;
  c.L = 3;
  c.P = 2;
  c.causal = true;
  check_mha(c);
  c.mask = "2d";  // [B, past + new]
  c.bias = true;
  check_mha(c);
}

// ---- GroupQueryAttention
// -------------------------------------------------------------------------------

struct gqa_case {
  std::int64_t B = 2, S = 4, N = 4, Nkv = 2, H = 16, P = 0, total = 4;
  std::vector<std::int64_t> seqlens{3, 3};
  bool packed = false, rotary = false, interleaved = false;
  std::int64_t rot = 16, window = -1;
  float softcap = 0.0f, scale = 0.0f;
  bool sink = false;
};

void check_gqa(const gqa_case& c) {
  graph_builder g = ms_graph();
  const std::int64_t D = c.packed ? (c.N + 2 * c.Nkv) * c.H : c.N * c.H, Dkv = c.Nkv * c.H;
  const std::int64_t Pres = std::max(c.total, c.P);
  std::map<std::string, value> feeds{{"q", floats({c.B, c.S, D}, 30)}};
  g.input("q", onnx_float, {c.B, c.S, D});
  std::vector<std::string> ins{"q", "", "", "", "", "seqlens", "total"};
  if (!c.packed) {
    g.input("k", onnx_float, {c.B, c.S, Dkv});
    g.input("v", onnx_float, {c.B, c.S, Dkv});
    feeds["k"] = floats({c.B, c.S, Dkv}, 31);
    feeds["v"] = floats({c.B, c.S, Dkv}, 32);
    ins[1] = "k";
    ins[2] = "v";
  }
  if (c.P > 0) {
    g.input("pk", onnx_float, {c.B, c.Nkv, c.P, c.H});
    g.input("pv", onnx_float, {c.B, c.Nkv, c.P, c.H});
    feeds["pk"] = floats({c.B, c.Nkv, c.P, c.H}, 33);
    feeds["pv"] = floats({c.B, c.Nkv, c.P, c.H}, 34);
    ins[3] = "pk";
    ins[4] = "pv";
  }
  g.input("seqlens", onnx_int32, {c.B});
  g.input("total", onnx_int32, {});
  feeds["seqlens"] = value::ints({c.B}, c.seqlens);
  feeds["total"] = value::ints({}, {c.total});
  if (c.rotary) {
    add_caches(g, 16, c.rot / 2);
    ins.push_back("cos");
    ins.push_back("sin");
  }
  const value sink = floats({c.N}, 35);
  if (c.sink) {
    ins.resize(12);
    g.initializer("sink", onnx_float, {c.N}, sink.f);
    ins[11] = "sink";
  }
  auto& n = g.node("GroupQueryAttention", ins, {"y", "present_k", "present_v"}, "gqa", kMs);
  set_attr(n, "num_heads", c.N);
  set_attr(n, "kv_num_heads", c.Nkv);
  if (c.rotary) set_attr(n, "do_rotary", 1);
  if (c.interleaved) set_attr(n, "rotary_interleaved", 1);
  if (c.window > 0) set_attr(n, "local_window_size", c.window);
  if (c.softcap > 0) set_attr(n, "softcap", c.softcap);
  if (c.scale != 0.0f) set_attr(n, "scale", c.scale);
  for (const char* o : {"y", "present_k", "present_v"}) g.output(o, onnx_float, {});
  const auto out = run(g, feeds);

  // Reference: entry b has past = seqlens[b] + 1 - S positions (0 on the first prompt,
  // S == total); query s sits at past + s and sees keys [past + s - window + 1, past + s] (the last
  // `window` ones).
  const double scale = c.scale != 0.0f ? c.scale : 1.0 / std::sqrt(double(c.H));
  const std::size_t H = std::size_t(c.H);
  auto q_head = [&](std::int64_t b, std::int64_t s, std::int64_t h) {
    return slice(feeds["q"].f, std::size_t(D), std::size_t(b * c.S + s), std::size_t(h * c.H), H);
  };
  auto kv_head = [&](bool is_v, std::int64_t b, std::int64_t s, std::int64_t h) {
    if (c.packed)
      return slice(feeds["q"].f, std::size_t(D), std::size_t(b * c.S + s),
                   std::size_t((c.N + (is_v ? c.Nkv : 0) + h) * c.H), H);
    return slice(feeds[is_v ? "v" : "k"].f, std::size_t(Dkv), std::size_t(b * c.S + s),
                 std::size_t(h * c.H), H);
  };
  std::vector<double> want_y(std::size_t(c.B * c.S * c.N * c.H)),
      want_k(std::size_t(c.B * c.Nkv * Pres * c.H), 0.0), want_v(want_k.size(), 0.0);
  const bool first = c.S == c.total;
  for (std::int64_t b = 0; b < c.B; ++b) {
    const std::int64_t past = first ? 0 : c.seqlens[std::size_t(b)] + 1 - c.S;
    for (std::int64_t h = 0; h < c.Nkv; ++h)
      for (std::int64_t j = 0; j < past + c.S; ++j) {
        std::vector<double> kj, vj;
        if (j < past) {
          kj = slice(feeds["pk"].f, H, std::size_t((b * c.Nkv + h) * c.P + j), 0, H);
          vj = slice(feeds["pv"].f, H, std::size_t((b * c.Nkv + h) * c.P + j), 0, H);
        } else {
          kj = kv_head(false, b, j - past, h);
          vj = kv_head(true, b, j - past, h);
          if (c.rotary) kj = rope(kj, j, std::size_t(c.rot), c.interleaved);
        }
        std::copy(kj.begin(), kj.end(), want_k.begin() + ((b * c.Nkv + h) * Pres + j) * c.H);
        std::copy(vj.begin(), vj.end(), want_v.begin() + ((b * c.Nkv + h) * Pres + j) * c.H);
      }
    for (std::int64_t h = 0; h < c.N; ++h) {
      const std::int64_t kvh = h / (c.N / c.Nkv);
      std::vector<std::vector<double>> keys, vals;
      for (std::int64_t j = 0; j < past + c.S; ++j) {
        const auto at = want_k.begin() + ((b * c.Nkv + kvh) * Pres + j) * c.H;
        keys.emplace_back(at, at + c.H);
        const auto vt = want_v.begin() + ((b * c.Nkv + kvh) * Pres + j) * c.H;
        vals.emplace_back(vt, vt + c.H);
      }
      for (std::int64_t s = 0; s < c.S; ++s) {
        std::vector<double> q = q_head(b, s, h);
        if (c.rotary) q = rope(q, past + s, std::size_t(c.rot), c.interleaved);
        std::vector<double> sc(keys.size());
        std::vector<bool> allowed(keys.size());
        for (std::size_t j = 0; j < keys.size(); ++j) {
          double x = scale * dot(q, keys[j]);
          if (c.softcap > 0) x = c.softcap * std::tanh(x / c.softcap);
          sc[j] = x;
          const std::int64_t pos = past + s, jj = std::int64_t(j);
          allowed[j] = jj <= pos && (c.window <= 0 || jj > pos - c.window);
        }
        const auto o = attend(sc, allowed, vals, c.sink ? double(sink.f[std::size_t(h)]) : NAN);
        std::copy(o.begin(), o.end(), want_y.begin() + (b * c.S + s) * c.N * c.H + h * c.H);
      }
    }
  }
  expect_close(out.at("y"), {c.B, c.S, c.N * c.H}, want_y, "output");
  expect_close(out.at("present_k"), {c.B, c.Nkv, Pres, c.H}, want_k, "present_key");
  expect_close(out.at("present_v"), {c.B, c.Nkv, Pres, c.H}, want_v, "present_value");
}

TEST(ExecutorMs, GroupQueryAttentionFirstPromptIsCausal) {
  gqa_case c;
  check_gqa(c);
  c.packed = true;
  check_gqa(c);
  c.Nkv = 1;  // 4 query heads share one KV head
  c.scale = 0.3f;
  check_gqa(c);
}

TEST(ExecutorMs, GroupQueryAttentionWithPastPerEntryLengths) {
  gqa_case c;
  c.S = 1;
  c.P = 5;
  c.total = 6;
  c.seqlens = {5, 2};  // entry 1 has 2 past positions of the 5-row buffer
  check_gqa(c);
  c.B = 1;  // a later prompt of 3 tokens after 3 past ones
  c.S = 3;
  c.seqlens = {5};
  check_gqa(c);
}

TEST(ExecutorMs, GroupQueryAttentionRotaryWindowSoftcapAndSink) {
  gqa_case c;
  c.rotary = true;
  check_gqa(c);
  c.interleaved = true;
  c.rot = 8;  // half of the head rotated
  c.S = 1;
  c.P = 4;
  c.total = 5;
  c.seqlens = {4, 3};
  check_gqa(c);
  gqa_case w;
  w.S = 6;
  w.total = 6;
  w.seqlens = {5, 5};
  w.window = 2;
  w.softcap = 2.0f;
  check_gqa(w);
  w.sink = true;
  check_gqa(w);
}

// ---- GatherBlockQuantized
// --------------------------------------------------------------------------------

::onnx::TensorProto nibble_tensor(const std::string& name, int type, const shape_t& dims,
                                  const std::vector<std::int64_t>& codes) {
  ::onnx::TensorProto t;
  t.set_name(name);
  t.set_data_type(type);
  for (const auto d : dims) t.add_dims(d);
  std::string raw((codes.size() + 1) / 2, '\0');
  for (std::size_t e = 0; e < codes.size(); ++e)
    raw[e / 2] = char(raw[e / 2] | ((codes[e] & 0xF) << (4 * (e % 2))));
  t.set_raw_data(raw);
  return t;
}

::onnx::TensorProto byte_tensor(const std::string& name, const shape_t& dims,
                                const std::vector<std::int64_t>& bytes) {
  ::onnx::TensorProto t;
  t.set_name(name);
  t.set_data_type(onnx_uint8);
  for (const auto d : dims) t.add_dims(d);
  std::string raw;
  for (const auto b : bytes) raw += char(b);
  t.set_raw_data(raw);
  return t;
}

std::vector<std::int64_t> codes_in(std::size_t n, std::uint32_t seed, int lo, int hi) {
  std::vector<std::int64_t> v(n);
  std::uint32_t x = seed;
  for (auto& c : v) {
    x = x * 1664525u + 1013904223u;
    c = lo + std::int64_t((x >> 8) % std::uint32_t(hi - lo + 1));
  }
  return v;
}

struct gbq_case {
  int type = onnx_uint4;
  int bits = 4;
  shape_t shape{6, 64};  // logical
  std::int64_t gaxis = 0, qaxis = 1, block = 32;
  bool zp = true;
  shape_t idx_shape{2, 2};
  std::vector<std::int64_t> idx{5, 0, -1, 2};
};

void check_gbq(const gbq_case& c) {
  graph_builder g = ms_graph(10);
  shape_t ss = c.shape;
  ss[std::size_t(c.qaxis)] = (ss[std::size_t(c.qaxis)] + c.block - 1) / c.block;
  const int bits = c.type == onnx_uint8 ? c.bits : 4;
  const int lo = c.type == onnx_int4 ? -8 : 0, hi = c.type == onnx_int4 ? 7 : (1 << bits) - 1;
  const auto codes = codes_in(numel(c.shape), 40, lo, hi), zps = codes_in(numel(ss), 41, lo, hi);
  const value scales = floats(ss, 42);
  // Bytes of codes packed 8 / bits per byte along the last axis, low bits first.
  auto pack = [bits](const std::vector<std::int64_t>& v, shape_t dims) {
    const std::int64_t per = 8 / bits, last = dims.back(), nb = (last + per - 1) / per;
    std::vector<std::int64_t> out(v.size() / std::size_t(last) * std::size_t(nb), 0);
    for (std::size_t e = 0; e < v.size(); ++e) {
      const std::size_t r = e / std::size_t(last), k = e % std::size_t(last);
      out[r * std::size_t(nb) + k / std::size_t(per)] |= v[e] << (bits * (k % std::size_t(per)));
    }
    dims.back() = nb;
    return std::make_pair(out, dims);
  };
  if (c.type == onnx_uint8) {
    const auto [d, dd] = pack(codes, c.shape);
    g.initializer(byte_tensor("data", dd, d));
    const auto [z, zd] = pack(zps, ss);
    if (c.zp) g.initializer(byte_tensor("zp", zd, z));
  } else {
    g.initializer(nibble_tensor("data", c.type, c.shape, codes));
    if (c.zp) g.initializer(nibble_tensor("zp", c.type, ss, zps));
  }
  g.initializer("scales", onnx_float, ss, scales.f);
  g.input("idx", onnx_int64, c.idx_shape);
  std::vector<std::string> ins{"data", "idx", "scales"};
  if (c.zp) ins.push_back("zp");
  auto& n = g.node("GatherBlockQuantized", ins, {"y"}, "gbq", kMs);
  set_attr(n, "gather_axis", c.gaxis);
  set_attr(n, "quantize_axis", c.qaxis);
  set_attr(n, "block_size", c.block);
  if (c.type == onnx_uint8) set_attr(n, "bits", c.bits);
  g.output("y", onnx_float, {});
  const auto out = run(g, {{"idx", value::ints(c.idx_shape, c.idx)}});

  // Reference: the whole table dequantized, w = (code - zp) * scale of the element's block; then
  // Gather along gather_axis. Default zero point: 0 for int4 and uint4, 2^(bits - 1) for uint8.
  const std::int64_t R = c.shape[0], C = c.shape[1];
  auto dq = [&](std::int64_t r, std::int64_t col) {
    const std::int64_t sr = c.qaxis == 0 ? r / c.block : r, sc = c.qaxis == 1 ? col / c.block : col;
    const std::size_t si = std::size_t(sr * ss[1] + sc);
    const double z =
        c.zp ? double(zps[si]) : (c.type == onnx_uint8 ? double(1 << (bits - 1)) : 0.0);
    return (double(codes[std::size_t(r * C + col)]) - z) * scales.f[si];
  };
  std::vector<double> want;
  shape_t oshape;
  if (c.gaxis == 0) {
    oshape = c.idx_shape;
    oshape.push_back(C);
    for (auto ix : c.idx)
      for (std::int64_t col = 0; col < C; ++col) want.push_back(dq(ix < 0 ? ix + R : ix, col));
  } else {
    oshape = {R};
    oshape.insert(oshape.end(), c.idx_shape.begin(), c.idx_shape.end());
    for (std::int64_t r = 0; r < R; ++r)
      for (auto ix : c.idx) want.push_back(dq(r, ix < 0 ? ix + C : ix));
  }
  expect_close(out.at("y"), oshape, want, "GatherBlockQuantized");
}

TEST(ExecutorMs, GatherBlockQuantizedUint4Int4AndUint8) {
  gbq_case c;
  check_gbq(c);  // uint4 with zero points
  c.zp = false;  // uint4, default zero point 0
  check_gbq(c);
  c.type = onnx_int4;  // int4, default zero point 0
  check_gbq(c);
  c.zp = true;
  check_gbq(c);
  gbq_case t;  // gather along axis 1, blocks along axis 0
  t.shape = {48, 6};
  t.gaxis = 1;
  t.qaxis = 0;
  t.block = 16;
  t.idx_shape = {3};
  t.idx = {5, 0, -2};
  check_gbq(t);
  gbq_case u;  // uint8, two 4-bit codes per byte
  u.type = onnx_uint8;
  check_gbq(u);
  u.zp = false;
  check_gbq(u);
  u.bits = 8;
  u.zp = true;
  check_gbq(u);
  u.bits = 2;
  u.block = 16;
  check_gbq(u);
}

// ---- Errors
// ---------------------------------------------------------------------------------------------

bool has(const std::string& message, const std::string& part) {
  return message.find(part) != std::string::npos;
}

TEST(ExecutorMs, ErrorsNameTheNodeAndTheProblem) {
  {  // missing gamma
    graph_builder g = ms_graph();
    g.input("x", onnx_float, {1, 2, 4});
    g.input("skip", onnx_float, {1, 2, 4});
    g.node("SkipLayerNormalization", {"x", "skip"}, {"y"}, "sln0", kMs);
    g.output("y", onnx_float, {});
    const std::string e =
        error_of(g, {{"x", floats({1, 2, 4}, 1)}, {"skip", floats({1, 2, 4}, 2)}});
    EXPECT_TRUE(has(e, "sln0") && has(e, "gamma is missing")) << e;
  }
  {  // skip of the wrong shape
    graph_builder g = ms_graph();
    g.input("x", onnx_float, {2, 2, 4});
    g.input("skip", onnx_float, {2, 3, 4});
    g.initializer("gamma", onnx_float, {4}, random_values(4, 1));
    g.node("SkipLayerNormalization", {"x", "skip", "gamma"}, {"y"}, "sln1", kMs);
    g.output("y", onnx_float, {});
    const std::string e =
        error_of(g, {{"x", floats({2, 2, 4}, 1)}, {"skip", floats({2, 3, 4}, 2)}});
    EXPECT_TRUE(has(e, "sln1") && has(e, "skip of shape [2, 3, 4]")) << e;
  }
  {  // BiasGelu without its bias
    graph_builder g = ms_graph();
    g.input("x", onnx_float, {2, 4});
    g.node("BiasGelu", {"x"}, {"y"}, "bg", kMs);
    g.output("y", onnx_float, {});
    const std::string e = error_of(g, {{"x", floats({2, 4}, 1)}});
    EXPECT_TRUE(has(e, "bg") && has(e, "bias is missing")) << e;
  }
  {  // MHA key hidden size differs from the query's
    graph_builder g = ms_graph();
    g.input("q", onnx_float, {1, 2, 8});
    g.input("k", onnx_float, {1, 3, 6});
    g.input("v", onnx_float, {1, 3, 8});
    set_attr(g.node("MultiHeadAttention", {"q", "k", "v"}, {"y"}, "mha0", kMs), "num_heads", 2);
    g.output("y", onnx_float, {});
    const std::string e = error_of(
        g, {{"q", floats({1, 2, 8}, 1)}, {"k", floats({1, 3, 6}, 2)}, {"v", floats({1, 3, 8}, 3)}});
    EXPECT_TRUE(has(e, "mha0") && has(e, "key has shape [1, 3, 6], expected [1, 3, 8]")) << e;
  }
  {  // GQA: num_heads not a multiple of kv_num_heads; then seqlens_k beyond the past buffer
    for (const bool bad_heads : {true, false}) {
      graph_builder g = ms_graph();
      g.input("q", onnx_float, {1, 1, 48});
      g.input("k", onnx_float, {1, 1, 32});
      g.input("v", onnx_float, {1, 1, 32});
      g.input("pk", onnx_float, {1, 2, 2, 16});
      g.input("pv", onnx_float, {1, 2, 2, 16});
      g.input("sl", onnx_int32, {1});
      g.input("t", onnx_int32, {});
      auto& n =
          g.node("GroupQueryAttention", {"q", "k", "v", "pk", "pv", "sl", "t"}, {"y"}, "gqa0", kMs);
      set_attr(n, "num_heads", 3);
      set_attr(n, "kv_num_heads", bad_heads ? 2 : 1);
      g.output("y", onnx_float, {});
      const std::string e = error_of(g, {{"q", floats({1, 1, 48}, 1)},
                                         {"k", floats({1, 1, 32}, 2)},
                                         {"v", floats({1, 1, 32}, 3)},
                                         {"pk", floats({1, 2, 2, 16}, 4)},
                                         {"pv", floats({1, 2, 2, 16}, 5)},
                                         {"sl", value::ints({1}, {5})},
                                         {"t", value::ints({}, {6})}});
      if (bad_heads) {
        EXPECT_TRUE(has(e, "gqa0") && has(e, "multiple of kv_num_heads")) << e;
      } else {
        // kv_num_heads 1 with 32-wide keys is itself wrong: the key shape is reported first.
        EXPECT_TRUE(has(e, "gqa0") && has(e, "key has shape [1, 1, 32], expected [1, 1, 16]")) << e;
      }
    }
  }
  {  // rotary position outside the caches
    graph_builder g = ms_graph();
    g.input("x", onnx_float, {1, 2, 16});
    g.input("pos", onnx_int64, {1});
    add_caches(g, 4, 8);
    g.node("RotaryEmbedding", {"x", "pos", "cos", "sin"}, {"y"}, "rope0", kMs);
    g.output("y", onnx_float, {});
    const std::string e =
        error_of(g, {{"x", floats({1, 2, 16}, 1)}, {"pos", value::ints({1}, {3})}});
    EXPECT_TRUE(has(e, "rope0") && has(e, "position 4 is outside the caches' 4 rows")) << e;
  }
  {  // GatherBlockQuantized: data computed (not an initializer), index out of range
    graph_builder g = ms_graph(10);
    g.input("data", onnx_uint8, {4, 8});
    g.input("idx", onnx_int64, {1});
    g.initializer("scales", onnx_float, {4, 1}, random_values(4, 1));
    set_attr(g.node("GatherBlockQuantized", {"data", "idx", "scales"}, {"y"}, "gbq0", kMs),
             "block_size", 16);
    g.output("y", onnx_float, {});
    std::string e = error_of(g, {{"data", value::ints({4, 8}, std::vector<std::int64_t>(32, 1))},
                                 {"idx", value::ints({1}, {0})}});
    EXPECT_TRUE(has(e, "gbq0") && has(e, "must be an initializer")) << e;

    graph_builder h = ms_graph(10);
    h.initializer(nibble_tensor("data", onnx_uint4, {4, 16}, std::vector<std::int64_t>(64, 3)));
    h.input("idx", onnx_int64, {1});
    h.initializer("scales", onnx_float, {4, 1}, random_values(4, 1));
    set_attr(h.node("GatherBlockQuantized", {"data", "idx", "scales"}, {"y"}, "gbq1", kMs),
             "block_size", 16);
    h.output("y", onnx_float, {});
    e = error_of(h, {{"idx", value::ints({1}, {4})}});
    EXPECT_TRUE(has(e, "gbq1") && has(e, "index 4 is out of range")) << e;
  }
}

TEST(ExecutorMs, SupportedOpsListTheMicrosoftOperators) {
  const auto ops = int4q::onnx::supported_ops();
  for (const char* op :
       {"SimplifiedLayerNormalization", "com.microsoft::SkipLayerNormalization",
        "com.microsoft::SkipSimplifiedLayerNormalization", "com.microsoft::FastGelu",
        "com.microsoft::BiasGelu", "com.microsoft::QuickGelu", "com.microsoft::Gelu",
        "com.microsoft::RotaryEmbedding", "com.microsoft::MultiHeadAttention",
        "com.microsoft::GroupQueryAttention", "com.microsoft::GatherBlockQuantized"})
    EXPECT_NE(std::find(ops.begin(), ops.end(), op), ops.end()) << op;
}

}  // namespace

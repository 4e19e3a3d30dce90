// The executor's neural-network operators where the ONNX node tests are thin: Conv and
// ConvTranspose with groups, dilations, strides and odd sizes against direct loops, pools with
// ceil_mode and dilations, antialiased Resize, Gelu, GroupNormalization, seeded Dropout, clear
// errors, and the real PP-OCRv4 recognizer end to end. References are plain loops in doubles,
// written from the operator formulas.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>

#include "onnx/graph_builder.hpp"

namespace {

namespace fs = std::filesystem;
using int4q::onnx::executor;
using int4q::onnx::model;
using int4q::onnx::model_error;
using int4q::onnx::value;
using int4q::onnx::value_type;
using shape_t = std::vector<std::int64_t>;

// fp32 sgemm sums of up to a few hundred products against double references.
constexpr double kSumTol = 1e-4;
// Elementwise float formulas against double ones: a few float ulps.
constexpr double kUlpTol = 1e-6;

std::size_t numel(const shape_t& s) {
  std::size_t n = 1;
  for (auto d : s) n *= static_cast<std::size_t>(d);
  return n;
}

value random_floats(const shape_t& shape, std::uint32_t seed) {
  return value::floats(shape, int4q::test::random_values(numel(shape), seed));
}

/// Runs one node `op` (named "node_under_test") on `inputs` (nullptr = omitted optional input)
/// with attributes set by `attrs`; returns its `outputs` outputs.
std::vector<value> run_node(const std::string& op, const std::vector<const value*>& inputs,
                            const std::function<void(::onnx::NodeProto&)>& attrs, int outputs = 1,
                            std::int64_t opset = 18) {
  int4q::test::graph_builder g(opset);
  std::vector<std::string> names;
  std::map<std::string, value> feed;
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    if (!inputs[k]) {
      names.push_back("");
      continue;
    }
    const std::string name = "in" + std::to_string(k);
    const value& v = *inputs[k];
    const int type = v.type == value_type::float32   ? int4q::test::onnx_float
                     : v.type == value_type::boolean ? int4q::test::onnx_bool
                                                     : int4q::test::onnx_int64;
    g.input(name, type, v.shape);
    names.push_back(name);
    feed[name] = v;
  }
  std::vector<std::string> outs;
  for (int k = 0; k < outputs; ++k) outs.push_back("out" + std::to_string(k));
  attrs(g.node(op, names, outs, "node_under_test"));
  for (const auto& o : outs) g.output(o, int4q::test::onnx_float, {});
  const model m = g.model();
  const auto got = executor(m).run(feed);
  std::vector<value> result;
  for (const auto& o : outs) result.push_back(got.at(o));
  return result;
}

void expect_close(const std::vector<double>& want, const value& got, double rtol,
                  const std::string& what) {
  ASSERT_EQ(got.f.size(), want.size()) << what;
  for (std::size_t e = 0; e < want.size(); ++e) {
    ASSERT_NEAR(got.f[e], want[e], rtol * (1 + std::fabs(want[e])))
        << what << ": element " << e << " (tolerance " << rtol << ")";
  }
}

// ---- Conv ---------------------------------------------------------------------------------------

struct conv_case {
  std::string name;
  shape_t x, w;  // [N, C, spatial...], [M, C / group, kernel...]
  std::int64_t group = 1;
  shape_t strides, dilations, pads;  // empty = default
  std::string auto_pad = "NOTSET";
  bool bias = true;
};

/// Direct convolution from the definition: y[n, m, o] = b[m] + sum over c of the group of m and
/// the kernel taps k of x[n, g * Cg + c, o * s + k * d - pad_begin] * w[m, c, k], taps in the
/// padding reading 0. SAME_* pads: total = max(0, (ceil(in / s) - 1) * s + (k - 1) * d + 1 - in),
/// the odd one at the end (UPPER) or beginning (LOWER).
std::vector<double> reference_conv(const conv_case& cc, const value& x, const value& w,
                                   const value* b, shape_t& y_shape) {
  const std::size_t S = cc.x.size() - 2;
  const shape_t ones(S, 1);
  const shape_t s = cc.strides.empty() ? ones : cc.strides;
  const shape_t d = cc.dilations.empty() ? ones : cc.dilations;
  shape_t pb(S, 0), pe(S, 0), out(S);
  for (std::size_t k = 0; k < S; ++k) {
    const std::int64_t in = cc.x[2 + k], ek = (cc.w[2 + k] - 1) * d[k] + 1;
    if (cc.auto_pad == "SAME_UPPER" || cc.auto_pad == "SAME_LOWER") {
      out[k] = (in + s[k] - 1) / s[k];
      const std::int64_t total = std::max<std::int64_t>(0, (out[k] - 1) * s[k] + ek - in);
      pb[k] = cc.auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
      pe[k] = total - pb[k];
    } else {
      if (!cc.pads.empty()) {
        pb[k] = cc.pads[k];
        pe[k] = cc.pads[S + k];
      }
      out[k] = (in + pb[k] + pe[k] - ek) / s[k] + 1;
    }
  }
  const std::int64_t N = cc.x[0], C = cc.x[1], M = cc.w[0], Cg = C / cc.group, Mg = M / cc.group;
  y_shape = {N, M};
  y_shape.insert(y_shape.end(), out.begin(), out.end());
  std::vector<double> y(numel(y_shape));
  const shape_t kernel(cc.w.begin() + 2, cc.w.end()), in(cc.x.begin() + 2, cc.x.end());
  std::size_t e = 0;
  for (std::int64_t n = 0; n < N; ++n) {
    for (std::int64_t m = 0; m < M; ++m) {
      const std::int64_t g = m / Mg;
      for (std::size_t o = 0; o < numel(out); ++o, ++e) {
        shape_t oc(S);  // output coordinates of o
        for (std::size_t k = S, r = o; k-- > 0;) {
          oc[k] = static_cast<std::int64_t>(r % static_cast<std::size_t>(out[k]));
          r /= static_cast<std::size_t>(out[k]);
        }
        double acc = b ? b->f[static_cast<std::size_t>(m)] : 0.0;
        for (std::int64_t c = 0; c < Cg; ++c) {
          for (std::size_t t = 0; t < numel(kernel); ++t) {
            std::size_t xi = static_cast<std::size_t>(n * C + g * Cg + c),
                        wi = static_cast<std::size_t>(m * Cg + c);
            bool inside = true;
            for (std::size_t k = 0, r = t, div = numel(kernel); k < S; ++k) {
              div /= static_cast<std::size_t>(kernel[k]);
              const auto kk = static_cast<std::int64_t>(r / div);
              r %= div;
              const std::int64_t pos = oc[k] * s[k] + kk * d[k] - pb[k];
              inside = inside && pos >= 0 && pos < in[k];
              xi = xi * static_cast<std::size_t>(in[k]) +
                   static_cast<std::size_t>(std::max<std::int64_t>(pos, 0));
              wi = wi * static_cast<std::size_t>(kernel[k]) + static_cast<std::size_t>(kk);
            }
            if (inside) acc += double(x.f[xi]) * w.f[wi];
          }
        }
        y[e] = acc;
      }
    }
  }
  return y;
}

TEST(ExecutorNn, ConvMatchesADirectLoopWithGroupsDilationsStridesAndPadding) {
  const std::vector<conv_case> cases = {
      {"2-D, group 2, dilation, stride, asymmetric pads, odd sizes",
       {2, 6, 9, 11},
       {4, 3, 3, 2},
       2,
       {2, 3},
       {2, 1},
       {1, 0, 2, 1}},
      {"depthwise 3x3, stride 2, SAME_UPPER",
       {1, 5, 7, 10},
       {5, 1, 3, 3},
       5,
       {2, 2},
       {},
       {},
       "SAME_UPPER"},
      {"1-D, stride 2, dilation 3, SAME_LOWER, no bias",
       {2, 3, 13},
       {4, 3, 4},
       1,
       {2},
       {3},
       {},
       "SAME_LOWER",
       false},
      {"3-D, group 3, pads",
       {1, 3, 5, 4, 6},
       {6, 1, 2, 3, 2},
       3,
       {1, 2, 1},
       {},
       {1, 0, 1, 0, 1, 1}},
      {"depthwise, stride 1, dilation 2, pads",
       {2, 4, 9, 8},
       {4, 1, 3, 3},
       4,
       {},
       {2, 2},
       {2, 1, 1, 2}},
      {"pointwise 1x1", {2, 8, 3, 5}, {7, 8, 1, 1}, 1, {}, {}, {}, "NOTSET", true},
      {"VALID, stride 3", {1, 2, 10, 8}, {3, 2, 3, 3}, 1, {3, 3}, {}, {}, "VALID"},
  };
  std::uint32_t seed = 11;
  for (const conv_case& cc : cases) {
    const value x = random_floats(cc.x, seed++), w = random_floats(cc.w, seed++);
    const value b = random_floats({cc.w[0]}, seed++);
    const auto y = run_node("Conv", {&x, &w, cc.bias ? &b : nullptr}, [&](::onnx::NodeProto& n) {
      int4q::test::set_attr(n, "group", cc.group);
      if (!cc.strides.empty()) int4q::test::set_attr(n, "strides", cc.strides);
      if (!cc.dilations.empty()) int4q::test::set_attr(n, "dilations", cc.dilations);
      if (!cc.pads.empty()) int4q::test::set_attr(n, "pads", cc.pads);
      if (cc.auto_pad != "NOTSET") int4q::test::set_attr(n, "auto_pad", cc.auto_pad);
    });
    shape_t want_shape;
    const auto want = reference_conv(cc, x, w, cc.bias ? &b : nullptr, want_shape);
    EXPECT_EQ(y[0].shape, want_shape) << cc.name;
    expect_close(want, y[0], kSumTol, cc.name + " (seed " + std::to_string(seed) + ")");
  }
}

// ConvTranspose from its definition: y[n, m, i * s + k * d - pad_begin] += x[n, c, i] *
// w[c, m - g * Mg, k] for the group g of channel c, then + b[m]; output length
// s * (in - 1) + output_padding + (k - 1) * d + 1 - pad_begin - pad_end.
TEST(ExecutorNn, ConvTransposeMatchesAScatterLoop) {
  const shape_t xs{2, 4, 3, 5}, ws{4, 3, 3, 2};  // group 2: M = 6
  const std::int64_t group = 2, Cg = 2, Mg = 3, M = 6;
  const shape_t s{2, 3}, d{1, 2}, pads{1, 0, 0, 1}, op{1, 0};
  const value x = random_floats(xs, 3), w = random_floats(ws, 4), b = random_floats({M}, 5);
  const auto y = run_node("ConvTranspose", {&x, &w, &b}, [&](::onnx::NodeProto& n) {
    int4q::test::set_attr(n, "group", group);
    int4q::test::set_attr(n, "strides", s);
    int4q::test::set_attr(n, "dilations", d);
    int4q::test::set_attr(n, "pads", pads);
    int4q::test::set_attr(n, "output_padding", op);
  });
  shape_t out(2);
  for (std::size_t k = 0; k < 2; ++k)
    out[k] = s[k] * (xs[2 + k] - 1) + op[k] + (ws[2 + k] - 1) * d[k] + 1 - pads[k] - pads[2 + k];
  const shape_t want_shape{xs[0], M, out[0], out[1]};
  ASSERT_EQ(y[0].shape, want_shape);
  std::vector<double> want(numel(want_shape));
  for (std::int64_t n = 0; n < xs[0]; ++n)
    for (std::int64_t m = 0; m < M; ++m)
      for (std::int64_t e = 0; e < out[0] * out[1]; ++e)
        want[static_cast<std::size_t>((n * M + m) * out[0] * out[1] + e)] =
            b.f[static_cast<std::size_t>(m)];
  for (std::int64_t n = 0; n < xs[0]; ++n)
    for (std::int64_t c = 0; c < xs[1]; ++c)
      for (std::int64_t ih = 0; ih < xs[2]; ++ih)
        for (std::int64_t iw = 0; iw < xs[3]; ++iw)
          for (std::int64_t mm = 0; mm < Mg; ++mm)
            for (std::int64_t kh = 0; kh < ws[2]; ++kh)
              for (std::int64_t kw = 0; kw < ws[3]; ++kw) {
                const std::int64_t oh = ih * s[0] + kh * d[0] - pads[0];
                const std::int64_t ow = iw * s[1] + kw * d[1] - pads[1];
                if (oh < 0 || oh >= out[0] || ow < 0 || ow >= out[1]) continue;
                const std::int64_t m = (c / Cg) * Mg + mm;
                want[static_cast<std::size_t>(((n * M + m) * out[0] + oh) * out[1] + ow)] +=
                    double(x.f[static_cast<std::size_t>(((n * xs[1] + c) * xs[2] + ih) * xs[3] +
                                                        iw)]) *
                    w.f[static_cast<std::size_t>(((c * Mg + mm) * ws[2] + kh) * ws[3] + kw)];
              }
  expect_close(want, y[0], kSumTol, "ConvTranspose");
}

// ---- Pools --------------------------------------------------------------------------------------

// MaxPool with pads, dilations, strides and ceil_mode: the maximum over the taps inside the
// input, and Indices = its flat position in X; AveragePool divides by the taps inside the input
// (count_include_pad 0) or inside the padded input (1).
TEST(ExecutorNn, PoolsMatchWindowLoopsWithCeilModeDilationsAndPadding) {
  const shape_t xs{2, 3, 8, 9};
  const value x = random_floats(xs, 21);
  const shape_t k{3, 2}, s{2, 3}, pads{1, 1, 1, 0};
  // The window taps of output (oh, ow) along each axis: o * s + k * d - pad_begin.
  auto pool = [&](const std::string& op, const shape_t& d, int include_pad) {
    return run_node(
        op, {&x},
        [&](::onnx::NodeProto& n) {
          int4q::test::set_attr(n, "kernel_shape", k);
          int4q::test::set_attr(n, "strides", s);
          int4q::test::set_attr(n, "pads", pads);
          int4q::test::set_attr(n, "ceil_mode", 1);
          if (op == "MaxPool") int4q::test::set_attr(n, "dilations", d);
          if (op == "AveragePool") int4q::test::set_attr(n, "count_include_pad", include_pad);
        },
        op == "MaxPool" ? 2 : 1);
  };
  // MaxPool, rows dilated by 2: ceil((8 + 2 - 5) / 2) + 1 = 4 rows, ceil((9 + 1 - 2) / 3) + 1 = 4
  // columns (every last window starts inside the input or its begin padding).
  const shape_t d{2, 1};
  const auto mp = pool("MaxPool", d, 0);
  ASSERT_EQ(mp[0].shape, (shape_t{2, 3, 4, 4}));
  ASSERT_EQ(mp[1].shape, mp[0].shape);
  std::vector<double> want_max;
  std::vector<std::int64_t> want_idx;
  for (std::int64_t p = 0; p < 6; ++p)
    for (std::int64_t oh = 0; oh < 4; ++oh)
      for (std::int64_t ow = 0; ow < 4; ++ow) {
        double best = -INFINITY;
        std::int64_t at = -1;
        for (std::int64_t kh = 0; kh < k[0]; ++kh)
          for (std::int64_t kw = 0; kw < k[1]; ++kw) {
            const std::int64_t h = oh * s[0] + kh * d[0] - pads[0], w = ow * s[1] + kw - pads[1];
            if (h < 0 || h >= xs[2] || w < 0 || w >= xs[3]) continue;
            const auto pos = static_cast<std::size_t>((p * xs[2] + h) * xs[3] + w);
            if (x.f[pos] > best) {
              best = x.f[pos];
              at = static_cast<std::int64_t>(pos);
            }
          }
        want_max.push_back(best);
        want_idx.push_back(at);
      }
  expect_close(want_max, mp[0], 0.0, "MaxPool values");
  EXPECT_EQ(mp[1].i, want_idx);
  // AveragePool, no dilation: ceil((8 + 2 - 3) / 2) + 1 = 5 rows (the last starts at row 7, inside
  // the input), 4 columns; the divisor counts taps inside x, or inside the padded x.
  for (int include = 0; include < 2; ++include) {
    const auto ap = pool("AveragePool", {}, include);
    ASSERT_EQ(ap[0].shape, (shape_t{2, 3, 5, 4}));
    std::vector<double> want;
    for (std::int64_t p = 0; p < 6; ++p)
      for (std::int64_t oh = 0; oh < 5; ++oh)
        for (std::int64_t ow = 0; ow < 4; ++ow) {
          double sum = 0;
          std::int64_t count = 0, padded = 0;
          for (std::int64_t kh = 0; kh < k[0]; ++kh)
            for (std::int64_t kw = 0; kw < k[1]; ++kw) {
              const std::int64_t h = oh * s[0] + kh - pads[0], w = ow * s[1] + kw - pads[1];
              if (h >= -pads[0] && h < xs[2] + pads[2] && w >= -pads[1] && w < xs[3] + pads[3])
                ++padded;
              if (h < 0 || h >= xs[2] || w < 0 || w >= xs[3]) continue;
              sum += x.f[static_cast<std::size_t>((p * xs[2] + h) * xs[3] + w)];
              ++count;
            }
          want.push_back(sum / double(include ? padded : count));
        }
    expect_close(want, ap[0], kUlpTol, "AveragePool count_include_pad " + std::to_string(include));
  }
}

// ---- Resize -------------------------------------------------------------------------------------

/// Antialiased resampling weights along one axis from the definition: output o reads input
/// coordinate x = (o + 0.5) / scale - 0.5 (half_pixel), every integer tap i weighs
/// kernel((i - x) * scale) and reads x[clamp(i)] (edge padding); the weights are normalized.
std::vector<std::vector<double>> antialias_weights(std::int64_t in, std::int64_t out, bool cubic) {
  const double scale = double(out) / double(in);
  std::vector<std::vector<double>> w(static_cast<std::size_t>(out),
                                     std::vector<double>(static_cast<std::size_t>(in), 0.0));
  const double a = -0.75;
  for (std::int64_t o = 0; o < out; ++o) {
    const double x = (o + 0.5) / scale - 0.5;
    double total = 0;
    for (std::int64_t i = -3 * in; i < 4 * in; ++i) {
      const double t = std::fabs((double(i) - x) * scale);
      double k = 0;
      if (!cubic) {
        k = std::max(0.0, 1 - t);
      } else if (t <= 1) {
        k = (a + 2) * t * t * t - (a + 3) * t * t + 1;
      } else if (t < 2) {
        k = a * t * t * t - 5 * a * t * t + 8 * a * t - 4 * a;
      }
      total += k;
      w[static_cast<std::size_t>(o)]
       [static_cast<std::size_t>(std::clamp<std::int64_t>(i, 0, in - 1))] += k;
    }
    for (double& v : w[static_cast<std::size_t>(o)]) v /= total;
  }
  return w;
}

TEST(ExecutorNn, AntialiasedResizeMatchesTheStretchedKernel) {
  const shape_t xs{1, 2, 7, 12};
  const value x = random_floats(xs, 31);
  const value sizes = value::ints({4}, {1, 2, 3, 5});
  for (const bool cubic : {false, true}) {
    const auto y = run_node("Resize", {&x, nullptr, nullptr, &sizes}, [&](::onnx::NodeProto& n) {
      int4q::test::set_attr(n, "mode", cubic ? "cubic" : "linear");
      int4q::test::set_attr(n, "antialias", 1);
    });
    ASSERT_EQ(y[0].shape, (shape_t{1, 2, 3, 5}));
    const auto wh = antialias_weights(7, 3, cubic), ww = antialias_weights(12, 5, cubic);
    std::vector<double> want;
    for (std::size_t c = 0; c < 2; ++c)
      for (std::size_t oh = 0; oh < 3; ++oh)
        for (std::size_t ow = 0; ow < 5; ++ow) {
          double acc = 0;
          for (std::size_t ih = 0; ih < 7; ++ih)
            for (std::size_t iw = 0; iw < 12; ++iw)
              acc += wh[oh][ih] * ww[ow][iw] * x.f[(c * 7 + ih) * 12 + iw];
          want.push_back(acc);
        }
    expect_close(want, y[0], kSumTol, cubic ? "cubic antialias" : "linear antialias");
  }
}

// keep_aspect_ratio_policy not_larger: one scale min(sizes / input) for the given axes, output
// round(scale * input); nearest with asymmetric coordinates reads floor(o / scale).
TEST(ExecutorNn, ResizeKeepsTheAspectRatioOverTheGivenAxes) {
  const value x = random_floats({1, 1, 4, 6}, 41);
  const value sizes = value::ints({2}, {8, 9});
  const auto y = run_node("Resize", {&x, nullptr, nullptr, &sizes}, [](::onnx::NodeProto& n) {
    int4q::test::set_attr(n, "axes", shape_t{2, 3});
    int4q::test::set_attr(n, "keep_aspect_ratio_policy", "not_larger");
    int4q::test::set_attr(n, "coordinate_transformation_mode", "asymmetric");
    int4q::test::set_attr(n, "nearest_mode", "floor");
  });
  const double scale = std::min(8.0 / 4, 9.0 / 6);  // 1.5
  ASSERT_EQ(y[0].shape, (shape_t{1, 1, 6, 9}));
  std::vector<double> want;
  for (int oh = 0; oh < 6; ++oh)
    for (int ow = 0; ow < 9; ++ow)
      want.push_back(
          x.f[static_cast<std::size_t>(std::floor(oh / scale) * 6 + std::floor(ow / scale))]);
  expect_close(want, y[0], 0.0, "nearest");
}

// ---- Activations, normalizations, Dropout -------------------------------------------------------

TEST(ExecutorNn, GeluMatchesBothFormulas) {
  value x = random_floats({64}, 51);
  for (float& v : x.f) v *= 6;
  for (const std::string mode : {"none", "tanh"}) {
    const auto y = run_node(
        "Gelu", {&x}, [&](::onnx::NodeProto& n) { int4q::test::set_attr(n, "approximate", mode); },
        1, 20);
    std::vector<double> want;
    for (const float v : x.f) {
      const double d = v;
      want.push_back(mode == "none"
                         ? 0.5 * d * (1 + std::erf(d / std::sqrt(2.0)))
                         : 0.5 * d *
                               (1 + std::tanh(std::sqrt(2 / M_PI) * (d + 0.044715 * d * d * d))));
    }
    expect_close(want, y[0], kUlpTol, "Gelu " + mode);
  }
}

// GroupNormalization (opset 21): channels in groups, mean and population variance over a
// group's channels and spatial elements, then * scale[c] + bias[c].
TEST(ExecutorNn, GroupNormalizationMatchesPerGroupStatistics) {
  const shape_t xs{2, 6, 5};
  const value x = random_floats(xs, 61), scale = random_floats({6}, 62),
              bias = random_floats({6}, 63);
  const auto y = run_node(
      "GroupNormalization", {&x, &scale, &bias},
      [](::onnx::NodeProto& n) {
        int4q::test::set_attr(n, "num_groups", 3);
        int4q::test::set_attr(n, "epsilon", 1e-3f);
      },
      1, 21);
  std::vector<double> want(x.f.size());
  for (std::size_t n = 0; n < 2; ++n)
    for (std::size_t g = 0; g < 3; ++g) {
      const std::size_t base = (n * 6 + g * 2) * 5;
      double mean = 0, var = 0;
      for (std::size_t e = 0; e < 10; ++e) mean += x.f[base + e] / 10.0;
      for (std::size_t e = 0; e < 10; ++e)
        var += (x.f[base + e] - mean) * (x.f[base + e] - mean) / 10.0;
      for (std::size_t e = 0; e < 10; ++e) {
        const std::size_t c = g * 2 + e / 5;
        want[base + e] =
            (x.f[base + e] - mean) / std::sqrt(var + double(1e-3f)) * scale.f[c] + bias.f[c];
      }
    }
  expect_close(want, y[0], kUlpTol * 10, "GroupNormalization");
}

// Dropout in training mode with a seed: every element is dropped (0, mask false) or kept and
// scaled by 1 / (1 - ratio); about `ratio` of them dropped; the same seed gives the same mask.
TEST(ExecutorNn, SeededTrainingDropoutKeepsAndScalesConsistently) {
  const value x = random_floats({4000}, 71);
  const value ratio = value::floats({}, {0.25f});
  const value training = value::ints({}, {1}, value_type::boolean);
  auto seeded = [](::onnx::NodeProto& n) { int4q::test::set_attr(n, "seed", 7); };
  const auto a = run_node("Dropout", {&x, &ratio, &training}, seeded, 2);
  const auto b = run_node("Dropout", {&x, &ratio, &training}, seeded, 2);
  EXPECT_EQ(a[1].i, b[1].i);
  std::size_t dropped = 0;
  for (std::size_t e = 0; e < x.f.size(); ++e) {
    if (a[1].i[e]) {
      EXPECT_NEAR(a[0].f[e], x.f[e] / 0.75, 1e-6) << e;
    } else {
      EXPECT_EQ(a[0].f[e], 0.0f) << e;
      ++dropped;
    }
  }
  // Binomial(4000, 0.25): mean 1000, standard deviation 27; 6 sigma.
  EXPECT_NEAR(double(dropped), 1000.0, 165.0);
}

// ---- Pad, ScatterElements -----------------------------------------------------------------------

// Pad over `axes` (opset 19) with negative pads (crop) and every mode: output position o of an
// axis of n reads i = o - pad_begin, mapped by the mode when outside [0, n): wrap i mod n, edge
// clamp, reflect mirrored about the edges without repeating them; constant fills the value.
TEST(ExecutorNn, PadModesOverAxesWithCropsMatchIndexMaps) {
  const shape_t xs{2, 3, 5};
  const value x = random_floats(xs, 101);
  const value pads = value::ints({4}, {4, -1, 3, 2});  // axis 2: begin 4, end 3; axis 1: -1, 2
  const value fill = value::floats({}, {7.5f});
  const value axes = value::ints({2}, {2, 1});
  for (const std::string mode : {"constant", "reflect", "edge", "wrap"}) {
    const auto y = run_node(
        "Pad", {&x, &pads, mode == "constant" ? &fill : nullptr, &axes},
        [&](::onnx::NodeProto& n) { int4q::test::set_attr(n, "mode", mode); }, 1, 19);
    ASSERT_EQ(y[0].shape, (shape_t{2, 4, 12})) << mode;
    auto map = [&](std::int64_t i, std::int64_t n) -> std::int64_t {
      if (i >= 0 && i < n) return i;
      if (mode == "constant") return -1;
      if (mode == "edge") return i < 0 ? 0 : n - 1;
      if (mode == "wrap") return ((i % n) + n) % n;
      while (i < 0 || i >= n) i = i < 0 ? -i : 2 * (n - 1) - i;  // reflect
      return i;
    };
    std::vector<double> want;
    for (std::int64_t a = 0; a < 2; ++a)
      for (std::int64_t b = 0; b < 4; ++b)
        for (std::int64_t c = 0; c < 12; ++c) {
          const std::int64_t ib = map(b + 1, 3), ic = map(c - 4, 5);
          want.push_back(ib < 0 || ic < 0 ? 7.5
                                          : x.f[static_cast<std::size_t>((a * 3 + ib) * 5 + ic)]);
        }
    expect_close(want, y[0], 0.0, "Pad " + mode);
  }
}

// ScatterElements with duplicate indices: reduction max/min (opset 18) combine every update
// with the running value in order.
TEST(ExecutorNn, ScatterElementsMaxAndMinCombineDuplicates) {
  const value data = value::floats({2, 3}, {1, 5, 3, 4, 2, 6});
  const value indices = value::ints({2, 3}, {1, 1, 0, 2, 2, 0});
  const value updates = value::floats({2, 3}, {9, 0, 2, -1, 8, 3});
  for (const std::string r : {"max", "min"}) {
    const auto y =
        run_node("ScatterElements", {&data, &indices, &updates}, [&](::onnx::NodeProto& n) {
          int4q::test::set_attr(n, "axis", 1);
          int4q::test::set_attr(n, "reduction", r);
        });
    std::vector<double> want(data.f.begin(), data.f.end());
    for (std::size_t e = 0; e < 6; ++e) {
      double& d = want[(e / 3) * 3 + static_cast<std::size_t>(indices.i[e])];
      d = r == "max" ? std::max(d, double(updates.f[e])) : std::min(d, double(updates.f[e]));
    }
    expect_close(want, y[0], 0.0, "ScatterElements " + r);
  }
}

// ---- Errors -------------------------------------------------------------------------------------

void expect_node_error(const std::function<void()>& f, const std::string& op,
                       const std::string& fragment) {
  try {
    f();
    FAIL() << "expected model_error";
  } catch (const model_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(op + " node 'node_under_test'"), std::string::npos) << what;
    EXPECT_NE(what.find(fragment), std::string::npos) << what;
  }
}

TEST(ExecutorNn, BadAttributesAndShapesNameTheNode) {
  const value x = random_floats({1, 6, 5, 5}, 81), w = random_floats({4, 4, 3, 3}, 82);
  expect_node_error(
      [&] {
        run_node("Conv", {&x, &w},
                 [](::onnx::NodeProto& n) { int4q::test::set_attr(n, "group", 2); });
      },
      "Conv", "group 2 does not fit");
  expect_node_error(
      [&] {
        run_node("Conv", {&x, &w},
                 [](::onnx::NodeProto& n) { int4q::test::set_attr(n, "auto_pad", "SAME"); });
      },
      "Conv", "auto_pad 'SAME'");
  expect_node_error([&] { run_node("MaxPool", {&x}, [](::onnx::NodeProto&) {}); }, "MaxPool",
                    "kernel_shape is missing");
  const value scales = value::floats({4}, {1, 1, 2, 2});
  expect_node_error(
      [&] {
        run_node("Resize", {&x, nullptr, &scales},
                 [](::onnx::NodeProto& n) { int4q::test::set_attr(n, "mode", "bicubic"); });
      },
      "Resize", "mode 'bicubic'");
  const value pads = value::ints({8}, {0, 0, 1, 1, 0, 0, 1, 1});
  expect_node_error(
      [&] {
        run_node("Pad", {&x, &pads},
                 [](::onnx::NodeProto& n) { int4q::test::set_attr(n, "mode", "mirror"); });
      },
      "Pad", "mode 'mirror'");
}

// ---- A real model ---------------------------------------------------------------------------

// PP-OCRv4's text recognizer (opset 9: Conv, BatchNormalization, HardSigmoid, AveragePool,
// GlobalAveragePool, attention): a [1, 3, 48, 320] image gives [1, 40, 6625] character
// probabilities, finite, each row a softmax summing to 1.
TEST(ExecutorNn, PpOcrRecognizerRuns) {
  const fs::path file = fs::path(INT4Q_SOURCE_DIR) / "build" / "models" / "ppocr_v4_rec.onnx";
  if (!fs::exists(file)) GTEST_SKIP() << file << " is missing (scripts/fetch-test-models)";
  const model m = int4q::onnx::load_model(file);
  const executor e(m);
  const value x = random_floats({1, 3, 48, 320}, 91);
  const auto start = std::chrono::steady_clock::now();
  const auto out = e.run({{m.proto.graph().input(0).name(), x}});
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "[ppocr_v4_rec] one run of [1, 3, 48, 320]: " << seconds << " s\n";
  const value& y = out.at(m.proto.graph().output(0).name());
  ASSERT_EQ(y.shape, (shape_t{1, 40, 6625}));
  for (std::size_t r = 0; r < 40; ++r) {
    double sum = 0;
    for (std::size_t v = 0; v < 6625; ++v) {
      const float p = y.f[r * 6625 + v];
      ASSERT_TRUE(std::isfinite(p) && p >= 0) << "row " << r << " column " << v;
      sum += p;
    }
    EXPECT_NEAR(sum, 1.0, 1e-3) << "row " << r;
  }
}

}  // namespace

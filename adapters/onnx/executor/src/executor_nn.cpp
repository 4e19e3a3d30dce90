// The executor's neural-network operators: activations, normalizations, Dropout, LogSoftmax,
// Hardmax, Size, Mod, CastLike and friends here; convolution and pooling in executor_nn_conv.cpp,
// Resize and Pad in executor_nn_resize.cpp, index operators in executor_nn_index.cpp.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <int4q/float16.hpp>

#include "executor_nn.hpp"

namespace int4q {
namespace onnx {
namespace exec {

namespace {

/// y = f(x) elementwise on a float tensor.
template <class F>
void map_floats(const node_context& c, const inputs_t& in, std::vector<value>& out, F f) {
  value r = need_float(c, in, 0, "input");
  for (float& x : r.f) x = f(x);
  out.push_back(std::move(r));
}

/// An elementwise float operator whose function `make(node)` builds from the node's attributes.
template <class Make>
op_fn float_map_op(Make make) {
  return [make](const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
    map_floats(c, in, out, make(c.node));
  };
}

/// y = f(x) as bool on a float tensor (IsNaN, IsInf).
template <class P>
void test_floats(const node_context& c, const inputs_t& in, std::vector<value>& out, P pred) {
  const value& a = need_float(c, in, 0, "input");
  value r = value::ints(a.shape, std::vector<std::int64_t>(a.size()), value_type::boolean);
  for (std::size_t e = 0; e < a.f.size(); ++e) r.i[e] = pred(a.f[e]) ? 1 : 0;
  out.push_back(std::move(r));
}

/// softplus(x) = log(1 + exp(x)), without overflow for large x.
float softplus(float x) {
  const double d = x;
  return static_cast<float>(d > 0 ? d + std::log1p(std::exp(-d)) : std::log1p(std::exp(d)));
}

/// The activations that map each float alone, y = f(x), f from the node's attributes.
void add_mapped_activations(std::unordered_map<std::string, op_fn>& ops) {
  // HardSigmoid: y = max(0, min(1, alpha * x + beta)).
  ops["HardSigmoid"] = float_map_op([](const NodeProto& n) {
    const float alpha = attr_float(n, "alpha", 0.2f), beta = attr_float(n, "beta", 0.5f);
    return [alpha, beta](float x) { return std::max(0.0f, std::min(1.0f, alpha * x + beta)); };
  });
  // HardSwish: y = x * max(0, min(1, x / 6 + 1 / 2)).
  ops["HardSwish"] = float_map_op([](const NodeProto&) {
    return [](float x) { return x * std::max(0.0f, std::min(1.0f, x / 6.0f + 0.5f)); };
  });
  // LeakyRelu: y = x < 0 ? alpha * x : x.
  ops["LeakyRelu"] = float_map_op([](const NodeProto& n) {
    const float alpha = attr_float(n, "alpha", 0.01f);
    return [alpha](float x) { return x < 0 ? alpha * x : x; };
  });
  // Elu: y = x < 0 ? alpha * (exp(x) - 1) : x.
  ops["Elu"] = float_map_op([](const NodeProto& n) {
    const float alpha = attr_float(n, "alpha", 1.0f);
    return [alpha](float x) { return x < 0 ? alpha * std::expm1(x) : x; };
  });
  // Selu: y = gamma * (x <= 0 ? alpha * (exp(x) - 1) : x).
  ops["Selu"] = float_map_op([](const NodeProto& n) {
    const float alpha = attr_float(n, "alpha", 1.67326319217681884765625f);
    const float gamma = attr_float(n, "gamma", 1.05070102214813232421875f);
    return [alpha, gamma](float x) { return gamma * (x <= 0 ? alpha * std::expm1(x) : x); };
  });
  // Celu: y = max(0, x) + min(0, alpha * (exp(x / alpha) - 1)).
  ops["Celu"] = float_map_op([](const NodeProto& n) {
    const float alpha = attr_float(n, "alpha", 1.0f);
    return [alpha](float x) {
      return std::max(0.0f, x) + std::min(0.0f, alpha * std::expm1(x / alpha));
    };
  });
  ops["Softplus"] = float_map_op([](const NodeProto&) { return softplus; });
  // Softsign: y = x / (1 + |x|).
  ops["Softsign"] =
      float_map_op([](const NodeProto&) { return [](float x) { return x / (1 + std::fabs(x)); }; });
  // Mish: y = x * tanh(softplus(x)).
  ops["Mish"] = float_map_op(
      [](const NodeProto&) { return [](float x) { return x * std::tanh(softplus(x)); }; });
  // ThresholdedRelu: y = x > alpha ? x : 0.
  ops["ThresholdedRelu"] = float_map_op([](const NodeProto& n) {
    const float alpha = attr_float(n, "alpha", 1.0f);
    return [alpha](float x) { return x > alpha ? x : 0.0f; };
  });
  // Shrink: y = x < -lambd ? x + bias : x > lambd ? x - bias : 0.
  ops["Shrink"] = float_map_op([](const NodeProto& n) {
    const float lambd = attr_float(n, "lambd", 0.5f), bias = attr_float(n, "bias", 0.0f);
    return [lambd, bias](float x) { return x < -lambd ? x + bias : x > lambd ? x - bias : 0.0f; };
  });
}

void add_activations(std::unordered_map<std::string, op_fn>& ops) {
  add_mapped_activations(ops);
  // Gelu: y = x / 2 * (1 + erf(x / sqrt(2))), or with approximate = "tanh"
  // y = x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))).
  ops["Gelu"] = [](const node_context& c, const model&, const inputs_t& in,
                   std::vector<value>& out) {
    const AttributeProto* a = find_attr(c.node, "approximate");
    const std::string mode = a ? a->s() : "none";
    if (mode == "none") {
      map_floats(c, in, out, [](float x) {
        const double d = x;
        return static_cast<float>(0.5 * d * (1 + std::erf(d / std::sqrt(2.0))));
      });
    } else if (mode == "tanh") {
      map_floats(c, in, out, [](float x) {
        const double d = x, k = std::sqrt(2.0 / M_PI);
        return static_cast<float>(0.5 * d * (1 + std::tanh(k * (d + 0.044715 * d * d * d))));
      });
    } else {
      c.fail("approximate '" + mode + "' is not one of none, tanh");
    }
  };
  // Round: to nearest, ties to even (the default floating-point rounding mode).
  ops["Round"] =
      float_map_op([](const NodeProto&) { return [](float x) { return std::nearbyint(x); }; });
  ops["Sign"] = [](const node_context& c, const model&, const inputs_t& in,
                   std::vector<value>& out) {
    value r = need(c, in, 0);
    for (float& x : r.f) x = x > 0 ? 1.0f : x < 0 ? -1.0f : x;  // NaN stays NaN
    for (std::int64_t& x : r.i) x = x > 0 ? 1 : x < 0 ? -1 : 0;
    out.push_back(std::move(r));
  };
  ops["IsNaN"] = [](const node_context& c, const model&, const inputs_t& in,
                    std::vector<value>& out) {
    test_floats(c, in, out, [](float x) { return std::isnan(x); });
  };
  ops["IsInf"] = [](const node_context& c, const model&, const inputs_t& in,
                    std::vector<value>& out) {
    const bool neg = attr_int(c.node, "detect_negative", 1) != 0;
    const bool pos = attr_int(c.node, "detect_positive", 1) != 0;
    test_floats(c, in, out, [neg, pos](float x) { return std::isinf(x) && (x > 0 ? pos : neg); });
  };
  // PRelu: y = x < 0 ? slope * x : x, slope broadcast to x.
  ops["PRelu"] = [](const node_context& c, const model&, const inputs_t& in,
                    std::vector<value>& out) {
    binary(
        c, in, out, [](float x, float s) { return x < 0 ? s * x : x; },
        [](std::int64_t x, std::int64_t s) { return x < 0 ? s * x : x; });
  };
}

/// Mod: fmod = 1 truncates (C fmod), fmod = 0 takes the divisor's sign (Python %).
void op_mod(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const bool fmod = attr_int(c.node, "fmod", 0) != 0;
  binary(
      c, in, out,
      [fmod](float a, float b) {
        float r = std::fmod(a, b);
        if (!fmod && r != 0 && ((r < 0) != (b < 0))) r += b;
        return r;
      },
      [&c, fmod](std::int64_t a, std::int64_t b) {
        if (b == 0) c.fail("integer division by zero");
        std::int64_t r = a % b;
        if (!fmod && r != 0 && ((r < 0) != (b < 0))) r += b;
        return r;
      });
}

void op_size(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  out.push_back(value::ints({}, {static_cast<std::int64_t>(need(c, in, 0).size())}));
}

/// Dropout. Inference (the default): y = x, mask all true. Training (training_mode input, or
/// is_test = 0 before opset 7): mask = u >= ratio with u uniform in [0, 1) from MT19937 seeded by
/// the `seed` attribute (0 when absent; NumPy's generator and 53-bit doubles), y = x * mask /
/// (1 - ratio).
void op_dropout(const node_context& c, const model& m, const inputs_t& in,
                std::vector<value>& out) {
  const value& x = need_float(c, in, 0, "data");
  const std::int64_t opset = default_opset(m);
  double ratio = attr_float(c.node, "ratio", 0.5f);
  bool training = false;
  if (opset >= 12) {
    if (const value* r = optional_input(in, 1)) ratio = scalar_of(c, *r, "ratio");
    if (const value* t = optional_input(in, 2)) training = scalar_of(c, *t, "training_mode") != 0;
  } else if (opset < 7) {
    training = attr_int(c.node, "is_test", 0) == 0;
  }
  if (ratio < 0 || ratio >= 1) c.fail("ratio " + std::to_string(ratio) + " is not in [0, 1)");
  value y = x;
  std::vector<std::int64_t> mask(x.size(), 1);
  if (training && ratio > 0) {
    std::mt19937 rng(static_cast<std::uint32_t>(attr_int(c.node, "seed", 0)));
    const double scale = 1.0 / (1.0 - ratio);
    for (std::size_t e = 0; e < x.size(); ++e) {
      // NumPy's random_sample: (a >> 5) * 2^26 + (b >> 6), over 2^53.
      const std::uint32_t a = rng() >> 5, b = rng() >> 6;
      const double u = (a * 67108864.0 + b) / 9007199254740992.0;
      mask[e] = u >= ratio;
      y.f[e] = static_cast<float>(mask[e] ? x.f[e] * scale : 0.0);
    }
  }
  out.push_back(std::move(y));
  if (opset >= 10) {
    out.push_back(value::ints(x.shape, std::move(mask), value_type::boolean));
  } else {
    out.push_back(value::floats(x.shape, std::vector<float>(mask.begin(), mask.end())));
  }
}

/// LogSoftmax: y = x - max - log(sum(exp(x - max))) along the axis.
void op_log_softmax(const node_context& c, const model& m, const inputs_t& in,
                    std::vector<value>& out) {
  value r = need_float(c, in, 0, "input");
  const softmax_layout s = softmax_layout_of(c, m, r.shape);
  for (std::size_t p = 0; p < s.outer; ++p) {
    for (std::size_t q = 0; q < s.inner; ++q) {
      float* x = r.f.data() + p * s.len * s.inner + q;
      float mx = -std::numeric_limits<float>::infinity();
      for (std::size_t k = 0; k < s.len; ++k) mx = std::max(mx, x[k * s.inner]);
      double sum = 0;
      for (std::size_t k = 0; k < s.len; ++k) sum += std::exp(double(x[k * s.inner]) - mx);
      const double shift = mx + std::log(sum);
      for (std::size_t k = 0; k < s.len; ++k)
        x[k * s.inner] = static_cast<float>(x[k * s.inner] - shift);
    }
  }
  out.push_back(std::move(r));
}

/// Hardmax: 1 at the first maximum along the axis, 0 elsewhere.
void op_hardmax(const node_context& c, const model& m, const inputs_t& in,
                std::vector<value>& out) {
  value r = need_float(c, in, 0, "input");
  const softmax_layout s = softmax_layout_of(c, m, r.shape);
  for (std::size_t p = 0; p < s.outer; ++p) {
    for (std::size_t q = 0; q < s.inner; ++q) {
      float* x = r.f.data() + p * s.len * s.inner + q;
      std::size_t best = 0;
      for (std::size_t k = 1; k < s.len; ++k)
        if (x[k * s.inner] > x[best * s.inner]) best = k;
      for (std::size_t k = 0; k < s.len; ++k) x[k * s.inner] = k == best ? 1.0f : 0.0f;
    }
  }
  out.push_back(std::move(r));
}

/// Per-channel parameter p of a [N, C, ...] input: `size` C values, or C * inner values (one per
/// element of a channel: BatchNormalization's spatial = 0 before opset 9).
const value& channel_param(const node_context& c, const inputs_t& in, std::size_t k,
                           const char* what, std::size_t channels, std::size_t inner) {
  const value& v = need_float(c, in, k, what);
  if (v.size() != channels && v.size() != channels * inner)
    c.fail(std::string(what) + " has " + std::to_string(v.size()) + " values for " +
           std::to_string(channels) + " channels");
  return v;
}

/// BatchNormalization: y = (x - mean[c]) / sqrt(var[c] + epsilon) * scale[c] + B[c]. With
/// training_mode = 1 the mean and (population) variance are the batch's, and the outputs 1 and 2
/// are running_mean = mean * momentum + batch_mean * (1 - momentum), likewise running_var.
void op_batch_norm(const node_context& c, const model&, const inputs_t& in,
                   std::vector<value>& out) {
  const value& x = need_float(c, in, 0, "X");
  if (x.shape.size() < 2) c.fail("X must have rank >= 2 ([N, C, ...])");
  const auto N = static_cast<std::size_t>(x.shape[0]), C = static_cast<std::size_t>(x.shape[1]);
  const std::size_t inner = span_of(x.shape, 2, x.shape.size());
  const value& scale = channel_param(c, in, 1, "scale", C, inner);
  const value& bias = channel_param(c, in, 2, "B", C, inner);
  const value& mean_in = channel_param(c, in, 3, "input_mean", C, inner);
  const value& var_in = channel_param(c, in, 4, "input_var", C, inner);
  const double eps = attr_float(c.node, "epsilon", 1e-5f);
  const double momentum = attr_float(c.node, "momentum", 0.9f);
  const bool training = attr_int(c.node, "training_mode", 0) != 0;
  // Per element of a channel when the parameters hold C * inner values.
  const bool per_element = scale.size() != C || mean_in.size() != C;
  const std::size_t P = per_element ? inner : 1;  // parameters per channel
  std::vector<double> mean(mean_in.f.begin(), mean_in.f.end()),
      var(var_in.f.begin(), var_in.f.end());
  value running_mean = mean_in, running_var = var_in;
  if (training) {
    if (per_element) c.fail("training_mode needs one scale, B, mean and var value per channel");
    const double count = double(N * inner);
    for (std::size_t ch = 0; ch < C; ++ch) {
      double s = 0, ss = 0;
      for (std::size_t n = 0; n < N; ++n) {
        const float* p = x.f.data() + (n * C + ch) * inner;
        for (std::size_t e = 0; e < inner; ++e) s += p[e];
      }
      const double mu = s / count;
      for (std::size_t n = 0; n < N; ++n) {
        const float* p = x.f.data() + (n * C + ch) * inner;
        for (std::size_t e = 0; e < inner; ++e) ss += (p[e] - mu) * (p[e] - mu);
      }
      mean[ch] = mu;
      var[ch] = ss / count;
      running_mean.f[ch] = static_cast<float>(mean_in.f[ch] * momentum + mu * (1 - momentum));
      running_var.f[ch] = static_cast<float>(var_in.f[ch] * momentum + var[ch] * (1 - momentum));
    }
  }
  // y = x * a + b with a = scale / sqrt(var + eps), b = B - mean * a.
  std::vector<float> a(C * P), b(C * P);
  for (std::size_t k = 0; k < C * P; ++k) {
    const double ak = scale.f[k] / std::sqrt(var[k] + eps);
    a[k] = static_cast<float>(ak);
    b[k] = static_cast<float>(bias.f[k] - mean[k] * ak);
  }
  value y = x;
  for (std::size_t n = 0; n < N; ++n) {
    for (std::size_t ch = 0; ch < C; ++ch) {
      float* p = y.f.data() + (n * C + ch) * inner;
      const float* ak = a.data() + ch * P;
      const float* bk = b.data() + ch * P;
      for (std::size_t e = 0; e < inner; ++e) {
        const std::size_t q = per_element ? e : 0;
        p[e] = p[e] * ak[q] + bk[q];
      }
    }
  }
  out.push_back(std::move(y));
  // Optional outputs (training: running mean and variance; before opset 9 also saved statistics).
  const auto extra = static_cast<std::size_t>(std::max(0, c.node.output_size() - 1));
  const value* extras[] = {&running_mean, &running_var, &running_mean, &running_var};
  for (std::size_t k = 0; k < std::min<std::size_t>(extra, 4); ++k) out.push_back(*extras[k]);
}

/// y = (x - mean) / sqrt(var + eps) * scale + bias over `groups` groups of `group_len` elements
/// per batch item; scale and bias index by `param_of(group, element)`. Shared by
/// InstanceNormalization and GroupNormalization.
template <class P>
void normalize_groups(float* data, std::size_t groups, std::size_t group_len, double eps, P apply) {
  for (std::size_t g = 0; g < groups; ++g) {
    float* p = data + g * group_len;
    double s = 0, ss = 0;
    for (std::size_t e = 0; e < group_len; ++e) s += p[e];
    const double mu = s / double(group_len);
    for (std::size_t e = 0; e < group_len; ++e) ss += (p[e] - mu) * (p[e] - mu);
    const double inv = 1.0 / std::sqrt(ss / double(group_len) + eps);
    for (std::size_t e = 0; e < group_len; ++e) p[e] = static_cast<float>((p[e] - mu) * inv);
    apply(g, p);
  }
}

/// InstanceNormalization: per (n, c) over the spatial elements, then * scale[c] + B[c].
void op_instance_norm(const node_context& c, const model&, const inputs_t& in,
                      std::vector<value>& out) {
  value y = need_float(c, in, 0, "input");
  if (y.shape.size() < 2) c.fail("input must have rank >= 2 ([N, C, ...])");
  const auto C = static_cast<std::size_t>(y.shape[1]);
  const std::size_t inner = span_of(y.shape, 2, y.shape.size());
  const value& scale = need_float(c, in, 1, "scale");
  const value& bias = need_float(c, in, 2, "B");
  if (scale.size() != C || bias.size() != C)
    c.fail("scale and B must hold " + std::to_string(C) + " values (one per channel)");
  const double eps = attr_float(c.node, "epsilon", 1e-5f);
  normalize_groups(y.f.data(), y.size() / std::max<std::size_t>(inner, 1), inner, eps,
                   [&](std::size_t g, float* p) {
                     const std::size_t ch = g % C;
                     for (std::size_t e = 0; e < inner; ++e) p[e] = p[e] * scale.f[ch] + bias.f[ch];
                   });
  out.push_back(std::move(y));
}

/// GroupNormalization: channels in num_groups groups, each normalized over its channels and
/// spatial elements, then * scale + bias per channel (opset 21: C values) or per group (opset
/// 18: num_groups values).
void op_group_norm(const node_context& c, const model&, const inputs_t& in,
                   std::vector<value>& out) {
  value y = need_float(c, in, 0, "X");
  if (y.shape.size() < 2) c.fail("X must have rank >= 2 ([N, C, ...])");
  const auto C = static_cast<std::size_t>(y.shape[1]);
  const std::size_t inner = span_of(y.shape, 2, y.shape.size());
  const std::int64_t G = attr_int(c.node, "num_groups", 0);
  if (G <= 0 || C % static_cast<std::size_t>(G) != 0)
    c.fail("num_groups " + std::to_string(G) + " does not divide the " + std::to_string(C) +
           " channels");
  const auto groups = static_cast<std::size_t>(G), per_group = C / groups;
  const value& scale = need_float(c, in, 1, "scale");
  const value& bias = need_float(c, in, 2, "bias");
  const bool per_channel = scale.size() == C && bias.size() == C;
  if (!per_channel && (scale.size() != groups || bias.size() != groups))
    c.fail("scale and bias must hold C = " + std::to_string(C) +
           " or num_groups = " + std::to_string(groups) + " values");
  const double eps = attr_float(c.node, "epsilon", 1e-5f);
  normalize_groups(y.f.data(), y.size() / std::max<std::size_t>(per_group * inner, 1),
                   per_group * inner, eps, [&](std::size_t g, float* p) {
                     for (std::size_t k = 0; k < per_group; ++k) {
                       const std::size_t q =
                           per_channel ? (g % groups) * per_group + k : g % groups;
                       for (std::size_t e = 0; e < inner; ++e)
                         p[k * inner + e] = p[k * inner + e] * scale.f[q] + bias.f[q];
                     }
                   });
  out.push_back(std::move(y));
}

/// LpNormalization: y = x / ||x||_p along the axis (p 1 or 2); a zero norm leaves zeros.
void op_lp_norm(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  value y = need_float(c, in, 0, "input");
  const std::size_t rank = y.shape.size();
  const auto axis = static_cast<std::size_t>(normalize_axis(c, attr_int(c.node, "axis", -1), rank));
  const std::int64_t p = attr_int(c.node, "p", 2);
  if (p != 1 && p != 2) c.fail("p must be 1 or 2, not " + std::to_string(p));
  const std::size_t outer = span_of(y.shape, 0, axis),
                    len = static_cast<std::size_t>(y.shape[axis]),
                    inner = span_of(y.shape, axis + 1, rank);
  for (std::size_t o = 0; o < outer; ++o) {
    for (std::size_t q = 0; q < inner; ++q) {
      float* x = y.f.data() + o * len * inner + q;
      double norm = 0;
      for (std::size_t k = 0; k < len; ++k)
        norm += p == 1 ? std::fabs(x[k * inner]) : double(x[k * inner]) * x[k * inner];
      if (p == 2) norm = std::sqrt(norm);
      if (norm == 0) continue;
      for (std::size_t k = 0; k < len; ++k) x[k * inner] = static_cast<float>(x[k * inner] / norm);
    }
  }
  out.push_back(std::move(y));
}

/// MeanVarianceNormalization: y = (x - mean) / sqrt(var + 1e-9) over `axes` (default 0, 2, 3).
void op_mvn(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  value y = need_float(c, in, 0, "input");
  const std::size_t rank = y.shape.size();
  shape_t axes = attr_ints(c.node, "axes");
  if (!find_attr(c.node, "axes")) axes = {0, 2, 3};
  std::vector<bool> reduce(rank, false);
  for (const std::int64_t a : axes)
    reduce[static_cast<std::size_t>(normalize_axis(c, a, rank))] = true;
  // Each element's group: its coordinates on the kept axes.
  shape_t kept(rank);
  for (std::size_t k = 0; k < rank; ++k) kept[k] = reduce[k] ? 1 : y.shape[k];
  const shape_t kst = strides_of(kept);
  const std::size_t groups = numel(kept), n = y.size();
  std::vector<std::size_t> group(n);
  shape_t j(rank, 0);
  for (std::size_t e = 0; e < n; ++e) {
    std::size_t g = 0;
    for (std::size_t k = 0; k < rank; ++k)
      if (!reduce[k]) g += static_cast<std::size_t>(j[k] * kst[k]);
    group[e] = g;
    for (std::size_t k = rank; k-- > 0;) {
      if (++j[k] < y.shape[k]) break;
      j[k] = 0;
    }
  }
  std::vector<double> s(groups, 0), ss(groups, 0);
  const double count = double(n) / double(std::max<std::size_t>(groups, 1));
  for (std::size_t e = 0; e < n; ++e) s[group[e]] += y.f[e];
  for (double& v : s) v /= count;
  for (std::size_t e = 0; e < n; ++e)
    ss[group[e]] += (y.f[e] - s[group[e]]) * (y.f[e] - s[group[e]]);
  for (std::size_t e = 0; e < n; ++e)
    y.f[e] = static_cast<float>((y.f[e] - s[group[e]]) / std::sqrt(ss[group[e]] / count + 1e-9));
  out.push_back(std::move(y));
}

/// The declared element type of a tensor name in the graph (inputs, outputs, value_info,
/// initializers); 0 when not declared.
int declared_type(const model& m, const std::string& name) {
  const auto& g = m.proto.graph();
  for (const auto* list : {&g.input(), &g.output(), &g.value_info()})
    for (const auto& v : *list)
      if (v.name() == name && v.type().has_tensor_type()) return v.type().tensor_type().elem_type();
  for (const auto& t : g.initializer())
    if (t.name() == name) return t.data_type();
  return 0;
}

/// CastLike: input 0 converted to the element type of input 1 (its declared type when the graph
/// declares it, so that float16 and bfloat16 targets round).
void op_cast_like(const node_context& c, const model& m, const inputs_t& in,
                  std::vector<value>& out) {
  const value& a = need(c, in, 0);
  const value& like = need(c, in, 1);
  const int declared = declared_type(m, c.node.input(1));
  value r;
  r.type = like.type;
  r.shape = a.shape;
  const std::size_t n = a.size();
  if (r.type == value_type::float32) {
    r.f.resize(n);
    for (std::size_t e = 0; e < n; ++e)
      r.f[e] = a.type == value_type::float32 ? a.f[e] : static_cast<float>(a.i[e]);
    if (declared == TensorProto::FLOAT16)
      for (float& x : r.f) x = half_bits_to_float(float_to_half_bits(x));
    if (declared == TensorProto::BFLOAT16)
      for (float& x : r.f) x = bfloat16_bits_to_float(float_to_bfloat16_bits(x));
  } else {
    r.i.resize(n);
    const bool to_bool = r.type == value_type::boolean;
    for (std::size_t e = 0; e < n; ++e) {
      if (a.type == value_type::float32) {
        r.i[e] = to_bool ? (a.f[e] != 0.0f) : static_cast<std::int64_t>(a.f[e]);
      } else {
        r.i[e] = to_bool ? (a.i[e] != 0) : a.i[e];
      }
    }
  }
  out.push_back(std::move(r));
}

}  // namespace

void add_nn_ops(std::unordered_map<std::string, op_fn>& ops) {
  add_activations(ops);
  ops["Mod"] = op_mod;
  ops["Size"] = op_size;
  ops["Dropout"] = op_dropout;
  ops["LogSoftmax"] = op_log_softmax;
  ops["Hardmax"] = op_hardmax;
  ops["BatchNormalization"] = op_batch_norm;
  ops["InstanceNormalization"] = op_instance_norm;
  ops["GroupNormalization"] = op_group_norm;
  ops["LpNormalization"] = op_lp_norm;
  ops["MeanVarianceNormalization"] = op_mvn;
  // CastLike rounds to nearest even like Cast: the conformance test gives ONNX 1.12's truncating
  // bfloat16 data set one bfloat16 step of tolerance.
  ops["CastLike"] = op_cast_like;
  add_nn_conv_ops(ops);
  add_nn_resize_ops(ops);
  add_nn_index_ops(ops);
}

}  // namespace exec
}  // namespace onnx
}  // namespace int4q

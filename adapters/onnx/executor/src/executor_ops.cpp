// Executor operators beyond the GPT-2 set: elementwise math and logic, comparisons, variadic
// Max/Min/Sum/Mean, reductions, and shape operators (Squeeze, Flatten, Expand,
// ConstantOfShape, Tile), Clip, Gemm, Trilu, LogSoftmax-free activations.

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <int4q/pack.hpp>

#include "executor_detail.hpp"
#include "executor_math.hpp"

namespace int4q {
namespace onnx {
namespace exec {

namespace {

/// r's values from doubles accumulated for them, in r's type (integers truncated).
void store_doubles(value& r, const std::vector<double>& acc) {
  if (r.type == value_type::float32) {
    r.f.assign(acc.begin(), acc.end());
  } else {
    r.i.resize(acc.size());
    for (std::size_t e = 0; e < acc.size(); ++e) r.i[e] = static_cast<std::int64_t>(acc[e]);
  }
}

/// Elementwise on either type: `ff` for floats, `fi` for integers (nullptr-like when the
/// operator has no integer form: then an integer input is an error).
template <class FF, class FI>
void unary(const node_context& c, const inputs_t& in, std::vector<value>& out, FF ff, FI fi,
           bool ints) {
  const value& a = need(c, in, 0);
  if (a.type == value_type::float32) {
    out.push_back(map_float_input(c, in, 0, [&](const float* s, float* d, std::size_t n) {
      for (std::size_t e = 0; e < n; ++e) d[e] = ff(s[e]);
    }));
    return;
  }
  value r = a;
  if (ints && a.type == value_type::int64) {
    for (std::int64_t& x : r.i) x = fi(x);
  } else {
    c.fail("input type is not supported");
  }
  out.push_back(std::move(r));
}

template <class F>
op_fn float_op(F f) {
  return [f](const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
    unary(
        c, in, out, f, [](std::int64_t x) { return x; }, false);
  };
}

/// Elementwise on floats through an array kernel (executor_math.hpp): f(float* x, size_t n).
template <class F>
op_fn float_array_op(F f) {
  return [f](const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
    const value& a = need(c, in, 0);
    if (a.type != value_type::float32) c.fail("input type is not supported");
    out.push_back(map_float_input(c, in, 0, [&](const float* s, float* d, std::size_t n) {
      if (d != s) std::copy(s, s + n, d);
      f(d, n);
    }));
  };
}

template <class FF, class FI>
op_fn any_op(FF ff, FI fi) {
  return [ff, fi](const node_context& c, const model&, const inputs_t& in,
                  std::vector<value>& out) { unary(c, in, out, ff, fi, true); };
}

/// Broadcast comparison or logic: bool result from a predicate on doubles.
template <class P>
op_fn compare_op(P pred, bool bool_inputs) {
  return [pred, bool_inputs](const node_context& c, const model&, const inputs_t& in,
                             std::vector<value>& out) {
    const value& a = need(c, in, 0);
    const value& b = need(c, in, 1);
    if ((a.type == value_type::float32) != (b.type == value_type::float32))
      c.fail("inputs have different types");
    if (bool_inputs && (a.type != value_type::boolean || b.type != value_type::boolean))
      c.fail("inputs must be bool");
    value r;
    r.type = value_type::boolean;
    r.shape = broadcast_shapes(c, {&a.shape, &b.shape});
    const auto ia = broadcast_index(a.shape, r.shape), ib = broadcast_index(b.shape, r.shape);
    r.i.resize(ia.size());
    for (std::size_t e = 0; e < ia.size(); ++e) {
      if (a.type == value_type::float32) {
        r.i[e] = pred(double(a.f[ia[e]]), double(b.f[ib[e]]));
      } else {
        r.i[e] = pred(double(a.i[ia[e]]), double(b.i[ib[e]]));
      }
    }
    out.push_back(std::move(r));
  };
}

/// Max, Min, Sum, Mean of any number of broadcast inputs.
template <class F>
op_fn variadic_op(F combine, bool mean) {
  return [combine, mean](const node_context& c, const model&, const inputs_t& in,
                         std::vector<value>& out) {
    std::vector<const shape_t*> shapes;
    for (std::size_t k = 0; k < in.size(); ++k) shapes.push_back(&need(c, in, k).shape);
    const value& first = need(c, in, 0);
    value r;
    r.type = first.type;
    r.shape = broadcast_shapes(c, shapes);
    const std::size_t n = numel(r.shape);
    std::vector<double> acc(n);
    for (std::size_t k = 0; k < in.size(); ++k) {
      const value& v = *in[k];
      if (v.type != first.type) c.fail("inputs have different types");
      const auto idx = broadcast_index(v.shape, r.shape);
      for (std::size_t e = 0; e < n; ++e) {
        const double x = v.type == value_type::float32 ? double(v.f[idx[e]]) : double(v.i[idx[e]]);
        acc[e] = k == 0 ? x : combine(acc[e], x);
      }
    }
    if (mean)
      for (double& x : acc) x /= double(in.size());
    store_doubles(r, acc);
    out.push_back(std::move(r));
  };
}

void op_pow(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& a = need(c, in, 0);
  const value& b = need(c, in, 1);
  if (a.type == value_type::float32 && b.size() == 1 &&
      (b.type == value_type::float32 ? b.f[0] == 2.0f : b.i[0] == 2)) {
    // x^2 as x * x (RMSNorm's Pow(x, 2)): the correctly rounded square, as ONNX Runtime
    // computes it; std::pow is only within an ulp.
    shape_t shape = broadcast_shapes(c, {&a.shape, &b.shape});
    value r = map_float_input(c, in, 0, [](const float* s, float* d, std::size_t n) {
      for (std::size_t e = 0; e < n; ++e) d[e] = s[e] * s[e];
    });
    r.shape = std::move(shape);
    out.push_back(std::move(r));
    return;
  }
  value r;
  r.type = a.type;  // the base's type
  r.shape = broadcast_shapes(c, {&a.shape, &b.shape});
  const auto ia = broadcast_index(a.shape, r.shape), ib = broadcast_index(b.shape, r.shape);
  const std::size_t n = ia.size();
  auto base = [&](std::size_t e) {
    return a.type == value_type::float32 ? double(a.f[ia[e]]) : double(a.i[ia[e]]);
  };
  auto expo = [&](std::size_t e) {
    return b.type == value_type::float32 ? double(b.f[ib[e]]) : double(b.i[ib[e]]);
  };
  if (r.type == value_type::float32) {
    r.f.resize(n);
    for (std::size_t e = 0; e < n; ++e) r.f[e] = std::pow(a.f[ia[e]], static_cast<float>(expo(e)));
  } else {
    r.i.resize(n);
    for (std::size_t e = 0; e < n; ++e)
      r.i[e] = static_cast<std::int64_t>(std::pow(base(e), expo(e)));
  }
  out.push_back(std::move(r));
}

/// The axes of a node that takes them as input 1 (newer opsets) or as the `axes` attribute.
shape_t axes_input_or_attr(const node_context& c, const inputs_t& in) {
  if (const value* v = optional_input(in, 1)) return int_list(c, *v, "axes");
  return attr_ints(c.node, "axes");
}

/// The reduction `kind` (as op_reduce) of `a` over the axes marked in `reduce`, one value per
/// element of `kept_shape` (a's shape with the reduced axes 1), in double. Log-sum-exp
/// subtracts each output's maximum before exp: max + log(sum(exp(x - max))).
std::vector<double> reduced_values(const value& a, const std::vector<bool>& reduce,
                                   const shape_t& kept_shape, int kind) {
  const std::size_t rank = a.shape.size();
  const std::size_t n_out = numel(kept_shape);
  const shape_t out_strides = strides_of(kept_shape);
  std::vector<double> acc(n_out);
  std::vector<std::size_t> count(n_out, 0);
  const double init = kind == 2   ? -std::numeric_limits<double>::infinity()
                      : kind == 3 ? std::numeric_limits<double>::infinity()
                      : kind == 4 ? 1.0
                                  : 0.0;
  std::fill(acc.begin(), acc.end(), init);
  const std::size_t n = a.size();
  // Sums over trailing axes (RMSNorm's ReduceMean over the last axis): each output a row of
  // contiguous elements, added in the same order as the walk below, the rows over the threads.
  std::size_t first_reduced = rank;
  while (first_reduced > 0 && reduce[first_reduced - 1]) --first_reduced;
  if (a.type == value_type::float32 && (kind == 0 || kind == 1 || kind == 5) && n_out > 0 &&
      std::find(reduce.begin(), reduce.begin() + static_cast<std::ptrdiff_t>(first_reduced),
                true) == reduce.begin() + static_cast<std::ptrdiff_t>(first_reduced)) {
    const std::size_t len = n / n_out;
    parallel_ranges(n_out, rows_per_item(len), [&](std::size_t o0, std::size_t o1) {
      for (std::size_t o = o0; o < o1; ++o) {
        const float* x = a.f.data() + o * len;
        double sum = 0;
        if (kind == 5) {
          for (std::size_t k = 0; k < len; ++k) sum += double(x[k]) * double(x[k]);
        } else {
          for (std::size_t k = 0; k < len; ++k) sum += x[k];
        }
        acc[o] = kind == 1 ? sum / double(len) : sum;
      }
    });
    return acc;
  }
  std::vector<double> mx(n_out, -std::numeric_limits<double>::infinity());
  shape_t j(rank, 0);
  auto element = [&](std::size_t e) {
    return a.type == value_type::float32 ? double(a.f[e]) : double(a.i[e]);
  };
  if (kind == 9) {  // log-sum-exp: the maximum first
    shape_t jj(rank, 0);
    for (std::size_t e = 0; e < n; ++e) {
      std::size_t o = 0;
      for (std::size_t k = 0; k < rank; ++k)
        o += static_cast<std::size_t>((reduce[k] ? 0 : jj[k]) * out_strides[k]);
      mx[o] = std::max(mx[o], element(e));
      for (std::size_t k = rank; k-- > 0;) {
        if (++jj[k] < a.shape[k]) break;
        jj[k] = 0;
      }
    }
  }
  for (std::size_t e = 0; e < n; ++e) {
    std::size_t o = 0;
    for (std::size_t k = 0; k < rank; ++k)
      o += static_cast<std::size_t>((reduce[k] ? 0 : j[k]) * out_strides[k]);
    const double x = element(e);
    switch (kind) {
      case 2: acc[o] = std::max(acc[o], x); break;
      case 3: acc[o] = std::min(acc[o], x); break;
      case 4: acc[o] *= x; break;
      case 5: acc[o] += x * x; break;
      case 6: acc[o] += std::fabs(x); break;
      case 7: acc[o] += x * x; break;
      case 9: acc[o] += std::exp(x - mx[o]); break;
      default: acc[o] += x; break;
    }
    ++count[o];
    for (std::size_t k = rank; k-- > 0;) {
      if (++j[k] < a.shape[k]) break;
      j[k] = 0;
    }
  }
  for (std::size_t o = 0; o < n_out; ++o) {
    if (kind == 1) acc[o] /= double(count[o]);
    if (kind == 7) acc[o] = std::sqrt(acc[o]);
    if (kind == 8) acc[o] = std::log(acc[o]);
    if (kind == 9) acc[o] = mx[o] + std::log(acc[o]);
  }
  return acc;
}

/// The axes a reduction runs over: input 1 (ReduceSum from opset 13, all from 18) or the
/// attribute; empty means all axes unless noop_with_empty_axes.
void op_reduce(const node_context& c, const inputs_t& in, std::vector<value>& out, int kind) {
  // kind: 0 sum, 1 mean, 2 max, 3 min, 4 prod, 5 sum of squares, 6 l1, 7 l2, 8 log-sum,
  // 9 log-sum-exp
  const value& a = need(c, in, 0);
  const shape_t axes = axes_input_or_attr(c, in);
  const bool keep = attr_int(c.node, "keepdims", 1) != 0;
  const bool noop = attr_int(c.node, "noop_with_empty_axes", 0) != 0;
  const std::size_t rank = a.shape.size();
  if (axes.empty() && noop) {
    out.push_back(a);
    return;
  }
  std::vector<bool> reduce(rank, axes.empty());
  for (std::int64_t ax : axes) reduce[static_cast<std::size_t>(normalize_axis(c, ax, rank))] = true;
  shape_t kept_shape(rank);
  for (std::size_t k = 0; k < rank; ++k) kept_shape[k] = reduce[k] ? 1 : a.shape[k];
  const std::vector<double> acc = reduced_values(a, reduce, kept_shape, kind);
  value r;
  r.type = a.type;
  if (keep) {
    r.shape = kept_shape;
  } else {
    for (std::size_t k = 0; k < rank; ++k)
      if (!reduce[k]) r.shape.push_back(a.shape[k]);
  }
  store_doubles(r, acc);
  out.push_back(std::move(r));
}

op_fn reduce_op(int kind) {
  return [kind](const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
    op_reduce(c, in, out, kind);
  };
}

void op_squeeze(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& a = need(c, in, 0);
  const shape_t axes = axes_input_or_attr(c, in);
  std::vector<bool> drop(a.shape.size(), false);
  if (axes.empty()) {
    for (std::size_t k = 0; k < a.shape.size(); ++k) drop[k] = a.shape[k] == 1;
  }
  for (std::int64_t ax : axes) {
    const auto k = static_cast<std::size_t>(normalize_axis(c, ax, a.shape.size()));
    if (a.shape[k] != 1)
      c.fail("cannot squeeze axis " + std::to_string(ax) + " of size " +
             std::to_string(a.shape[k]));
    drop[k] = true;
  }
  value r = a;
  r.shape.clear();
  for (std::size_t k = 0; k < a.shape.size(); ++k)
    if (!drop[k]) r.shape.push_back(a.shape[k]);
  out.push_back(std::move(r));
}

void op_flatten(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& a = need(c, in, 0);
  const std::size_t rank = a.shape.size();
  std::int64_t axis = attr_int(c.node, "axis", 1);
  if (axis < 0) axis += static_cast<std::int64_t>(rank);
  if (axis < 0 || axis > static_cast<std::int64_t>(rank)) c.fail("axis out of range");
  std::int64_t outer = 1, inner = 1;
  for (std::size_t k = 0; k < rank; ++k)
    (static_cast<std::int64_t>(k) < axis ? outer : inner) *= a.shape[k];
  value r = a;
  r.shape = {outer, inner};
  out.push_back(std::move(r));
}

void op_expand(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& a = need(c, in, 0);
  const shape_t target = int_list(c, need(c, in, 1), "shape");
  value r;
  r.type = a.type;
  r.shape = broadcast_shapes(c, {&a.shape, &target});
  auto fill = [&](const auto& src, auto& dst) {
    broadcast_walk<1>(r.shape, {&a.shape},
                      [&](std::size_t o, const std::array<std::size_t, 1>& p,
                          const std::array<std::size_t, 1>& d, std::size_t len) {
                        for (std::size_t j = 0; j < len; ++j) dst[o + j] = src[p[0] + j * d[0]];
                      });
  };
  if (a.type == value_type::float32) {
    r.f = new_floats(numel(r.shape));
    fill(a.f, r.f);
  } else {
    r.i.resize(numel(r.shape));
    fill(a.i, r.i);
  }
  out.push_back(std::move(r));
}

void op_constant_of_shape(const node_context& c, const model& m, const inputs_t& in,
                          std::vector<value>& out) {
  const shape_t shape = int_list(c, need(c, in, 0), "shape");
  value fill = value::floats({1}, {0.0f});
  if (const AttributeProto* a = find_attr(c.node, "value")) fill = to_value(m, a->t());
  value r;
  r.type = fill.type;
  r.shape = shape;
  if (fill.type == value_type::float32) {
    r.f.assign(numel(shape), fill.f.at(0));
  } else {
    r.i.assign(numel(shape), fill.i.at(0));
  }
  out.push_back(std::move(r));
}

void op_tile(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& a = need(c, in, 0);
  const shape_t reps = int_list(c, need(c, in, 1), "repeats");
  const std::size_t rank = a.shape.size();
  if (reps.size() != rank)
    c.fail("repeats has " + std::to_string(reps.size()) + " entries for rank " +
           std::to_string(rank));
  value r;
  r.type = a.type;
  for (std::size_t k = 0; k < rank; ++k) r.shape.push_back(a.shape[k] * reps[k]);
  const std::size_t n = numel(r.shape);
  const shape_t st = strides_of(a.shape);
  shape_t j(rank, 0);
  std::vector<std::size_t> idx(n);
  for (std::size_t e = 0; e < n; ++e) {
    std::int64_t pos = 0;
    for (std::size_t k = 0; k < rank; ++k) pos += (j[k] % a.shape[k]) * st[k];
    idx[e] = static_cast<std::size_t>(pos);
    for (std::size_t k = rank; k-- > 0;) {
      if (++j[k] < r.shape[k]) break;
      j[k] = 0;
    }
  }
  out.push_back(take(a, r.shape, idx));
}

void op_clip(const node_context& c, const model& m, const inputs_t& in, std::vector<value>& out) {
  const value& a = need(c, in, 0);
  double lo = -std::numeric_limits<double>::infinity(),
         hi = std::numeric_limits<double>::infinity();
  if (default_opset(m) < 11) {
    lo = attr_float(c.node, "min", -std::numeric_limits<float>::max());
    hi = attr_float(c.node, "max", std::numeric_limits<float>::max());
  } else {
    auto scalar = [&](const value* v) {
      return v->type == value_type::float32 ? double(v->f.at(0)) : double(v->i.at(0));
    };
    if (const value* v = optional_input(in, 1)) lo = scalar(v);
    if (const value* v = optional_input(in, 2)) hi = scalar(v);
  }
  value r = a;
  if (r.type == value_type::float32) {
    for (float& x : r.f) x = static_cast<float>(std::min(std::max(double(x), lo), hi));
  } else {
    for (std::int64_t& x : r.i)
      x = static_cast<std::int64_t>(std::min(std::max(double(x), lo), hi));
  }
  out.push_back(std::move(r));
}

void op_gemm(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& a = need(c, in, 0);
  const value& b = need(c, in, 1);
  const value* bias = optional_input(in, 2);
  if (a.type != value_type::float32 || b.type != value_type::float32)
    c.fail("Gemm computes float tensors only");
  if (a.shape.size() != 2 || b.shape.size() != 2) c.fail("A and B must be 2-D");
  const bool ta = attr_int(c.node, "transA", 0) != 0, tb = attr_int(c.node, "transB", 0) != 0;
  const float alpha = attr_float(c.node, "alpha", 1.0f), beta = attr_float(c.node, "beta", 1.0f);
  const std::int64_t M = ta ? a.shape[1] : a.shape[0], K = ta ? a.shape[0] : a.shape[1];
  const std::int64_t K2 = tb ? b.shape[1] : b.shape[0], N = tb ? b.shape[0] : b.shape[1];
  if (K != K2)
    c.fail("A " + dims_string(a.shape) + " and B " + dims_string(b.shape) + " do not multiply");
  value r = value::floats({M, N}, std::vector<float>(static_cast<std::size_t>(M * N), 0.0f));
  if (bias && beta != 0.0f) {
    const auto idx = broadcast_index(bias->shape, r.shape);
    for (std::size_t e = 0; e < idx.size(); ++e) r.f[e] = beta * bias->f[idx[e]];
  }
  gemm(ta, tb, std::size_t(M), std::size_t(N), std::size_t(K), alpha, a.f.data(),
       std::size_t(a.shape[1]), b.f.data(), std::size_t(b.shape[1]),
       bias && beta != 0.0f ? 1.0f : 0.0f, r.f.data(), std::size_t(N));
  out.push_back(std::move(r));
}

void op_trilu(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& a = need(c, in, 0);
  if (a.shape.size() < 2) c.fail("input must have rank >= 2");
  std::int64_t k = 0;
  if (const value* v = optional_input(in, 1)) k = int_list(c, *v, "k").at(0);
  const bool upper = attr_int(c.node, "upper", 1) != 0;
  const std::int64_t rows = a.shape[a.shape.size() - 2], cols = a.shape.back();
  value r = a;
  const std::size_t n = a.size();
  for (std::size_t e = 0; e < n; ++e) {
    const auto col = static_cast<std::int64_t>(e % static_cast<std::size_t>(cols));
    const auto row = static_cast<std::int64_t>((e / static_cast<std::size_t>(cols)) %
                                               static_cast<std::size_t>(rows));
    const bool keep = upper ? col - row >= k : col - row <= k;
    if (!keep) {
      if (r.type == value_type::float32) {
        r.f[e] = 0;
      } else {
        r.i[e] = 0;
      }
    }
  }
  out.push_back(std::move(r));
}

/// Bytes of an integer value (uint8 data such as MatMulNBits B) as a uint8 tensor.
template <std::size_t R>
xt::xtensor<std::uint8_t, R> bytes_of(const node_context& c, const value& v, const char* what) {
  if (v.type != value_type::int64 || v.shape.size() != R)
    c.fail(std::string(what) + " must be a rank-" + std::to_string(R) + " uint8 tensor");
  typename xt::xtensor<std::uint8_t, R>::shape_type shape;
  for (std::size_t k = 0; k < R; ++k) shape[k] = static_cast<std::size_t>(v.shape[k]);
  auto out = xt::xtensor<std::uint8_t, R>::from_shape(shape);
  for (std::size_t e = 0; e < v.i.size(); ++e) {
    if (v.i[e] < 0 || v.i[e] > 255) c.fail(std::string(what) + " holds a value outside uint8");
    out.data()[e] = static_cast<std::uint8_t>(v.i[e]);
  }
  return out;
}

/// com.microsoft::MatMulNBits: Y = A @ W (+ bias), W[k, n] = (q - zp) * scale per block of
/// block_size rows (../shared/reference/formats.md), decoded with int4q's unpackers.
void op_matmulnbits(const node_context& c, const model&, const inputs_t& in,
                    std::vector<value>& out) {
  const value& a = need(c, in, 0);
  const auto K = static_cast<std::size_t>(attr_int(c.node, "K", 0));
  const auto N = static_cast<std::size_t>(attr_int(c.node, "N", 0));
  const int bits = static_cast<int>(attr_int(c.node, "bits", 4));
  const auto bs = static_cast<std::size_t>(attr_int(c.node, "block_size", 0));
  if (K == 0 || N == 0 || bs == 0) c.fail("K, N and block_size must be set");
  if (optional_input(in, 4)) c.fail("g_idx is not supported (deprecated)");
  const auto codes = int4q::unpack_matmulnbits_codes(bytes_of<3>(c, need(c, in, 1), "B"), K, bits);
  const value& scales = need(c, in, 2);
  const std::size_t G = (K + bs - 1) / bs;
  if (scales.type != value_type::float32 || scales.size() != N * G)
    c.fail("scales must hold N * ceil(K / block_size) floats");
  std::vector<float> zp(G * N, static_cast<float>(1 << (bits - 1)));  // [G, N]
  if (const value* z = optional_input(in, 3)) {
    if (z->type == value_type::float32) {
      if (z->size() != N * G) c.fail("float zero_points must hold N * blocks values");
      for (std::size_t n = 0; n < N; ++n)
        for (std::size_t g = 0; g < G; ++g) zp[g * N + n] = z->f[n * G + g];
    } else {
      const auto packed =
          int4q::unpack_matmulnbits_zero_points(bytes_of<2>(c, *z, "zero_points"), G, bits);
      for (std::size_t e = 0; e < zp.size(); ++e) zp[e] = packed.data()[e];
    }
  }
  value w = value::floats({std::int64_t(K), std::int64_t(N)}, std::vector<float>(K * N));
  for (std::size_t k = 0; k < K; ++k) {
    const std::size_t g = k / bs;
    for (std::size_t n = 0; n < N; ++n)
      w.f[k * N + n] = (static_cast<float>(codes(k, n)) - zp[g * N + n]) * scales.f[n * G + g];
  }
  inputs_t mm = {&a, &w};
  std::vector<value> product;
  matmul_values(c, mm, product);
  if (const value* bias = optional_input(in, 5)) {
    inputs_t add = {&product[0], bias};
    binary(c, add, out, std::plus<float>(), std::plus<std::int64_t>());
  } else {
    out.push_back(std::move(product[0]));
  }
}

/// DequantizeLinear: y = (x - zero_point) * scale, per tensor (scalar scale), per axis (1-D
/// scale) or blocked (scale of x's rank, block_size along axis, opset 21).
void op_dequantize_linear(const node_context& c, const model&, const inputs_t& in,
                          std::vector<value>& out) {
  const value& x = need(c, in, 0);
  const value& scale = need(c, in, 1);
  const value* zp = optional_input(in, 2);
  if (x.type != value_type::int64) c.fail("x must be an integer tensor");
  const std::size_t rank = x.shape.size();
  const std::int64_t block = attr_int(c.node, "block_size", 0);
  std::vector<std::size_t> param_index(x.size(), 0);
  if (scale.size() > 1 || block > 0) {
    const auto axis =
        static_cast<std::size_t>(normalize_axis(c, attr_int(c.node, "axis", 1), rank));
    const shape_t st = strides_of(x.shape);
    shape_t pshape = block > 0 ? scale.shape : shape_t{x.shape[axis]};
    const shape_t pst = strides_of(pshape);
    for (std::size_t e = 0; e < x.size(); ++e) {
      if (block > 0) {
        std::size_t p = 0;
        for (std::size_t k = 0; k < rank; ++k) {
          std::int64_t coord = (static_cast<std::int64_t>(e) / st[k]) % x.shape[k];
          if (k == axis) coord /= block;
          p += static_cast<std::size_t>(coord * pst[k]);
        }
        param_index[e] = p;
      } else {
        param_index[e] =
            static_cast<std::size_t>((static_cast<std::int64_t>(e) / st[axis]) % x.shape[axis]);
      }
    }
  }
  value y = value::floats(x.shape, std::vector<float>(x.size()));
  for (std::size_t e = 0; e < x.size(); ++e) {
    const std::size_t p = param_index[e];
    const float z = zp ? static_cast<float>(zp->i.at(p)) : 0.0f;
    y.f[e] = (static_cast<float>(x.i[e]) - z) * scale.f.at(p);
  }
  out.push_back(std::move(y));
}

}  // namespace

void add_more_ops(std::unordered_map<std::string, op_fn>& ops) {
  ops["Erf"] = float_array_op(erf_in_place);
  ops["Sqrt"] = float_op([](float x) { return std::sqrt(x); });
  ops["Exp"] = float_array_op(exp_in_place);
  ops["Log"] = float_op([](float x) { return std::log(x); });
  ops["Tanh"] = float_array_op(tanh_in_place);
  ops["Sigmoid"] = float_array_op(sigmoid_in_place);
  ops["Reciprocal"] = float_op([](float x) { return 1.0f / x; });
  ops["Floor"] = float_op([](float x) { return std::floor(x); });
  ops["Ceil"] = float_op([](float x) { return std::ceil(x); });
  ops["Sin"] = float_op([](float x) { return std::sin(x); });
  ops["Cos"] = float_op([](float x) { return std::cos(x); });
  ops["Neg"] = any_op([](float x) { return -x; }, [](std::int64_t x) { return -x; });
  ops["Abs"] =
      any_op([](float x) { return std::fabs(x); }, [](std::int64_t x) { return x < 0 ? -x : x; });
  ops["Relu"] = any_op([](float x) { return x > 0 ? x : 0.0f; },
                       [](std::int64_t x) { return x > 0 ? x : std::int64_t(0); });
  ops["Pow"] = op_pow;
  ops["Less"] = compare_op([](double a, double b) { return a < b; }, false);
  ops["Greater"] = compare_op([](double a, double b) { return a > b; }, false);
  ops["LessOrEqual"] = compare_op([](double a, double b) { return a <= b; }, false);
  ops["GreaterOrEqual"] = compare_op([](double a, double b) { return a >= b; }, false);
  ops["And"] = compare_op([](double a, double b) { return a != 0 && b != 0; }, true);
  ops["Or"] = compare_op([](double a, double b) { return a != 0 || b != 0; }, true);
  ops["Xor"] = compare_op([](double a, double b) { return (a != 0) != (b != 0); }, true);
  ops["Not"] = [](const node_context& c, const model&, const inputs_t& in,
                  std::vector<value>& out) {
    const value& a = need(c, in, 0);
    if (a.type != value_type::boolean) c.fail("input must be bool");
    value r = a;
    for (std::int64_t& x : r.i) x = !x;
    out.push_back(std::move(r));
  };
  ops["Max"] = variadic_op([](double a, double b) { return std::max(a, b); }, false);
  ops["Min"] = variadic_op([](double a, double b) { return std::min(a, b); }, false);
  ops["Sum"] = variadic_op([](double a, double b) { return a + b; }, false);
  ops["Mean"] = variadic_op([](double a, double b) { return a + b; }, true);
  ops["ReduceSum"] = reduce_op(0);
  ops["ReduceMean"] = reduce_op(1);
  ops["ReduceMax"] = reduce_op(2);
  ops["ReduceMin"] = reduce_op(3);
  ops["ReduceProd"] = reduce_op(4);
  ops["ReduceSumSquare"] = reduce_op(5);
  ops["ReduceL1"] = reduce_op(6);
  ops["ReduceL2"] = reduce_op(7);
  ops["ReduceLogSum"] = reduce_op(8);
  ops["ReduceLogSumExp"] = reduce_op(9);
  ops["Squeeze"] = op_squeeze;
  ops["Flatten"] = op_flatten;
  ops["Expand"] = op_expand;
  ops["ConstantOfShape"] = op_constant_of_shape;
  ops["Tile"] = op_tile;
  ops["Clip"] = op_clip;
  ops["Gemm"] = op_gemm;
  ops["Trilu"] = op_trilu;
  ops["DequantizeLinear"] = op_dequantize_linear;
  ops["com.microsoft::MatMulNBits"] = op_matmulnbits;
}

}  // namespace exec
}  // namespace onnx
}  // namespace int4q

// The vector-Jacobian products of stretch_gradient (formulas in gradient.hpp). Each takes the
// node's forward inputs and outputs and dL/d(outputs) and returns dL/d(inputs) for the inputs
// that need one. Elementwise work is split in the executor's fixed items; sums run in a fixed
// order (per item, then the items in order), so results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "executor_detail.hpp"
#include "gradient_detail.hpp"

namespace int4q {
namespace onnx {
namespace exec {

value sum_to_shape(const value& g, const shape_t& target) {
  if (g.shape == target) {  // a copy, into a buffer of the pass's pool
    value r = new_float_value(g.shape);
    std::copy(g.f.begin(), g.f.end(), r.f.begin());
    return r;
  }
  const std::size_t n = numel(target);
  // A bias's common case: target is g's trailing dimensions (leading 1s aside), so g is `rows`
  // rows of it. Partial sums per fixed item of rows, then the items in order.
  shape_t core = target;
  while (!core.empty() && core.front() == 1) core.erase(core.begin());
  if (n > 0 && core.size() <= g.shape.size() &&
      std::equal(core.rbegin(), core.rend(), g.shape.rbegin())) {
    const std::size_t rows = g.f.size() / n;
    const std::size_t per_item = rows_per_item(n);
    const std::size_t items = (rows + per_item - 1) / per_item;
    std::vector<double> parts(items * n, 0.0);
    int4q::detail::parallel_for(items, current_threads(), [&](std::size_t i) {
      double* acc = parts.data() + i * n;
      for (std::size_t r = i * per_item; r < std::min(rows, (i + 1) * per_item); ++r)
        for (std::size_t k = 0; k < n; ++k) acc[k] += g.f[r * n + k];
    });
    std::vector<float> out(n);
    for (std::size_t k = 0; k < n; ++k) {
      double sum = 0;
      for (std::size_t i = 0; i < items; ++i) sum += parts[i * n + k];
      out[k] = static_cast<float>(sum);
    }
    return value::floats(target, std::move(out));
  }
  std::vector<double> acc(n, 0.0);
  broadcast_walk<1>(g.shape, {&target},
                    [&](std::size_t o, const std::array<std::size_t, 1>& p,
                        const std::array<std::size_t, 1>& d, std::size_t len) {
                      for (std::size_t j = 0; j < len; ++j) acc[p[0] + j * d[0]] += g.f[o + j];
                    });
  return value::floats(target, std::vector<float>(acc.begin(), acc.end()));
}

namespace {

constexpr double kPi = 3.14159265358979323846;

using gin_t = std::vector<std::optional<value>>;

/// fn(item, begin, end) over [0, count) in items of `per_item` (a constant: the partition is
/// the same for any thread count, even one), the items spread over the run's threads.
template <class F>
void fixed_items(std::size_t count, std::size_t per_item, F fn) {
  per_item = std::max<std::size_t>(per_item, 1);
  const std::size_t items = (count + per_item - 1) / per_item;
  int4q::detail::parallel_for(items, current_threads(), [&](std::size_t i) {
    fn(i, i * per_item, std::min(count, (i + 1) * per_item));
  });
}

const value& grad0(const vjp_args& a) {
  if (!a.grad.empty() && a.grad[0]) return *a.grad[0];
  a.c.fail("internal: no gradient for output 0");
}

/// dX = g * d(x, y) elementwise (x the input, y the output, both of g's shape).
template <class D>
value chain(const value& g, const value& x, const value* y, D d) {
  value r = new_float_value(g.shape);
  const float* px = x.f.data();
  const float* py = y ? y->f.data() : nullptr;
  parallel_ranges(g.f.size(), kElementChunk, [&](std::size_t e0, std::size_t e1) {
    for (std::size_t e = e0; e < e1; ++e) r.f[e] = g.f[e] * d(px[e], py ? py[e] : 0.0f);
  });
  return r;
}

/// A unary elementwise VJP from the derivative d(x, y).
template <class D>
vjp_fn unary_vjp(D d) {
  return [d](const vjp_args& a, gin_t& gin) {
    if (a.need[0]) gin[0] = chain(grad0(a), *a.in[0], a.out[0], d);
  };
}

/// g * f(other) summed to `target`: the gradient of one operand of a broadcast binary operator.
template <class F>
value binary_part(const value& g, const value& other, const shape_t& target, F f) {
  value full = new_float_value(g.shape);
  broadcast_apply(g.f.data(), g.shape, other.f.data(), other.shape, g.shape, full.f.data(), f);
  return sum_to_shape(full, target);
}

value scaled(const value& g, float s) {
  value r = new_float_value(g.shape);
  parallel_ranges(g.f.size(), kElementChunk, [&](std::size_t e0, std::size_t e1) {
    for (std::size_t e = e0; e < e1; ++e) r.f[e] = s * g.f[e];
  });
  return r;
}

void vjp_add(const vjp_args& a, gin_t& gin) {
  const value& g = grad0(a);
  if (a.need[0]) gin[0] = sum_to_shape(g, a.in[0]->shape);
  if (a.need[1]) gin[1] = sum_to_shape(g, a.in[1]->shape);
}

void vjp_sub(const vjp_args& a, gin_t& gin) {
  const value& g = grad0(a);
  if (a.need[0]) gin[0] = sum_to_shape(g, a.in[0]->shape);
  if (a.need[1]) gin[1] = sum_to_shape(scaled(g, -1.0f), a.in[1]->shape);
}

void vjp_mul(const vjp_args& a, gin_t& gin) {
  const value& g = grad0(a);
  auto mul = [](float x, float y) { return x * y; };
  if (a.need[0]) gin[0] = binary_part(g, *a.in[1], a.in[0]->shape, mul);
  if (a.need[1]) gin[1] = binary_part(g, *a.in[0], a.in[1]->shape, mul);
}

void vjp_div(const vjp_args& a, gin_t& gin) {
  // Y = A / B: dA = g / B, dB = -g Y / B.
  const value& g = grad0(a);
  auto div = [](float x, float y) { return x / y; };
  if (a.need[0]) gin[0] = binary_part(g, *a.in[1], a.in[0]->shape, div);
  if (a.need[1]) {
    value gy = new_float_value(g.shape);
    const value& y = *a.out[0];
    for (std::size_t e = 0; e < g.f.size(); ++e) gy.f[e] = -g.f[e] * y.f[e];
    gin[1] = binary_part(gy, *a.in[1], a.in[1]->shape, div);
  }
}

/// Inputs that only move data (Reshape, Transpose, Slice, Split, Concat, Expand, Where, Gather,
/// ...): the operator itself is run on the integers 0..n-1 in place of every float input (input
/// q's numbered after those of the inputs before it), so output element e of output o came from
/// element idx[e] of the numbering; g scattered back there (added: an element read more than
/// once gets the sum).
void vjp_moves(const vjp_args& a, gin_t& gin) {
  inputs_t in = a.in;
  std::vector<value> numbered(in.size());
  std::vector<std::size_t> base(in.size() + 1, 0);
  std::size_t total = 0;
  for (std::size_t q = 0; q < in.size(); ++q) {
    base[q] = total;
    if (!in[q] || in[q]->type != value_type::float32) continue;
    value& v = numbered[q];
    v.type = value_type::int64;
    v.shape = in[q]->shape;
    v.i.resize(in[q]->size());
    std::iota(v.i.begin(), v.i.end(), static_cast<std::int64_t>(total));
    total += v.i.size();
    in[q] = &v;
  }
  base[in.size()] = total;
  std::vector<value> idx;
  registry().at(op_key(a.c.node))(a.c, a.m, in, idx);
  std::vector<double> acc(total, 0.0);
  for (std::size_t o = 0; o < a.grad.size() && o < idx.size(); ++o) {
    if (!a.grad[o]) continue;
    const value& g = *a.grad[o];
    const value& ix = idx[o];
    if (ix.i.size() != g.f.size()) a.c.fail("internal: index map and gradient differ in size");
    for (std::size_t e = 0; e < g.f.size(); ++e) acc[static_cast<std::size_t>(ix.i[e])] += g.f[e];
  }
  for (std::size_t q = 0; q < in.size(); ++q) {
    if (!a.need[q]) continue;
    gin[q] = value::floats(
        a.in[q]->shape,
        std::vector<float>(acc.begin() + static_cast<std::ptrdiff_t>(base[q]),
                           acc.begin() + static_cast<std::ptrdiff_t>(base[q] + a.in[q]->size())));
  }
}

/// Transpose(perm): dX = g transposed back, element i of X reading g at j with j[k] = i[perm[k]].
void vjp_transpose(const vjp_args& a, gin_t& gin) {
  if (!a.need[0]) return;
  const value& x = *a.in[0];
  const value& g = grad0(a);
  const std::size_t rank = x.shape.size();
  shape_t perm = attr_ints(a.c.node, "perm");
  if (perm.empty())
    for (std::size_t k = 0; k < rank; ++k) perm.push_back(static_cast<std::int64_t>(rank - 1 - k));
  const shape_t gst = strides_of(g.shape);
  shape_t view(rank);  // X's axis perm[k] is g's axis k
  for (std::size_t k = 0; k < rank; ++k) view[static_cast<std::size_t>(perm[k])] = gst[k];
  value r = new_float_value(x.shape);
  copy_view(g.f, x.shape, view, 0, r.f);
  gin[0] = std::move(r);
}

/// Expand: dX = g summed over the expanded axes.
void vjp_expand(const vjp_args& a, gin_t& gin) {
  if (a.need[0]) gin[0] = sum_to_shape(grad0(a), a.in[0]->shape);
}

/// Where(cond, X, Y): dX = g where cond, dY = g where not (each summed to its shape).
void vjp_where(const vjp_args& a, gin_t& gin) {
  const value& cond = *a.in[0];
  const value& g = grad0(a);
  for (const std::size_t q : {std::size_t(1), std::size_t(2)}) {
    if (!a.need[q]) continue;
    const bool take = q == 1;
    value full = new_float_value(g.shape);
    broadcast_walk<1>(g.shape, {&cond.shape},
                      [&](std::size_t o, const std::array<std::size_t, 1>& p,
                          const std::array<std::size_t, 1>& d, std::size_t len) {
                        for (std::size_t j = 0; j < len; ++j)
                          full.f[o + j] =
                              (cond.i[p[0] + j * d[0]] != 0) == take ? g.f[o + j] : 0.0f;
                      });
    gin[q] = sum_to_shape(full, a.in[q]->shape);
  }
}

/// Gather(data, indices, axis): the rows of g added back to the rows of data they came from
/// (a row gathered twice gets both), in index order.
void vjp_gather(const vjp_args& a, gin_t& gin) {
  if (!a.need[0]) return;
  const value& data = *a.in[0];
  const value& g = grad0(a);
  const auto axis = static_cast<std::size_t>(
      normalize_axis(a.c, attr_int(a.c.node, "axis", 0), data.shape.size()));
  const std::int64_t dim = data.shape[axis];
  shape_t ids = int_list(a.c, *a.in[1], "indices");
  for (std::int64_t& v : ids) v = checked_index(a.c, v, dim);
  std::size_t outer = 1, inner = 1;
  for (std::size_t k = 0; k < axis; ++k) outer *= static_cast<std::size_t>(data.shape[k]);
  for (std::size_t k = axis + 1; k < data.shape.size(); ++k)
    inner *= static_cast<std::size_t>(data.shape[k]);
  value r = value::floats(data.shape, std::vector<float>(data.size(), 0.0f));
  const float* src = g.f.data();
  for (std::size_t p = 0; p < outer; ++p) {
    for (const std::int64_t ix : ids) {
      float* dst =
          r.f.data() + (p * static_cast<std::size_t>(dim) + static_cast<std::size_t>(ix)) * inner;
      for (std::size_t k = 0; k < inner; ++k) dst[k] += src[k];
      src += inner;
    }
  }
  gin[0] = std::move(r);
}

/// Elements before and after `axis` of `shape` (outer, inner).
std::pair<std::size_t, std::size_t> around_axis(const shape_t& shape, std::size_t axis) {
  std::size_t outer = 1, inner = 1;
  for (std::size_t k = 0; k < axis; ++k) outer *= static_cast<std::size_t>(shape[k]);
  for (std::size_t k = axis + 1; k < shape.size(); ++k) inner *= static_cast<std::size_t>(shape[k]);
  return {outer, inner};
}

/// Split along an axis: dX = the outputs' gradients concatenated back along it.
void vjp_split(const vjp_args& a, gin_t& gin) {
  if (!a.need[0]) return;
  for (const value* g : a.grad)
    if (!g) return vjp_moves(a, gin);  // an unnamed output: its extent is not known here
  const value& x = *a.in[0];
  const auto axis =
      static_cast<std::size_t>(normalize_axis(a.c, attr_int(a.c.node, "axis", 0), x.shape.size()));
  const auto [outer, inner] = around_axis(x.shape, axis);
  const auto dim = static_cast<std::size_t>(x.shape[axis]);
  value r = new_float_value(x.shape);
  std::size_t off = 0;
  for (const value* g : a.grad) {
    const auto len = static_cast<std::size_t>(g->shape[axis]);
    for (std::size_t p = 0; p < outer; ++p)
      std::copy_n(g->f.data() + p * len * inner, len * inner, r.f.data() + (p * dim + off) * inner);
    off += len;
  }
  gin[0] = std::move(r);
}

/// Concat along an axis: dX_q = g's part of input q along it.
void vjp_concat(const vjp_args& a, gin_t& gin) {
  const value& g = grad0(a);
  const auto axis =
      static_cast<std::size_t>(normalize_axis(a.c, attr_int(a.c.node, "axis", 0), g.shape.size()));
  const auto [outer, inner] = around_axis(g.shape, axis);
  const auto dim = static_cast<std::size_t>(g.shape[axis]);
  std::size_t off = 0;
  for (std::size_t q = 0; q < a.in.size(); ++q) {
    const auto len = static_cast<std::size_t>(a.in[q]->shape[axis]);
    if (a.need[q]) {
      value r = new_float_value(a.in[q]->shape);
      for (std::size_t p = 0; p < outer; ++p)
        std::copy_n(g.f.data() + (p * dim + off) * inner, len * inner,
                    r.f.data() + p * len * inner);
      gin[q] = std::move(r);
    }
    off += len;
  }
}

/// Operators that keep the data and change only the shape (Reshape, Flatten, Squeeze,
/// Unsqueeze, Identity, Cast between float types): g with the input's shape.
void vjp_same_data(const vjp_args& a, gin_t& gin) {
  if (!a.need[0]) return;
  value r = sum_to_shape(grad0(a), grad0(a).shape);  // a copy in a pooled buffer
  r.shape = a.in[0]->shape;
  gin[0] = std::move(r);
}

/// Pow(x, p) with a constant p: dX = g p x^(p-1) (p = 2: 2 x g, as the forward's x * x).
void vjp_pow(const vjp_args& a, gin_t& gin) {
  if (a.need[1]) a.c.fail("cannot differentiate through Pow with respect to its exponent");
  if (!a.need[0]) return;
  const value& p = *a.in[1];
  if (p.size() != 1) a.c.fail("cannot differentiate through Pow with a non-scalar exponent");
  const double e = p.type == value_type::float32 ? double(p.f[0]) : double(p.i[0]);
  const value& g = grad0(a);
  value r = new_float_value(g.shape);
  const value& x = *a.in[0];
  if (x.shape != g.shape) a.c.fail("cannot differentiate through a broadcasting Pow");
  for (std::size_t k = 0; k < r.f.size(); ++k) {
    const double d = e == 2.0 ? 2.0 * x.f[k] : e * std::pow(double(x.f[k]), e - 1.0);
    r.f[k] = static_cast<float>(g.f[k] * d);
  }
  gin[0] = std::move(r);
}

/// The axes of a reduction (input 1 or the attribute) as flags; empty = all (or none with
/// noop_with_empty_axes: `noop` set).
std::vector<bool> reduced_axes(const vjp_args& a, bool& noop) {
  const value& x = *a.in[0];
  shape_t axes;
  if (const value* v = optional_input(a.in, 1)) {
    axes = int_list(a.c, *v, "axes");
  } else {
    axes = attr_ints(a.c.node, "axes");
  }
  noop = axes.empty() && attr_int(a.c.node, "noop_with_empty_axes", 0) != 0;
  std::vector<bool> reduce(x.shape.size(), axes.empty());
  for (const std::int64_t ax : axes)
    reduce[static_cast<std::size_t>(normalize_axis(a.c, ax, x.shape.size()))] = true;
  return reduce;
}

/// ReduceSum / ReduceMean: g spread over the reduced axes (times 1 / count for the mean).
vjp_fn reduce_vjp(bool mean) {
  return [mean](const vjp_args& a, gin_t& gin) {
    if (a.in.size() > 1 && a.need[1]) a.c.fail("internal: axes need no gradient");
    if (!a.need[0]) return;
    const value& x = *a.in[0];
    const value& g = grad0(a);
    bool noop = false;
    const std::vector<bool> reduce = reduced_axes(a, noop);
    if (noop) {
      gin[0] = g;
      return;
    }
    shape_t kept(x.shape.size());
    for (std::size_t k = 0; k < kept.size(); ++k) kept[k] = reduce[k] ? 1 : x.shape[k];
    const float s = mean ? static_cast<float>(double(numel(kept)) / double(x.size())) : 1.0f;
    value r = new_float_value(x.shape);
    broadcast_walk<1>(x.shape, {&kept},
                      [&](std::size_t o, const std::array<std::size_t, 1>& p,
                          const std::array<std::size_t, 1>& d, std::size_t len) {
                        for (std::size_t j = 0; j < len; ++j) r.f[o + j] = g.f[p[0] + j * d[0]] * s;
                      });
    gin[0] = std::move(r);
  };
}

/// Softmax: dX = Y (g - sum_axis(g Y)), along the axis the forward normalized (opset < 13: the
/// input flattened to 2-D at the axis).
void vjp_softmax(const vjp_args& a, gin_t& gin) {
  if (!a.need[0]) return;
  const value& y = *a.out[0];
  const value& g = grad0(a);
  const softmax_layout l = softmax_layout_of(a.c, a.m, y.shape);
  const std::size_t outer = l.outer, len = l.len, inner = l.inner;
  value r = new_float_value(y.shape);
  parallel_ranges(outer, rows_per_item(len * inner), [&](std::size_t p0, std::size_t p1) {
    for (std::size_t p = p0; p < p1; ++p) {
      for (std::size_t q = 0; q < inner; ++q) {
        const std::size_t o = p * len * inner + q;
        double dot = 0;
        for (std::size_t k = 0; k < len; ++k)
          dot += double(g.f[o + k * inner]) * double(y.f[o + k * inner]);
        for (std::size_t k = 0; k < len; ++k) {
          const std::size_t e = o + k * inner;
          r.f[e] = static_cast<float>(double(y.f[e]) * (double(g.f[e]) - dot));
        }
      }
    }
  });
  gin[0] = std::move(r);
}

/// `v` broadcast to one row of `row_shape` (v itself when it has that shape).
std::vector<float> row_of(const value& v, const shape_t& row_shape) {
  if (v.shape == row_shape) return v.f;
  const auto idx = broadcast_index(v.shape, row_shape);
  std::vector<float> r(idx.size());
  for (std::size_t k = 0; k < idx.size(); ++k) r[k] = v.f[idx[k]];
  return r;
}

/// Gradients of a row normalization (norm_backward).
struct norm_grads {
  std::optional<value> x, scale, bias;
};

/// Normalization over rows (the axes from `axis` on; LayerNormalization with the mean, the RMS
/// norms without): y = xh * scale (+ bias), xh = (x - mean) r, r = 1 / sqrt(var + eps) (var =
/// mean(x^2) without the mean). dscale = sum_rows g xh, dbias = sum_rows g; with gs = g scale,
/// dX = r (gs - mean(gs) - xh mean(gs xh)) (without the mean: dX = r (gs - xh mean(gs xh))).
/// The row statistics are recomputed in double as the forward computes them. Scale and bias
/// broadcast to a row; their gradients are summed back to their shapes.
norm_grads norm_backward(const value& x, const value& scale, const value* bias, const value& g,
                         std::size_t axis, double eps, bool center, bool want_x, bool want_s,
                         bool want_b) {
  std::size_t outer = 1, len = 1;
  for (std::size_t k = 0; k < axis; ++k) outer *= static_cast<std::size_t>(x.shape[k]);
  for (std::size_t k = axis; k < x.shape.size(); ++k) len *= static_cast<std::size_t>(x.shape[k]);
  const shape_t norm_shape(x.shape.begin() + static_cast<std::ptrdiff_t>(axis), x.shape.end());
  const std::vector<float> sc = row_of(scale, norm_shape);
  want_b = want_b && bias;
  value gx = want_x ? new_float_value(x.shape) : value();
  const std::size_t per_item = rows_per_item(len);
  const std::size_t items = (outer + per_item - 1) / per_item;
  // Per item partial sums of dscale and dbias, added in item order after.
  std::vector<double> ps(want_s ? items * len : 0, 0.0), pb(want_b ? items * len : 0, 0.0);
  fixed_items(outer, per_item, [&](std::size_t item, std::size_t p0, std::size_t p1) {
    std::vector<double> xh(len);
    for (std::size_t p = p0; p < p1; ++p) {
      const float* v = x.f.data() + p * len;
      const float* gr = g.f.data() + p * len;
      double mean = 0, var = 0;
      if (center) {
        for (std::size_t k = 0; k < len; ++k) mean += v[k];
        mean /= static_cast<double>(len);
      }
      for (std::size_t k = 0; k < len; ++k) var += (v[k] - mean) * (v[k] - mean);
      var /= static_cast<double>(len);
      const double r = 1.0 / std::sqrt(var + eps);
      double mgs = 0, mgsx = 0;
      for (std::size_t k = 0; k < len; ++k) {
        xh[k] = (v[k] - mean) * r;
        const double gs = double(gr[k]) * sc[k];
        mgs += gs;
        mgsx += gs * xh[k];
      }
      mgs = center ? mgs / static_cast<double>(len) : 0.0;
      mgsx /= static_cast<double>(len);
      if (want_x) {
        float* o = gx.f.data() + p * len;
        for (std::size_t k = 0; k < len; ++k)
          o[k] = static_cast<float>(r * (double(gr[k]) * sc[k] - mgs - xh[k] * mgsx));
      }
      if (want_s)
        for (std::size_t k = 0; k < len; ++k) ps[item * len + k] += double(gr[k]) * xh[k];
      if (want_b)
        for (std::size_t k = 0; k < len; ++k) pb[item * len + k] += gr[k];
    }
  });
  auto total = [&](const std::vector<double>& parts, const value& param) {
    std::vector<double> sum(len, 0.0);
    for (std::size_t i = 0; i < items; ++i)
      for (std::size_t k = 0; k < len; ++k) sum[k] += parts[i * len + k];
    return sum_to_shape(value::floats(norm_shape, std::vector<float>(sum.begin(), sum.end())),
                        param.shape);
  };
  norm_grads r;
  if (want_x) r.x = std::move(gx);
  if (want_s) r.scale = total(ps, scale);
  if (want_b) r.bias = total(pb, *bias);
  return r;
}

/// The statistics outputs of the norms (mean, inverse standard deviation) pass no gradient:
/// refused when one reaches them.
void no_gradient_through(const vjp_args& a, std::size_t first_output, std::size_t end_output) {
  for (std::size_t o = first_output; o < end_output && o < a.grad.size(); ++o) {
    if (!a.grad[o]) continue;
    for (const float v : a.grad[o]->f)
      if (v != 0.0f)
        a.c.fail("cannot differentiate through output " + std::to_string(o) +
                 " (a normalization statistic)");
  }
}

/// A norm whose x, scale and bias are inputs ix, is, ib of the node.
void norm_vjp(const vjp_args& a, gin_t& gin, std::size_t ix, std::size_t is, std::size_t ib,
              std::size_t axis, double eps, bool center) {
  no_gradient_through(a, 1, a.grad.size());
  const value* bias = optional_input(a.in, ib);
  norm_grads r = norm_backward(*a.in[ix], *a.in[is], bias, grad0(a), axis, eps, center, a.need[ix],
                               a.need[is], bias && a.need[ib]);
  if (r.x) gin[ix] = std::move(r.x);
  if (r.scale) gin[is] = std::move(r.scale);
  if (r.bias) gin[ib] = std::move(r.bias);
}

void vjp_layer_norm(const vjp_args& a, gin_t& gin) {
  const value& x = *a.in[0];
  const auto axis =
      static_cast<std::size_t>(normalize_axis(a.c, attr_int(a.c.node, "axis", -1), x.shape.size()));
  norm_vjp(a, gin, 0, 1, 2, axis, attr_float(a.c.node, "epsilon", 1e-5f), true);
}

/// SimplifiedLayerNormalization (RMSNorm): X, scale; no mean.
void vjp_simplified_layer_norm(const vjp_args& a, gin_t& gin) {
  const value& x = *a.in[0];
  const auto axis =
      static_cast<std::size_t>(normalize_axis(a.c, attr_int(a.c.node, "axis", -1), x.shape.size()));
  norm_vjp(a, gin, 0, 1, 99, axis, attr_float(a.c.node, "epsilon", 1e-5f), false);
}

/// com.microsoft Skip(Simplified)LayerNormalization: s = input + skip (+ bias), y = norm(s)
/// over the last axis; output 3 is s itself. ds = dnorm(g0) + g3; dinput = ds, dskip and dbias
/// = ds summed to their shapes; gamma (and beta) as a norm's scale (and bias).
vjp_fn skip_norm_vjp(bool rms) {
  return [rms](const vjp_args& a, gin_t& gin) {
    no_gradient_through(a, 1, 3);
    const std::size_t ib = rms ? 99 : 3, ibias = rms ? 3 : 4;
    const value& x = *a.in[0];
    const value* sum = a.out.size() > 3 ? a.out[3] : nullptr;
    value s;
    if (sum) {
      s = *sum;
    } else {  // recomputed as the forward does
      const value& skip = *a.in[1];
      const value* bias = optional_input(a.in, ibias);
      s = x;
      const std::size_t len = static_cast<std::size_t>(x.shape.back()), skip_n = skip.size();
      for (std::size_t e = 0; e < s.f.size(); ++e) {
        float v = x.f[e] + skip.f[e % skip_n];
        if (bias) v += bias->f[e % len];
        s.f[e] = v;
      }
    }
    const bool want_s = a.need[0] || a.need[1] || (optional_input(a.in, ibias) && a.need[ibias]);
    const value* beta = optional_input(a.in, ib);
    norm_grads r = norm_backward(s, *a.in[2], beta, grad0(a), x.shape.size() - 1,
                                 attr_float(a.c.node, "epsilon", 1e-12f), !rms, want_s, a.need[2],
                                 beta && a.need[ib]);
    if (r.scale) gin[2] = std::move(r.scale);
    if (r.bias) gin[ib] = std::move(r.bias);
    if (!want_s) return;
    value ds = std::move(*r.x);
    if (a.grad.size() > 3 && a.grad[3])
      for (std::size_t e = 0; e < ds.f.size(); ++e) ds.f[e] += a.grad[3]->f[e];
    if (a.need[1]) gin[1] = sum_to_shape(ds, a.in[1]->shape);
    if (optional_input(a.in, ibias) && a.need[ibias])
      gin[ibias] = sum_to_shape(ds, a.in[ibias]->shape);
    if (a.need[0]) gin[0] = std::move(ds);
  };
}

/// com.microsoft RotaryEmbedding: each pair (a, b) of a head is rotated, y_a = x_a cos - x_b sin,
/// y_b = x_b cos + x_a sin, the rest passed through: an orthogonal map whose transpose is the
/// rotation by -angle. dX = the operator itself applied to g with the sine cache negated.
void vjp_rotary(const vjp_args& a, gin_t& gin) {
  if (a.need[2] || a.need[3]) a.c.fail("cannot differentiate through the cos/sin caches");
  if (!a.need[0]) return;
  value neg_sin = *a.in[3];
  for (float& v : neg_sin.f) v = -v;
  inputs_t in = a.in;
  in[0] = &grad0(a);
  in[3] = &neg_sin;
  std::vector<value> r;
  registry().at(op_key(a.c.node))(a.c, a.m, in, r);
  gin[0] = std::move(r.at(0));
}

/// com.microsoft Gelu / BiasGelu / FastGelu / QuickGelu: y = f(x (+ bias)), bias [N] over the
/// last axis: dX = g f'(x + bias), dbias = dX summed to [N].
template <class D>
vjp_fn gelu_vjp(D d) {
  return [d](const vjp_args& a, gin_t& gin) {
    const value& x = *a.in[0];
    const value* bias = optional_input(a.in, 1);
    const value& g = grad0(a);
    const std::size_t len = bias ? bias->size() : 1;
    value r = new_float_value(x.shape);
    for (std::size_t e = 0; e < x.f.size(); ++e) {
      const double v = bias ? double(x.f[e]) + double(bias->f[e % len]) : double(x.f[e]);
      r.f[e] = static_cast<float>(g.f[e] * d(a.c.node, v));
    }
    if (bias && a.need[1]) gin[1] = sum_to_shape(r, bias->shape);
    if (a.need[0]) gin[0] = std::move(r);
  };
}

/// MatMul (numpy): Y[..., M, N] = A[..., M, K] B[..., K, N], batches broadcast; 1-D operands
/// as a row (A) or column (B). dA = g B^T, dB = A^T g, each summed over the batches its operand
/// was broadcast along.
void vjp_matmul(const vjp_args& a, gin_t& gin) {
  const value& A = *a.in[0];
  const value& B = *a.in[1];
  const value& G = grad0(a);
  shape_t sa = A.shape, sb = B.shape;
  if (sa.size() == 1) sa.insert(sa.begin(), 1);
  if (sb.size() == 1) sb.push_back(1);
  const auto M = static_cast<std::size_t>(sa[sa.size() - 2]);
  const auto K = static_cast<std::size_t>(sa.back());
  const auto N = static_cast<std::size_t>(sb.back());
  const shape_t ba(sa.begin(), sa.end() - 2), bb(sb.begin(), sb.end() - 2);
  const shape_t batch = broadcast_shapes(a.c, {&ba, &bb});
  const std::size_t nb = numel(batch), mk = M * K, kn = K * N, mn = M * N;
  const bool a_full = numel(ba) == nb, b_full = numel(bb) == nb;
  const float* pa = A.f.data();
  const float* pb = B.f.data();
  const float* pg = G.f.data();
  const bool empty = M == 0 || N == 0 || K == 0;
  // Per batch entry e: one BLAS call; in parallel when each entry writes its own matrix.
  auto per_entry = [&](bool independent, auto one) {
    if (independent && nb * mn * K >= kGemmParallelMin && blas_threads() == 1) {
      int4q::detail::parallel_for(nb, current_threads(), one);
    } else {
      for (std::size_t e = 0; e < nb; ++e) one(e);
    }
  };
  // An operand not broadcast gets each of its matrices from one product (written with beta 0,
  // into a pooled buffer); a broadcast one sums several (zeros first, beta 1, in batch order).
  auto result = [&](const value& like, bool full) {
    return full && !empty ? new_float_value(like.shape)
                          : value::floats(like.shape, std::vector<float>(like.size(), 0.0f));
  };
  if (a.need[0]) {
    value r = result(A, a_full);
    if (!empty) {
      if (numel(bb) == 1 && a_full) {  // a weight under every batch: one GEMM over all rows
        gemm(false, true, nb * M, K, N, 1.0f, pg, N, pb, N, 0.0f, r.f.data(), K);
      } else {
        const auto ia = broadcast_index(ba, batch), ib = broadcast_index(bb, batch);
        per_entry(a_full, [&](std::size_t e) {
          int4q::detail::blas::gemm(false, true, M, K, N, 1.0f, pg + e * mn, N, pb + ib[e] * kn, N,
                                    a_full ? 0.0f : 1.0f, r.f.data() + ia[e] * mk, K);
        });
      }
    }
    gin[0] = std::move(r);
  }
  if (a.need[1]) {
    const bool one_gemm = numel(bb) == 1 && a_full;
    value r = result(B, b_full || one_gemm);
    if (!empty) {
      if (one_gemm) {  // dW = A^T g over all rows: one GEMM
        gemm(true, false, K, N, nb * M, 1.0f, pa, K, pg, N, 0.0f, r.f.data(), N);
      } else {
        const auto ia = broadcast_index(ba, batch), ib = broadcast_index(bb, batch);
        per_entry(b_full, [&](std::size_t e) {
          int4q::detail::blas::gemm(true, false, K, N, M, 1.0f, pa + ia[e] * mk, K, pg + e * mn, N,
                                    b_full ? 0.0f : 1.0f, r.f.data() + ib[e] * kn, N);
        });
      }
    }
    gin[1] = std::move(r);
  }
}

/// Gemm: Y = alpha op(A) op(B) + beta C (A, B 2-D). With A' = op(A) [M, K], B' = op(B) [K, N]:
/// dA' = alpha g B'^T, dB' = alpha A'^T g; dA = dA' or dA'^T = alpha B' g^T (transA), dB = dB'
/// or dB'^T = alpha g^T A' (transB); dC = beta g summed to C's shape.
void vjp_gemm(const vjp_args& a, gin_t& gin) {
  const value& A = *a.in[0];
  const value& B = *a.in[1];
  const value& G = grad0(a);
  const bool ta = attr_int(a.c.node, "transA", 0) != 0, tb = attr_int(a.c.node, "transB", 0) != 0;
  const float alpha = attr_float(a.c.node, "alpha", 1.0f),
              beta = attr_float(a.c.node, "beta", 1.0f);
  const auto M = static_cast<std::size_t>(G.shape[0]), N = static_cast<std::size_t>(G.shape[1]);
  const auto K = static_cast<std::size_t>(ta ? A.shape[0] : A.shape[1]);
  const auto lda = static_cast<std::size_t>(A.shape[1]), ldb = static_cast<std::size_t>(B.shape[1]);
  auto result = [&](const value& like) {
    return M && N && K ? new_float_value(like.shape)
                       : value::floats(like.shape, std::vector<float>(like.size(), 0.0f));
  };
  if (a.need[0]) {
    value r = result(A);
    if (M && N && K) {
      if (!ta) {
        gemm(false, !tb, M, K, N, alpha, G.f.data(), N, B.f.data(), ldb, 0.0f, r.f.data(), K);
      } else {
        gemm(tb, true, K, M, N, alpha, B.f.data(), ldb, G.f.data(), N, 0.0f, r.f.data(), M);
      }
    }
    gin[0] = std::move(r);
  }
  if (a.need[1]) {
    value r = result(B);
    if (M && N && K) {
      if (!tb) {
        gemm(!ta, false, K, N, M, alpha, A.f.data(), lda, G.f.data(), N, 0.0f, r.f.data(), N);
      } else {
        gemm(true, ta, N, K, M, alpha, G.f.data(), N, A.f.data(), lda, 0.0f, r.f.data(), K);
      }
    }
    gin[1] = std::move(r);
  }
  if (a.in.size() > 2 && a.need[2]) {
    const value& C = *a.in[2];
    gin[2] = beta != 0.0f ? sum_to_shape(scaled(G, beta), C.shape)
                          : value::floats(C.shape, std::vector<float>(C.size(), 0.0f));
  }
}

/// Cast: float to float passes g through; anything else has no float output on the path.
void vjp_cast(const vjp_args& a, gin_t& gin) { vjp_same_data(a, gin); }

/// LogSoftmax: dX = g - exp(Y) sum_axis(g) (exp(Y) the softmax).
void vjp_log_softmax(const vjp_args& a, gin_t& gin) {
  if (!a.need[0]) return;
  const value& y = *a.out[0];
  const value& g = grad0(a);
  const softmax_layout l = softmax_layout_of(a.c, a.m, y.shape);
  value r = new_float_value(y.shape);
  parallel_ranges(l.outer, rows_per_item(l.len * l.inner), [&](std::size_t p0, std::size_t p1) {
    for (std::size_t p = p0; p < p1; ++p) {
      for (std::size_t q = 0; q < l.inner; ++q) {
        const std::size_t o = p * l.len * l.inner + q;
        double sum = 0;
        for (std::size_t k = 0; k < l.len; ++k) sum += g.f[o + k * l.inner];
        for (std::size_t k = 0; k < l.len; ++k) {
          const std::size_t e = o + k * l.inner;
          r.f[e] = static_cast<float>(g.f[e] - std::exp(double(y.f[e])) * sum);
        }
      }
    }
  });
  gin[0] = std::move(r);
}

/// Clip: g where min <= x <= max, 0 where clipped (bounds as the forward reads them: inputs 1
/// and 2 from opset 11, the attributes before).
void vjp_clip(const vjp_args& a, gin_t& gin) {
  if (a.need.size() > 1 && (a.need[1] || (a.need.size() > 2 && a.need[2])))
    a.c.fail("cannot differentiate through Clip with respect to its bounds");
  if (!a.need[0]) return;
  double lo = -INFINITY, hi = INFINITY;
  if (default_opset(a.m) < 11) {
    lo = attr_float(a.c.node, "min", -std::numeric_limits<float>::max());
    hi = attr_float(a.c.node, "max", std::numeric_limits<float>::max());
  } else {
    auto bound = [](const value* v) {
      return v->type == value_type::float32 ? double(v->f.at(0)) : double(v->i.at(0));
    };
    if (const value* v = optional_input(a.in, 1)) lo = bound(v);
    if (const value* v = optional_input(a.in, 2)) hi = bound(v);
  }
  gin[0] = chain(grad0(a), *a.in[0], nullptr, [lo, hi](float x, float) {
    return double(x) >= lo && double(x) <= hi ? 1.0f : 0.0f;
  });
}

/// Dropout in inference (Y = X): g. Training-mode dropout is refused.
void vjp_dropout(const vjp_args& a, gin_t& gin) {
  if (!a.out[0] || a.out[0]->f != a.in[0]->f)
    a.c.fail("cannot differentiate through a training-mode Dropout");
  vjp_same_data(a, gin);
}

/// Sum and Mean of broadcast inputs: each input's gradient is g (/ count) summed to its shape.
vjp_fn variadic_vjp(bool mean) {
  return [mean](const vjp_args& a, gin_t& gin) {
    const value& g = grad0(a);
    const value scaled_g = mean ? scaled(g, 1.0f / static_cast<float>(a.in.size())) : value();
    for (std::size_t q = 0; q < a.in.size(); ++q)
      if (a.need[q]) gin[q] = sum_to_shape(mean ? scaled_g : g, a.in[q]->shape);
  };
}

double gelu_erf_grad(double x) {
  // d/dx x Phi(x) = Phi(x) + x phi(x).
  return 0.5 * (1.0 + std::erf(x / std::sqrt(2.0))) +
         x * std::exp(-0.5 * x * x) / std::sqrt(2 * kPi);
}

double gelu_tanh_grad(double x) {
  // y = x/2 (1 + tanh(u)), u = k (x + 0.044715 x^3): y' = (1 + t)/2 + x/2 (1 - t^2) u'.
  const double k = std::sqrt(2.0 / kPi);
  const double t = std::tanh(k * (x + 0.044715 * x * x * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
}

std::unordered_map<std::string, vjp_fn> make_vjps() {
  std::unordered_map<std::string, vjp_fn> v;
  v["Add"] = vjp_add;
  v["Sub"] = vjp_sub;
  v["Mul"] = vjp_mul;
  v["Div"] = vjp_div;
  v["MatMul"] = vjp_matmul;
  v["Gemm"] = vjp_gemm;
  v["Softmax"] = vjp_softmax;
  v["LayerNormalization"] = vjp_layer_norm;
  v["Pow"] = vjp_pow;
  v["ReduceMean"] = reduce_vjp(true);
  v["ReduceSum"] = reduce_vjp(false);
  for (const char* op : {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
    v[op] = vjp_same_data;
  v["Cast"] = vjp_cast;
  for (const char* op : {"Slice", "Tile"}) v[op] = vjp_moves;
  v["Split"] = vjp_split;
  v["Concat"] = vjp_concat;
  v["Transpose"] = vjp_transpose;
  v["Expand"] = vjp_expand;
  v["Where"] = vjp_where;
  v["Gather"] = vjp_gather;
  v["Neg"] = unary_vjp([](float, float) { return -1.0f; });
  v["Erf"] = unary_vjp([](float x, float) {
    return static_cast<float>(2.0 / std::sqrt(kPi) * std::exp(-double(x) * x));
  });
  v["Sqrt"] = unary_vjp([](float, float y) { return static_cast<float>(0.5 / double(y)); });
  v["Reciprocal"] = unary_vjp([](float, float y) { return -y * y; });
  v["Exp"] = unary_vjp([](float, float y) { return y; });
  v["Sigmoid"] = unary_vjp([](float, float y) { return y * (1.0f - y); });
  v["Tanh"] = unary_vjp([](float, float y) { return 1.0f - y * y; });
  v["Relu"] = unary_vjp([](float x, float) { return x > 0 ? 1.0f : 0.0f; });
  v["Gelu"] = [](const vjp_args& a, gin_t& gin) {
    const AttributeProto* at = find_attr(a.c.node, "approximate");
    const bool tanh_form = at && at->s() == "tanh";
    unary_vjp([tanh_form](float x, float) {
      return static_cast<float>(tanh_form ? gelu_tanh_grad(x) : gelu_erf_grad(x));
    })(a, gin);
  };
  v["SimplifiedLayerNormalization"] = vjp_simplified_layer_norm;
  v["com.microsoft::SkipLayerNormalization"] = skip_norm_vjp(false);
  v["com.microsoft::SkipSimplifiedLayerNormalization"] = skip_norm_vjp(true);
  v["com.microsoft::RotaryEmbedding"] = vjp_rotary;
  auto erf_form = [](const NodeProto&, double x) { return gelu_erf_grad(x); };
  v["com.microsoft::Gelu"] = gelu_vjp(erf_form);
  v["com.microsoft::BiasGelu"] = gelu_vjp(erf_form);
  v["com.microsoft::FastGelu"] =
      gelu_vjp([](const NodeProto&, double x) { return gelu_tanh_grad(x); });
  v["com.microsoft::QuickGelu"] = gelu_vjp([](const NodeProto& n, double x) {
    // y = x s(alpha x): y' = s + alpha x s (1 - s).
    const double alpha = attr_float(n, "alpha", 1.702f);
    const double s = 1.0 / (1.0 + std::exp(-alpha * x));
    return s + alpha * x * s * (1.0 - s);
  });
  v["LogSoftmax"] = vjp_log_softmax;
  v["Clip"] = vjp_clip;
  v["Dropout"] = vjp_dropout;
  v["Sum"] = variadic_vjp(false);
  v["Mean"] = variadic_vjp(true);
  v["Abs"] = unary_vjp([](float x, float) { return x > 0 ? 1.0f : (x < 0 ? -1.0f : 0.0f); });
  v["Log"] = unary_vjp([](float x, float) { return 1.0f / x; });
  v["Sin"] = unary_vjp([](float x, float) { return std::cos(x); });
  v["Cos"] = unary_vjp([](float x, float) { return -std::sin(x); });
  v["Softplus"] = unary_vjp([](float x, float) { return 1.0f / (1.0f + std::exp(-x)); });
  v["LeakyRelu"] = [](const vjp_args& a, gin_t& gin) {
    const float alpha = attr_float(a.c.node, "alpha", 0.01f);
    unary_vjp([alpha](float x, float) { return x > 0 ? 1.0f : alpha; })(a, gin);
  };
  add_attention_vjps(v);
  return v;
}

}  // namespace

const std::unordered_map<std::string, vjp_fn>& vjp_registry() {
  static const std::unordered_map<std::string, vjp_fn> v = make_vjps();
  return v;
}

}  // namespace exec
}  // namespace onnx
}  // namespace int4q

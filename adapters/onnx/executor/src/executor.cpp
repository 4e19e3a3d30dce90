// The CPU executor: values, broadcasting, and one function per operator.
#include <int4q/onnx/executor.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <list>
#include <mutex>
#include <numeric>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <int4q/detail/blas.hpp>
#include <int4q/float16.hpp>
#include <int4q/onnx/tensor_types.hpp>

#include "executor_detail.hpp"
#include "executor_math.hpp"

namespace int4q {
namespace onnx {

namespace {

using namespace exec;

void op_constant(const node_context& c, const model& m, const inputs_t&, std::vector<value>& out) {
  const NodeProto& n = c.node;
  const AttributeProto* t = find_attr(n, "value");
  const AttributeProto* f = find_attr(n, "value_float");
  const AttributeProto* fs = find_attr(n, "value_floats");
  const AttributeProto* i = find_attr(n, "value_int");
  const AttributeProto* is = find_attr(n, "value_ints");
  if (t) {
    out.push_back(to_value(m, t->t()));
  } else if (f) {
    out.push_back(value::floats({}, {f->f()}));
  } else if (fs) {
    out.push_back(value::floats({fs->floats_size()}, {fs->floats().begin(), fs->floats().end()}));
  } else if (i) {
    out.push_back(value::ints({}, {i->i()}));
  } else if (is) {
    out.push_back(value::ints({is->ints_size()}, {is->ints().begin(), is->ints().end()}));
  } else {
    c.fail("has no value attribute the executor supports (value, value_float(s), value_int(s))");
  }
}

void op_identity(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  need(c, in, 0);
  out.push_back(input_or_copy(c, in, 0));
}

void op_cast(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& a = need(c, in, 0);
  const auto to_type = static_cast<int>(attr_int(c.node, "to", 0));
  value_type to;
  if (!value_type_of(to_type, to))
    c.fail("cast to data type " + std::to_string(to_type) + " is not supported");
  value r;
  r.type = to;
  r.shape = a.shape;
  const std::size_t n = a.size();
  if (to == value_type::float32) {
    r.f.resize(n);
    for (std::size_t e = 0; e < n; ++e)
      r.f[e] = a.type == value_type::float32 ? a.f[e] : static_cast<float>(a.i[e]);
    if (to_type == TensorProto::FLOAT16)
      for (float& x : r.f) x = half_bits_to_float(float_to_half_bits(x));
    if (to_type == TensorProto::BFLOAT16)
      for (float& x : r.f) x = bfloat16_bits_to_float(float_to_bfloat16_bits(x));
  } else {
    r.i.resize(n);
    for (std::size_t e = 0; e < n; ++e) {
      if (a.type == value_type::float32) {
        r.i[e] = to == value_type::boolean ? (a.f[e] != 0.0f) : static_cast<std::int64_t>(a.f[e]);
      } else {
        r.i[e] = to == value_type::boolean ? (a.i[e] != 0) : a.i[e];
      }
    }
  }
  out.push_back(std::move(r));
}

void op_shape(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& a = need(c, in, 0);
  const auto r = static_cast<std::int64_t>(a.shape.size());
  auto clampi = [r](std::int64_t v) { return std::clamp(v < 0 ? v + r : v, std::int64_t(0), r); };
  const std::int64_t start = clampi(attr_int(c.node, "start", 0));
  const std::int64_t end = clampi(attr_int(c.node, "end", r));
  shape_t dims;
  for (std::int64_t k = start; k < end; ++k) dims.push_back(a.shape[static_cast<std::size_t>(k)]);
  out.push_back(value::ints({static_cast<std::int64_t>(dims.size())}, dims));
}

/// Copies blocks: out = concatenation over `outer` of rows of `inner` elements from `src`.
template <class T>
void gather_rows(const std::vector<T>& src, std::vector<T>& dst, std::size_t outer,
                 std::size_t axis_dim, const shape_t& indices, std::size_t inner) {
  dst.resize(outer * indices.size() * inner);
  T* o = dst.data();
  for (std::size_t p = 0; p < outer; ++p) {
    for (const std::int64_t ix : indices) {
      const T* s = src.data() + (p * axis_dim + static_cast<std::size_t>(ix)) * inner;
      o = std::copy(s, s + inner, o);
    }
  }
}

void op_gather(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& data = need(c, in, 0);
  const value& idx = need(c, in, 1);
  if (data.shape.empty()) c.fail("data must have rank >= 1");
  const auto axis =
      static_cast<std::size_t>(normalize_axis(c, attr_int(c.node, "axis", 0), data.shape.size()));
  const std::int64_t dim = data.shape[axis];
  shape_t ids = int_list(c, idx, "indices");
  for (std::int64_t& v : ids) v = checked_index(c, v, dim);
  std::size_t outer = 1, inner = 1;
  for (std::size_t k = 0; k < axis; ++k) outer *= static_cast<std::size_t>(data.shape[k]);
  for (std::size_t k = axis + 1; k < data.shape.size(); ++k)
    inner *= static_cast<std::size_t>(data.shape[k]);
  value r;
  r.type = data.type;
  r.shape.assign(data.shape.begin(), data.shape.begin() + static_cast<std::ptrdiff_t>(axis));
  r.shape.insert(r.shape.end(), idx.shape.begin(), idx.shape.end());
  r.shape.insert(r.shape.end(), data.shape.begin() + static_cast<std::ptrdiff_t>(axis) + 1,
                 data.shape.end());
  if (data.type == value_type::float32) {
    r.f = new_floats(outer * ids.size() * inner);
    gather_rows(data.f, r.f, outer, static_cast<std::size_t>(dim), ids, inner);
  } else {
    gather_rows(data.i, r.i, outer, static_cast<std::size_t>(dim), ids, inner);
  }
  out.push_back(std::move(r));
}

shape_t axes_input_or_attr(const node_context& c, const inputs_t& in, std::size_t k) {
  if (const value* v = optional_input(in, k)) return int_list(c, *v, "axes");
  return attr_ints(c.node, "axes");
}

void op_unsqueeze(const node_context& c, const model&, const inputs_t& in,
                  std::vector<value>& out) {
  const value& a = need(c, in, 0);
  shape_t axes = axes_input_or_attr(c, in, 1);
  const std::size_t rank = a.shape.size() + axes.size();
  for (std::int64_t& ax : axes) ax = normalize_axis(c, ax, rank);
  std::sort(axes.begin(), axes.end());
  if (std::adjacent_find(axes.begin(), axes.end()) != axes.end()) c.fail("axes repeat");
  shape_t shape;
  std::size_t src = 0;
  for (std::size_t k = 0; k < rank; ++k) {
    if (std::binary_search(axes.begin(), axes.end(), static_cast<std::int64_t>(k))) {
      shape.push_back(1);
    } else {
      shape.push_back(a.shape[src++]);
    }
  }
  value r = input_or_copy(c, in, 0);  // the data unchanged: taken over when a is freed now
  r.shape = std::move(shape);
  out.push_back(std::move(r));
}

void op_reshape(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& a = need(c, in, 0);
  shape_t target = int_list(c, need(c, in, 1), "shape");
  const bool allowzero = attr_int(c.node, "allowzero", 0) != 0;
  std::int64_t known = 1;
  int infer = -1;
  for (std::size_t k = 0; k < target.size(); ++k) {
    if (target[k] == 0 && !allowzero) {
      if (k >= a.shape.size())
        c.fail("shape copies dimension " + std::to_string(k) + " of a rank-" +
               std::to_string(a.shape.size()) + " input");
      target[k] = a.shape[k];
    }
    if (target[k] == -1) {
      if (infer >= 0) c.fail("shape has more than one -1");
      infer = static_cast<int>(k);
    } else {
      known *= target[k];
    }
  }
  const auto total = static_cast<std::int64_t>(a.size());
  if (infer >= 0) {
    if (known == 0 || total % known != 0)
      c.fail("cannot reshape " + dims_string(a.shape) + " to " + dims_string(target));
    target[static_cast<std::size_t>(infer)] = total / known;
  }
  if (static_cast<std::int64_t>(numel(target)) != total)
    c.fail("cannot reshape " + dims_string(a.shape) + " to " + dims_string(target));
  value r = input_or_copy(c, in, 0);  // the data unchanged: taken over when a is freed now
  r.shape = target;
  out.push_back(std::move(r));
}

value strided(const value& a, const shape_t& start, const shape_t& step, const shape_t& count) {
  // A view: offset sum_k start[k] * stride[k], strides stride[k] * step[k].
  const shape_t st = strides_of(a.shape);
  std::int64_t offset = 0;
  shape_t view(st.size());
  for (std::size_t k = 0; k < st.size(); ++k) {
    offset += start[k] * st[k];
    view[k] = st[k] * step[k];
  }
  value r;
  r.type = a.type;
  r.shape = count;
  if (numel(count) == 0) return r;
  if (a.type == value_type::float32) {
    r.f = new_floats(numel(count));
    copy_view(a.f, count, view, offset, r.f);
  } else {
    copy_view(a.i, count, view, offset, r.i);
  }
  return r;
}

void op_slice(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& a = need(c, in, 0);
  shape_t starts, ends, axes, steps;
  if (in.size() >= 3) {
    starts = int_list(c, need(c, in, 1), "starts");
    ends = int_list(c, need(c, in, 2), "ends");
    if (const value* v = optional_input(in, 3)) axes = int_list(c, *v, "axes");
    if (const value* v = optional_input(in, 4)) steps = int_list(c, *v, "steps");
  } else {  // opset < 10: attributes
    starts = attr_ints(c.node, "starts");
    ends = attr_ints(c.node, "ends");
    axes = attr_ints(c.node, "axes");
  }
  const std::size_t rank = a.shape.size();
  if (axes.empty())
    for (std::size_t k = 0; k < starts.size(); ++k) axes.push_back(static_cast<std::int64_t>(k));
  if (steps.empty()) steps.assign(starts.size(), 1);
  if (ends.size() != starts.size() || axes.size() != starts.size() || steps.size() != starts.size())
    c.fail("starts, ends, axes and steps differ in length");
  shape_t start(rank, 0), step(rank, 1), count(a.shape);
  for (std::size_t q = 0; q < starts.size(); ++q) {
    const auto k = static_cast<std::size_t>(normalize_axis(c, axes[q], rank));
    const std::int64_t dim = a.shape[k], s = steps[q];
    if (s == 0) c.fail("step 0");
    std::int64_t b = starts[q], e = ends[q];
    if (b < 0) b += dim;
    if (e < 0) e += dim;
    if (s > 0) {
      b = std::clamp(b, std::int64_t(0), dim);
      e = std::clamp(e, std::int64_t(0), dim);
    } else {
      b = std::clamp(b, std::int64_t(0), dim - 1);
      e = std::clamp(e, std::int64_t(-1), dim - 1);
    }
    start[k] = b;
    step[k] = s;
    count[k] = s > 0 ? std::max<std::int64_t>(0, (e - b + s - 1) / s)
                     : std::max<std::int64_t>(0, (b - e + (-s) - 1) / (-s));
  }
  out.push_back(strided(a, start, step, count));
}

value slice_axis(const value& a, std::size_t axis, std::int64_t begin, std::int64_t length) {
  shape_t start(a.shape.size(), 0), step(a.shape.size(), 1), count(a.shape);
  start[axis] = begin;
  count[axis] = length;
  return strided(a, start, step, count);
}

void op_split(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& a = need(c, in, 0);
  const auto axis =
      static_cast<std::size_t>(normalize_axis(c, attr_int(c.node, "axis", 0), a.shape.size()));
  const std::int64_t dim = a.shape[axis];
  const auto parts = static_cast<std::int64_t>(c.node.output_size());
  shape_t split;
  if (const value* v = optional_input(in, 1)) {
    split = int_list(c, *v, "split");
  } else {
    split = attr_ints(c.node, "split");
  }
  if (split.empty()) {
    if (find_attr(c.node, "num_outputs")) {  // opset 18: chunks of ceil(dim / n), the last smaller
      const std::int64_t chunk = (dim + parts - 1) / parts;
      for (std::int64_t p = 0; p < parts; ++p)
        split.push_back(std::min(chunk, std::max<std::int64_t>(0, dim - p * chunk)));
    } else {
      if (parts == 0 || dim % parts != 0)
        c.fail("dimension " + std::to_string(dim) + " does not split into " +
               std::to_string(parts) + " equal parts");
      split.assign(static_cast<std::size_t>(parts), dim / parts);
    }
  }
  if (static_cast<std::int64_t>(split.size()) != parts ||
      std::accumulate(split.begin(), split.end(), std::int64_t(0)) != dim)
    c.fail("split " + dims_string(split) + " does not cover dimension " + std::to_string(dim) +
           " with " + std::to_string(parts) + " outputs");
  std::int64_t begin = 0;
  for (const std::int64_t len : split) {
    out.push_back(slice_axis(a, axis, begin, len));
    begin += len;
  }
}

void op_concat(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& first = need(c, in, 0);
  const auto axis =
      static_cast<std::size_t>(normalize_axis(c, attr_int(c.node, "axis", 0), first.shape.size()));
  value r;
  r.type = first.type;
  r.shape = first.shape;
  r.shape[axis] = 0;
  for (std::size_t k = 0; k < in.size(); ++k) {
    const value& v = need(c, in, k);
    if (v.type != first.type || v.shape.size() != first.shape.size())
      c.fail("inputs differ in type or rank");
    for (std::size_t d = 0; d < v.shape.size(); ++d)
      if (d != axis && v.shape[d] != first.shape[d])
        c.fail("input shapes " + dims_string(first.shape) + " and " + dims_string(v.shape) +
               " differ off the axis");
    r.shape[axis] += v.shape[axis];
  }
  std::size_t outer = 1;
  for (std::size_t d = 0; d < axis; ++d) outer *= static_cast<std::size_t>(first.shape[d]);
  auto run = [&](auto member) {
    auto& dst = r.*member;
    auto o = dst.begin();
    for (std::size_t p = 0; p < outer; ++p) {
      for (const value* v : in) {
        const std::size_t block = v->size() / std::max<std::size_t>(outer, 1);
        const auto& src = v->*member;
        o = std::copy(src.begin() + static_cast<std::ptrdiff_t>(p * block),
                      src.begin() + static_cast<std::ptrdiff_t>((p + 1) * block), o);
      }
    }
  };
  if (r.type == value_type::float32) {
    r.f = new_floats(r.size());
    run(&value::f);
  } else {
    r.i.resize(r.size());
    run(&value::i);
  }
  out.push_back(std::move(r));
}

void op_transpose(const node_context& c, const model&, const inputs_t& in,
                  std::vector<value>& out) {
  const value& a = need(c, in, 0);
  const std::size_t rank = a.shape.size();
  shape_t perm = attr_ints(c.node, "perm");
  if (perm.empty())
    for (std::size_t k = 0; k < rank; ++k) perm.push_back(static_cast<std::int64_t>(rank - 1 - k));
  if (perm.size() != rank)
    c.fail("perm has " + std::to_string(perm.size()) + " entries for rank " + std::to_string(rank));
  std::vector<bool> used(rank, false);
  for (std::int64_t p : perm) {
    if (p < 0 || p >= static_cast<std::int64_t>(rank) || used[static_cast<std::size_t>(p)])
      c.fail("perm " + dims_string(perm) + " is not a permutation of the axes");
    used[static_cast<std::size_t>(p)] = true;
  }
  const shape_t st = strides_of(a.shape);
  value r;
  r.type = a.type;
  for (std::size_t k = 0; k < rank; ++k)
    r.shape.push_back(a.shape[static_cast<std::size_t>(perm[k])]);
  // Output element j reads the input at sum_k j[k] * stride[perm[k]]: a view with these
  // strides, copied out (runs along the last axis when it stays the last axis).
  shape_t view_strides(rank);
  for (std::size_t k = 0; k < rank; ++k) view_strides[k] = st[static_cast<std::size_t>(perm[k])];
  if (a.type == value_type::float32) {
    r.f = new_floats(numel(r.shape));
    copy_view(a.f, r.shape, view_strides, 0, r.f);
  } else {
    copy_view(a.i, r.shape, view_strides, 0, r.i);
  }
  out.push_back(std::move(r));
}

void op_equal(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  binary(
      c, in, out, [](float x, float y) { return x == y ? 1.0f : 0.0f; },
      [](std::int64_t x, std::int64_t y) { return std::int64_t(x == y); });
  value& r = out.back();
  if (r.type == value_type::float32) {
    r.i.assign(r.f.begin(), r.f.end());
    r.f.clear();
  }
  r.type = value_type::boolean;
}

void op_where(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& cond = need(c, in, 0);
  const value& x = need(c, in, 1);
  const value& y = need(c, in, 2);
  if (cond.type != value_type::boolean) c.fail("condition must be bool");
  if (x.type != y.type) c.fail("X and Y differ in type");
  value r;
  r.type = x.type;
  r.shape = broadcast_shapes(c, {&cond.shape, &x.shape, &y.shape});
  auto select = [&](const auto& xs, const auto& ys, auto& rs) {
    if (rs.empty()) rs.resize(numel(r.shape));
    broadcast_walk<3>(r.shape, {&cond.shape, &x.shape, &y.shape},
                      [&](std::size_t o, const std::array<std::size_t, 3>& p,
                          const std::array<std::size_t, 3>& d, std::size_t len) {
                        for (std::size_t j = 0; j < len; ++j)
                          rs[o + j] =
                              cond.i[p[0] + j * d[0]] ? xs[p[1] + j * d[1]] : ys[p[2] + j * d[2]];
                      });
  };
  if (r.type == value_type::float32) {
    r.f = new_floats(numel(r.shape));
    select(x.f, y.f, r.f);
  } else {
    select(x.i, y.i, r.i);
  }
  out.push_back(std::move(r));
}

void op_range(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& s = need(c, in, 0);
  const value& l = need(c, in, 1);
  const value& d = need(c, in, 2);
  if (s.size() != 1 || l.size() != 1 || d.size() != 1)
    c.fail("start, limit and delta must be scalars");
  if (s.type == value_type::float32) {
    const double start = s.f[0], limit = l.f[0], delta = d.f[0];
    const auto count = static_cast<std::int64_t>(std::max(0.0, std::ceil((limit - start) / delta)));
    std::vector<float> v(static_cast<std::size_t>(count));
    for (std::int64_t k = 0; k < count; ++k)
      v[static_cast<std::size_t>(k)] = static_cast<float>(s.f[0] + static_cast<float>(k) * d.f[0]);
    out.push_back(value::floats({count}, std::move(v)));
  } else {
    const std::int64_t start = s.i[0], limit = l.i[0], delta = d.i[0];
    if (delta == 0) c.fail("delta 0");
    const std::int64_t count =
        std::max<std::int64_t>(0, (limit - start + delta + (delta > 0 ? -1 : 1)) / delta);
    std::vector<std::int64_t> v(static_cast<std::size_t>(count));
    for (std::int64_t k = 0; k < count; ++k) v[static_cast<std::size_t>(k)] = start + k * delta;
    out.push_back(value::ints({count}, std::move(v)));
  }
}

void op_softmax(const node_context& c, const model& m, const inputs_t& in,
                std::vector<value>& out) {
  const value& a = need(c, in, 0);
  if (a.type != value_type::float32) c.fail("input must be a float tensor");
  const softmax_layout l = softmax_layout_of(c, m, a.shape);
  const std::size_t outer = l.outer, len = l.len, inner = l.inner;
  if (inner == 1) {  // the last axis: rows, exp vectorized, the rows over the threads
    const float* src = a.f.data();
    value r = c.take_input(in, 0) ? std::move(*c.take_input(in, 0)) : new_float_value(a.shape);
    float* dst = r.f.data();
    parallel_ranges(outer, rows_per_item(len), [&](std::size_t p0, std::size_t p1) {
      for (std::size_t p = p0; p < p1; ++p) {
        const float* s = src + p * len;
        float* x = dst + p * len;
        float mx = -INFINITY;
        for (std::size_t k = 0; k < len; ++k) mx = std::max(mx, s[k]);
        for (std::size_t k = 0; k < len; ++k) x[k] = s[k] - mx;
        exp_in_place(x, len);
        double sum = 0;
        for (std::size_t k = 0; k < len; ++k) sum += x[k];
        const auto inv = static_cast<float>(1.0 / sum);
        for (std::size_t k = 0; k < len; ++k) x[k] *= inv;
      }
    });
    out.push_back(std::move(r));
    return;
  }
  value r = a;
  for (std::size_t p = 0; p < outer; ++p) {
    for (std::size_t q = 0; q < inner; ++q) {
      float* x = r.f.data() + p * len * inner + q;
      float mx = -INFINITY;
      for (std::size_t k = 0; k < len; ++k) mx = std::max(mx, x[k * inner]);
      double sum = 0;
      for (std::size_t k = 0; k < len; ++k) {
        x[k * inner] = std::exp(x[k * inner] - mx);
        sum += x[k * inner];
      }
      const auto inv = static_cast<float>(1.0 / sum);
      for (std::size_t k = 0; k < len; ++k) x[k * inner] *= inv;
    }
  }
  out.push_back(std::move(r));
}

void op_layer_norm(const node_context& c, const model&, const inputs_t& in,
                   std::vector<value>& out) {
  const value& x = need(c, in, 0);
  const value& scale = need(c, in, 1);
  const value* bias = optional_input(in, 2);
  if (x.type != value_type::float32) c.fail("input must be a float tensor");
  const auto axis =
      static_cast<std::size_t>(normalize_axis(c, attr_int(c.node, "axis", -1), x.shape.size()));
  const double eps = attr_float(c.node, "epsilon", 1e-5f);
  std::size_t outer = 1, len = 1;
  for (std::size_t k = 0; k < axis; ++k) outer *= static_cast<std::size_t>(x.shape[k]);
  for (std::size_t k = axis; k < x.shape.size(); ++k) len *= static_cast<std::size_t>(x.shape[k]);
  const shape_t norm_shape(x.shape.begin() + static_cast<std::ptrdiff_t>(axis), x.shape.end());
  // Scale and bias broadcast to one row (the common case, already a row, is used as it is).
  std::vector<float> scale_row, bias_row;
  auto row_of = [&](const value& v, std::vector<float>& own) -> const float* {
    if (v.shape == norm_shape) return v.f.data();
    const auto idx = broadcast_index(v.shape, norm_shape);
    own.resize(idx.size());
    for (std::size_t k = 0; k < idx.size(); ++k) own[k] = v.f[idx[k]];
    return own.data();
  };
  const float* sc = row_of(scale, scale_row);
  const float* bi = bias ? row_of(*bias, bias_row) : nullptr;
  // Optional outputs 1 and 2: the mean and 1 / sqrt(var + epsilon), shape [x.shape[:axis], 1...].
  shape_t stat_shape(x.shape.begin(), x.shape.begin() + static_cast<std::ptrdiff_t>(axis));
  stat_shape.resize(x.shape.size(), 1);
  value means = value::floats(stat_shape, std::vector<float>(outer));
  value inv_std = value::floats(stat_shape, std::vector<float>(outer));
  const float* src = x.f.data();
  value r = c.take_input(in, 0) ? std::move(*c.take_input(in, 0)) : new_float_value(x.shape);
  float* dst = r.f.data();
  // Each row in double as before; the rows over the threads.
  parallel_ranges(outer, rows_per_item(len), [&](std::size_t p0, std::size_t p1) {
    for (std::size_t p = p0; p < p1; ++p) {
      const float* v = src + p * len;
      float* o = dst + p * len;
      double mean = 0, var = 0;
      for (std::size_t k = 0; k < len; ++k) mean += v[k];
      mean /= static_cast<double>(len);
      for (std::size_t k = 0; k < len; ++k) var += (v[k] - mean) * (v[k] - mean);
      var /= static_cast<double>(len);
      const double inv = 1.0 / std::sqrt(var + eps);
      means.f[p] = static_cast<float>(mean);
      inv_std.f[p] = static_cast<float>(inv);
      if (bi) {
        for (std::size_t k = 0; k < len; ++k)
          o[k] = static_cast<float>((v[k] - mean) * inv * sc[k] + bi[k]);
      } else {
        for (std::size_t k = 0; k < len; ++k)
          o[k] = static_cast<float>((v[k] - mean) * inv * sc[k]);
      }
    }
  });
  out.push_back(std::move(r));
  out.push_back(std::move(means));
  out.push_back(std::move(inv_std));
}

/// If: runs then_branch or else_branch (in the scope of the node) and returns its outputs.
void op_if(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& cond = need(c, in, 0);
  if (cond.size() != 1)
    c.fail("the condition must hold one element, not " + dims_string(cond.shape));
  const bool take_then = cond.type == value_type::float32 ? cond.f[0] != 0.0f : cond.i[0] != 0;
  const AttributeProto* branch = find_attr(c.node, take_then ? "then_branch" : "else_branch");
  if (!branch || !branch->has_g() || !c.subgraph)
    c.fail(std::string("has no ") + (take_then ? "then_branch" : "else_branch") + " graph");
  std::vector<value> results = (*c.subgraph)(branch->g(), {});
  if (results.size() != static_cast<std::size_t>(c.node.output_size()))
    c.fail("the branch has " + std::to_string(results.size()) + " outputs, the node " +
           std::to_string(c.node.output_size()));
  for (value& v : results) out.push_back(std::move(v));
}

void op_matmul(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  matmul_values(c, in, out);
}

}  // namespace

void exec::matmul_values(const node_context& c, const inputs_t& in, std::vector<value>& out) {
  const value& a = need(c, in, 0);
  const value& b = need(c, in, 1);
  if (a.type != value_type::float32 || b.type != value_type::float32)
    c.fail("MatMul computes float tensors only");
  // numpy semantics: a 1-D operand is a row (a) or column (b) vector, removed from the result.
  shape_t sa = a.shape, sb = b.shape;
  const bool a_vec = sa.size() == 1, b_vec = sb.size() == 1;
  if (a_vec) sa.insert(sa.begin(), 1);
  if (b_vec) sb.push_back(1);
  if (sa.size() < 2 || sb.size() < 2) c.fail("inputs must have rank >= 1");
  const std::int64_t M = sa[sa.size() - 2], K = sa.back();
  const std::int64_t K2 = sb[sb.size() - 2], N = sb.back();
  if (K != K2)
    c.fail("shapes " + dims_string(a.shape) + " and " + dims_string(b.shape) + " do not multiply");
  const shape_t ba(sa.begin(), sa.end() - 2), bb(sb.begin(), sb.end() - 2);
  const shape_t batch = broadcast_shapes(c, {&ba, &bb});
  value r;
  r.shape = batch;
  r.shape.push_back(M);
  r.shape.push_back(N);
  r.f = new_floats(numel(r.shape));  // every element written below
  const auto mk = static_cast<std::size_t>(M * K), kn = static_cast<std::size_t>(K * N),
             mn = static_cast<std::size_t>(M * N);
  if (bb.empty() || numel(bb) == 1) {
    // One weight for every batch: fold the batch into the rows, one sgemm [batch*M, K] x [K, N]
    // (a's batches are contiguous when a is not broadcast).
    if (numel(ba) == numel(batch)) {
      const std::size_t rows = numel(batch) * static_cast<std::size_t>(M);
      gemm(false, false, rows, std::size_t(N), std::size_t(K), 1.0f, a.f.data(), std::size_t(K),
           b.f.data(), std::size_t(N), 0.0f, r.f.data(), std::size_t(N));
      if (K == 0) std::fill(r.f.begin(), r.f.end(), 0.0f);
      if (b_vec) r.shape.pop_back();
      if (a_vec) r.shape.erase(r.shape.end() - (b_vec ? 1 : 2));
      out.push_back(std::move(r));
      return;
    }
  }
  const auto ia = broadcast_index(ba, batch), ib = broadcast_index(bb, batch);
  if (K == 0) {
    std::fill(r.f.begin(), r.f.end(), 0.0f);
  } else if (M > 0 && N > 0) {
    // One product per batch entry (attention heads), spread over threads when worth it; each
    // entry is one single-threaded BLAS call whatever the thread count.
    auto one = [&](std::size_t e) {
      int4q::detail::blas::gemm(false, false, std::size_t(M), std::size_t(N), std::size_t(K), 1.0f,
                                a.f.data() + ia[e] * mk, std::size_t(K), b.f.data() + ib[e] * kn,
                                std::size_t(N), 0.0f, r.f.data() + e * mn, std::size_t(N));
    };
    if (ia.size() * mn * static_cast<std::size_t>(K) < kGemmParallelMin || blas_threads() > 1) {
      for (std::size_t e = 0; e < ia.size(); ++e) one(e);
    } else {
      int4q::detail::parallel_for(ia.size(), current_threads(), one);
    }
  }
  if (b_vec) r.shape.pop_back();
  if (a_vec) r.shape.erase(r.shape.end() - (b_vec ? 1 : 2));
  out.push_back(std::move(r));
}

namespace {

std::int64_t int_div(const node_context& c, std::int64_t x, std::int64_t y) {
  if (y == 0) c.fail("integer division by zero");
  return x / y;
}

std::unordered_map<std::string, op_fn> make_registry() {
  std::unordered_map<std::string, op_fn> ops = {
      {"Constant", op_constant},
      {"Identity", op_identity},
      {"Cast", op_cast},
      {"Shape", op_shape},
      {"Gather", op_gather},
      {"Unsqueeze", op_unsqueeze},
      {"Reshape", op_reshape},
      {"Slice", op_slice},
      {"Split", op_split},
      {"Concat", op_concat},
      {"Transpose", op_transpose},
      {"Equal", op_equal},
      {"Where", op_where},
      {"Range", op_range},
      {"Softmax", op_softmax},
      {"LayerNormalization", op_layer_norm},
      {"MatMul", op_matmul},
      {"If", op_if},
      {"Add",
       [](const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
         binary(c, in, out, std::plus<float>(), std::plus<std::int64_t>());
       }},
      {"Sub",
       [](const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
         binary(c, in, out, std::minus<float>(), std::minus<std::int64_t>());
       }},
      {"Mul",
       [](const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
         binary(c, in, out, std::multiplies<float>(), std::multiplies<std::int64_t>());
       }},
      {"Div",
       [](const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
         binary(c, in, out, std::divides<float>(),
                [&c](std::int64_t x, std::int64_t y) { return int_div(c, x, y); });
       }},
  };
  exec::add_more_ops(ops);
  exec::add_nn_ops(ops);
  exec::add_ms_ops(ops);
  return ops;
}

}  // namespace

std::string exec::op_key(const NodeProto& n) {
  const bool default_domain = n.domain().empty() || n.domain() == "ai.onnx";
  return default_domain ? n.op_type() : n.domain() + "::" + n.op_type();
}

const std::unordered_map<std::string, op_fn>& exec::registry() {
  static const std::unordered_map<std::string, op_fn> ops = make_registry();
  return ops;
}

// ---- value
// ---------------------------------------------------------------------------------------

std::size_t value::size() const noexcept { return numel(shape); }

value value::floats(std::vector<std::int64_t> shape, std::vector<float> data) {
  value v;
  v.type = value_type::float32;
  v.shape = std::move(shape);
  v.f = std::move(data);
  return v;
}

value value::ints(std::vector<std::int64_t> shape, std::vector<std::int64_t> data,
                  value_type type) {
  value v;
  v.type = type;
  v.shape = std::move(shape);
  v.i = std::move(data);
  return v;
}

namespace {

/// The executor's type for `t`'s data type (4-bit types: int64); throws model_error
/// (unsupported) for a type it does not compute with.
value_type computed_type(const TensorProto& t) {
  value_type type = value_type::int64;
  if (t.data_type() == onnx_uint4 || t.data_type() == onnx_int4) return type;
  if (!value_type_of(t.data_type(), type)) {
    throw model_error(model_error::kind::unsupported,
                      "tensor '" + t.name() + "' has data type " + std::to_string(t.data_type()) +
                          ", which the executor does not compute with");
  }
  return type;
}

}  // namespace

value to_value(const model& m, const TensorProto& t) { return to_value(tensor_reader(m), t); }

value to_value(const tensor_reader& reader, const TensorProto& t) {
  value v;
  v.type = computed_type(t);
  v.shape.assign(t.dims().begin(), t.dims().end());
  // The dims must fit the payload before anything is allocated for them (a corrupt or hostile
  // file may claim 2^62 elements in a few bytes).
  const std::optional<std::uint64_t> bytes = tensor_payload_bytes(t);
  if (!bytes)
    throw model_error(model_error::kind::invalid,
                      "tensor '" + t.name() + "' has dims " + dims_string(v.shape) +
                          " that give no element count, or a type without a size");
  std::uint64_t stored = 0;  // bytes (raw or external) or typed entries the tensor holds
  bool typed = false;
  if (is_external(t)) {
    stored = *bytes;  // checked against the file by the reader, which allocates nothing first
    for (const auto& e : t.external_data())
      if (e.key() == "length") stored = std::strtoull(e.value().c_str(), nullptr, 10);
  } else if (t.has_raw_data()) {
    stored = t.raw_data().size();
  } else {
    typed = true;
    stored = static_cast<std::uint64_t>(t.float_data_size()) + t.int32_data_size() +
             t.int64_data_size() + t.double_data_size() + t.uint64_data_size();
  }
  // Typed fields hold one element per entry (4-bit types: two per int32 entry).
  const std::uint64_t elements = *tensor_element_count(t);
  if (typed ? stored * 2 < elements : stored < *bytes)
    throw model_error(model_error::kind::invalid,
                      "tensor '" + t.name() + "' holds " + std::to_string(stored) +
                          (typed ? " values" : " bytes") + " for " + std::to_string(elements) +
                          " elements (dims " + dims_string(v.shape) + ")");
  const std::size_t n = v.size();
  if (v.type == value_type::float32) {
    v.f.resize(n);
  } else {
    v.i.resize(n);
  }
  // The payload arrives in pieces of whole elements (tensor_reader); element e of the value is
  // converted from the e-th stored element, as from one byte vector.
  if (t.data_type() == onnx_uint4 || t.data_type() == onnx_int4) {
    // UINT4, INT4: two per byte, low nibble first.
    std::size_t e = 0;
    reader.read(t, [&](const std::uint8_t* bytes, std::size_t size) {
      for (std::size_t b = 0; b < size; ++b) {
        for (int half = 0; half < 2 && e < n; ++half, ++e) {
          const std::int64_t nibble = (bytes[b] >> (4 * half)) & 0xF;
          v.i[e] = t.data_type() == onnx_int4 && nibble >= 8 ? nibble - 16 : nibble;
        }
      }
    });
    return v;
  }
  auto load = [&](auto sample, auto convert) {
    using S = decltype(sample);
    std::uint64_t total = 0;
    std::size_t e = 0;
    reader.read(t, [&](const std::uint8_t* bytes, std::size_t size) {
      total += size;
      if (total > n * sizeof(S)) return;  // reported below; never written past the value
      for (std::size_t k = 0; k + sizeof(S) <= size; k += sizeof(S), ++e) {
        S s;
        std::memcpy(&s, bytes + k, sizeof(S));
        convert(e, s);
      }
    });
    if (total != n * sizeof(S)) {
      throw model_error(model_error::kind::invalid, "tensor '" + t.name() + "' holds " +
                                                        std::to_string(total) + " bytes for " +
                                                        std::to_string(n) + " elements");
    }
  };
  auto to_f = [&](std::size_t e, auto s) { v.f[e] = static_cast<float>(s); };
  auto to_i = [&](std::size_t e, auto s) { v.i[e] = static_cast<std::int64_t>(s); };
  switch (t.data_type()) {
    case TensorProto::FLOAT: load(float(), to_f); break;
    case TensorProto::DOUBLE: load(double(), to_f); break;
    case TensorProto::FLOAT16:
      load(std::uint16_t(),
           [&](std::size_t e, std::uint16_t h) { v.f[e] = half_bits_to_float(h); });
      break;
    case TensorProto::BFLOAT16:
      load(std::uint16_t(),
           [&](std::size_t e, std::uint16_t h) { v.f[e] = bfloat16_bits_to_float(h); });
      break;
    case TensorProto::INT8: load(std::int8_t(), to_i); break;
    case TensorProto::INT16: load(std::int16_t(), to_i); break;
    case TensorProto::INT32: load(std::int32_t(), to_i); break;
    case TensorProto::INT64: load(std::int64_t(), to_i); break;
    case TensorProto::UINT8: load(std::uint8_t(), to_i); break;
    case TensorProto::UINT16: load(std::uint16_t(), to_i); break;
    case TensorProto::UINT32: load(std::uint32_t(), to_i); break;
    case TensorProto::UINT64: load(std::uint64_t(), to_i); break;
    case TensorProto::BOOL:
      load(std::uint8_t(), [&](std::size_t e, std::uint8_t b) { v.i[e] = b != 0; });
      break;
    default: break;
  }
  return v;
}

std::vector<std::string> supported_ops() {
  std::vector<std::string> names;
  for (const auto& [name, fn] : registry()) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}
// ---- executor
// -------------------------------------------------------------------------------------

/// One graph ready to run: its small initializers converted once and its large ones by tensor
/// (converted when read, through the weight cache), each node's operator looked up once, the
/// index of the last node reading each name (values are freed after it; names read inside a
/// node's subgraphs count as read by that node), and the plans of its subgraphs.
struct executor::graph_plan {
  const ::onnx::GraphProto* graph = nullptr;
  std::unordered_map<std::string, value> initializers;
  std::unordered_map<std::string, const TensorProto*> large;
  std::vector<const op_fn*> ops;
  std::unordered_map<std::string, int> last_use;
  std::unordered_map<const ::onnx::GraphProto*, std::unique_ptr<graph_plan>> subgraphs;
  std::vector<bool> has_subgraph;
};

using profile_clock = std::chrono::steady_clock;

namespace {

/// Adds the time since `start` to `e` (one more call); returns now.
profile_clock::time_point add_time(run_profile::entry& e, profile_clock::time_point start) {
  const profile_clock::time_point now = profile_clock::now();
  e.seconds += std::chrono::duration<double>(now - start).count();
  ++e.calls;
  return now;
}

}  // namespace

/// Large initializers converted, least recently used last; dropped from the back once their
/// bytes pass `capacity`. Values are shared: a node holding one keeps it alive after a drop.
struct executor::weight_cache {
  weight_cache(const model& m, std::size_t capacity_bytes) : reader(m), capacity(capacity_bytes) {}

  std::shared_ptr<const value> get(const TensorProto& t, run_profile* profile = nullptr) {
    {
      const std::lock_guard<std::mutex> lock(mutex);
      const auto it = index.find(&t);
      if (it != index.end()) {
        lru.splice(lru.begin(), lru, it->second);
        return it->second->second;
      }
    }
    // Converted outside the lock: other runs go on meanwhile (two runs may convert the same
    // tensor at once; the values are equal and the first one in is kept).
    const profile_clock::time_point start =
        profile ? profile_clock::now() : profile_clock::time_point();
    auto v = std::make_shared<const value>(to_value(reader, t));
    if (profile) add_time(profile->weight_conversion, start);
    const std::size_t size = v->f.size() * sizeof(float) + v->i.size() * sizeof(std::int64_t);
    const std::lock_guard<std::mutex> lock(mutex);
    const auto it = index.find(&t);
    if (it != index.end()) return it->second->second;
    if (size > capacity) return v;  // never fits: converted for each use
    lru.emplace_front(&t, v);
    index[&t] = lru.begin();
    bytes += size;
    while (bytes > capacity) {
      const value& old = *lru.back().second;
      bytes -= old.f.size() * sizeof(float) + old.i.size() * sizeof(std::int64_t);
      index.erase(lru.back().first);
      lru.pop_back();
    }
    return v;
  }

  tensor_reader reader;
  const std::size_t capacity;
  std::mutex mutex;
  std::list<std::pair<const TensorProto*, std::shared_ptr<const value>>> lru;
  std::unordered_map<const TensorProto*, decltype(lru)::iterator> index;
  std::size_t bytes = 0;
};

namespace {

/// Large initializers held while a node (or a session's find) uses them.
using pins_t = std::vector<std::shared_ptr<const value>>;

/// The initializer `name` of `p`: small ones from the plan, large ones from the cache (held in
/// `pins`); nullptr when `p` has none.
const value* plan_initializer(const executor::graph_plan& p, executor::weight_cache& cache,
                              const std::string& name, pins_t& pins,
                              run_profile* profile = nullptr) {
  const auto i = p.initializers.find(name);
  if (i != p.initializers.end()) return &i->second;
  const auto l = p.large.find(name);
  if (l == p.large.end()) return nullptr;
  pins.push_back(cache.get(*l->second, profile));
  return pins.back().get();
}

bool has_initializer(const executor::graph_plan& p, const std::string& name) {
  return p.initializers.count(name) != 0 || p.large.count(name) != 0;
}

/// Every name a graph reads, its subgraphs included (over-approximates the outer names they use).
void names_read(const ::onnx::GraphProto& g, std::set<std::string>& out) {
  for (const NodeProto& n : g.node()) {
    for (const std::string& name : n.input())
      if (!name.empty()) out.insert(name);
    for (const AttributeProto& a : n.attribute()) {
      if (a.has_g()) names_read(a.g(), out);
      for (const auto& sg : a.graphs()) names_read(sg, out);
    }
  }
}

void collect_unsupported(const ::onnx::GraphProto& g, std::set<std::string>& unsupported) {
  for (const NodeProto& n : g.node()) {
    if (!registry().count(op_key(n))) unsupported.insert(op_key(n));
    for (const AttributeProto& a : n.attribute()) {
      if (a.has_g()) collect_unsupported(a.g(), unsupported);
      for (const auto& sg : a.graphs()) collect_unsupported(sg, unsupported);
    }
  }
}

std::unique_ptr<executor::graph_plan> make_plan(const model& m, const ::onnx::GraphProto& g) {
  auto p = std::make_unique<executor::graph_plan>();
  p->graph = &g;
  for (const TensorProto& t : g.initializer()) {
    const auto bytes = tensor_payload_bytes(t);
    if (bytes && *bytes > small_initializer_bytes) {
      computed_type(t);  // an unsupported type is refused now, not when a node reads it
      p->large[t.name()] = &t;
      p->initializers.erase(t.name());  // the last of a repeated name wins, as before
    } else {
      p->initializers[t.name()] = to_value(m, t);
      p->large.erase(t.name());
    }
  }
  for (int k = 0; k < g.node_size(); ++k) {
    const NodeProto& n = g.node(k);
    p->ops.push_back(&registry().at(op_key(n)));
    for (const std::string& name : n.input()) p->last_use[name] = k;
    bool sub = false;
    for (const AttributeProto& a : n.attribute()) {
      std::vector<const ::onnx::GraphProto*> graphs;
      if (a.has_g()) graphs.push_back(&a.g());
      for (const auto& sg : a.graphs()) graphs.push_back(&sg);
      for (const ::onnx::GraphProto* sg : graphs) {
        sub = true;
        std::set<std::string> inner;
        names_read(*sg, inner);
        for (const std::string& name : inner) p->last_use[name] = k;
        p->subgraphs[sg] = make_plan(m, *sg);
      }
    }
    p->has_subgraph.push_back(sub);
  }
  for (const auto& o : g.output()) p->last_use.erase(o.name());  // outputs are kept
  return p;
}

/// Gather on axis 0 of a large stored float table (an embedding: 32000 x 4096 fp16 is 0.5 GB
/// as fp32, and a window of 128 tokens reads 128 rows): only the rows the indices name are read
/// and converted, into `rows` ([u, ...], sorted distinct rows), and `renumbered` holds the
/// indices as positions in it, so that op_gather on the two gives what it gives on the whole
/// table. Returns false (nothing done; the table goes through the weight cache) when the node is
/// another op or axis, an index is out of range (op_gather reports it on the table) or the
/// indices name more than half the rows.
bool slice_gather_table(const NodeProto& n, const TensorProto& t, const value* indices,
                        const tensor_reader& reader, value& rows, value& renumbered) {
  if (n.op_type() != "Gather" || !(n.domain().empty() || n.domain() == "ai.onnx")) return false;
  if (!indices || indices->type != value_type::int64 || t.dims_size() == 0 ||
      elem_type_of(t.data_type()) == elem_type::other)
    return false;
  const std::int64_t axis = attr_int(n, "axis", 0);
  if (axis != 0 && axis != -t.dims_size()) return false;
  const std::int64_t dim = t.dims(0);
  std::vector<std::int64_t> ids = indices->i;
  for (std::int64_t& v : ids) {
    if (v < 0) v += dim;
    if (v < 0 || v >= dim) return false;
  }
  std::vector<std::int64_t> distinct = ids;
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  if (distinct.size() > static_cast<std::size_t>(dim) / 2) return false;
  std::size_t inner = 1;
  for (int k = 1; k < t.dims_size(); ++k) inner *= static_cast<std::size_t>(t.dims(k));
  rows.type = value_type::float32;
  rows.shape.assign(t.dims().begin(), t.dims().end());
  rows.shape[0] = static_cast<std::int64_t>(distinct.size());
  rows.f.resize(distinct.size() * inner);
  for (std::size_t a = 0; a < distinct.size();) {  // runs of consecutive rows: one read each
    std::size_t b = a + 1;
    while (b < distinct.size() && distinct[b] == distinct[b - 1] + 1) ++b;
    reader.read_floats_at(t, static_cast<std::size_t>(distinct[a]) * inner, (b - a) * inner,
                          rows.f.data() + a * inner);
    a = b;
  }
  renumbered.type = indices->type;
  renumbered.shape = indices->shape;
  renumbered.i.resize(ids.size());
  for (std::size_t e = 0; e < ids.size(); ++e)
    renumbered.i[e] = std::lower_bound(distinct.begin(), distinct.end(), ids[e]) - distinct.begin();
  return true;
}

using lookup_fn = std::function<const value*(const std::string&)>;

/// Runs the nodes of `p` with the values in `env` (inputs already there), names not found in
/// env or the plan's initializers resolving through `outer`. Values are freed after their last
/// reader. Runs nodes [begin, end).
void run_nodes(const model& m, executor::weight_cache& cache, const executor::graph_plan& p,
               std::unordered_map<std::string, value>& env, const lookup_fn& outer,
               const run_hooks* hooks, int begin, int end) {
  const ::onnx::GraphProto& g = *p.graph;
  run_profile* const profile = hooks ? hooks->profile : nullptr;
  pins_t pins;  // the large initializers the running node reads, released after it
  const lookup_fn lookup = [&](const std::string& name) -> const value* {
    const auto e = env.find(name);
    if (e != env.end()) return &e->second;
    if (const value* v = plan_initializer(p, cache, name, pins, profile)) return v;
    return outer ? outer(name) : nullptr;
  };
  const subgraph_runner run_sub = [&](const ::onnx::GraphProto& sg,
                                      const std::vector<const value*>& args) {
    const executor::graph_plan& sp = *p.subgraphs.at(&sg);
    std::unordered_map<std::string, value> sub_env;
    for (int k = 0; k < sg.input_size() && k < static_cast<int>(args.size()); ++k)
      if (args[static_cast<std::size_t>(k)])
        sub_env[sg.input(k).name()] = *args[static_cast<std::size_t>(k)];
    run_nodes(m, cache, sp, sub_env, lookup, hooks, 0, sg.node_size());
    std::vector<value> outs;
    for (const auto& o : sg.output()) {
      const auto it = sub_env.find(o.name());
      if (it != sub_env.end()) {
        outs.push_back(std::move(it->second));
        continue;
      }
      const value* v = lookup(o.name());
      if (!v) v = plan_initializer(sp, cache, o.name(), pins);
      if (!v)
        throw model_error(
            model_error::kind::invalid,
            "subgraph '" + sg.name() + "' never computes its output '" + o.name() + "'");
      outs.push_back(*v);
    }
    return outs;
  };

  std::vector<value> results;
  inputs_t in;
  std::vector<std::size_t> deferred;  // large initializers the hook says it replaces
  value table_rows, table_indices;    // a Gather's rows of a large table (slice_gather_table)
  std::vector<value*> dying;          // node_context::dying
  buffer_pool* const pool = current_pool_slot();
  // Frees env[name] (its float buffer to the run's pool).
  auto release = [&](std::unordered_map<std::string, value>::iterator it) {
    if (pool) pool->recycle(it->second.f);
    return env.erase(it);
  };
  for (int k = begin; k < end; ++k) {
    const NodeProto& n = g.node(k);
    const bool sub = p.has_subgraph[static_cast<std::size_t>(k)];
    const node_context c{n, sub ? &run_sub : nullptr, &dying};
    const bool hook = hooks && hooks->before_node;
    profile_clock::time_point t0 = profile ? profile_clock::now() : profile_clock::time_point();
    in.clear();
    deferred.clear();
    for (const std::string& name : n.input()) {
      if (name.empty()) {
        in.push_back(nullptr);
        continue;
      }
      if (hook && hooks->replaces && !env.count(name) && p.large.count(name) &&
          hooks->replaces(n, name)) {
        deferred.push_back(in.size());
        in.push_back(nullptr);
        continue;
      }
      if (in.empty() && n.input_size() == 2 && !env.count(name)) {
        const auto l = p.large.find(name);
        if (l != p.large.end() && !n.input(1).empty() &&
            slice_gather_table(n, *l->second, lookup(n.input(1)), cache.reader, table_rows,
                               table_indices)) {
          in = {&table_rows, &table_indices};
          break;
        }
      }
      const value* v = lookup(name);
      if (!v) c.fail("input '" + name + "' is not computed before the node (graph not sorted?)");
      in.push_back(v);
    }
    if (profile) t0 = add_time(profile->inputs, t0);
    if (hook) hooks->before_node(k, n, in);
    if (profile && hook) t0 = add_time(profile->hooks, t0);
    for (const std::size_t d : deferred)  // not replaced after all: the initializer
      if (!in[d]) in[d] = lookup(n.input(static_cast<int>(d)));
    // Inputs the operator may take over: values of this graph's env (not initializers, not
    // values a hook put in) whose last reader this node is, read through one input only.
    dying.assign(in.size(), nullptr);
    if (!sub) {
      for (int q = 0; q < n.input_size(); ++q) {
        const std::string& name = n.input(q);
        if (name.empty()) continue;
        const auto lu = p.last_use.find(name);
        const auto e = env.find(name);
        if (lu == p.last_use.end() || lu->second != k || e == env.end() ||
            in[static_cast<std::size_t>(q)] != &e->second)
          continue;
        int uses = 0;
        for (const std::string& other : n.input()) uses += other == name;
        if (uses == 1) dying[static_cast<std::size_t>(q)] = &e->second;
      }
    }
    results.clear();
    (*p.ops[static_cast<std::size_t>(k)])(c, m, in, results);
    if (profile) t0 = add_time(profile->ops[op_key(n)], t0);
    if (results.size() < static_cast<std::size_t>(n.output_size()))
      c.fail("produced fewer outputs than the node has");
    for (int o = 0; o < n.output_size(); ++o) {
      if (!n.output(o).empty()) env[n.output(o)] = std::move(results[static_cast<std::size_t>(o)]);
    }
    if (pool) {  // the pool may keep as many bytes as the run has had live at once
      std::size_t live = 0;
      for (const auto& [name, v] : env) live += v.f.capacity() * sizeof(float);
      pool->raise_limit(live);
    }
    pins.clear();
    for (const std::string& name : n.input()) {
      const auto lu = p.last_use.find(name);
      if (lu == p.last_use.end() || lu->second != k) continue;
      const auto e = env.find(name);
      if (e != env.end()) release(e);
    }
    if (sub) {  // outer names read by its subgraphs
      for (auto it = env.begin(); it != env.end();) {
        const auto lu = p.last_use.find(it->first);
        it = lu != p.last_use.end() && lu->second == k ? release(it) : std::next(it);
      }
    }
    if (profile) add_time(profile->release, t0);
  }
}

}  // namespace

executor::executor(const model& m, std::size_t threads)
    : executor(m, executor_options{threads, executor_options{}.weight_cache_bytes}) {}

/// The buffers of finished runs for the next ones (one pool: a run takes it whole when it starts
/// and the finished run with the most buffers leaves its own).
struct executor::spare_buffers {
  explicit spare_buffers(std::size_t bytes) : max_bytes(bytes) {}
  buffer_pool take() {
    buffer_pool out;
    const std::lock_guard<std::mutex> lock(mutex);
    std::swap(out, pool);  // the spare left empty
    return out;
  }
  void give(buffer_pool& p) {
    p.lower_limit(max_bytes);
    const std::lock_guard<std::mutex> lock(mutex);
    if (p.bytes() > pool.bytes()) std::swap(pool, p);
  }
  const std::size_t max_bytes;
  std::mutex mutex;
  buffer_pool pool;
};

executor::executor(const model& m, const executor_options& options)
    : m_(m),
      threads_(options.threads),
      cache_(std::make_shared<weight_cache>(m, options.weight_cache_bytes)),
      spare_(std::make_shared<spare_buffers>(options.kept_buffer_bytes)) {
  std::set<std::string> unsupported;
  collect_unsupported(m.proto.graph(), unsupported);
  if (!unsupported.empty()) {
    std::string list, all;
    for (const std::string& op : unsupported) list += (list.empty() ? "" : ", ") + op;
    for (const std::string& op : supported_ops()) all += (all.empty() ? "" : ", ") + op;
    throw model_error(model_error::kind::unsupported,
                      "the executor does not implement " + list + " (it implements: " + all + ")");
  }
  plan_ = make_plan(m, m.proto.graph());
}

std::size_t& exec::current_threads_slot() noexcept {
  thread_local std::size_t threads = 0;
  return threads;
}

buffer_pool*& exec::current_pool_slot() noexcept {
  thread_local buffer_pool* pool = nullptr;
  return pool;
}

struct executor::session::state {
  std::unordered_map<std::string, value> env;
  const graph_plan* plan = nullptr;
  weight_cache* cache = nullptr;
  pins_t found;  ///< large initializers returned by find(), held until the next advance
  int next = 0;
  buffer_pool pool;  ///< buffers of the values freed so far, for the next nodes' outputs
};

executor::session::session(std::unique_ptr<state> s) : s_(std::move(s)) {}
executor::session::session(session&&) noexcept = default;
executor::session& executor::session::operator=(session&&) noexcept = default;
executor::session::~session() = default;
int executor::session::next_node() const noexcept { return s_ ? s_->next : 0; }

const value* executor::session::find(const std::string& name) const {
  const auto e = s_->env.find(name);
  if (e != s_->env.end()) return &e->second;
  return plan_initializer(*s_->plan, *s_->cache, name, s_->found);
}

std::size_t executor::session::value_bytes() const noexcept {
  std::size_t bytes = 0;
  if (s_)
    for (const auto& [name, v] : s_->env)
      bytes += v.f.size() * sizeof(float) + v.i.size() * sizeof(std::int64_t);
  return bytes;
}

std::vector<std::pair<std::string, value>> executor::session::take_values() {
  std::vector<std::pair<std::string, value>> out;
  out.reserve(s_->env.size());
  for (auto& [name, v] : s_->env) out.emplace_back(name, std::move(v));
  s_->env.clear();
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

void executor::session::restore_values(std::vector<std::pair<std::string, value>> values) {
  for (auto& [name, v] : values) s_->env[name] = std::move(v);
}

executor::session executor::start(const std::map<std::string, value>& inputs) const {
  const auto& g = m_.proto.graph();
  auto st = std::make_unique<session::state>();
  st->plan = plan_.get();
  st->cache = cache_.get();
  st->pool = spare_->take();
  for (const auto& [name, v] : inputs) {
    bool known = false;
    for (const auto& in : g.input()) known = known || in.name() == name;
    if (!known) {
      std::string names;
      for (const auto& in : g.input())
        if (!has_initializer(*plan_, in.name()))
          names += (names.empty() ? "'" : ", '") + in.name() + "'";
      throw model_error(model_error::kind::invalid,
                        "the model has no input named '" + name + "' (its inputs: " + names + ")");
    }
  }
  for (const auto& in : g.input()) {
    const auto it = inputs.find(in.name());
    if (it != inputs.end()) {
      st->env[in.name()] = it->second;
    } else if (!has_initializer(*plan_, in.name())) {
      throw model_error(model_error::kind::invalid,
                        "graph input '" + in.name() + "' was not given");
    }
  }
  return session(std::move(st));
}

void executor::advance(session& s, int end_node, const run_hooks& hooks) const {
  struct restore {
    std::size_t threads;
    buffer_pool* pool;
    ~restore() {
      current_threads_slot() = threads;
      current_pool_slot() = pool;
    }
  } restore_slots{current_threads_slot(), current_pool_slot()};
  current_threads_slot() = threads_;
  current_pool_slot() = &s.s_->pool;
  const int end = std::min(end_node, m_.proto.graph().node_size());
  if (end <= s.s_->next) return;
  const profile_clock::time_point start =
      hooks.profile ? profile_clock::now() : profile_clock::time_point();
  s.s_->found.clear();
  run_nodes(m_, *cache_, *plan_, s.s_->env, nullptr, &hooks, s.s_->next, end);
  s.s_->next = end;
  // A session paused mid-graph (sequential calibration quantizes meanwhile, and counts only
  // the live values, value_bytes()) holds no spare buffers.
  if (end < m_.proto.graph().node_size()) s.s_->pool.clear();
  if (hooks.profile) add_time(hooks.profile->total, start);
}

std::map<std::string, value> executor::finish(session& s, const run_hooks& hooks) const {
  const auto& g = m_.proto.graph();
  advance(s, g.node_size(), hooks);
  std::map<std::string, value> outputs;
  for (const auto& o : g.output()) {
    const auto e = s.s_->env.find(o.name());
    if (e != s.s_->env.end()) {
      outputs[o.name()] = std::move(e->second);
      continue;
    }
    const value* i = plan_initializer(*plan_, *cache_, o.name(), s.s_->found);
    if (!i)
      throw model_error(model_error::kind::invalid,
                        "graph output '" + o.name() + "' is never computed");
    outputs[o.name()] = *i;
  }
  for (auto& [name, v] : s.s_->env) s.s_->pool.recycle(v.f);
  s.s_->env.clear();
  s.s_->found.clear();
  spare_->give(s.s_->pool);
  return outputs;
}

std::map<std::string, value> executor::run(const std::map<std::string, value>& inputs) const {
  return run(inputs, run_hooks{});
}

std::map<std::string, value> executor::run(const std::map<std::string, value>& inputs,
                                           const run_hooks& hooks) const {
  session s = start(inputs);
  return finish(s, hooks);
}

}  // namespace onnx
}  // namespace int4q

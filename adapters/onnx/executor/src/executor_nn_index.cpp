// Index operators: GatherElements, ScatterElements (and the older Scatter), ScatterND, ArgMax,
// ArgMin, TopK, NonZero, OneHot, CumSum, Einsum.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "executor_nn.hpp"

namespace int4q {
namespace onnx {
namespace exec {

namespace {

/// Runs `f(member)` with the data vector member of v's type (&value::f or &value::i).
template <class F>
void with_data(const value& v, F f) {
  if (v.type == value_type::float32) {
    f(&value::f);
  } else {
    f(&value::i);
  }
}

/// The flat position in `data` of each element of `indices` (same rank) for
/// GatherElements/ScatterElements: the element's own coordinates, but indices[...] on `axis`.
std::vector<std::size_t> element_positions(const node_context& c, const value& data,
                                           const value& indices, std::size_t axis) {
  const std::size_t rank = data.shape.size();
  if (indices.shape.size() != rank)
    c.fail("indices " + dims_string(indices.shape) + " and data " + dims_string(data.shape) +
           " differ in rank");
  for (std::size_t k = 0; k < rank; ++k)
    if (k != axis && indices.shape[k] > data.shape[k])
      c.fail("indices " + dims_string(indices.shape) + " exceed data " + dims_string(data.shape) +
             " off the axis");
  const shape_t ids = int_list(c, indices, "indices");
  const shape_t st = strides_of(data.shape);
  const std::int64_t dim = data.shape[axis];
  std::vector<std::size_t> pos(ids.size());
  shape_t j(rank, 0);
  std::int64_t base = 0;  // sum over k != axis of j[k] * st[k]
  for (std::size_t e = 0; e < ids.size(); ++e) {
    const std::int64_t ix = checked_index(c, ids[e], dim);
    pos[e] = static_cast<std::size_t>(base + ix * st[axis]);
    for (std::size_t k = rank; k-- > 0;) {
      if (++j[k] < indices.shape[k]) {
        if (k != axis) base += st[k];
        break;
      }
      if (k != axis) base -= (indices.shape[k] - 1) * st[k];
      j[k] = 0;
    }
  }
  return pos;
}

void op_gather_elements(const node_context& c, const model&, const inputs_t& in,
                        std::vector<value>& out) {
  const value& data = need(c, in, 0);
  const value& indices = need(c, in, 1);
  const auto axis =
      static_cast<std::size_t>(normalize_axis(c, attr_int(c.node, "axis", 0), data.shape.size()));
  out.push_back(take(data, indices.shape, element_positions(c, data, indices, axis)));
}

enum class reduction { none, add, mul, max, min };

reduction reduction_of(const node_context& c) {
  const AttributeProto* a = find_attr(c.node, "reduction");
  const std::string r = a ? a->s() : "none";
  if (r == "none") return reduction::none;
  if (r == "add") return reduction::add;
  if (r == "mul") return reduction::mul;
  if (r == "max") return reduction::max;
  if (r == "min") return reduction::min;
  c.fail("reduction '" + r + "' is not one of none, add, mul, max, min");
}

template <class T>
void combine(T& dst, T src, reduction r) {
  switch (r) {
    case reduction::none: dst = src; break;
    case reduction::add: dst += src; break;
    case reduction::mul: dst *= src; break;
    case reduction::max: dst = std::max(dst, src); break;
    case reduction::min: dst = std::min(dst, src); break;
  }
}

/// ScatterElements (and Scatter): out = data; out[position of indices element e] (op)=
/// updates[e].
void op_scatter_elements(const node_context& c, const model&, const inputs_t& in,
                         std::vector<value>& out) {
  const value& data = need(c, in, 0);
  const value& indices = need(c, in, 1);
  const value& updates = need(c, in, 2);
  if (updates.type != data.type || updates.shape != indices.shape)
    c.fail("updates " + dims_string(updates.shape) + " must match indices " +
           dims_string(indices.shape) + " in shape and data in type");
  const auto axis =
      static_cast<std::size_t>(normalize_axis(c, attr_int(c.node, "axis", 0), data.shape.size()));
  const std::vector<std::size_t> pos = element_positions(c, data, indices, axis);
  const reduction r = reduction_of(c);
  value y = data;
  with_data(y, [&](auto member) {
    auto& dst = y.*member;
    const auto& src = updates.*member;
    for (std::size_t e = 0; e < pos.size(); ++e) combine(dst[pos[e]], src[e], r);
  });
  out.push_back(std::move(y));
}

/// ScatterND: out = data; for each index tuple t (indices [..., k]) the slice data[t] (op)=
/// updates[...] (updates shape indices.shape[:-1] + data.shape[k:]).
void op_scatter_nd(const node_context& c, const model&, const inputs_t& in,
                   std::vector<value>& out) {
  const value& data = need(c, in, 0);
  const value& indices = need(c, in, 1);
  const value& updates = need(c, in, 2);
  const shape_t ids = int_list(c, indices, "indices");
  if (indices.shape.empty()) c.fail("indices must have rank >= 1");
  const auto k = static_cast<std::size_t>(indices.shape.back());
  const std::size_t rank = data.shape.size();
  if (k > rank)
    c.fail("index tuples of " + std::to_string(k) + " exceed data rank " + std::to_string(rank));
  shape_t want(indices.shape.begin(), indices.shape.end() - 1);
  want.insert(want.end(), data.shape.begin() + static_cast<std::ptrdiff_t>(k), data.shape.end());
  if (updates.shape != want || updates.type != data.type)
    c.fail("updates " + dims_string(updates.shape) + " must have shape " + dims_string(want) +
           " and data's type");
  const shape_t st = strides_of(data.shape);
  const std::size_t slice = span_of(data.shape, k, rank), tuples = k ? ids.size() / k : 0;
  const reduction r = reduction_of(c);
  value y = data;
  with_data(y, [&](auto member) {
    auto& dst = y.*member;
    const auto& src = updates.*member;
    for (std::size_t t = 0; t < tuples; ++t) {
      std::int64_t off = 0;
      for (std::size_t q = 0; q < k; ++q) {
        off += checked_index(c, ids[t * k + q], data.shape[q]) * st[q];
      }
      for (std::size_t e = 0; e < slice; ++e)
        combine(dst[static_cast<std::size_t>(off) + e], src[t * slice + e], r);
    }
  });
  out.push_back(std::move(y));
}

/// ArgMax / ArgMin along `axis`: the first (or with select_last_index the last) extreme.
void arg_extreme(const node_context& c, const inputs_t& in, std::vector<value>& out, bool max) {
  const value& x = need(c, in, 0);
  const std::size_t rank = x.shape.size();
  const auto axis = static_cast<std::size_t>(normalize_axis(c, attr_int(c.node, "axis", 0), rank));
  const bool keep = attr_int(c.node, "keepdims", 1) != 0;
  const bool last = attr_int(c.node, "select_last_index", 0) != 0;
  const std::size_t outer = span_of(x.shape, 0, axis),
                    len = static_cast<std::size_t>(x.shape[axis]),
                    inner = span_of(x.shape, axis + 1, rank);
  if (len == 0) c.fail("the axis is empty");
  value r;
  r.shape = x.shape;
  if (keep) {
    r.shape[axis] = 1;
  } else {
    r.shape.erase(r.shape.begin() + static_cast<std::ptrdiff_t>(axis));
  }
  r.type = value_type::int64;
  r.i.resize(outer * inner);
  with_data(x, [&](auto member) {
    const auto& v = x.*member;
    for (std::size_t p = 0; p < outer; ++p) {
      for (std::size_t q = 0; q < inner; ++q) {
        const auto* a = v.data() + p * len * inner + q;
        std::size_t best = 0;
        for (std::size_t k = 1; k < len; ++k) {
          const auto cand = a[k * inner], cur = a[best * inner];
          const bool better =
              max ? (last ? cand >= cur : cand > cur) : (last ? cand <= cur : cand < cur);
          if (better) best = k;
        }
        r.i[p * inner + q] = static_cast<std::int64_t>(best);
      }
    }
  });
  out.push_back(std::move(r));
}

/// TopK: the k largest (or smallest) along `axis`, sorted, ties by the lower index; outputs
/// values and int64 indices.
void op_top_k(const node_context& c, const model& m, const inputs_t& in, std::vector<value>& out) {
  const value& x = need(c, in, 0);
  const std::size_t rank = x.shape.size();
  const auto axis = static_cast<std::size_t>(normalize_axis(c, attr_int(c.node, "axis", -1), rank));
  const std::int64_t k = default_opset(m) >= 10
                             ? static_cast<std::int64_t>(scalar_of(c, need(c, in, 1), "K"))
                             : attr_int(c.node, "k", 0);
  const bool largest = attr_int(c.node, "largest", 1) != 0;
  const std::size_t outer = span_of(x.shape, 0, axis),
                    len = static_cast<std::size_t>(x.shape[axis]),
                    inner = span_of(x.shape, axis + 1, rank);
  if (k < 0 || static_cast<std::size_t>(k) > len)
    c.fail("K = " + std::to_string(k) + " is not in [0, " + std::to_string(len) + "]");
  const auto K = static_cast<std::size_t>(k);
  value values;
  values.type = x.type;
  values.shape = x.shape;
  values.shape[axis] = k;
  value indices = value::ints(values.shape, std::vector<std::int64_t>(outer * K * inner));
  std::vector<std::size_t> order(len);
  with_data(x, [&](auto member) {
    const auto& v = x.*member;
    auto& dst = values.*member;
    dst.resize(outer * K * inner);
    for (std::size_t p = 0; p < outer; ++p) {
      for (std::size_t q = 0; q < inner; ++q) {
        const auto* a = v.data() + p * len * inner + q;
        std::iota(order.begin(), order.end(), std::size_t(0));
        std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(K),
                          order.end(), [&](std::size_t i, std::size_t j) {
                            const auto ai = a[i * inner], aj = a[j * inner];
                            if (ai != aj) return largest ? ai > aj : ai < aj;
                            return i < j;
                          });
        for (std::size_t t = 0; t < K; ++t) {
          const std::size_t o = (p * K + t) * inner + q;
          dst[o] = a[order[t] * inner];
          indices.i[o] = static_cast<std::int64_t>(order[t]);
        }
      }
    }
  });
  out.push_back(std::move(values));
  out.push_back(std::move(indices));
}

/// NonZero: [rank, count] int64 coordinates of the nonzero elements, row-major order.
void op_non_zero(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& x = need(c, in, 0);
  const std::size_t rank = x.shape.size(), n = x.size();
  std::vector<std::size_t> hits;
  for (std::size_t e = 0; e < n; ++e)
    if (x.type == value_type::float32 ? x.f[e] != 0 : x.i[e] != 0) hits.push_back(e);
  const shape_t st = strides_of(x.shape);
  value r = value::ints({static_cast<std::int64_t>(rank), static_cast<std::int64_t>(hits.size())},
                        std::vector<std::int64_t>(rank * hits.size()));
  for (std::size_t h = 0; h < hits.size(); ++h)
    for (std::size_t k = 0; k < rank; ++k)
      r.i[k * hits.size() + h] = (static_cast<std::int64_t>(hits[h]) / st[k]) % x.shape[k];
  out.push_back(std::move(r));
}

/// OneHot: out[..., j, ...] = values[1] where j = indices[...] (negative from the end), else
/// values[0]; the depth axis inserted at `axis`.
void op_one_hot(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& indices = need(c, in, 0);
  const auto depth = static_cast<std::int64_t>(scalar_of(c, need(c, in, 1), "depth"));
  const value& vals = need(c, in, 2);
  if (vals.size() != 2) c.fail("values must hold [off_value, on_value]");
  if (depth < 1) c.fail("depth " + std::to_string(depth) + " must be positive");
  const std::size_t rank = indices.shape.size() + 1;
  const auto axis = static_cast<std::size_t>(normalize_axis(c, attr_int(c.node, "axis", -1), rank));
  value r;
  r.type = vals.type;
  r.shape = indices.shape;
  r.shape.insert(r.shape.begin() + static_cast<std::ptrdiff_t>(axis), depth);
  const std::size_t outer = span_of(indices.shape, 0, axis),
                    inner = span_of(indices.shape, axis, indices.shape.size());
  const auto D = static_cast<std::size_t>(depth);
  with_data(vals, [&](auto member) {
    const auto& v = vals.*member;
    auto& dst = r.*member;
    dst.assign(outer * D * inner, v[0]);
    for (std::size_t p = 0; p < outer; ++p) {
      for (std::size_t q = 0; q < inner; ++q) {
        const std::size_t e = p * inner + q;
        double ix =
            indices.type == value_type::float32 ? double(indices.f[e]) : double(indices.i[e]);
        if (ix < 0) ix += double(depth);
        if (ix < 0 || ix >= double(depth)) continue;
        dst[(p * D + static_cast<std::size_t>(ix)) * inner + q] = v[1];
      }
    }
  });
  out.push_back(std::move(r));
}

/// CumSum along the axis input: y[j] = sum of x[i] for i <= j (i < j exclusive; from the end
/// with reverse).
void op_cum_sum(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& x = need(c, in, 0);
  const std::size_t rank = x.shape.size();
  const auto axis = static_cast<std::size_t>(
      normalize_axis(c, static_cast<std::int64_t>(scalar_of(c, need(c, in, 1), "axis")), rank));
  const bool exclusive = attr_int(c.node, "exclusive", 0) != 0;
  const bool reverse = attr_int(c.node, "reverse", 0) != 0;
  const std::size_t outer = span_of(x.shape, 0, axis),
                    len = static_cast<std::size_t>(x.shape[axis]),
                    inner = span_of(x.shape, axis + 1, rank);
  value y = x;
  with_data(y, [&](auto member) {
    const auto& src = x.*member;
    auto& dst = y.*member;
    using T = typename std::decay_t<decltype(dst)>::value_type;
    for (std::size_t p = 0; p < outer; ++p) {
      for (std::size_t q = 0; q < inner; ++q) {
        T acc = 0;
        for (std::size_t t = 0; t < len; ++t) {
          const std::size_t k = reverse ? len - 1 - t : t;
          const std::size_t e = (p * len + k) * inner + q;
          if (exclusive) {
            dst[e] = acc;
            acc += src[e];
          } else {
            acc += src[e];
            dst[e] = acc;
          }
        }
      }
    }
  });
  out.push_back(std::move(y));
}

/// An Einsum equation parsed against its operands. Labels are ints: a letter's code, or 1000 + k
/// for the k-th broadcast dimension (from the right).
struct einsum_labels {
  std::string eq;                          ///< the equation without spaces, for messages
  std::vector<std::vector<int>> operands;  ///< per operand, per dimension
  std::vector<int> output;                 ///< per output dimension
};

/// Labels of each operand's term in `lhs` ("ij,jk"), checked against its rank ("..." takes the
/// dimensions the letters leave); sets `ell_rank` to the most dimensions a "..." takes.
std::vector<std::vector<int>> einsum_operand_labels(const node_context& c, const inputs_t& in,
                                                    const std::string& eq, const std::string& lhs,
                                                    std::size_t& ell_rank) {
  std::vector<std::string> terms;
  for (std::size_t p = 0;;) {
    const std::size_t comma = lhs.find(',', p);
    terms.push_back(lhs.substr(p, comma == std::string::npos ? std::string::npos : comma - p));
    if (comma == std::string::npos) break;
    p = comma + 1;
  }
  if (terms.size() != in.size())
    c.fail("equation '" + eq + "' names " + std::to_string(terms.size()) +
           " operands, the node has " + std::to_string(in.size()));
  std::vector<std::vector<int>> labels(terms.size());
  ell_rank = 0;
  for (std::size_t t = 0; t < terms.size(); ++t) {
    const value& v = need(c, in, t);
    const std::string& s = terms[t];
    const std::size_t dots = s.find("...");
    const std::size_t letters = s.size() - (dots == std::string::npos ? 0 : 3);
    if (letters > v.shape.size() || (dots == std::string::npos && letters != v.shape.size()))
      c.fail("term '" + s + "' does not match operand " + dims_string(v.shape));
    const std::size_t ell = v.shape.size() - letters;
    ell_rank = std::max(ell_rank, ell);
    for (std::size_t p = 0; p < s.size(); ++p) {
      if (p == dots) {
        for (std::size_t k = ell; k-- > 0;) labels[t].push_back(1000 + static_cast<int>(k));
        p += 2;
      } else if (std::isalpha(static_cast<unsigned char>(s[p]))) {
        labels[t].push_back(s[p]);
      } else {
        c.fail("equation '" + eq + "' has an unexpected character '" + std::string(1, s[p]) + "'");
      }
    }
  }
  return labels;
}

/// The output labels: the explicit part after "->" (`rhs`, when `explicit_output`), else the
/// broadcast dimensions then the letters used once, in alphabetical order.
std::vector<int> einsum_output_labels(bool explicit_output, const std::string& rhs,
                                      const std::vector<std::vector<int>>& operands,
                                      std::size_t ell_rank) {
  std::vector<int> out_labels;
  if (explicit_output) {
    for (std::size_t p = 0; p < rhs.size(); ++p) {
      if (rhs.compare(p, 3, "...") == 0) {
        for (std::size_t k = ell_rank; k-- > 0;) out_labels.push_back(1000 + static_cast<int>(k));
        p += 2;
      } else {
        out_labels.push_back(rhs[p]);
      }
    }
    return out_labels;
  }
  std::map<int, int> count;
  for (const auto& l : operands)
    for (const int x : l) ++count[x];
  for (std::size_t k = ell_rank; k-- > 0;) out_labels.push_back(1000 + static_cast<int>(k));
  for (const auto& [x, n] : count)
    if (x < 1000 && n == 1) out_labels.push_back(x);
  return out_labels;
}

/// The node's equation attribute, parsed against its operands.
einsum_labels parse_einsum(const node_context& c, const inputs_t& in) {
  const AttributeProto* eq_attr = find_attr(c.node, "equation");
  if (!eq_attr) c.fail("equation is missing");
  einsum_labels e;
  for (const char ch : eq_attr->s())
    if (ch != ' ') e.eq += ch;
  const std::size_t arrow = e.eq.find("->");
  std::size_t ell_rank = 0;
  e.operands = einsum_operand_labels(c, in, e.eq, e.eq.substr(0, arrow), ell_rank);
  e.output = einsum_output_labels(arrow != std::string::npos,
                                  arrow != std::string::npos ? e.eq.substr(arrow + 2) : "",
                                  e.operands, ell_rank);
  return e;
}

/// The size of each label (broadcast dimensions of size 1 stretch).
std::map<int, std::int64_t> einsum_label_sizes(const node_context& c, const inputs_t& in,
                                               const einsum_labels& e) {
  std::map<int, std::int64_t> size;
  for (std::size_t t = 0; t < e.operands.size(); ++t) {
    for (std::size_t d = 0; d < e.operands[t].size(); ++d) {
      const std::int64_t n = in[t]->shape[d];
      auto it = size.find(e.operands[t][d]);
      if (it == size.end() || it->second == 1) {
        size[e.operands[t][d]] = n;
      } else if (n != 1 && n != it->second) {
        c.fail("label sizes differ in equation '" + e.eq + "'");
      }
    }
  }
  for (const int x : e.output)
    if (!size.count(x)) c.fail("output label of equation '" + e.eq + "' is not in any input");
  return size;
}

/// out[output labels] = sum over the other labels of the product of the operands, in double;
/// float32 when any operand is, else int64.
value einsum_contract(const inputs_t& in, const einsum_labels& e,
                      std::map<int, std::int64_t>& size) {
  // All labels: the output's, then the summed ones.
  std::vector<int> all = e.output;
  for (const auto& [x, n] : size)
    if (std::find(all.begin(), all.end(), x) == all.end()) all.push_back(x);
  // Per operand, the stride of each label of `all` (summed for repeated labels; 0 broadcast).
  const std::size_t L = all.size();
  std::vector<shape_t> strides(in.size(), shape_t(L, 0));
  bool any_float = false;
  for (std::size_t t = 0; t < e.operands.size(); ++t) {
    const shape_t st = strides_of(in[t]->shape);
    any_float = any_float || in[t]->type == value_type::float32;
    for (std::size_t d = 0; d < e.operands[t].size(); ++d) {
      if (in[t]->shape[d] == 1) continue;
      const auto q = static_cast<std::size_t>(std::find(all.begin(), all.end(), e.operands[t][d]) -
                                              all.begin());
      strides[t][q] += st[d];
    }
  }
  shape_t dims(L), out_shape;
  for (std::size_t q = 0; q < L; ++q) dims[q] = size[all[q]];
  for (const int x : e.output) out_shape.push_back(size[x]);
  const std::size_t n_out = numel(out_shape), n_all = numel(dims);
  std::vector<double> acc(n_out, 0.0);
  const std::size_t per_out = n_out ? n_all / n_out : 0;
  shape_t j(L, 0);
  std::vector<std::int64_t> off(in.size(), 0);
  for (std::size_t k = 0; k < n_all; ++k) {
    double prod = 1;
    for (std::size_t t = 0; t < in.size(); ++t) {
      const auto p = static_cast<std::size_t>(off[t]);
      prod *= in[t]->type == value_type::float32 ? double(in[t]->f[p]) : double(in[t]->i[p]);
    }
    acc[k / per_out] += prod;
    for (std::size_t q = L; q-- > 0;) {
      if (++j[q] < dims[q]) {
        for (std::size_t t = 0; t < in.size(); ++t) off[t] += strides[t][q];
        break;
      }
      for (std::size_t t = 0; t < in.size(); ++t) off[t] -= (dims[q] - 1) * strides[t][q];
      j[q] = 0;
    }
  }
  value r;
  r.shape = out_shape;
  if (any_float) {
    r.f.assign(acc.begin(), acc.end());
  } else {
    r.type = value_type::int64;
    r.i.resize(acc.size());
    for (std::size_t k = 0; k < acc.size(); ++k) r.i[k] = static_cast<std::int64_t>(acc[k]);
  }
  return r;
}

/// Einsum, any number of operands: labels (letters; "..." for broadcast dimensions), repeated
/// labels in one operand take diagonals, labels absent from the output are summed. The output is
/// the explicit "->" part, or the ellipsis then the labels used once, in alphabetical order.
void op_einsum(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const einsum_labels e = parse_einsum(c, in);
  std::map<int, std::int64_t> size = einsum_label_sizes(c, in, e);
  out.push_back(einsum_contract(in, e, size));
}

}  // namespace

void add_nn_index_ops(std::unordered_map<std::string, op_fn>& ops) {
  ops["GatherElements"] = op_gather_elements;
  ops["ScatterElements"] = op_scatter_elements;
  ops["Scatter"] = op_scatter_elements;
  ops["ScatterND"] = op_scatter_nd;
  ops["ArgMax"] = [](const node_context& c, const model&, const inputs_t& in,
                     std::vector<value>& out) { arg_extreme(c, in, out, true); };
  ops["ArgMin"] = [](const node_context& c, const model&, const inputs_t& in,
                     std::vector<value>& out) { arg_extreme(c, in, out, false); };
  ops["TopK"] = op_top_k;
  ops["NonZero"] = op_non_zero;
  ops["OneHot"] = op_one_hot;
  ops["CumSum"] = op_cum_sum;
  ops["Einsum"] = op_einsum;
}

}  // namespace exec
}  // namespace onnx
}  // namespace int4q

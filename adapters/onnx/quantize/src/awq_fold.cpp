// AWQ folding: where 1/s goes (plan_awq_fold) and the graph edit (apply_awq_folds).
#include <int4q/onnx/awq_fold.hpp>

#include <cmath>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "awq_fold_detail.hpp"
#include "writers.hpp"

namespace int4q {
namespace onnx {

using ::onnx::GraphProto;
using ::onnx::NodeProto;
using ::onnx::TensorProto;

const char* to_string(awq_fold_kind k) noexcept {
  switch (k) {
    case awq_fold_kind::layer_norm: return "layer_norm";
    case awq_fold_kind::simplified_layer_norm: return "simplified_layer_norm";
    case awq_fold_kind::mul_constant: return "mul_constant";
    case awq_fold_kind::matmul: return "matmul";
    case awq_fold_kind::gemm: return "gemm";
    case awq_fold_kind::inserted_mul: return "inserted_mul";
  }
  return "?";
}

std::string awq_fold_plan::description() const {
  if (kind == awq_fold_kind::inserted_mul)
    return "Mul inserted before the consumers of '" + activation + "' (" + why_not_producer + ")";
  return std::string(to_string(kind)) + " '" + producer_name + "'";
}

namespace {

std::string node_label(const NodeProto& n, int index) {
  return n.name().empty() ? n.op_type() + "#" + std::to_string(index) : n.name();
}

bool default_domain(const NodeProto& n) { return n.domain().empty() || n.domain() == "ai.onnx"; }

/// The constant is a vector along the last axis: K elements, every other dim 1.
bool is_channel_vector(const TensorProto& t, std::size_t K) {
  if (t.dims_size() == 0 || static_cast<std::size_t>(t.dims(t.dims_size() - 1)) != K) return false;
  for (int i = 0; i + 1 < t.dims_size(); ++i)
    if (t.dims(i) != 1) return false;
  return true;
}

bool is_float(const TensorProto& t) {
  const elem_type e = elem_type_of(t.data_type());
  return e != elem_type::other;
}

/// Why `name` cannot be changed for the fold ("" when it can): a constant of the main graph,
/// of a float type, read once (by the producer), not frozen.
std::string changeable(const GraphProto& g, const std::map<std::string, int>& refs,
                       const std::string& name, const std::set<std::string>& frozen) {
  const TensorProto* t = detail::constant_tensor(g, name);
  if (!t) return "'" + name + "' is not a constant";
  if (!is_float(*t)) return "'" + name + "' is not a float tensor";
  if (frozen.count(name)) return "'" + name + "' is a weight being quantized";
  const auto it = refs.find(name);
  if (it != refs.end() && it->second > 1) return "'" + name + "' is also read elsewhere";
  return "";
}

/// Tries the producer folds; returns "" and fills the plan on success, else the reason.
std::string plan_producer(const model& m, awq_fold_plan& p, const std::set<std::string>& frozen) {
  const GraphProto& g = m.proto.graph();
  const std::size_t K = p.scales.size();
  const auto refs = detail::count_references(g);
  const auto it = refs.find(p.activation);
  int readers = it == refs.end() ? 0 : it->second;
  // Shape and Size read only the shape, which a fold keeps (torch exports read the normalized
  // tensor's shape for the attention reshapes): they see no change.
  for (const NodeProto& r : g.node())
    if ((r.op_type() == "Shape" || r.op_type() == "Size") && default_domain(r) &&
        r.input_size() > 0 && r.input(0) == p.activation)
      --readers;
  if (readers != static_cast<int>(p.consumers.size()))
    return "'" + p.activation + "' has readers other than the scaled weights' nodes";
  int producer = -1;
  for (int i = 0; i < g.node_size() && producer < 0; ++i)
    for (const auto& o : g.node(i).output())
      if (o == p.activation) producer = i;
  if (producer < 0) return "'" + p.activation + "' is not computed by a node of the main graph";
  const NodeProto& n = g.node(producer);
  p.producer = producer;
  p.producer_name = node_label(n, producer);
  const std::string label = n.op_type() + " '" + p.producer_name + "'";
  if (n.output(0) != p.activation) return label + " computes it as a secondary output";
  const std::string& op = n.op_type();
  auto vector_input = [&](int i, bool optional) -> std::string {
    if (i >= n.input_size() || n.input(i).empty()) return optional ? "" : label + " lacks input";
    const std::string why = changeable(g, refs, n.input(i), frozen);
    if (!why.empty()) return label + ": " + why;
    if (!is_channel_vector(*detail::constant_tensor(g, n.input(i)), K))
      return label + ": '" + n.input(i) + "' is not a [" + std::to_string(K) + "] vector";
    p.divided.push_back(n.input(i));
    return "";
  };
  // The com.microsoft Skip forms normalize x + skip (+ bias) and scale by gamma (input 2; beta
  // input 3): dividing gamma and beta by s divides output 0 only (output 3, the sum, keeps).
  const bool skip = (op == "SkipLayerNormalization" || op == "SkipSimplifiedLayerNormalization") &&
                    n.domain() == "com.microsoft";
  if ((op == "LayerNormalization" && default_domain(n)) ||
      (op == "SimplifiedLayerNormalization" &&
       (default_domain(n) || n.domain() == "com.microsoft")) ||
      skip) {
    if (detail::attr_int(n, "axis", -1) != -1) return label + " normalizes over axis != -1";
    const bool ln = op == "LayerNormalization" || op == "SkipLayerNormalization";
    const int gamma = skip ? 2 : 1;
    std::string why = vector_input(gamma, false);
    if (why.empty() && ln) why = vector_input(gamma + 1, true);
    if (!why.empty()) return why;
    p.kind = ln ? awq_fold_kind::layer_norm : awq_fold_kind::simplified_layer_norm;
    return "";
  }
  if (op == "Mul" && default_domain(n) && n.input_size() == 2) {
    for (int i = 0; i < 2; ++i) {
      if (!detail::constant_tensor(g, n.input(i))) continue;
      const std::string why = vector_input(i, false);
      if (!why.empty()) return why;
      p.kind = awq_fold_kind::mul_constant;
      return "";
    }
    return label + " has no constant operand";
  }
  if ((op == "MatMul" || op == "Gemm") && default_domain(n) && n.input_size() >= 2) {
    const std::string& b = n.input(1);
    const std::string why = changeable(g, refs, b, frozen);
    if (!why.empty()) return label + ": " + why;
    const TensorProto& t = *detail::constant_tensor(g, b);
    const bool trans = op == "Gemm" && detail::attr_int(n, "transB", 0) != 0;
    if (t.dims_size() != 2 || static_cast<std::size_t>(t.dims(trans ? 0 : 1)) != K)
      return label + ": weight '" + b + "' is not 2-D with " + std::to_string(K) + " outputs";
    p.weight = b;
    p.weight_trans = trans;
    p.kind = op == "Gemm" ? awq_fold_kind::gemm : awq_fold_kind::matmul;
    if (op == "Gemm" && n.input_size() >= 3 && !n.input(2).empty()) {
      const std::string bias = vector_input(2, false);
      if (!bias.empty()) return bias + " (Gemm bias)";
    }
    return "";
  }
  return label +
         " is not a LayerNormalization, SimplifiedLayerNormalization, Mul by a constant, "
         "MatMul or Gemm with a constant weight";
}

TensorProto* mutable_constant(GraphProto& g, const std::string& name) {
  return const_cast<TensorProto*>(detail::constant_tensor(g, name));
}

/// Replaces the constant's values: v[i] / s[k(i)], k the index along `axis` (of 2 for a
/// matrix, or the last for a channel vector).
void divide(const model& m, TensorProto& t, const std::vector<double>& s, bool rows) {
  std::vector<float> v = detail::read_floats(m, t);
  const std::size_t K = s.size();
  const std::size_t cols = rows ? v.size() / K : K;
  for (std::size_t i = 0; i < v.size(); ++i) {
    const std::size_t k = rows ? i / cols : i % K;
    v[i] = static_cast<float>(static_cast<double>(v[i]) / s[k]);
  }
  const std::vector<std::int64_t> dims(t.dims().begin(), t.dims().end());
  TensorProto out = detail::float_tensor(t.name(), elem_type_of(t.data_type()), dims, v);
  t.Swap(&out);
}

}  // namespace

awq_fold_plan plan_awq_fold(const model& m, const std::string& activation,
                            const std::vector<int>& consumers, const std::vector<double>& scales,
                            elem_type type, const std::set<std::string>& frozen) {
  const GraphProto& g = m.proto.graph();
  if (scales.empty())
    throw model_error(model_error::kind::invalid,
                      "AWQ fold of '" + activation + "': no scales (K = 0)");
  for (std::size_t k = 0; k < scales.size(); ++k) {
    if (!(scales[k] > 0) || !std::isfinite(scales[k]))
      throw model_error(model_error::kind::invalid,
                        "AWQ fold of '" + activation + "': scale[" + std::to_string(k) +
                            "] = " + std::to_string(scales[k]) + " must be finite and > 0");
  }
  if (consumers.empty())
    throw model_error(model_error::kind::invalid,
                      "AWQ fold of '" + activation + "': no consumer nodes given");
  for (const int c : consumers) {
    if (c < 0 || c >= g.node_size() || g.node(c).input_size() == 0 ||
        g.node(c).input(0) != activation) {
      throw model_error(model_error::kind::invalid, "AWQ fold: main-graph node #" +
                                                        std::to_string(c) + " does not read '" +
                                                        activation + "' as its first input");
    }
  }
  awq_fold_plan p;
  p.activation = activation;
  p.consumers = consumers;
  p.scales = scales;
  p.type = type;
  const std::string why = plan_producer(m, p, frozen);
  if (!why.empty()) {
    p.kind = awq_fold_kind::inserted_mul;
    p.producer = -1;
    p.producer_name.clear();
    p.divided.clear();
    p.weight.clear();
    p.why_not_producer = why;
  }
  return p;
}

namespace detail {

std::vector<NodeProto> fold_awq_constants(model& m, const std::vector<awq_fold_plan>& plans,
                                          name_set& names) {
  GraphProto& g = *m.proto.mutable_graph();
  std::vector<NodeProto> muls;
  for (const awq_fold_plan& p : plans) {
    if (p.kind != awq_fold_kind::inserted_mul) {
      for (const std::string& c : p.divided) divide(m, *mutable_constant(g, c), p.scales, false);
      if (!p.weight.empty()) divide(m, *mutable_constant(g, p.weight), p.scales, p.weight_trans);
      continue;
    }
    const std::string inv = names.unique(p.activation + "_awq_inv_scale");
    std::vector<float> v(p.scales.size());
    for (std::size_t k = 0; k < v.size(); ++k) v[k] = static_cast<float>(1.0 / p.scales[k]);
    TensorProto t = float_tensor(inv, p.type, {static_cast<std::int64_t>(v.size())}, v);
    g.add_initializer()->Swap(&t);
    const std::string scaled = names.unique(p.activation + "_awq");
    NodeProto mul;
    mul.set_op_type("Mul");
    mul.set_name(names.unique(p.activation + "_awq_mul"));
    mul.add_input(p.activation);
    mul.add_input(inv);
    mul.add_output(scaled);
    muls.push_back(std::move(mul));
    for (const int c : p.consumers) g.mutable_node(c)->set_input(0, scaled);
  }
  return muls;
}

void insert_awq_muls(model& m, std::vector<NodeProto>& muls) {
  GraphProto& g = *m.proto.mutable_graph();
  for (NodeProto& mul : muls) {
    const std::string& out = mul.output(0);
    int at = g.node_size();
    for (int i = 0; i < g.node_size() && at == g.node_size(); ++i)
      for (const auto& in : g.node(i).input())
        if (in == out) at = i;
    g.add_node()->Swap(&mul);
    for (int i = g.node_size() - 1; i > at; --i) g.mutable_node()->SwapElements(i, i - 1);
  }
  muls.clear();
}

}  // namespace detail

void apply_awq_folds(model& m, const std::vector<awq_fold_plan>& plans) {
  detail::name_set names(m.proto);
  std::vector<NodeProto> muls = detail::fold_awq_constants(m, plans, names);
  detail::insert_awq_muls(m, muls);
}

}  // namespace onnx
}  // namespace int4q

// upgrade_opset_to_21: the default-domain node forms that changed between a model's opset and
// 21, converted (attributes that became inputs, renamed or re-specified operators) or refused.
// The table is `rules` below; docs/onnx.md lists it for users.
#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <int4q/onnx/opset.hpp>

#include <int4q/onnx/graph.hpp>

namespace int4q {
namespace onnx {

using ::onnx::AttributeProto;
using ::onnx::GraphProto;
using ::onnx::ModelProto;
using ::onnx::NodeProto;
using ::onnx::TensorProto;

namespace {

constexpr std::int64_t target_opset = 21;
constexpr std::int64_t min_ir_version = 10;

bool is_default_domain(const std::string& d) { return d.empty() || d == "ai.onnx"; }

std::string node_label(const NodeProto& n) {
  return n.op_type() + " '" + (n.name().empty() ? n.output_size() ? n.output(0) : "" : n.name()) +
         "'";
}

// ---- Element types of tensors (for Clip min/max and Pad's constant value) ----------------------

/// Element types known from the graph's declarations, then propagated through the nodes with
/// simple rules; `fallback` (the model's float type) for the rest.
class type_map {
 public:
  explicit type_map(const GraphProto& g) {
    fallback_ = TensorProto::FLOAT;
    for (const auto& t : g.initializer()) {
      if (detail::onnx_type_of(elem_type_of(t.data_type())) != TensorProto::UNDEFINED) {
        fallback_ = t.data_type();
        break;
      }
    }
    add_graph(g);
  }
  int of(const std::string& name) const {
    const auto it = types_.find(name);
    return it == types_.end() ? fallback_ : it->second;
  }

 private:
  void declare(const ::onnx::ValueInfoProto& v) {
    if (v.type().has_tensor_type() && v.type().tensor_type().elem_type() != 0)
      types_[v.name()] = v.type().tensor_type().elem_type();
  }
  void add_graph(const GraphProto& g) {
    for (const auto& v : g.input()) declare(v);
    for (const auto& v : g.output()) declare(v);
    for (const auto& v : g.value_info()) declare(v);
    for (const auto& t : g.initializer()) types_[t.name()] = t.data_type();
    static const std::set<std::string> bool_out = {
        "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not",
        "And",   "Or",      "Xor",  "IsNaN",          "IsInf"};
    static const std::set<std::string> int64_out = {"Shape",  "Size",    "ArgMax",
                                                    "ArgMin", "NonZero", "NonMaxSuppression"};
    for (const auto& n : g.node()) {
      if (n.output_size() == 0 || n.output(0).empty() || types_.count(n.output(0))) continue;
      const std::string& op = n.op_type();
      int t = 0;
      if (op == "Constant") {
        const auto* a = detail::find_attr(n, "value");
        if (a && a->has_t()) t = a->t().data_type();
      } else if (op == "Cast") {
        t = static_cast<int>(detail::attr_int(n, "to", 0));
      } else if (bool_out.count(op)) {
        t = TensorProto::BOOL;
      } else if (int64_out.count(op)) {
        t = TensorProto::INT64;
      } else if (op == "ConstantOfShape") {
        const auto* v = detail::find_attr(n, "value");
        t = v && v->has_t() ? v->t().data_type() : TensorProto::FLOAT;
      } else if (op == "QuantizeLinear" || op == "DynamicQuantizeLinear") {
        t = n.input_size() > 2 && types_.count(n.input(2)) ? types_[n.input(2)]
                                                           : TensorProto::UINT8;
      } else if (op == "MatMulInteger" || op == "ConvInteger") {
        t = TensorProto::INT32;
      } else if (op == "CastLike" || op == "DequantizeLinear" || op == "Where") {
        if (n.input_size() > 1 && types_.count(n.input(1))) t = types_[n.input(1)];
      } else if (is_default_domain(n.domain()) && n.input_size() > 0 && types_.count(n.input(0))) {
        t = types_[n.input(0)];  // most operators keep the type of their first input
      }
      if (t != 0) types_[n.output(0)] = t;
      for (const auto& a : n.attribute()) {
        if (a.has_g()) add_graph(a.g());
        for (const auto& sub : a.graphs()) add_graph(sub);
      }
    }
  }
  std::map<std::string, int> types_;
  int fallback_;
};

/// Declared rank of a tensor, or -1.
int declared_rank(const ModelProto& m, const GraphProto& g, const std::string& name) {
  auto look = [&](const google::protobuf::RepeatedPtrField<::onnx::ValueInfoProto>& vs) {
    for (const auto& v : vs) {
      if (v.name() == name && v.type().has_tensor_type() && v.type().tensor_type().has_shape()) {
        return v.type().tensor_type().shape().dim_size();
      }
    }
    return -1;
  };
  for (const GraphProto* gr : {&g, &m.graph()}) {
    for (const auto* vs : {&gr->input(), &gr->value_info(), &gr->output()}) {
      const int r = look(*vs);
      if (r >= 0) return r;
    }
    for (const auto& t : gr->initializer())
      if (t.name() == name) return t.dims_size();
  }
  return -1;
}

// ---- The conversion context
// -----------------------------------------------------------------------

struct context {
  ModelProto& model;
  GraphProto& graph;  // the graph holding the node (main graph or a subgraph)
  detail::name_set& names;
  const type_map& types;
  std::vector<std::string>& log;
};

std::string base_of(const NodeProto& n) {
  return n.name().empty() ? (n.output_size() ? n.output(0) : n.op_type()) : n.name();
}

std::string add_int64_input(context& c, const NodeProto& n, const std::string& what,
                            const std::vector<std::int64_t>& values) {
  const std::string name = c.names.unique(base_of(n) + "_" + what);
  *c.graph.add_initializer() =
      detail::int64_tensor(name, {static_cast<std::int64_t>(values.size())}, values);
  return name;
}

std::string add_scalar_input(context& c, const NodeProto& n, const std::string& what, int type,
                             float value) {
  const std::string name = c.names.unique(base_of(n) + "_" + what);
  elem_type et = elem_type_of(type);
  if (et == elem_type::other) et = elem_type::float32;
  *c.graph.add_initializer() = detail::float_tensor(name, et, {}, {value});
  return name;
}

std::vector<std::int64_t> ints_of(const NodeProto& n, const std::string& name) {
  const AttributeProto* a = detail::find_attr(n, name);
  if (!a) return {};
  return std::vector<std::int64_t>(a->ints().begin(), a->ints().end());
}

/// Sets input `index` (padding with "" for omitted optional inputs).
void set_input(NodeProto& n, int index, const std::string& name) {
  while (n.input_size() <= index) n.add_input("");
  n.set_input(index, name);
}

/// Moves the INTS attribute `attr` to input `index` (nothing when the attribute is absent).
void ints_attr_to_input(context& c, NodeProto& n, const std::string& attr, int index) {
  if (!detail::find_attr(n, attr)) return;
  const std::string input = add_int64_input(c, n, attr, ints_of(n, attr));
  set_input(n, index, input);
  detail::remove_attr(n, attr);
}

// ---- Rules --------------------------------------------------------------------------------------

/// One incompatible change of an operator: models whose opset is below `since` hold the old
/// form. `refuse` (optional) says why a node cannot be converted; `convert` (optional: then the
/// node is always refused) rewrites it, possibly into several nodes appended to `out`.
struct rule {
  const char* op;
  std::int64_t since;
  const char* change;
  std::string (*refuse)(const NodeProto&, const std::map<std::string, int>& refs);
  void (*convert)(context&, NodeProto&, std::vector<NodeProto>& out);
};

void keep(context&, NodeProto& n, std::vector<NodeProto>& out) { out.push_back(std::move(n)); }

void clip_to_inputs(context& c, NodeProto& n, std::vector<NodeProto>& out) {
  const int type = c.types.of(n.input(0));
  if (const auto* a = detail::find_attr(n, "min")) {
    set_input(n, 1, add_scalar_input(c, n, "min", type, a->f()));
  }
  if (const auto* a = detail::find_attr(n, "max")) {
    set_input(n, 2, add_scalar_input(c, n, "max", type, a->f()));
  }
  detail::remove_attr(n, "min");
  detail::remove_attr(n, "max");
  out.push_back(std::move(n));
}

void axes_to_input(context& c, NodeProto& n, std::vector<NodeProto>& out) {
  ints_attr_to_input(c, n, "axes", 1);
  out.push_back(std::move(n));
}

void split_to_input(context& c, NodeProto& n, std::vector<NodeProto>& out) {
  ints_attr_to_input(c, n, "split", 1);
  out.push_back(std::move(n));
}

void split_num_outputs(context&, NodeProto& n, std::vector<NodeProto>& out) {
  // Split-18 needs `split` or `num_outputs`; an equal split by the number of outputs is what
  // older opsets did without `split`.
  if ((n.input_size() < 2 || n.input(1).empty()) && !detail::find_attr(n, "num_outputs"))
    detail::set_attr_int(n, "num_outputs", n.output_size());
  out.push_back(std::move(n));
}

std::string dropout_refuse(const NodeProto& n, const std::map<std::string, int>& refs) {
  if (n.output_size() > 1 && !n.output(1).empty() && refs.count(n.output(1)))
    return "its mask output changed type in opset 10 and is used";
  return "";
}

void dropout_to_inputs(context& c, NodeProto& n, std::vector<NodeProto>& out) {
  if (const auto* a = detail::find_attr(n, "ratio")) {
    set_input(n, 1, add_scalar_input(c, n, "ratio", TensorProto::FLOAT, a->f()));
  }
  detail::remove_attr(n, "ratio");
  detail::remove_attr(n, "is_test");
  out.push_back(std::move(n));
}

void pad_to_inputs(context& c, NodeProto& n, std::vector<NodeProto>& out) {
  const char* pads_attr = detail::find_attr(n, "pads") ? "pads" : "paddings";
  set_input(n, 1, add_int64_input(c, n, "pads", ints_of(n, pads_attr)));
  if (const auto* a = detail::find_attr(n, "value")) {
    if (a->f() != 0.0f)
      set_input(n, 2, add_scalar_input(c, n, "value", c.types.of(n.input(0)), a->f()));
  }
  detail::remove_attr(n, "pads");
  detail::remove_attr(n, "paddings");
  detail::remove_attr(n, "value");
  out.push_back(std::move(n));
}

void slice_to_inputs(context& c, NodeProto& n, std::vector<NodeProto>& out) {
  const std::string starts = add_int64_input(c, n, "starts", ints_of(n, "starts"));
  const std::string ends = add_int64_input(c, n, "ends", ints_of(n, "ends"));
  set_input(n, 1, starts);
  set_input(n, 2, ends);
  if (detail::find_attr(n, "axes"))
    set_input(n, 3, add_int64_input(c, n, "axes", ints_of(n, "axes")));
  detail::remove_attr(n, "starts");
  detail::remove_attr(n, "ends");
  detail::remove_attr(n, "axes");
  out.push_back(std::move(n));
}

void topk_to_input(context& c, NodeProto& n, std::vector<NodeProto>& out) {
  set_input(n, 1, add_int64_input(c, n, "k", {detail::attr_int(n, "k", 1)}));
  detail::remove_attr(n, "k");
  out.push_back(std::move(n));
}

void reshape_to_input(context& c, NodeProto& n, std::vector<NodeProto>& out) {
  ints_attr_to_input(c, n, "shape", 1);
  out.push_back(std::move(n));
}

void concat_axis(context&, NodeProto& n, std::vector<NodeProto>& out) {
  if (!detail::find_attr(n, "axis")) detail::set_attr_int(n, "axis", 1);  // Concat-1's default
  out.push_back(std::move(n));
}

std::string batchnorm_refuse(const NodeProto& n, const std::map<std::string, int>&) {
  if (detail::find_attr(n, "spatial") && detail::attr_int(n, "spatial", 1) == 0)
    return "spatial = 0 (per-element statistics) was removed in opset 9";
  for (int i = 1; i < n.output_size(); ++i)
    if (!n.output(i).empty()) return "it computes training statistics (several outputs)";
  return "";
}

void batchnorm_drop(context&, NodeProto& n, std::vector<NodeProto>& out) {
  detail::remove_attr(n, "spatial");
  detail::remove_attr(n, "is_test");
  detail::remove_attr(n, "momentum_legacy");
  out.push_back(std::move(n));
}

std::string legacy_broadcast_refuse(const NodeProto& n, const std::map<std::string, int>&) {
  if (detail::attr_int(n, "broadcast", 0) != 0 && detail::find_attr(n, "axis"))
    return "legacy broadcasting along `axis` (opset < 7) differs from numpy broadcasting";
  return "";
}

void legacy_broadcast_drop(context&, NodeProto& n, std::vector<NodeProto>& out) {
  detail::remove_attr(n, "broadcast");
  detail::remove_attr(n, "axis");
  out.push_back(std::move(n));
}

void gemm_broadcast_drop(context&, NodeProto& n, std::vector<NodeProto>& out) {
  detail::remove_attr(n, "broadcast");
  out.push_back(std::move(n));
}

/// Softmax/LogSoftmax/Hardmax < 13 normalise over all axes from `axis` on (the input coerced
/// to 2-D); 13 over `axis` alone. The same when `axis` is the last axis; otherwise
/// Flatten(axis) -> op(axis = -1) -> Reshape(Shape(x)).
void softmax_axis(context& c, NodeProto& n, std::vector<NodeProto>& out) {
  const std::int64_t axis = detail::attr_int(n, "axis", 1);
  const int rank = declared_rank(c.model, c.graph, n.input(0));
  if (axis == -1 || (rank > 0 && axis == rank - 1)) {
    detail::set_attr_int(n, "axis", -1);
    out.push_back(std::move(n));
    return;
  }
  const std::string base = base_of(n);
  const std::string x = n.input(0), y = n.output(0);
  NodeProto shape;
  shape.set_op_type("Shape");
  shape.set_name(c.names.unique(base + "_shape"));
  shape.add_input(x);
  shape.add_output(c.names.unique(base + "_shape_output"));
  NodeProto flatten;
  flatten.set_op_type("Flatten");
  flatten.set_name(c.names.unique(base + "_flatten"));
  flatten.add_input(x);
  flatten.add_output(c.names.unique(base + "_flatten_output"));
  detail::set_attr_int(flatten, "axis", axis);
  NodeProto reshape;
  reshape.set_op_type("Reshape");
  reshape.set_name(c.names.unique(base + "_reshape"));
  n.set_input(0, flatten.output(0));
  n.set_output(0, c.names.unique(base + "_2d_output"));
  detail::set_attr_int(n, "axis", -1);
  reshape.add_input(n.output(0));
  reshape.add_input(shape.output(0));
  reshape.add_output(y);
  out.push_back(std::move(shape));
  out.push_back(std::move(flatten));
  out.push_back(std::move(n));
  out.push_back(std::move(reshape));
}

void scatter_rename(context&, NodeProto& n, std::vector<NodeProto>& out) {
  n.set_op_type("ScatterElements");  // Scatter-9/11 is ScatterElements-11 under another name
  out.push_back(std::move(n));
}

void lppool_p_int(context&, NodeProto& n, std::vector<NodeProto>& out) {
  if (const auto* a = detail::find_attr(n, "p")) {
    if (a->type() == AttributeProto::FLOAT)
      detail::set_attr_int(n, "p", static_cast<std::int64_t>(a->f()));
  }
  out.push_back(std::move(n));
}

void gridsample_modes(context&, NodeProto& n, std::vector<NodeProto>& out) {
  if (const auto* a = detail::find_attr(n, "mode")) {
    const std::string mode = a->s();
    if (mode == "bilinear") detail::set_attr_string(n, "mode", "linear");
    if (mode == "bicubic") detail::set_attr_string(n, "mode", "cubic");
  }
  out.push_back(std::move(n));
}

void roialign_mode(context&, NodeProto& n, std::vector<NodeProto>& out) {
  if (!detail::find_attr(n, "coordinate_transformation_mode"))  // 16's default is half_pixel
    detail::set_attr_string(n, "coordinate_transformation_mode", "output_half_pixel");
  out.push_back(std::move(n));
}

std::string rnn_refuse(const NodeProto& n, const std::map<std::string, int>&) {
  if (detail::find_attr(n, "output_sequence"))
    return "the output_sequence attribute (opset < 7) has no opset-21 form";
  return "";
}

std::string cast_refuse(const NodeProto& n, const std::map<std::string, int>&) {
  const auto* a = detail::find_attr(n, "to");
  if (a && a->type() == AttributeProto::STRING) return "its `to` is a type name (opset < 6)";
  return "";
}

std::string always(const NodeProto&, const std::map<std::string, int>&) { return "-"; }

// Every incompatible change between opset 1 and 21 that a model can hold. Changes that only
// add optional inputs/attributes with the old behaviour as default, or widen type lists, are
// compatible and not listed: those nodes pass through unchanged.
const rule rules[] = {
    {"Clip", 11, "min/max attributes -> inputs", nullptr, clip_to_inputs},
    {"Squeeze", 13, "axes attribute -> input", nullptr, axes_to_input},
    {"Unsqueeze", 13, "axes attribute -> input", nullptr, axes_to_input},
    {"ReduceSum", 13, "axes attribute -> input", nullptr, axes_to_input},
    {"ReduceMean", 18, "axes attribute -> input", nullptr, axes_to_input},
    {"ReduceMax", 18, "axes attribute -> input", nullptr, axes_to_input},
    {"ReduceMin", 18, "axes attribute -> input", nullptr, axes_to_input},
    {"ReduceProd", 18, "axes attribute -> input", nullptr, axes_to_input},
    {"ReduceL1", 18, "axes attribute -> input", nullptr, axes_to_input},
    {"ReduceL2", 18, "axes attribute -> input", nullptr, axes_to_input},
    {"ReduceLogSum", 18, "axes attribute -> input", nullptr, axes_to_input},
    {"ReduceLogSumExp", 18, "axes attribute -> input", nullptr, axes_to_input},
    {"ReduceSumSquare", 18, "axes attribute -> input", nullptr, axes_to_input},
    {"Split", 13, "split attribute -> input", nullptr, split_to_input},
    {"Split", 18, "num_outputs attribute when split is absent", nullptr, split_num_outputs},
    {"Dropout", 12, "ratio attribute -> input, is_test removed", dropout_refuse, dropout_to_inputs},
    {"Pad", 11, "pads/value attributes -> inputs", nullptr, pad_to_inputs},
    {"Slice", 10, "starts/ends/axes attributes -> inputs", nullptr, slice_to_inputs},
    {"TopK", 10, "k attribute -> input", nullptr, topk_to_input},
    {"Reshape", 5, "shape attribute -> input", nullptr, reshape_to_input},
    {"Concat", 4, "axis attribute required (old default 1 written)", nullptr, concat_axis},
    {"BatchNormalization", 9, "spatial/is_test attributes removed", batchnorm_refuse,
     batchnorm_drop},
    {"BatchNormalization", 14, "training outputs need training_mode", batchnorm_refuse, keep},
    {"Add", 7, "legacy broadcast/axis attributes", legacy_broadcast_refuse, legacy_broadcast_drop},
    {"Sub", 7, "legacy broadcast/axis attributes", legacy_broadcast_refuse, legacy_broadcast_drop},
    {"Mul", 7, "legacy broadcast/axis attributes", legacy_broadcast_refuse, legacy_broadcast_drop},
    {"Div", 7, "legacy broadcast/axis attributes", legacy_broadcast_refuse, legacy_broadcast_drop},
    {"Pow", 7, "legacy broadcast/axis attributes", legacy_broadcast_refuse, legacy_broadcast_drop},
    {"And", 7, "legacy broadcast/axis attributes", legacy_broadcast_refuse, legacy_broadcast_drop},
    {"Or", 7, "legacy broadcast/axis attributes", legacy_broadcast_refuse, legacy_broadcast_drop},
    {"Xor", 7, "legacy broadcast/axis attributes", legacy_broadcast_refuse, legacy_broadcast_drop},
    {"Equal", 7, "legacy broadcast/axis attributes", legacy_broadcast_refuse,
     legacy_broadcast_drop},
    {"Greater", 7, "legacy broadcast/axis attributes", legacy_broadcast_refuse,
     legacy_broadcast_drop},
    {"Less", 7, "legacy broadcast/axis attributes", legacy_broadcast_refuse, legacy_broadcast_drop},
    {"Gemm", 7, "broadcast attribute removed", nullptr, gemm_broadcast_drop},
    {"Softmax", 13, "axis means one axis, not a 2-D coercion", nullptr, softmax_axis},
    {"LogSoftmax", 13, "axis means one axis, not a 2-D coercion", nullptr, softmax_axis},
    {"Hardmax", 13, "axis means one axis, not a 2-D coercion", nullptr, softmax_axis},
    {"Scatter", 22, "deprecated in opset 11: renamed ScatterElements", nullptr, scatter_rename},
    {"LpPool", 2, "p attribute float -> int", nullptr, lppool_p_int},
    {"GlobalLpPool", 2, "p attribute float -> int", nullptr, lppool_p_int},
    {"GridSample", 20, "modes bilinear/bicubic renamed linear/cubic", nullptr, gridsample_modes},
    {"RoiAlign", 16, "default coordinate_transformation_mode changed (old one written)", nullptr,
     roialign_mode},
    {"RNN", 7, "output_sequence attribute removed", rnn_refuse, keep},
    {"GRU", 7, "output_sequence attribute removed", rnn_refuse, keep},
    {"LSTM", 7, "output_sequence attribute removed", rnn_refuse, keep},
    {"Cast", 6, "to attribute: type name -> enum", cast_refuse, keep},
    // Refused: no safe local conversion.
    {"Upsample", 22, "deprecated in opset 10 (use Resize)", always, nullptr},
    {"Resize", 11, "inputs changed (roi, sizes) and coordinate modes added", always, nullptr},
    {"Tile", 6, "tiles/axis inputs replaced by repeats", always, nullptr},
    {"Scan", 9, "batch axis and sequence_lens removed", always, nullptr},
    {"GroupNormalization", 21, "scale/bias per channel instead of per group", always, nullptr},
    {"DFT", 20, "axis attribute -> input with another default", always, nullptr},
    // Experimental operators removed from the standard.
    {"ATen", 22, "experimental, removed", always, nullptr},
    {"Affine", 22, "experimental, removed", always, nullptr},
    {"ConstantFill", 22, "experimental, removed", always, nullptr},
    {"Crop", 22, "experimental, removed", always, nullptr},
    {"DynamicSlice", 22, "experimental, removed", always, nullptr},
    {"GRUUnit", 22, "experimental, removed", always, nullptr},
    {"GivenTensorFill", 22, "experimental, removed", always, nullptr},
    {"ImageScaler", 22, "experimental, removed", always, nullptr},
    {"ParametricSoftplus", 22, "experimental, removed", always, nullptr},
    {"Scale", 22, "experimental, removed", always, nullptr},
    {"ScaledTanh", 22, "experimental, removed", always, nullptr},
};

/// The rules that apply to `n` in a model of opset `from`, in table order.
std::vector<const rule*> rules_for(const NodeProto& n, std::int64_t from) {
  std::vector<const rule*> out;
  if (!is_default_domain(n.domain())) return out;
  for (const rule& r : rules)
    if (n.op_type() == r.op && from < r.since) out.push_back(&r);
  return out;
}

template <class F>
void for_each_graph(const GraphProto& g, F&& f) {
  f(g);
  for (const auto& n : g.node()) {
    for (const auto& a : n.attribute()) {
      if (a.has_g()) for_each_graph(a.g(), f);
      for (const auto& sub : a.graphs()) for_each_graph(sub, f);
    }
  }
}

void check(const ModelProto& m, std::int64_t from) {
  const auto refs = detail::count_references(m.graph());
  for_each_graph(m.graph(), [&](const GraphProto& g) {
    for (const auto& n : g.node()) {
      for (const rule* r : rules_for(n, from)) {
        const std::string why = r->refuse ? r->refuse(n, refs) : "";
        if (why.empty() && r->convert) continue;
        throw model_error(
            model_error::kind::unsupported,
            "cannot raise the opset from " + std::to_string(from) +
                " to 21 (needed by DequantizeLinear with INT4/UINT4 blocks): node " +
                node_label(n) + ": " + (why.empty() || why == "-" ? r->change : why) +
                ", which int4q does not convert; use `format = matmulnbits`, which needs no "
                "opset change");
      }
    }
  });
}

void convert_graph(context& c, std::int64_t from) {
  GraphProto& g = c.graph;
  // Subgraphs first (their initializers go to their own graph).
  for (auto& n : *g.mutable_node()) {
    for (auto& a : *n.mutable_attribute()) {
      if (a.has_g()) {
        context sub{c.model, *a.mutable_g(), c.names, c.types, c.log};
        convert_graph(sub, from);
      }
      for (auto& sg : *a.mutable_graphs()) {
        context sub{c.model, sg, c.names, c.types, c.log};
        convert_graph(sub, from);
      }
    }
  }
  const int count = g.node_size();
  std::vector<NodeProto> old(count);
  for (int i = 0; i < count; ++i) old[i].Swap(g.mutable_node(i));
  g.clear_node();
  for (auto& n : old) {
    if (from < 6 && is_default_domain(n.domain()) && detail::find_attr(n, "consumed_inputs")) {
      detail::remove_attr(n, "consumed_inputs");  // legacy, no effect since opset 6
    }
    std::vector<NodeProto> current;
    current.push_back(std::move(n));
    for (const rule* r : rules_for(current.back(), from)) {
      // Each rule rewrites the node it targets (the last one emitted, e.g. the op itself).
      NodeProto target = std::move(current.back());
      current.pop_back();
      const std::string label = node_label(target);
      r->convert(c, target, current);
      if (r->convert != keep) c.log.push_back(label + ": " + r->change);
    }
    for (auto& x : current) g.add_node()->Swap(&x);
  }
}

}  // namespace

std::int64_t opset_version(const ModelProto& m, const std::string& domain) {
  const bool want_default = is_default_domain(domain);
  for (const auto& o : m.opset_import()) {
    if (want_default ? is_default_domain(o.domain()) : o.domain() == domain) return o.version();
  }
  return -1;
}

void check_opset_upgrade_to_21(const ModelProto& m) {
  const std::int64_t from = opset_version(m);
  if (from < 0 || from >= target_opset) return;
  check(m, from);
}

std::vector<std::string> upgrade_opset_to_21(ModelProto& m) {
  std::vector<std::string> log;
  const std::int64_t from = opset_version(m);
  if (from >= 0 && from < target_opset) {
    check(m, from);
    const type_map types(m.graph());
    detail::name_set names(m);
    context c{m, *m.mutable_graph(), names, types, log};
    convert_graph(c, from);
    for (auto& o : *m.mutable_opset_import())
      if (is_default_domain(o.domain())) o.set_version(target_opset);
  } else if (from < 0) {
    auto* o = m.add_opset_import();
    o->set_domain("");
    o->set_version(target_opset);
  }
  m.set_ir_version(std::max<std::int64_t>(m.ir_version(), min_ir_version));
  return log;
}

}  // namespace onnx
}  // namespace int4q

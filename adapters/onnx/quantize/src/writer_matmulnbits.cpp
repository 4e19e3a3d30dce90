// The MatMulNBits writer (com.microsoft): B [N, G, group * bits / 8] packed codes, scales [N, G]
// in the weight's float type, zero points [N, ceil(G * bits / 8)]; the node in place of each
// MatMul/Gemm, a Gemm bias folded into its bias input or added after it. Layouts: docs/onnx.md.
#include <string>
#include <utility>
#include <vector>

#include <int4q/pack.hpp>

#include "writers.hpp"

namespace int4q {
namespace onnx {
namespace detail {

using ::onnx::GraphProto;
using ::onnx::NodeProto;
using ::onnx::TensorProto;

namespace {

/// How the bias C of Gemm use `u` reaches MatMulNBits; "" or the reason it cannot.
std::string plan_bias(const model& m, const weight_info& w, const weight_use& u, bias_plan& b) {
  const GraphProto& g = m.proto.graph();
  b.c = u.bias;
  b.beta = u.beta;
  const TensorProto* c = constant_tensor_in_scope(g, u.path, u.bias, &b.c_defined_in);
  if (!c) {
    b.how = bias_plan::kind::add;
    return "";
  }
  const std::vector<float> values = read_floats(m, *c);
  const std::vector<std::int64_t> dims(c->dims().begin(), c->dims().end());
  const bool vector_n =
      values.size() == w.n && (dims.size() == 1 || (dims.size() == 2 && dims[0] == 1));
  if (dims.size() > 2 || (values.size() != 1 && !vector_n)) {
    return "Gemm '" + display_name(u) + "' bias C " + dims_string(dims) +
           " is not broadcastable to [N] = [" + std::to_string(w.n) +
           "] (MatMulNBits' bias input): use `format = qdq`";
  }
  b.how = bias_plan::kind::fold;
  b.folded.resize(w.n);
  for (std::size_t j = 0; j < w.n; ++j)
    b.folded[j] = b.beta * (values.size() == 1 ? values[0] : values[j]);
  b.reuse_c = b.beta == 1.0f && dims.size() == 1 && c->data_type() == onnx_type_of(w.type);
  return "";
}

/// The MatMulNBits node itself (inputs A, B, scales, zero points; no output yet).
NodeProto matmulnbits_node(const NodeProto& orig, const quantize_options& options,
                           const weight_job& job, const std::string& base, name_set& names) {
  const weight_info& w = *job.info;
  NodeProto mnb;
  mnb.set_op_type("MatMulNBits");
  mnb.set_domain("com.microsoft");
  mnb.set_name(names.unique(base + "_Q" + std::to_string(job.config.bits)));
  mnb.add_input(orig.input(0));
  mnb.add_input(job.data_name);
  mnb.add_input(job.scales_name);
  if (!job.zero_points_name.empty()) mnb.add_input(job.zero_points_name);
  set_attr_int(mnb, "K", to_dim(w.k));
  set_attr_int(mnb, "N", to_dim(w.n));
  set_attr_int(mnb, "bits", job.config.bits);
  set_attr_int(mnb, "block_size", to_dim(job.config.effective_group_size(w.k)));
  if (options.accuracy_level) set_attr_int(mnb, "accuracy_level", *options.accuracy_level);
  return mnb;
}

/// A non-constant bias: [Mul by beta], MatMulNBits, Add.
void add_bias_nodes(GraphProto& g, const NodeProto& orig, const weight_job& job, const bias_plan& b,
                    const std::string& base, NodeProto&& mnb, name_set& names,
                    std::vector<NodeProto>& out) {
  std::string c = b.c;
  if (b.beta != 1.0f) {
    const std::string beta = names.unique(base + "_beta");
    add_initializer(g, float_tensor(beta, job.info->type, {}, {b.beta}));
    NodeProto mul;
    mul.set_op_type("Mul");
    mul.set_name(names.unique(base + "_beta_mul"));
    mul.add_input(b.c);
    mul.add_input(beta);
    c = names.unique(b.c + "_scaled");
    mul.add_output(c);
    out.push_back(std::move(mul));
  }
  const std::string product = names.unique(orig.output(0) + "_matmul");
  mnb.add_output(product);
  out.push_back(std::move(mnb));
  NodeProto add;
  add.set_op_type("Add");
  add.set_name(names.unique(base + "_bias_add"));
  add.add_input(product);
  add.add_input(c);
  add.add_output(orig.output(0));
  out.push_back(std::move(add));
}

}  // namespace

std::string plan_matmulnbits(const model& m, const weight_info& w, weight_job& job) {
  const GraphProto& g = m.proto.graph();
  job.bias.assign(w.uses.size(), bias_plan{});
  for (std::size_t i = 0; i < w.uses.size(); ++i) {
    const weight_use& u = w.uses[i];
    if (u.op_type != "Gemm") continue;
    const NodeProto& n = graph_at(g, u.path).node(u.node_index);
    if (attr_int(n, "transA", 0) != 0) {
      return "Gemm '" + display_name(u) +
             "' has transA = 1, which MatMulNBits cannot express: use `format = qdq`";
    }
    if (u.bias.empty()) continue;
    const std::string reason = plan_bias(m, w, u, job.bias[i]);
    if (!reason.empty()) return reason;
  }
  return "";
}

std::size_t matmulnbits_tensors(weight_job& job, name_set& names) {
  const weight_info& w = *job.info;
  const quant_config& c = job.config;
  const std::size_t N = w.n, G = job.q.num_groups();
  const auto t = int4q::pack_matmulnbits(job.q);
  job.data_name = names.unique(w.name + "_Q" + std::to_string(c.bits));
  job.scales_name = names.unique(w.name + "_scales");
  job.stored_dims = {to_dim(N), to_dim(G), to_dim(t.b.shape()[2])};
  job.tensors.push_back(
      make_tensor(job.data_name, TensorProto::UINT8, job.stored_dims, t.b.data(), t.b.size()));
  job.tensors.push_back(
      float_tensor(job.scales_name, w.type, {to_dim(N), to_dim(G)}, float_values(t.scales)));
  std::size_t after = t.b.size() + t.scales.size() * elem_size(w.type);
  if (c.has_zero_points()) {
    job.zero_points_name = names.unique(w.name + "_zero_points");
    job.tensors.push_back(make_tensor(job.zero_points_name, TensorProto::UINT8,
                                      {to_dim(N), to_dim(t.zero_points.shape()[1])},
                                      t.zero_points.data(), t.zero_points.size()));
    after += t.zero_points.size();
  }
  return after;
}

std::vector<NodeProto> matmulnbits_nodes(GraphProto& g, const NodeProto& orig,
                                         const quantize_options& options, const weight_job& job,
                                         const weight_use& u, const bias_plan& b, name_set& names) {
  const std::string base = node_base_name(orig, u);
  std::vector<NodeProto> out;
  NodeProto mnb = matmulnbits_node(orig, options, job, base, names);
  switch (b.how) {
    case bias_plan::kind::none:
      mnb.add_output(orig.output(0));
      out.push_back(std::move(mnb));
      break;
    case bias_plan::kind::fold: {
      std::string bias = b.c;
      if (!b.reuse_c) {
        bias = names.unique(b.c + "_bias");
        add_initializer(g, float_tensor(bias, job.info->type, {to_dim(job.info->n)}, b.folded));
      }
      while (mnb.input_size() < 5) mnb.add_input("");  // zero_points (absent), g_idx (deprecated)
      mnb.add_input(bias);
      mnb.add_output(orig.output(0));
      out.push_back(std::move(mnb));
      break;
    }
    case bias_plan::kind::add: add_bias_nodes(g, orig, job, b, base, std::move(mnb), names, out);
  }
  return out;
}

void write_matmulnbits(graph_rewrite& r, weight_job& job) {
  const weight_info& w = *job.info;
  // New initializers go to the graph holding the weight: every use sees it.
  GraphProto& wg = r.graph(w.defined_in);
  for (auto& t : job.tensors) add_initializer(wg, std::move(t));
  for (std::size_t i = 0; i < w.uses.size(); ++i) {
    const weight_use& u = w.uses[i];
    r.edit_of(u.path).replacement[u.node_index] =
        matmulnbits_nodes(wg, r.node_of(u), r.options, job, u, job.bias[i], r.names);
    if (job.bias[i].how == bias_plan::kind::fold && !job.bias[i].reuse_c)
      r.released.emplace_back(&r.graph(job.bias[i].c_defined_in), job.bias[i].c);
  }
  release_weight(r, w);
}

void add_microsoft_opset(model& m) {
  for (const auto& o : m.proto.opset_import())
    if (o.domain() == "com.microsoft") return;
  auto* o = m.proto.add_opset_import();
  o->set_domain("com.microsoft");
  o->set_version(1);
}

}  // namespace detail
}  // namespace onnx
}  // namespace int4q

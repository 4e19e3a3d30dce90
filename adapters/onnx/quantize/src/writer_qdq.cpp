// The DequantizeLinear-21 writer: codes packed flat (INT4/UINT4 or INT8/UINT8) in the weight's
// stored layout, scales and zero points [G, N] ([N, G] for Gemm transB; [N] per channel), and
// one DequantizeLinear feeding the original nodes. Layouts: docs/onnx.md.
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

namespace {

/// The stored layout of a [K, N] matrix: [N, K] (transposed) for Gemm transB = 1.
template <class T>
xt::xtensor<T, 2> as_stored(const xt::xtensor<T, 2>& x, bool trans) {
  return trans ? xt::xtensor<T, 2>(xt::transpose(x)) : x;
}

NodeProto dequantize_node(const weight_job& job, const std::string& name,
                          const std::string& output) {
  const quant_config& c = job.config;
  const bool trans = job.info->uses.front().trans_b;
  NodeProto dq;
  dq.set_op_type("DequantizeLinear");
  dq.set_name(name);
  dq.add_input(job.data_name);
  dq.add_input(job.scales_name);
  if (!job.zero_points_name.empty()) dq.add_input(job.zero_points_name);
  dq.add_output(output);
  if (c.granularity == grouping::per_channel) {
    set_attr_int(dq, "axis", trans ? 0 : 1);  // the N axis of the stored weight
  } else {
    set_attr_int(dq, "axis", trans ? 1 : 0);  // the K axis of the stored weight
    set_attr_int(dq, "block_size", to_dim(c.group_size));
  }
  return dq;
}

/// The index, in the graph at `outer` (an enclosing graph of the use, or its own), of the node
/// that is the use or holds the subgraph leading to it.
int index_in(const std::vector<graph_step>& outer, const weight_use& u) {
  return u.path.size() == outer.size() ? u.node_index : u.path[outer.size()].node_index;
}

}  // namespace

std::size_t qdq_tensors(weight_job& job, name_set& names) {
  const weight_info& w = *job.info;
  const quant_config& c = job.config;
  const quantized<float>& q = job.q;
  const bool trans = w.uses.front().trans_b;
  const std::size_t N = w.n, G = q.num_groups();
  const std::string bits = std::to_string(c.bits);
  const bool symmetric = !c.has_zero_points();
  const int type = qdq_code_type(c.bits, symmetric);
  const auto sign = symmetric ? code_sign::signed_codes : code_sign::unsigned_codes;
  const xt::xtensor<float, 2> scales = as_stored(q.scales, trans);
  std::vector<std::int64_t> scale_dims;
  if (c.granularity == grouping::per_channel) {
    scale_dims = {to_dim(N)};
  } else {
    scale_dims = trans ? std::vector<std::int64_t>{to_dim(N), to_dim(G)}
                       : std::vector<std::int64_t>{to_dim(G), to_dim(N)};
  }
  job.stored_dims = stored_dims_of(w);
  job.data_name = names.unique(w.name + "_DQ_Q" + bits);
  job.scales_name = names.unique(w.name + "_DQ_scales");
  const std::vector<std::uint8_t> data = int4q::pack_flat(as_stored(q.codes, trans), c.bits, sign);
  job.tensors.push_back(
      make_tensor(job.data_name, type, job.stored_dims, data.data(), data.size()));
  job.tensors.push_back(float_tensor(job.scales_name, w.type, scale_dims, float_values(scales)));
  std::size_t after = data.size() + scales.size() * elem_size(w.type);
  if (!symmetric) {
    job.zero_points_name = names.unique(w.name + "_DQ_zero_points");
    const std::vector<std::uint8_t> z =
        int4q::pack_flat(as_stored(q.zero_points, trans), c.bits, code_sign::unsigned_codes);
    job.tensors.push_back(make_tensor(job.zero_points_name, type, scale_dims, z.data(), z.size()));
    after += z.size();
  }
  return after;
}

void write_qdq(graph_rewrite& r, weight_job& job) {
  const weight_info& w = *job.info;
  // One DequantizeLinear in the graph holding the weight, before the first node that uses it
  // (directly or from a subgraph): computed once, its output visible to every use.
  GraphProto& wg = r.graph(w.defined_in);
  for (auto& t : job.tensors) add_initializer(wg, std::move(t));
  const weight_use* first_use = &w.uses.front();
  int first = index_in(w.defined_in, *first_use);
  for (const auto& u : w.uses) {
    const int at = index_in(w.defined_in, u);
    if (at < first) {
      first = at;
      first_use = &u;
    }
  }
  const std::string bits = std::to_string(job.config.bits);
  const std::string name =
      r.names.unique(node_base_name(r.node_of(*first_use), *first_use) + "_DQ_Q" + bits);
  const std::string output = r.names.unique(w.name + "_DQ_Q" + bits + "_output");
  r.edit_of(w.defined_in).before[first].push_back(dequantize_node(job, name, output));
  for (const auto& u : w.uses) {
    NodeProto& n = r.node_of(u);
    n.set_input(1, output);
    if (job.alpha != 1.0f) remove_attr(n, "alpha");  // folded into the weight
  }
  release_weight(r, w);
}

}  // namespace detail
}  // namespace onnx
}  // namespace int4q

// The fake-quant writer: the dequantized values in the weight's float type and stored layout,
// in the weight's own tensor when only its MatMul/Gemm nodes read it, else in a new one.
#include <string>
#include <utility>
#include <vector>

#include <int4q/dequant.hpp>

#include "weight_tensor.hpp"
#include "writers.hpp"

namespace int4q {
namespace onnx {
namespace detail {

std::size_t fake_tensors(const model& m, const quantize_options& options, weight_job& job,
                         name_set& names, const std::map<std::string, int>& references) {
  const weight_info& w = *job.info;
  int4q::quant_options qo;
  qo.threads = options.threads;
  xt::xtensor<float, 2> dq = int4q::dequant(job.q, qo);
  const xt::xtensor<float, 2> stored =
      w.uses.front().trans_b ? xt::xtensor<float, 2>(xt::transpose(dq)) : std::move(dq);
  job.stored_dims = stored_dims_of(w);
  const auto it = references.find(w.name);
  const int refs = it == references.end() ? 0 : it->second;
  // In place only into a stored tensor that nothing else reads (not a constant path's source).
  job.in_place = w.path_nodes.empty() && refs == static_cast<int>(w.uses.size());
  job.data_name = job.in_place ? weight_tensor(m, w).name() : names.unique(w.name + "_fake");
  job.tensors.push_back(float_tensor(job.data_name, w.type, job.stored_dims, float_values(stored)));
  return w.k * w.n * elem_size(w.type);
}

void write_fake(graph_rewrite& r, weight_job& job) {
  const weight_info& w = *job.info;
  ::onnx::TensorProto& values = job.tensors.front();
  if (job.in_place) {
    mutable_weight_tensor(r.m, w)->Swap(&values);
  } else {
    add_initializer(r.graph(w.defined_in), std::move(values));
  }
  for (const auto& u : w.uses) {
    ::onnx::NodeProto& n = r.node_of(u);
    if (!job.in_place) n.set_input(1, job.data_name);
    if (job.alpha != 1.0f) remove_attr(n, "alpha");  // folded into the weight
  }
  if (!w.path_nodes.empty()) release_weight(r, w);
}

}  // namespace detail
}  // namespace onnx
}  // namespace int4q

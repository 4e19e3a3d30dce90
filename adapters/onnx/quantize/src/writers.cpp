// What the three writers share: the checks common to every format, build_tensors and
// rewrite_graph dispatching to the format's writer (writer_matmulnbits.cpp, writer_qdq.cpp,
// writer_fake.cpp), the report entry and the node-list edit. Layouts: docs/onnx.md and
// ../shared/reference/formats.md.
#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include <int4q/metrics.hpp>
#include <int4q/onnx/tensor_types.hpp>
#include <int4q/quantize.hpp>

#include "const_path.hpp"
#include "writers.hpp"

namespace int4q {
namespace onnx {
namespace detail {

using ::onnx::GraphProto;
using ::onnx::NodeProto;
using ::onnx::TensorProto;

int qdq_code_type(int bits, bool symmetric) {
  return bits == 4 ? (symmetric ? onnx_int4 : onnx_uint4)
                   : (symmetric ? TensorProto::INT8 : TensorProto::UINT8);
}

std::int64_t to_dim(std::size_t v) { return static_cast<std::int64_t>(v); }

std::vector<float> float_values(const xt::xtensor<float, 2>& x) {
  return std::vector<float>(x.begin(), x.end());
}

std::string node_base_name(const NodeProto& n, const weight_use& u) {
  return n.name().empty() ? display_name(u) : n.name();
}

void add_initializer(GraphProto& g, TensorProto&& t) { g.add_initializer()->Swap(&t); }

std::vector<std::int64_t> stored_dims_of(const weight_info& w) {
  return w.uses.front().trans_b ? std::vector<std::int64_t>{to_dim(w.n), to_dim(w.k)}
                                : std::vector<std::int64_t>{to_dim(w.k), to_dim(w.n)};
}

std::string plan_writes(const model& m, const weight_info& w, output_format format,
                        weight_job& job) {
  if (format != output_format::fake && w.type == elem_type::float64) {
    return std::string("float64 weights cannot be stored by ") +
           (format == output_format::matmulnbits ? "MatMulNBits" : "DequantizeLinear") +
           " (float, float16 or bfloat16 only): use `format = fake`";
  }
  if (w.uses.empty()) return "no MatMul/Gemm node uses it";
  job.alpha = w.uses.front().alpha;
  for (const auto& u : w.uses) {
    if (u.alpha != job.alpha || u.trans_b != w.uses.front().trans_b) {
      return "its nodes disagree on Gemm alpha/transB, so one quantized tensor cannot serve them";
    }
  }
  return format == output_format::matmulnbits ? plan_matmulnbits(m, w, job) : "";
}

void build_tensors(const model& m, const quantize_options& options, weight_job& job,
                   name_set& names, tensor_report& report,
                   const std::map<std::string, int>& references) {
  // The error one group of rows at a time: no dequantized copy of the weight in memory (the
  // fake writer makes its own).
  const int4q::error_stats stats = int4q::measure_error(job.weight, job.q);
  std::size_t after = 0;
  switch (options.format) {
    case output_format::matmulnbits: after = matmulnbits_tensors(job, names); break;
    case output_format::qdq: after = qdq_tensors(job, names); break;
    case output_format::fake: after = fake_tensors(m, options, job, names, references); break;
  }
  record_quantized(report, job.config, job.info->k, stats, after, job.started);
  job.weight = xt::xtensor<float, 2>();  // memory: one weight's values at a time
  job.q = quantized<float>();
}

void record_quantized(tensor_report& report, const quant_config& c, std::size_t k,
                      const int4q::error_stats& stats, std::size_t bytes_after,
                      std::chrono::steady_clock::time_point start) {
  report.quantized = true;
  report.bits = c.bits;
  report.group_size = c.effective_group_size(k);
  report.scheme = c.data_type == data_type::integer ? to_string(c.scheme) : to_string(c.data_type);
  report.rmse = stats.rmse;
  report.max_abs = stats.max_abs;
  report.relative_l2 = stats.relative_l2;
  report.sqnr_db = stats.sqnr_db;
  report.bytes_after = bytes_after;
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void apply_node_list_edit(GraphProto& g, node_list_edit& e) {
  auto* nodes = g.mutable_node();
  const int count = nodes->size();
  std::vector<NodeProto*> old(static_cast<std::size_t>(count));
  nodes->ExtractSubrange(0, count, old.data());
  for (int i = 0; i < count; ++i) {
    const auto b = e.before.find(i);
    if (b != e.before.end()) {
      for (auto& n : b->second) nodes->Add()->Swap(&n);
    }
    const auto r = e.replacement.find(i);
    if (r != e.replacement.end()) {
      for (auto& n : r->second) nodes->Add()->Swap(&n);
      delete old[i];
    } else {
      nodes->AddAllocated(old[i]);
    }
  }
}

GraphProto& graph_rewrite::graph(const std::vector<graph_step>& path) {
  return graph_at(*m.proto.mutable_graph(), path);
}

node_list_edit& graph_rewrite::edit_of(const std::vector<graph_step>& path) {
  auto& e = edits[path_key(path)];
  if (!e.first) e.first = &graph(path);
  return e.second;
}

NodeProto& graph_rewrite::node_of(const weight_use& u) {
  return *graph(u.path).mutable_node(u.node_index);
}

void release_weight(graph_rewrite& r, const weight_info& w) {
  GraphProto& wg = r.graph(w.defined_in);
  for (auto it = w.path_nodes.rbegin(); it != w.path_nodes.rend(); ++it) {
    const NodeProto& n = wg.node(*it);  // indices hold until the node lists are edited
    r.released_nodes.emplace_back(&wg, n.output(0));
    for (const std::string& aux : path_aux_inputs(n)) r.released.emplace_back(&wg, aux);
  }
  r.released.emplace_back(&wg, w.path_nodes.empty() ? w.name : w.source);
}

std::string describe_path(const model& m, const weight_info& w) {
  if (w.path_nodes.empty()) return "";
  const GraphProto& g = graph_at(m.proto.graph(), w.defined_in);
  std::string s = "'" + w.source + "'";
  for (const int i : w.path_nodes) {
    const NodeProto& n = g.node(i);
    s += " -> " + n.op_type() + " '" + (n.name().empty() ? n.output(0) : n.name()) + "'";
  }
  return s;
}

void rewrite_graph(model& m, const quantize_options& options, std::vector<weight_job>& jobs,
                   name_set& names) {
  if (jobs.empty()) return;
  // Every graph is found (by node indices) before any node list changes.
  graph_rewrite r{m, options, names, {}, {}, {}};
  for (weight_job& job : jobs) {
    switch (options.format) {
      case output_format::matmulnbits: write_matmulnbits(r, job); break;
      case output_format::qdq: write_qdq(r, job); break;
      case output_format::fake: write_fake(r, job); break;
    }
    job.tensors.clear();
  }
  for (auto& [key, e] : r.edits) apply_node_list_edit(*e.first, e.second);

  // Originals nothing reads any more (constant path nodes, then weights, folded biases) go.
  // References are counted by name over every graph: a name also read elsewhere (even a
  // shadowing one) is kept. A path node removed no longer reads its input: a prefix shared by
  // several weights' paths goes with the last of them.
  auto refs = count_references(m.proto.graph());
  for (const auto& [g, output] : r.released_nodes) {
    if (refs[output] != 0) continue;
    auto* nodes = g->mutable_node();
    for (int i = 0; i < nodes->size(); ++i) {
      const NodeProto& n = nodes->Get(i);
      if (n.output_size() != 1 || n.output(0) != output) continue;
      for (const std::string& in : n.input())
        if (!in.empty()) --refs[in];
      nodes->DeleteSubrange(i, 1);
      remove_tensor(*g, output);  // its value_info
      break;
    }
  }
  for (const auto& [g, name] : r.released) {
    const auto it = refs.find(name);
    if (it == refs.end() || it->second == 0) remove_tensor(*g, name);
  }
  if (options.format == output_format::matmulnbits) add_microsoft_opset(m);
}

}  // namespace detail
}  // namespace onnx
}  // namespace int4q

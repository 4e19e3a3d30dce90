// Embeddings (--embeddings quantize): a Gather on a constant table becomes com.microsoft
// GatherBlockQuantized (--format matmulnbits), DequantizeLinear + Gather (qdq) or reads
// dequantized values (fake). A tied lm_head (the same table as MatMul/Gemm B, directly or through
// a Transpose) reads the same quantized tensors. Layouts: docs/onnx.md "Embeddings".
//
// The table T [V, D] is quantized as the logical weight W = T^T [K = D, N = V]: groups run along
// the hidden axis D of each vocabulary row, which is what GatherBlockQuantized (quantize_axis 1)
// and a MatMulNBits lm_head (blocks along K = D per output column v) both decode.
#include <algorithm>
#include <chrono>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <int4q/dequant.hpp>
#include <int4q/metrics.hpp>
#include <int4q/onnx/tensor_types.hpp>
#include <int4q/pack.hpp>
#include <int4q/quantize.hpp>

#include "const_path.hpp"
#include "weight_tensor.hpp"
#include "writers.hpp"

namespace int4q {
namespace onnx {

const char* to_string(embedding_policy p) noexcept {
  switch (p) {
    case embedding_policy::keep: return "keep";
    case embedding_policy::quantize: return "quantize";
  }
  return "?";
}

namespace detail {

using ::onnx::GraphProto;
using ::onnx::NodeProto;
using ::onnx::TensorProto;

namespace {

std::int64_t i64(std::size_t v) { return static_cast<std::int64_t>(v); }

/// The table as a weight of no use: its source and constant path, K = V, N = D (so that
/// logical_weight reads the table [V, D] as the Gathers see it, the path applied).
weight_info table_weight(const embedding_info& e) {
  weight_info w;
  w.name = e.name;
  w.from_constant_node = e.from_constant_node;
  w.constant_node_index = e.constant_node_index;
  w.type = e.type;
  w.dims = e.dims;
  w.source = e.source.empty() ? e.name : e.source;
  w.path_nodes = e.path_nodes;
  w.source_type = e.source_type;
  w.source_dims = e.source_dims;
  w.k = e.rows;
  w.n = e.cols;
  w.quantizable = true;
  return w;
}

/// The stem of the names written for a table: its stored source's name.
const std::string& table_stem(const embedding_info& e) {
  return e.path_nodes.empty() ? e.name : e.source;
}

TensorProto* mutable_table_tensor(model& m, const std::string& name) {
  GraphProto& g = *m.proto.mutable_graph();
  for (auto& t : *g.mutable_initializer())
    if (t.name() == name) return &t;
  for (auto& n : *g.mutable_node()) {
    if (n.op_type() != "Constant" || n.output_size() != 1 || n.output(0) != name) continue;
    for (auto& a : *n.mutable_attribute())
      if (a.name() == "value") return a.mutable_t();
  }
  return nullptr;
}

/// The tied uses as one weight: the table is their stored B, [N, K] = [V, D] (trans_b).
weight_info tied_weight(const embedding_info& e) {
  weight_info w = table_weight(e);
  w.k = e.cols;
  w.n = e.rows;
  w.uses = e.tied;
  return w;
}

/// The index of the main-graph node whose first output is `output`, or -1.
int node_with_output(const GraphProto& g, const std::string& output) {
  for (int i = 0; i < g.node_size(); ++i)
    if (g.node(i).output_size() > 0 && g.node(i).output(0) == output) return i;
  return -1;
}

}  // namespace

std::vector<embedding_job> plan_embeddings(const model& m, const quantize_options& options,
                                           const compiled_selection& sel,
                                           const std::vector<embedding_info>& embeddings,
                                           quantize_report& report) {
  std::vector<embedding_job> jobs;
  if (options.embeddings == embedding_policy::keep) return jobs;
  for (const embedding_info& e : embeddings) {
    embedding_report r;
    tensor_report& t = r.tensor;
    t.weight = e.name;
    for (const auto& u : e.gathers) t.nodes.push_back(display_name(u));
    for (const auto& u : e.tied) r.tied.push_back(display_name(u));
    t.k = e.cols;
    t.n = e.rows;
    t.bytes_before = e.rows * e.cols * elem_size(e.path_nodes.empty() ? e.type : e.source_type);
    t.bytes_after = t.bytes_before;
    // Selection as for a weight whose nodes are the Gathers (never the lm_head rule: a tied
    // table is one tensor, quantized once with the embedding's grid).
    weight_info as_weight = table_weight(e);
    as_weight.k = e.cols;
    as_weight.n = e.rows;
    as_weight.uses = e.gathers;
    as_weight.quantizable = e.quantizable;
    as_weight.reason = e.reason;
    const weight_choice choice = choose(as_weight, options, sel);
    std::string reason = choice.reason;
    embedding_job job;
    job.info = &e;
    job.config = choice.config;
    const quant_config& c = job.config;
    if (reason.empty() && options.format == output_format::matmulnbits) {
      if ((e.cols * static_cast<std::size_t>(c.bits)) % 8 != 0) {
        reason = "GatherBlockQuantized packs whole bytes per row: D = " + std::to_string(e.cols) +
                 " at " + std::to_string(c.bits) +
                 " bits is not a multiple of 8 bits: use "
                 "`format = qdq`";
      }
      if (reason.empty() && !e.tied.empty()) {
        for (const weight_use& u : e.tied) {
          if (!u.trans_b) {
            reason = "tied " + u.op_type + " '" + display_name(u) +
                     "' multiplies by the table as [K, N] (its groups would run along the "
                     "vocabulary), so it cannot share GatherBlockQuantized's codes: use `format "
                     "= qdq`";
            break;
          }
          if (u.alpha != 1.0f) {
            reason = "tied Gemm '" + display_name(u) +
                     "' has alpha != 1, which would change the shared table: use `format = qdq`";
            break;
          }
        }
        if (reason.empty() && e.cols % c.effective_group_size(e.cols) != 0) {
          reason =
              "the tied lm_head cannot share the table's codes: D = " + std::to_string(e.cols) +
              " is not a multiple of the group size " +
              std::to_string(c.effective_group_size(e.cols)) +
              " (MatMulNBits pads the last group, GatherBlockQuantized does not): use a "
              "group size dividing D, or `format = qdq`";
        }
        if (reason.empty()) {
          job.tied_info = tied_weight(e);
          job.tied_job.config = c;
          // Bias folds and the Gemm checks of the MatMulNBits writer (tied_job.info is set
          // once the jobs vector no longer moves, in build_embeddings).
          reason = plan_writes(m, job.tied_info, options.format, job.tied_job);
        }
      }
    }
    if (reason.empty() && options.format != output_format::fake && e.type == elem_type::float64) {
      reason = "float64 tables cannot be stored: use `format = fake`";
    }
    t.reason = reason;
    if (reason.empty()) {
      job.report_index = report.embeddings.size();
      t.constant_path = describe_path(m, table_weight(e));
      // Path nodes and their shape/axes inputs, by name (indices change in rewrite_graph).
      for (const int i : e.path_nodes) {
        const NodeProto& n = m.proto.graph().node(i);
        job.path_outputs.push_back(n.output(0));
        for (const std::string& aux : path_aux_inputs(n)) job.path_aux.push_back(aux);
      }
      for (const auto& u : e.gathers)
        job.gather_outputs.push_back(m.proto.graph().node(u.node_index).output(0));
      for (const auto& u : e.tied)
        job.tied_outputs.push_back(m.proto.graph().node(u.node_index).output(0));
      for (int i : e.transposes) job.transpose_outputs.push_back(m.proto.graph().node(i).output(0));
      jobs.push_back(std::move(job));
      // The tied weights' own entries: counted once, in the embedding's entry.
      for (tensor_report& w : report.tensors) {
        bool tied = w.weight == e.name;
        for (const auto& o : jobs.back().transpose_outputs) tied = tied || w.weight == o;
        if (!tied) continue;
        w.reason = "tied to the embedding '" + e.name +
                   "': quantized once with it (see the report's embeddings)";
        w.bytes_before = w.bytes_after = 0;
      }
    }
    report.embeddings.push_back(std::move(r));
  }
  return jobs;
}

void build_embeddings(const model& m, const quantize_options& options,
                      std::vector<embedding_job>& jobs, name_set& names, quantize_report& report) {
  for (embedding_job& job : jobs) {
    const auto start = std::chrono::steady_clock::now();
    const embedding_info& e = *job.info;
    job.tied_job.info = &job.tied_info;
    embedding_report& er = report.embeddings[job.report_index];
    tensor_report& r = er.tensor;
    const quant_config& c = job.config;
    const std::size_t V = e.rows, D = e.cols;

    // [V, D], the constant path applied (logical_weight checks the shape).
    const xt::xtensor<float, 2> table = logical_weight(m, table_weight(e), 1.0f);
    const std::string& stem = table_stem(e);
    const xt::xtensor<float, 2> lw = xt::transpose(table);  // W[K = D, N = V]
    int4q::quant_options qo;
    qo.threads = options.threads;
    quantized<float> q;
    try {
      q = int4q::quant_tensor(lw, c, qo);
    } catch (const int4q::non_finite_error& ex) {
      throw model_error(model_error::kind::invalid, "table '" + e.name + "': " + ex.what());
    }
    const int4q::error_stats stats = int4q::measure_error(lw, q);
    const std::size_t G = q.num_groups();
    const std::string bits = std::to_string(c.bits);
    // Stored layout [V, D]: codes, scales and zero points per vocabulary row.
    const xt::xtensor<std::uint8_t, 2> codes = xt::transpose(q.codes);  // [V, D]
    const xt::xtensor<float, 2> scales = xt::transpose(q.scales);       // [V, G]
    std::size_t after = 0;
    switch (options.format) {
      case output_format::matmulnbits: {
        // GatherBlockQuantized, uint8 data [V, D * bits / 8] (bits attribute), scales [V, G],
        // zero points packed like MatMulNBits' [V, ceil(G * bits / 8)] (absent: 2^(bits-1)).
        const std::vector<std::uint8_t> data = int4q::pack_flat(codes, c.bits);
        job.data_name = names.unique(stem + "_Q" + bits);
        job.scales_name = names.unique(stem + "_scales");
        job.tensors.push_back(make_tensor(job.data_name, TensorProto::UINT8,
                                          {i64(V), i64(D * c.bits / 8)}, data.data(), data.size()));
        job.tensors.push_back(float_tensor(job.scales_name, e.type, {i64(V), i64(G)},
                                           std::vector<float>(scales.begin(), scales.end())));
        after = data.size() + scales.size() * elem_size(e.type);
        if (c.has_zero_points()) {
          const auto z = int4q::pack_matmulnbits_zero_points(q.zero_points, c.bits);
          job.zero_points_name = names.unique(stem + "_zero_points");
          job.tensors.push_back(make_tensor(job.zero_points_name, TensorProto::UINT8,
                                            {i64(V), i64(z.shape()[1])}, z.data(), z.size()));
          after += z.size();
        }
        if (!e.tied.empty()) {
          // MatMulNBits reads the same bytes as B [V, G, group * bits / 8] (D is a multiple of
          // the group: checked by plan_embeddings) through a Reshape of the shared data.
          const std::size_t gs = c.effective_group_size(D);
          job.shape_name = names.unique(stem + "_Q" + bits + "_shape");
          job.reshaped_name = names.unique(stem + "_Q" + bits + "_B");
          job.tensors.push_back(
              int64_tensor(job.shape_name, {3}, {i64(V), i64(G), i64(gs * c.bits / 8)}));
          after += 3 * 8;
          job.tied_job.data_name = job.reshaped_name;
          job.tied_job.scales_name = job.scales_name;
          job.tied_job.zero_points_name = job.zero_points_name;
          er.shared = true;
          er.bytes_saved_by_sharing = after - 3 * 8;
        }
        break;
      }
      case output_format::qdq: {
        const bool symmetric = !c.has_zero_points();
        const int type = c.bits == 4 ? (symmetric ? onnx_int4 : onnx_uint4)
                                     : (symmetric ? TensorProto::INT8 : TensorProto::UINT8);
        const bool per_channel = c.granularity == grouping::per_channel;
        const std::vector<std::int64_t> scale_dims =
            per_channel ? std::vector<std::int64_t>{i64(V)}
                        : std::vector<std::int64_t>{i64(V), i64(G)};
        const std::vector<std::uint8_t> data = int4q::pack_flat(
            codes, c.bits, symmetric ? code_sign::signed_codes : code_sign::unsigned_codes);
        job.data_name = names.unique(stem + "_DQ_Q" + bits);
        job.scales_name = names.unique(stem + "_DQ_scales");
        job.tensors.push_back(
            make_tensor(job.data_name, type, {i64(V), i64(D)}, data.data(), data.size()));
        job.tensors.push_back(float_tensor(job.scales_name, e.type, scale_dims,
                                           std::vector<float>(scales.begin(), scales.end())));
        after = data.size() + scales.size() * elem_size(e.type);
        if (!symmetric) {
          const xt::xtensor<std::uint8_t, 2> zps = xt::transpose(q.zero_points);  // [V, G]
          const std::vector<std::uint8_t> z = int4q::pack_flat(zps, c.bits);
          job.zero_points_name = names.unique(stem + "_DQ_zero_points");
          job.tensors.push_back(
              make_tensor(job.zero_points_name, type, scale_dims, z.data(), z.size()));
          after += z.size();
        }
        er.shared = !e.tied.empty();
        er.bytes_saved_by_sharing = er.shared ? after : 0;
        break;
      }
      case output_format::fake: {
        const xt::xtensor<float, 2> dq = xt::transpose(int4q::dequant(q, qo));  // [V, D]
        // In place into a stored table; a table on a constant path reads a new one (the path
        // stays for any other reader of its tensors).
        job.data_name = e.path_nodes.empty() ? e.name : names.unique(stem + "_fake");
        job.tensors.push_back(
            float_tensor(job.data_name, e.type, e.dims, std::vector<float>(dq.begin(), dq.end())));
        after = V * D * elem_size(e.type);
        er.shared = !e.tied.empty();
        break;
      }
    }
    record_quantized(r, c, D, stats, after, start);
  }
}

void rewrite_embeddings(model& m, const quantize_options& options, std::vector<embedding_job>& jobs,
                        name_set& names) {
  if (jobs.empty()) return;
  GraphProto& g = *m.proto.mutable_graph();
  for (embedding_job& job : jobs) {
    const embedding_info& e = *job.info;
    const quant_config& c = job.config;
    const std::string bits = std::to_string(c.bits);
    const std::string& stem = table_stem(e);
    node_list_edit edit;
    switch (options.format) {
      case output_format::matmulnbits: {
        for (auto& t : job.tensors) g.add_initializer()->Swap(&t);
        for (const std::string& out : job.gather_outputs) {
          const int i = node_with_output(g, out);
          const NodeProto& gather = g.node(i);
          NodeProto q;
          q.set_op_type("GatherBlockQuantized");
          q.set_domain("com.microsoft");
          q.set_name(names.unique((gather.name().empty() ? stem + "_Gather" : gather.name()) +
                                  "_Q" + bits));
          q.add_input(job.data_name);
          q.add_input(gather.input(1));
          q.add_input(job.scales_name);
          if (!job.zero_points_name.empty()) q.add_input(job.zero_points_name);
          q.add_output(out);
          set_attr_int(q, "gather_axis", 0);
          set_attr_int(q, "quantize_axis", 1);
          set_attr_int(q, "bits", c.bits);
          set_attr_int(q, "block_size", i64(c.effective_group_size(e.cols)));
          edit.replacement[i].push_back(std::move(q));
        }
        int first_tied = -1;
        for (std::size_t k = 0; k < job.tied_outputs.size(); ++k) {
          const int i = node_with_output(g, job.tied_outputs[k]);
          first_tied = first_tied < 0 ? i : std::min(first_tied, i);
          weight_use u = e.tied[k];
          u.node_index = i;
          edit.replacement[i] = matmulnbits_nodes(g, g.node(i), options, job.tied_job, u,
                                                  job.tied_job.bias[k], names);
        }
        if (first_tied >= 0) {
          NodeProto reshape;
          reshape.set_op_type("Reshape");
          reshape.set_name(names.unique(stem + "_Q" + bits + "_reshape"));
          reshape.add_input(job.data_name);
          reshape.add_input(job.shape_name);
          reshape.add_output(job.reshaped_name);
          edit.before[first_tied].push_back(std::move(reshape));
        }
        apply_node_list_edit(g, edit);
        break;
      }
      case output_format::qdq: {
        for (auto& t : job.tensors) g.add_initializer()->Swap(&t);
        const std::string output = names.unique(stem + "_DQ_Q" + bits + "_output");
        int first = -1;
        for (int i = 0; i < g.node_size(); ++i) {
          NodeProto& n = *g.mutable_node(i);
          for (int j = 0; j < n.input_size(); ++j) {
            if (n.input(j) != e.name) continue;
            n.set_input(j, output);
            if (first < 0) first = i;
          }
        }
        NodeProto dq;
        dq.set_op_type("DequantizeLinear");
        const int gi = node_with_output(g, job.gather_outputs.front());
        const std::string gname = g.node(gi).name().empty() ? stem : g.node(gi).name();
        dq.set_name(names.unique(gname + "_DQ_Q" + bits));
        dq.add_input(job.data_name);
        dq.add_input(job.scales_name);
        if (!job.zero_points_name.empty()) dq.add_input(job.zero_points_name);
        dq.add_output(output);
        if (c.granularity == grouping::per_channel) {
          set_attr_int(dq, "axis", 0);  // one scale per vocabulary row
        } else {
          set_attr_int(dq, "axis", 1);  // groups along D
          set_attr_int(dq, "block_size", i64(c.group_size));
        }
        edit.before[first].push_back(std::move(dq));
        apply_node_list_edit(g, edit);
        break;
      }
      case output_format::fake:
        if (e.path_nodes.empty()) {
          mutable_table_tensor(m, e.name)->Swap(&job.tensors.front());
          break;
        }
        // Every reader of the path's output (Gathers, tied nodes, Transposes) reads the new
        // table.
        g.add_initializer()->Swap(&job.tensors.front());
        for (auto& n : *g.mutable_node())
          for (int j = 0; j < n.input_size(); ++j)
            if (n.input(j) == e.name) n.set_input(j, job.data_name);
        break;
    }
    job.tensors.clear();
    if (options.format == output_format::fake && e.path_nodes.empty()) continue;
    // The Transposes, the constant path (its output side first: a removed node no longer reads
    // its input) and the float table go once nothing reads them; what another node still reads
    // stays.
    auto refs = count_references(g);
    auto remove_node = [&](const std::string& out) {
      if (refs[out] != 0) return;
      const int i = node_with_output(g, out);
      if (i < 0) return;
      g.mutable_node()->DeleteSubrange(i, 1);
      remove_tensor(g, out);  // its value_info
      refs = count_references(g);
    };
    for (const std::string& out : job.transpose_outputs) remove_node(out);
    for (auto it = job.path_outputs.rbegin(); it != job.path_outputs.rend(); ++it) remove_node(*it);
    for (const std::string& aux : job.path_aux)
      if (refs[aux] == 0) remove_tensor(g, aux);
    if (refs[stem] == 0) remove_tensor(g, stem);
  }
  if (options.format == output_format::matmulnbits) add_microsoft_opset(m);
}

}  // namespace detail
}  // namespace onnx
}  // namespace int4q

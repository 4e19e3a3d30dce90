// The three writers: MatMulNBits (com.microsoft), DequantizeLinear-21 + the original node, and
// fake-quant values. Layouts: docs/onnx.md and ../shared/reference/formats.md.
#include <algorithm>
#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include <int4q/dequant.hpp>
#include <int4q/metrics.hpp>
#include <int4q/onnx/tensor_types.hpp>
#include <int4q/pack.hpp>
#include <int4q/quantize.hpp>

#include "writers.hpp"

namespace int4q {
namespace onnx {
namespace detail {

using ::onnx::GraphProto;
using ::onnx::NodeProto;
using ::onnx::TensorProto;

namespace {

std::int64_t i64(std::size_t v) { return static_cast<std::int64_t>(v); }

/// The stored tensor of a weight: the initializer or the Constant node's value.
const TensorProto& weight_tensor(const model& m, const weight_info& w) {
  const GraphProto& g = graph_at(m.proto.graph(), w.defined_in);
  if (w.from_constant_node) {
    const NodeProto& n = g.node(w.constant_node_index);
    const auto* a = find_attr(n, "value");
    if (!a || !a->has_t()) {
      throw model_error(model_error::kind::invalid, "Constant node '" + n.name() +
                                                        "' holding weight '" + w.name +
                                                        "' has no tensor 'value' attribute");
    }
    return a->t();
  }
  for (const auto& t : g.initializer())
    if (t.name() == w.name) return t;
  throw model_error(model_error::kind::invalid, "weight '" + w.name + "' is not an initializer");
}

TensorProto* mutable_weight_tensor(model& m, const weight_info& w) {
  GraphProto& g = graph_at(*m.proto.mutable_graph(), w.defined_in);
  if (w.from_constant_node) {
    NodeProto& n = *g.mutable_node(w.constant_node_index);
    for (auto& a : *n.mutable_attribute())
      if (a.name() == "value") return a.mutable_t();
    return nullptr;
  }
  for (auto& t : *g.mutable_initializer())
    if (t.name() == w.name) return &t;
  return nullptr;
}

std::vector<float> to_vector(const xt::xtensor<float, 2>& x) {
  return std::vector<float>(x.begin(), x.end());
}

/// The logical weight W[K, N] (transposed from [N, K] for Gemm transB = 1) times alpha.
xt::xtensor<float, 2> logical_weight(const model& m, const weight_info& w, float alpha) {
  xt::xtensor<float, 2> stored = read_matrix(m, weight_tensor(m, w));
  const bool trans = !w.uses.empty() && w.uses.front().trans_b;
  xt::xtensor<float, 2> lw =
      trans ? xt::xtensor<float, 2>(xt::transpose(stored)) : std::move(stored);
  if (lw.shape()[0] != w.k || lw.shape()[1] != w.n) {
    throw model_error(model_error::kind::invalid,
                      "weight '" + w.name + "' holds [" + std::to_string(lw.shape()[0]) + ", " +
                          std::to_string(lw.shape()[1]) + "] but its nodes need K = " +
                          std::to_string(w.k) + ", N = " + std::to_string(w.n));
  }
  if (alpha != 1.0f) {
    for (auto& v : lw) v *= alpha;
  }
  return lw;
}

std::string node_base_name(const NodeProto& n, const weight_use& u) {
  return n.name().empty() ? display_name(u) : n.name();
}

}  // namespace

std::string plan_writes(const model& m, const weight_info& w, output_format format,
                        weight_job& job) {
  const GraphProto& g = m.proto.graph();
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
  if (format != output_format::matmulnbits) return "";
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
    bias_plan& b = job.bias[i];
    b.c = u.bias;
    b.beta = u.beta;
    const TensorProto* c = constant_tensor_in_scope(g, u.path, u.bias, &b.c_defined_in);
    if (!c) {
      b.how = bias_plan::kind::add;
      continue;
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
  }
  return "";
}

void build_tensors(const model& m, const quantize_options& options, weight_job& job,
                   name_set& names, tensor_report& report,
                   const std::map<std::string, int>& references) {
  const auto start = std::chrono::steady_clock::now();
  const weight_info& w = *job.info;
  const quant_config& c = job.config;
  const bool trans = w.uses.front().trans_b;
  int4q::quant_options qo;
  qo.threads = options.threads;

  xt::xtensor<float, 2> lw = logical_weight(m, w, job.alpha);
  if (job.scale_weight) job.scale_weight(lw);
  quantized<float> q;
  try {
    q = job.quantize ? job.quantize(lw) : int4q::quant_tensor(lw, c, qo);
  } catch (const int4q::non_finite_error& e) {
    throw model_error(model_error::kind::invalid, "weight '" + w.name + "': " + e.what());
  }
  // The error one group of rows at a time: no dequantized copy of the weight in memory (the
  // fake writer makes its own below).
  const int4q::error_stats stats = int4q::measure_error(lw, q);

  const std::size_t K = w.k, N = w.n, G = q.num_groups();
  const std::string bits = std::to_string(c.bits);
  std::size_t after = 0;
  switch (options.format) {
    case output_format::matmulnbits: {
      const auto t = int4q::pack_matmulnbits(q);
      job.data_name = names.unique(w.name + "_Q" + bits);
      job.scales_name = names.unique(w.name + "_scales");
      job.stored_dims = {i64(N), i64(G), i64(t.b.shape()[2])};
      job.tensors.push_back(
          make_tensor(job.data_name, TensorProto::UINT8, job.stored_dims, t.b.data(), t.b.size()));
      job.tensors.push_back(
          float_tensor(job.scales_name, w.type, {i64(N), i64(G)}, to_vector(t.scales)));
      after = t.b.size() + t.scales.size() * elem_size(w.type);
      if (c.has_zero_points()) {
        job.zero_points_name = names.unique(w.name + "_zero_points");
        job.tensors.push_back(make_tensor(job.zero_points_name, TensorProto::UINT8,
                                          {i64(N), i64(t.zero_points.shape()[1])},
                                          t.zero_points.data(), t.zero_points.size()));
        after += t.zero_points.size();
      }
      break;
    }
    case output_format::qdq: {
      const bool symmetric = !c.has_zero_points();
      const int type = c.bits == 4 ? (symmetric ? onnx_int4 : onnx_uint4)
                                   : (symmetric ? TensorProto::INT8 : TensorProto::UINT8);
      const auto sign = symmetric ? code_sign::signed_codes : code_sign::unsigned_codes;
      const bool per_channel = c.granularity == grouping::per_channel;
      // Stored layout: [K, N] for MatMul / Gemm transB = 0, [N, K] for transB = 1.
      const xt::xtensor<std::uint8_t, 2> codes =
          trans ? xt::xtensor<std::uint8_t, 2>(xt::transpose(q.codes)) : q.codes;
      const xt::xtensor<float, 2> scales =
          trans ? xt::xtensor<float, 2>(xt::transpose(q.scales)) : q.scales;
      const xt::xtensor<std::uint8_t, 2> zps =
          trans ? xt::xtensor<std::uint8_t, 2>(xt::transpose(q.zero_points)) : q.zero_points;
      std::vector<std::int64_t> scale_dims;
      if (per_channel) {
        scale_dims = {i64(N)};
      } else {
        scale_dims = trans ? std::vector<std::int64_t>{i64(N), i64(G)}
                           : std::vector<std::int64_t>{i64(G), i64(N)};
      }
      job.stored_dims = trans ? std::vector<std::int64_t>{i64(N), i64(K)}
                              : std::vector<std::int64_t>{i64(K), i64(N)};
      job.data_name = names.unique(w.name + "_DQ_Q" + bits);
      job.scales_name = names.unique(w.name + "_DQ_scales");
      const std::vector<std::uint8_t> data = int4q::pack_flat(codes, c.bits, sign);
      job.tensors.push_back(
          make_tensor(job.data_name, type, job.stored_dims, data.data(), data.size()));
      job.tensors.push_back(float_tensor(job.scales_name, w.type, scale_dims, to_vector(scales)));
      after = data.size() + scales.size() * elem_size(w.type);
      if (!symmetric) {
        job.zero_points_name = names.unique(w.name + "_DQ_zero_points");
        const std::vector<std::uint8_t> z =
            int4q::pack_flat(zps, c.bits, code_sign::unsigned_codes);
        job.tensors.push_back(
            make_tensor(job.zero_points_name, type, scale_dims, z.data(), z.size()));
        after += z.size();
      }
      break;
    }
    case output_format::fake: {
      xt::xtensor<float, 2> dq = int4q::dequant(q, qo);
      const xt::xtensor<float, 2> stored =
          trans ? xt::xtensor<float, 2>(xt::transpose(dq)) : std::move(dq);
      job.stored_dims = trans ? std::vector<std::int64_t>{i64(N), i64(K)}
                              : std::vector<std::int64_t>{i64(K), i64(N)};
      const auto it = references.find(w.name);
      const int refs = it == references.end() ? 0 : it->second;
      job.in_place = refs == static_cast<int>(w.uses.size());
      job.data_name = job.in_place ? weight_tensor(m, w).name() : names.unique(w.name + "_fake");
      job.tensors.push_back(
          float_tensor(job.data_name, w.type, job.stored_dims, to_vector(stored)));
      after = K * N * elem_size(w.type);
      break;
    }
  }

  record_quantized(report, c, K, stats, after, start);
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

namespace {

void add_initializer(GraphProto& g, TensorProto&& t) { g.add_initializer()->Swap(&t); }

}  // namespace

/// MatMulNBits (plus Mul/Add for a non-constant bias) in place of one MatMul/Gemm `orig`; new
/// initializers go to `g` (the graph holding the weight, visible from `orig`).
std::vector<NodeProto> matmulnbits_nodes(GraphProto& g, const NodeProto& orig,
                                         const quantize_options& options, const weight_job& job,
                                         const weight_use& u, const bias_plan& b, name_set& names) {
  const weight_info& w = *job.info;
  const std::string base = node_base_name(orig, u);
  std::vector<NodeProto> out;

  NodeProto mnb;
  mnb.set_op_type("MatMulNBits");
  mnb.set_domain("com.microsoft");
  mnb.set_name(names.unique(base + "_Q" + std::to_string(job.config.bits)));
  mnb.add_input(orig.input(0));
  mnb.add_input(job.data_name);
  mnb.add_input(job.scales_name);
  if (!job.zero_points_name.empty()) mnb.add_input(job.zero_points_name);
  set_attr_int(mnb, "K", i64(w.k));
  set_attr_int(mnb, "N", i64(w.n));
  set_attr_int(mnb, "bits", job.config.bits);
  set_attr_int(mnb, "block_size", i64(job.config.effective_group_size(w.k)));
  if (options.accuracy_level) set_attr_int(mnb, "accuracy_level", *options.accuracy_level);

  switch (b.how) {
    case bias_plan::kind::none:
      mnb.add_output(orig.output(0));
      out.push_back(std::move(mnb));
      break;
    case bias_plan::kind::fold: {
      std::string bias = b.c;
      if (!b.reuse_c) {
        bias = names.unique(b.c + "_bias");
        add_initializer(g, float_tensor(bias, w.type, {i64(w.n)}, b.folded));
      }
      while (mnb.input_size() < 5) mnb.add_input("");  // zero_points (absent), g_idx (deprecated)
      mnb.add_input(bias);
      mnb.add_output(orig.output(0));
      out.push_back(std::move(mnb));
      break;
    }
    case bias_plan::kind::add: {
      std::string c = b.c;
      if (b.beta != 1.0f) {
        const std::string beta = names.unique(base + "_beta");
        add_initializer(g, float_tensor(beta, w.type, {}, {b.beta}));
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
      break;
    }
  }
  return out;
}

namespace {

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
    set_attr_int(dq, "block_size", i64(c.group_size));
  }
  return dq;
}

}  // namespace

namespace {

/// The new nodes of one (sub)graph: inserted before, or replacing, the node at an index.
struct graph_edit {
  GraphProto* g = nullptr;
  std::map<int, std::vector<NodeProto>> before, replacement;
};

/// The index, in the graph at `outer` (an enclosing graph of the use, or its own), of the node
/// that is the use or holds the subgraph leading to it.
int index_in(const std::vector<graph_step>& outer, const weight_use& u) {
  return u.path.size() == outer.size() ? u.node_index : u.path[outer.size()].node_index;
}

/// Rebuilds the node list in order: inserted nodes before their node, replacements in place.
/// The kept nodes are moved by pointer, so the subgraphs they hold stay where they are (other
/// edits hold pointers to them).
void apply_edit(graph_edit& e) {
  auto* nodes = e.g->mutable_node();
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

}  // namespace

void rewrite_graph(model& m, const quantize_options& options, std::vector<weight_job>& jobs,
                   name_set& names) {
  if (jobs.empty()) return;
  GraphProto& main = *m.proto.mutable_graph();
  // Every graph is found (by node indices) before any node list changes.
  std::map<std::string, graph_edit> edits;
  auto edit_of = [&](const std::vector<graph_step>& path) -> graph_edit& {
    graph_edit& e = edits[path_key(path)];
    if (!e.g) e.g = &graph_at(main, path);
    return e;
  };
  auto node_of = [&](const weight_use& u) -> NodeProto& {
    return *graph_at(main, u.path).mutable_node(u.node_index);
  };
  std::vector<std::pair<GraphProto*, std::string>> released;

  for (weight_job& job : jobs) {
    const weight_info& w = *job.info;
    // New initializers go to the graph holding the weight: every use sees it.
    GraphProto& wg = graph_at(main, w.defined_in);
    switch (options.format) {
      case output_format::matmulnbits: {
        for (auto& t : job.tensors) add_initializer(wg, std::move(t));
        for (std::size_t i = 0; i < w.uses.size(); ++i) {
          const weight_use& u = w.uses[i];
          edit_of(u.path).replacement[u.node_index] =
              matmulnbits_nodes(wg, node_of(u), options, job, u, job.bias[i], names);
          if (job.bias[i].how == bias_plan::kind::fold && !job.bias[i].reuse_c)
            released.emplace_back(&graph_at(main, job.bias[i].c_defined_in), job.bias[i].c);
        }
        released.emplace_back(&wg, w.name);
        break;
      }
      case output_format::qdq: {
        // One DequantizeLinear in the graph holding the weight, before the first node that uses
        // it (directly or from a subgraph): computed once, its output visible to every use.
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
            names.unique(node_base_name(node_of(*first_use), *first_use) + "_DQ_Q" + bits);
        const std::string output = names.unique(w.name + "_DQ_Q" + bits + "_output");
        edit_of(w.defined_in).before[first].push_back(dequantize_node(job, name, output));
        for (const auto& u : w.uses) {
          NodeProto& n = node_of(u);
          n.set_input(1, output);
          if (job.alpha != 1.0f) remove_attr(n, "alpha");  // folded into the weight
        }
        released.emplace_back(&wg, w.name);
        break;
      }
      case output_format::fake: {
        TensorProto& values = job.tensors.front();
        if (job.in_place) {
          mutable_weight_tensor(m, w)->Swap(&values);
        } else {
          add_initializer(wg, std::move(values));
        }
        for (const auto& u : w.uses) {
          NodeProto& n = node_of(u);
          if (!job.in_place) n.set_input(1, job.data_name);
          if (job.alpha != 1.0f) remove_attr(n, "alpha");  // folded into the weight
        }
        break;
      }
    }
    job.tensors.clear();
  }

  for (auto& [key, e] : edits) apply_edit(e);

  // Originals nothing reads any more (weights, folded biases) go. References are counted by
  // name over every graph: a name also read elsewhere (even a shadowing one) is kept.
  const auto refs = count_references(main);
  for (const auto& [g, name] : released) {
    const auto it = refs.find(name);
    if (it == refs.end() || it->second == 0) remove_tensor(*g, name);
  }

  if (options.format == output_format::matmulnbits) {
    bool has = false;
    for (const auto& o : m.proto.opset_import()) has = has || o.domain() == "com.microsoft";
    if (!has) {
      auto* o = m.proto.add_opset_import();
      o->set_domain("com.microsoft");
      o->set_version(1);
    }
  }
}

}  // namespace detail
}  // namespace onnx
}  // namespace int4q

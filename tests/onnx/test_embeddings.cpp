// Embeddings (--embeddings quantize): find_embeddings, GatherBlockQuantized / DequantizeLinear +
// Gather / fake-quant tables, tied lm_heads sharing the quantized table. The written tensors are
// decoded here with plain loops from the layouts of docs/onnx.md ("Embeddings") and compared
// with the core's dequantized grid; the models are run by int4q's executor against the
// fake-quant twin.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/quantize_model.hpp>
#include <int4q/onnx/weights.hpp>
#include <int4q/quant.hpp>

#include "onnx/graph_builder.hpp"

namespace {

using int4q::onnx::embedding_policy;
using int4q::onnx::model;
using int4q::onnx::output_format;
using int4q::onnx::quantize_model;
using int4q::onnx::quantize_options;
using int4q::onnx::value;
using int4q::test::find_attr;
using int4q::test::find_initializer;
using int4q::test::find_nodes;
using int4q::test::graph_builder;
using int4q::test::onnx_float;
using int4q::test::onnx_int64;

enum class tie { none, gemm, transpose, matmul_direct };

constexpr std::int64_t tokens = 10;

/// ids [10] -> Gather(emb [V, D]) -> h [10, D]; tied: logits [10, V] = h @ emb^T (Gemm transB 1
/// or Transpose + MatMul), or matmul_direct: h2 [10, D] from ids2 [10, V]... = x @ emb.
graph_builder embedding_graph(std::int64_t V, std::int64_t D, tie t, std::uint32_t seed = 5) {
  graph_builder g;
  g.input("ids", onnx_int64, {tokens});
  g.initializer("emb", onnx_float, {V, D}, int4q::test::random_values(V * D, seed, 0.5f));
  g.node("Gather", {"emb", "ids"}, {"h"}, "embed");
  g.output("h", onnx_float, {tokens, D});
  switch (t) {
    case tie::none: break;
    case tie::gemm: {
      int4q::test::gemm_attrs a;
      a.trans_b = true;
      g.gemm("head", "h", "emb", "", "logits", a);
      g.output("logits", onnx_float, {tokens, V});
      break;
    }
    case tie::transpose:
      g.node("Transpose", {"emb"}, {"emb_t"}, "emb_transpose");
      g.matmul("head", "h", "emb_t", "logits");
      g.output("logits", onnx_float, {tokens, V});
      break;
    case tie::matmul_direct:
      g.input("x", onnx_float, {tokens, V});
      g.matmul("proj", "x", "emb", "y");
      g.output("y", onnx_float, {tokens, D});
      break;
  }
  return g;
}

std::map<std::string, value> feeds(std::int64_t V, bool with_x) {
  std::vector<std::int64_t> ids(tokens);
  for (std::int64_t i = 0; i < tokens; ++i) ids[i] = (i * 7 + 3) % V;
  std::map<std::string, value> in{{"ids", value::ints({tokens}, ids)}};
  if (with_x) in["x"] = value::floats({tokens, V}, int4q::test::random_values(tokens * V, 9));
  return in;
}

std::map<std::string, value> run(const model& m, std::int64_t V, bool with_x) {
  return int4q::onnx::executor(m, 1).run(feeds(V, with_x));
}

quantize_options options_for(output_format f, int bits, std::size_t group, bool symmetric) {
  quantize_options o;
  o.format = f;
  o.embeddings = embedding_policy::quantize;
  o.config.bits = bits;
  o.config.group_size = group;
  o.config.scheme = symmetric ? int4q::scheme::symmetric : int4q::scheme::asymmetric;
  o.lm_head = int4q::onnx::lm_head_policy::quantize;
  o.threads = 1;
  return o;
}

/// The table [V, D] as the core quantizes and dequantizes it: W = table^T [D, V], groups along
/// D, transposed back.
std::vector<float> reference_table(const graph_builder& g, const int4q::quant_config& c,
                                   std::int64_t V, std::int64_t D) {
  const ::onnx::ModelProto p = g.build();
  const auto* t = find_initializer(p, "emb");
  std::vector<float> v(static_cast<std::size_t>(V * D));
  std::memcpy(v.data(), t->raw_data().data(), v.size() * 4);
  xt::xtensor<float, 2> w = xt::zeros<float>({std::size_t(D), std::size_t(V)});
  for (std::int64_t r = 0; r < V; ++r)
    for (std::int64_t d = 0; d < D; ++d) w(d, r) = v[r * D + d];
  const xt::xtensor<float, 2> q = int4q::qdq(w, c);
  std::vector<float> out(v.size());
  for (std::int64_t r = 0; r < V; ++r)
    for (std::int64_t d = 0; d < D; ++d) out[r * D + d] = q(d, r);
  return out;
}

std::vector<float> floats_of(const ::onnx::TensorProto& t) {
  std::vector<float> v(t.raw_data().size() / 4);
  std::memcpy(v.data(), t.raw_data().data(), v.size() * 4);
  return v;
}

/// The element at `index` of a bit stream of `bits`-bit codes (first element in the low bits).
int stream_code(const std::string& bytes, std::size_t offset, std::size_t index, int bits) {
  const std::size_t bit = index * static_cast<std::size_t>(bits);
  const auto byte = static_cast<std::uint8_t>(bytes[offset + bit / 8]);
  return (byte >> (bit % 8)) & ((1 << bits) - 1);
}

/// GatherBlockQuantized (uint8 data, quantize_axis 1) decoded from formats.md: data [V, D*bits/8]
/// row by row, scales [V, G], zero points [V, ceil(G*bits/8)] (default 2^(bits-1)).
std::vector<float> decode_gbq(const ::onnx::ModelProto& p, const ::onnx::NodeProto& n,
                              std::int64_t V, std::int64_t D) {
  const int bits = static_cast<int>(find_attr(n, "bits")->i());
  const std::int64_t bs = find_attr(n, "block_size")->i();
  const std::int64_t G = (D + bs - 1) / bs;
  const auto* data = find_initializer(p, n.input(0));
  const auto* scales = find_initializer(p, n.input(2));
  const auto* zp = n.input_size() > 3 ? find_initializer(p, n.input(3)) : nullptr;
  EXPECT_EQ(data->data_type(), int4q::test::onnx_uint8);
  EXPECT_EQ(data->dims(0), V);
  EXPECT_EQ(data->dims(1), D * bits / 8);
  EXPECT_EQ(scales->dims(0), V);
  EXPECT_EQ(scales->dims(1), G);
  const std::vector<float> s = floats_of(*scales);
  const std::size_t row = static_cast<std::size_t>(D * bits / 8);
  const std::size_t zrow = static_cast<std::size_t>((G * bits + 7) / 8);
  std::vector<float> out(static_cast<std::size_t>(V * D));
  for (std::int64_t v = 0; v < V; ++v)
    for (std::int64_t d = 0; d < D; ++d) {
      const std::int64_t gi = d / bs;
      const int code = stream_code(data->raw_data(), std::size_t(v) * row, std::size_t(d), bits);
      const int z = zp ? stream_code(zp->raw_data(), std::size_t(v) * zrow, std::size_t(gi), bits)
                       : 1 << (bits - 1);
      out[std::size_t(v * D + d)] = static_cast<float>(code - z) * s[std::size_t(v * G + gi)];
    }
  return out;
}

void expect_same_outputs(const std::map<std::string, value>& a,
                         const std::map<std::string, value>& b, double tol) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, va] : a) {
    const value& vb = b.at(name);
    ASSERT_EQ(va.shape, vb.shape) << name;
    double peak = 0;
    for (float x : va.f) peak = std::max(peak, std::fabs(double(x)));
    for (std::size_t i = 0; i < va.f.size(); ++i)
      ASSERT_LE(std::fabs(double(va.f[i]) - vb.f[i]), tol * peak)
          << name << "[" << i << "] quantized " << va.f[i] << " fake " << vb.f[i];
  }
}

// Executor outputs of the quantized model against its fake-quant twin: the decoded weights are
// identical, only the summation order of MatMulNBits' GEMM may differ.
constexpr double executor_tol = 1e-6;

TEST(Embeddings, FindsTablesTiedUsesAndReasons) {
  {
    const model m = embedding_graph(32, 16, tie::gemm).model();
    const auto e = int4q::onnx::find_embeddings(m);
    ASSERT_EQ(e.size(), 1u);
    EXPECT_EQ(e[0].name, "emb");
    EXPECT_EQ(e[0].rows, 32u);
    EXPECT_EQ(e[0].cols, 16u);
    ASSERT_EQ(e[0].gathers.size(), 1u);
    ASSERT_EQ(e[0].tied.size(), 1u);
    EXPECT_TRUE(e[0].tied[0].trans_b);
    EXPECT_TRUE(e[0].quantizable) << e[0].reason;
    // find_weights keeps its meaning: the tied table is no plain MatMul weight.
    const auto w = int4q::onnx::find_weights(m);
    ASSERT_EQ(w.size(), 1u);
    EXPECT_FALSE(w[0].quantizable);
    EXPECT_NE(w[0].reason.find("Gather"), std::string::npos) << w[0].reason;
  }
  {
    const auto e = int4q::onnx::find_embeddings(embedding_graph(32, 16, tie::transpose).model());
    ASSERT_EQ(e.size(), 1u);
    ASSERT_EQ(e[0].tied.size(), 1u);
    EXPECT_TRUE(e[0].tied[0].trans_b);
    EXPECT_EQ(e[0].transposes.size(), 1u);
    EXPECT_TRUE(e[0].quantizable) << e[0].reason;
  }
  {
    const auto e =
        int4q::onnx::find_embeddings(embedding_graph(32, 16, tie::matmul_direct).model());
    ASSERT_EQ(e.size(), 1u);
    ASSERT_EQ(e[0].tied.size(), 1u);
    EXPECT_FALSE(e[0].tied[0].trans_b);  // the table itself is [K, N]
  }
  {
    // Another reader (Add), a Gather on axis 1, and Shape -> Gather (not a table).
    graph_builder g = embedding_graph(32, 16, tie::none);
    g.input("z", onnx_float, {32, 16});
    g.node("Add", {"emb", "z"}, {"sum"}, "add");
    g.output("sum", onnx_float, {32, 16});
    g.initializer("cols", onnx_float, {8, 32}, int4q::test::random_values(256, 3));
    auto& ga = g.node("Gather", {"cols", "ids"}, {"c"}, "by_column");
    int4q::test::set_attr(ga, "axis", std::int64_t(1));
    g.output("c", onnx_float, {8, tokens});
    g.node("Shape", {"h"}, {"shape"}, "shape");
    g.initializer_i64("zero", {}, {0});
    g.node("Gather", {"shape", "zero"}, {"d0"}, "shape_gather");
    g.output("d0", onnx_int64, {});
    const auto e = int4q::onnx::find_embeddings(g.model());
    ASSERT_EQ(e.size(), 2u);
    EXPECT_FALSE(e[0].quantizable);
    EXPECT_NE(e[0].reason.find("Add 'add'"), std::string::npos) << e[0].reason;
    EXPECT_FALSE(e[1].quantizable);
    EXPECT_NE(e[1].reason.find("axis 1"), std::string::npos) << e[1].reason;
  }
}

TEST(Embeddings, KeepIsTheDefaultAndChangesNothing) {
  model m = embedding_graph(32, 16, tie::gemm).model();
  const std::string before = m.proto.SerializeAsString();
  quantize_options o;
  o.config.group_size = 16;
  const auto r = quantize_model(m, o);  // lm_head keep, embeddings keep
  EXPECT_EQ(m.proto.SerializeAsString(), before);
  EXPECT_TRUE(r.embeddings.empty());
}

TEST(Embeddings, GatherBlockQuantizedDecodesToTheGrid) {
  struct grid {
    int bits;
    std::size_t group;
    bool symmetric;
  };
  for (const grid gr : {grid{4, 16, false}, grid{4, 32, true}, grid{8, 32, false},
                        grid{8, 16, true}, grid{2, 16, false}}) {
    SCOPED_TRACE("bits " + std::to_string(gr.bits) + " group " + std::to_string(gr.group) +
                 (gr.symmetric ? " symmetric" : " asymmetric"));
    const std::int64_t V = 48, D = 40;  // D = 40: a ragged last group at 16 and 32
    const graph_builder g = embedding_graph(V, D, tie::none);
    model q = g.model();
    const quantize_options o =
        options_for(output_format::matmulnbits, gr.bits, gr.group, gr.symmetric);
    const auto report = quantize_model(q, o);
    const auto nodes = find_nodes(q.proto, "GatherBlockQuantized");
    ASSERT_EQ(nodes.size(), 1u);
    const auto& n = *nodes[0];
    EXPECT_EQ(n.domain(), "com.microsoft");
    EXPECT_EQ(n.input(1), "ids");
    EXPECT_EQ(n.output(0), "h");
    EXPECT_EQ(find_attr(n, "gather_axis")->i(), 0);
    EXPECT_EQ(find_attr(n, "quantize_axis")->i(), 1);
    EXPECT_EQ(find_attr(n, "bits")->i(), gr.bits);
    EXPECT_EQ(find_attr(n, "block_size")->i(), std::int64_t(gr.group));
    EXPECT_EQ(n.input_size(), gr.symmetric ? 3 : 4);
    EXPECT_EQ(find_initializer(q.proto, "emb"), nullptr);  // the float table is gone
    EXPECT_TRUE(find_nodes(q.proto, "Gather").empty());

    const std::vector<float> want = reference_table(g, o.config, V, D);
    const std::vector<float> got = decode_gbq(q.proto, n, V, D);
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], want[i]) << "element " << i;

    // Report: one entry, its bytes = the tensors written.
    ASSERT_EQ(report.embeddings.size(), 1u);
    const auto& er = report.embeddings[0];
    EXPECT_TRUE(er.tensor.quantized) << er.tensor.reason;
    EXPECT_EQ(er.tensor.bytes_before, std::size_t(V * D * 4));
    const std::size_t G = (D + gr.group - 1) / gr.group;
    const std::size_t expect_after = std::size_t(V * D * gr.bits / 8) + V * G * 4 +
                                     (gr.symmetric ? 0 : V * ((G * gr.bits + 7) / 8));
    EXPECT_EQ(er.tensor.bytes_after, expect_after);
    EXPECT_FALSE(er.shared);

    // The executor runs it like the fake-quant twin.
    model fake = g.model();
    quantize_model(fake, options_for(output_format::fake, gr.bits, gr.group, gr.symmetric));
    expect_same_outputs(run(q, V, false), run(fake, V, false), 0.0);
  }
}

TEST(Embeddings, TiedLmHeadSharesOneQuantizedTable) {
  for (const tie t : {tie::gemm, tie::transpose}) {
    SCOPED_TRACE(t == tie::gemm ? "Gemm transB" : "Transpose + MatMul");
    const std::int64_t V = 64, D = 32;
    const graph_builder g = embedding_graph(V, D, t);
    model q = g.model();
    const quantize_options o = options_for(output_format::matmulnbits, 4, 16, false);
    const auto report = quantize_model(q, o);
    const auto gbq = find_nodes(q.proto, "GatherBlockQuantized");
    const auto mnb = find_nodes(q.proto, "MatMulNBits");
    const auto reshape = find_nodes(q.proto, "Reshape");
    ASSERT_EQ(gbq.size(), 1u);
    ASSERT_EQ(mnb.size(), 1u);
    ASSERT_EQ(reshape.size(), 1u);
    // One copy of the codes: MatMulNBits' B is the Reshape of GatherBlockQuantized's data; the
    // scales and zero points are the same initializers.
    EXPECT_EQ(reshape[0]->input(0), gbq[0]->input(0));
    EXPECT_EQ(mnb[0]->input(1), reshape[0]->output(0));
    EXPECT_EQ(mnb[0]->input(2), gbq[0]->input(2));
    EXPECT_EQ(mnb[0]->input(3), gbq[0]->input(3));
    EXPECT_EQ(find_attr(*mnb[0], "K")->i(), D);
    EXPECT_EQ(find_attr(*mnb[0], "N")->i(), V);
    EXPECT_EQ(find_attr(*mnb[0], "block_size")->i(), 16);
    const auto* shape = find_initializer(q.proto, reshape[0]->input(1));
    ASSERT_NE(shape, nullptr);
    std::vector<std::int64_t> dims(3);
    std::memcpy(dims.data(), shape->raw_data().data(), 24);
    EXPECT_EQ(dims, (std::vector<std::int64_t>{V, D / 16, 16 * 4 / 8}));
    EXPECT_EQ(find_initializer(q.proto, "emb"), nullptr);
    EXPECT_TRUE(find_nodes(q.proto, "Transpose").empty());
    std::size_t uint8_bytes = 0;
    for (const auto& init : q.proto.graph().initializer())
      if (init.data_type() == int4q::test::onnx_uint8) uint8_bytes += init.raw_data().size();
    EXPECT_EQ(uint8_bytes, std::size_t(V * D / 2 + V * 1));  // codes + zero points, once

    ASSERT_EQ(report.embeddings.size(), 1u);
    const auto& er = report.embeddings[0];
    EXPECT_TRUE(er.shared);
    ASSERT_EQ(er.tied.size(), 1u);
    EXPECT_EQ(er.tied[0], "head");
    const std::size_t G = D / 16;
    const std::size_t copy = std::size_t(V * D / 2) + V * G * 4 + V * ((G * 4 + 7) / 8);
    EXPECT_EQ(er.bytes_saved_by_sharing, copy);
    EXPECT_EQ(er.tensor.bytes_after, copy + 24);  // + the Reshape's shape
    // The tied weight's own entry is not counted twice.
    ASSERT_EQ(report.tensors.size(), 1u);
    EXPECT_EQ(report.tensors[0].bytes_before, 0u);
    EXPECT_NE(report.tensors[0].reason.find("tied to the embedding 'emb'"), std::string::npos);
    EXPECT_EQ(report.bytes_before, std::size_t(V * D * 4));
    EXPECT_EQ(report.bytes_after, copy + 24);

    model fake = g.model();
    quantize_model(fake, options_for(output_format::fake, 4, 16, false));
    expect_same_outputs(run(q, V, false), run(fake, V, false), executor_tol);
  }
}

TEST(Embeddings, QdqOneDequantizeLinearFeedsEveryReader) {
  for (const tie t : {tie::none, tie::gemm, tie::transpose, tie::matmul_direct}) {
    for (const bool symmetric : {false, true}) {
      SCOPED_TRACE("tie " + std::to_string(int(t)) + (symmetric ? " symmetric" : " asymmetric"));
      const std::int64_t V = 64, D = 40;
      const graph_builder g = embedding_graph(V, D, t);
      model q = g.model();
      const quantize_options o = options_for(output_format::qdq, 4, 16, symmetric);
      const auto report = quantize_model(q, o);
      const auto dq = find_nodes(q.proto, "DequantizeLinear");
      ASSERT_EQ(dq.size(), 1u);
      EXPECT_EQ(find_attr(*dq[0], "axis")->i(), 1);
      EXPECT_EQ(find_attr(*dq[0], "block_size")->i(), 16);
      EXPECT_EQ(int4q::test::opset_of(q.proto), 21);
      const auto* data = find_initializer(q.proto, dq[0]->input(0));
      EXPECT_EQ(data->data_type(), symmetric ? int4q::test::onnx_int4 : int4q::test::onnx_uint4);
      // Decoded from the layout (flat row-major nibbles, first in the low bits; INT4 two's
      // complement; scales [V, G] along axis 1): y = (x - zero_point) * scale.
      const std::int64_t G = (D + 15) / 16;
      const std::vector<float> s = floats_of(*find_initializer(q.proto, dq[0]->input(1)));
      const auto* zp = symmetric ? nullptr : find_initializer(q.proto, dq[0]->input(2));
      const std::vector<float> want = reference_table(g, o.config, V, D);
      for (std::int64_t v = 0; v < V; ++v)
        for (std::int64_t d = 0; d < D; ++d) {
          int x = stream_code(data->raw_data(), 0, std::size_t(v * D + d), 4);
          if (symmetric && x >= 8) x -= 16;
          const int z = zp ? stream_code(zp->raw_data(), 0, std::size_t(v * G + d / 16), 4) : 0;
          ASSERT_EQ(static_cast<float>(x - z) * s[std::size_t(v * G + d / 16)],
                    want[std::size_t(v * D + d)])
              << v << "," << d;
        }
      // Every reader of the table reads the DequantizeLinear output.
      for (const auto& n : q.proto.graph().node())
        for (const auto& in : n.input()) EXPECT_NE(in, "emb") << n.name();
      EXPECT_EQ(find_initializer(q.proto, "emb"), nullptr);
      ASSERT_EQ(report.embeddings.size(), 1u);
      EXPECT_EQ(report.embeddings[0].shared, t != tie::none);

      model fake = g.model();
      quantize_model(fake, options_for(output_format::fake, 4, 16, symmetric));
      expect_same_outputs(run(q, V, t == tie::matmul_direct), run(fake, V, t == tie::matmul_direct),
                          executor_tol);
    }
  }
}

TEST(Embeddings, QdqPerChannel8Bit) {
  const std::int64_t V = 32, D = 24;
  const graph_builder g = embedding_graph(V, D, tie::gemm);
  model q = g.model();
  quantize_options o = options_for(output_format::qdq, 8, 16, true);
  o.config.granularity = int4q::grouping::per_channel;
  quantize_model(q, o);
  const auto dq = find_nodes(q.proto, "DequantizeLinear");
  ASSERT_EQ(dq.size(), 1u);
  EXPECT_EQ(find_attr(*dq[0], "axis")->i(), 0);  // one scale per vocabulary row
  EXPECT_EQ(find_attr(*dq[0], "block_size"), nullptr);
  const auto* data = find_initializer(q.proto, dq[0]->input(0));
  EXPECT_EQ(data->data_type(), int4q::test::onnx_int8);
  const std::vector<float> s = floats_of(*find_initializer(q.proto, dq[0]->input(1)));
  ASSERT_EQ(s.size(), std::size_t(V));
  const std::vector<float> want = reference_table(g, o.config, V, D);
  for (std::int64_t i = 0; i < V * D; ++i) {
    const auto x = static_cast<std::int8_t>(data->raw_data()[std::size_t(i)]);
    ASSERT_EQ(static_cast<float>(x) * s[std::size_t(i / D)], want[std::size_t(i)]) << i;
  }
}

TEST(Embeddings, FakeRewritesTheTableInPlace) {
  const std::int64_t V = 32, D = 32;
  const graph_builder g = embedding_graph(V, D, tie::transpose);
  model q = g.model();
  const quantize_options o = options_for(output_format::fake, 4, 16, false);
  quantize_model(q, o);
  const auto* t = find_initializer(q.proto, "emb");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(floats_of(*t), reference_table(g, o.config, V, D));
  EXPECT_EQ(find_nodes(q.proto, "Gather").size(), 1u);
  EXPECT_EQ(find_nodes(q.proto, "Transpose").size(), 1u);
}

TEST(Embeddings, ReasonsWhenTheFormatCannotHoldIt) {
  struct refused {
    std::int64_t V, D;
    tie t;
    int bits;
    std::size_t group;
    const char* says;
  };
  for (const refused c : {
           refused{32, 15, tie::none, 4, 16, "not a multiple of 8 bits"},
           refused{32, 40, tie::gemm, 4, 16, "not a multiple of the group size"},
           refused{32, 32, tie::matmul_direct, 4, 16, "as [K, N]"},
       }) {
    SCOPED_TRACE(c.says);
    model q = embedding_graph(c.V, c.D, c.t).model();
    const std::string before = q.proto.SerializeAsString();
    quantize_options o = options_for(output_format::matmulnbits, c.bits, c.group, false);
    o.lm_head = int4q::onnx::lm_head_policy::keep;
    const auto r = quantize_model(q, o);
    ASSERT_EQ(r.embeddings.size(), 1u);
    EXPECT_FALSE(r.embeddings[0].tensor.quantized);
    EXPECT_NE(r.embeddings[0].tensor.reason.find(c.says), std::string::npos)
        << r.embeddings[0].tensor.reason;
    EXPECT_TRUE(find_nodes(q.proto, "GatherBlockQuantized").empty());
    if (c.t != tie::matmul_direct) {
      EXPECT_EQ(q.proto.SerializeAsString(), before);
    }
  }
  // --exclude on the Gather keeps the table.
  model q = embedding_graph(32, 32, tie::none).model();
  quantize_options o = options_for(output_format::matmulnbits, 4, 16, false);
  o.exclude = {"embed"};
  const auto r = quantize_model(q, o);
  ASSERT_EQ(r.embeddings.size(), 1u);
  EXPECT_NE(r.embeddings[0].tensor.reason.find("`exclude`"), std::string::npos);
}

TEST(Embeddings, ReportJson) {
  model q = embedding_graph(64, 32, tie::gemm).model();
  const auto r = quantize_model(q, options_for(output_format::matmulnbits, 4, 16, true));
  const auto j = int4q::onnx::to_json(r);
  EXPECT_EQ(j["config"]["embeddings"], "quantize");
  ASSERT_EQ(j["embeddings"].size(), 1u);
  const auto& e = j["embeddings"][0];
  EXPECT_EQ(e["table"], "emb");
  EXPECT_EQ(e["tied"], nlohmann::json::array({"head"}));
  EXPECT_EQ(e["shared"], true);
  EXPECT_EQ(e["vocabulary"], 64);
  EXPECT_EQ(e["hidden"], 32);
  EXPECT_GT(e["bytes_saved_by_sharing"].get<std::size_t>(), 0u);
  // The config file takes the key too.
  quantize_options o;
  int4q::onnx::apply_config(nlohmann::json{{"embeddings", "quantize"}}, o);
  EXPECT_EQ(o.embeddings, embedding_policy::quantize);
  EXPECT_THROW(int4q::onnx::apply_config(nlohmann::json{{"embeddings", "int8"}}, o),
               int4q::onnx::model_error);
}

}  // namespace

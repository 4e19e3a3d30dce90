// Constant weight paths (issue 16): a MatMul/Gemm B written by an exporter as a stored tensor
// followed by Cast / Transpose / Reshape / Flatten / Squeeze / Unsqueeze / Identity nodes is a
// weight. Each form is checked against its twin: the same graph with the logical B computed here
// by plain loops and stored as an initializer (the form proven by test_quantize_model). Both are
// quantized with the same options and must give the same tensors byte for byte and the same
// nodes (the path and its source removed), in the three formats, with RTN and with GPTQ in
// sequential calibration (which swaps the B the MatMul reads).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/quantize_model.hpp>
#include <int4q/onnx/weights.hpp>

#include "onnx/graph_builder.hpp"

namespace {

namespace ox = int4q::onnx;
using int4q::test::gemm_attrs;
using int4q::test::graph_builder;
using int4q::test::onnx_float;
using int4q::test::onnx_float16;
using int4q::test::onnx_int64;
using int4q::test::random_values;
using int4q::test::rounded_to;
using int4q::test::set_attr;

constexpr std::int64_t kRows = 8, kK = 64, kN = 32;

/// [rows, cols] row-major -> its transpose [cols, rows].
std::vector<float> transposed(const std::vector<float>& v, std::int64_t rows, std::int64_t cols) {
  std::vector<float> t(v.size());
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) t[c * rows + r] = v[r * cols + c];
  return t;
}

/// x [8, 64] -> `first(g, "x", "h")` -> Relu -> MatMul(w2 [32, 32]) -> y. `first` writes the
/// path form or its twin.
template <class F>
ox::model two_layers(F first) {
  graph_builder g;
  g.input("x", onnx_float, {kRows, kK});
  first(g);
  g.node("Relu", {"h"}, {"hr"}, "relu");
  g.initializer("w2", onnx_float, {kN, kN}, random_values(kN * kN, 9));
  g.matmul("mm2", "hr", "w2", "y");
  g.output("y", onnx_float, {kRows, kN});
  return g.model();
}

/// What a quantized model holds, names aside: its initializers (type, dims, bytes; sorted) and
/// its nodes' op types in order.
struct signature {
  std::vector<std::tuple<int, std::vector<std::int64_t>, std::string>> tensors;
  std::vector<std::string> ops;
  bool operator==(const signature& o) const { return tensors == o.tensors && ops == o.ops; }
};

signature signature_of(const ox::model& m) {
  signature s;
  for (const auto& t : m.proto.graph().initializer())
    s.tensors.emplace_back(
        t.data_type(), std::vector<std::int64_t>(t.dims().begin(), t.dims().end()), t.raw_data());
  std::sort(s.tensors.begin(), s.tensors.end());
  for (const auto& n : m.proto.graph().node()) s.ops.push_back(n.op_type());
  return s;
}

ox::batch_source batches() {
  auto next = std::make_shared<int>(0);
  return [next](std::map<std::string, ox::value>& in) {
    if (*next >= 3) return false;
    in["x"] = ox::value::floats({kRows, kK}, random_values(kRows * kK, 50 + std::uint32_t(*next)));
    ++*next;
    return true;
  };
}

ox::quantize_options options(ox::output_format f, ox::method algo) {
  ox::quantize_options o;
  o.format = f;
  o.config.bits = 4;
  o.config.group_size = 32;
  o.algo = algo;
  o.threads = 1;
  o.lm_head = ox::lm_head_policy::quantize;  // mm2 feeds the graph output
  if (algo != ox::method::rtn) o.calibration.data = batches();
  return o;
}

/// Quantizes the path form and its twin every way; they must agree. Returns the path form's
/// report (matmulnbits, RTN).
ox::quantize_report expect_same_as_twin(const ox::model& path, const ox::model& twin,
                                        std::size_t weights) {
  ox::quantize_report first;
  for (const ox::output_format f :
       {ox::output_format::matmulnbits, ox::output_format::qdq, ox::output_format::fake}) {
    for (const ox::method algo : {ox::method::rtn, ox::method::gptq}) {
      SCOPED_TRACE(std::string(ox::to_string(f)) + " " + ox::to_string(algo));
      ox::model a = path, b = twin;
      const ox::quantize_report ra = ox::quantize_model(a, options(f, algo));
      const ox::quantize_report rb = ox::quantize_model(b, options(f, algo));
      EXPECT_EQ(ra.weights_quantized, weights);
      EXPECT_EQ(rb.weights_quantized, weights);
      EXPECT_TRUE(signature_of(a) == signature_of(b));
      if (f == ox::output_format::matmulnbits && algo == ox::method::rtn) first = ra;
    }
  }
  return first;
}

const ox::tensor_report& report_of(const ox::quantize_report& r, const std::string& weight) {
  for (const auto& t : r.tensors)
    if (t.weight == weight) return t;
  throw std::runtime_error("no report entry for " + weight);
}

// torch.onnx without constant folding: nn.Linear's weight [N, K] -> Transpose -> MatMul.
TEST(ConstPath, TransposeBeforeMatMul) {
  const std::vector<float> w = random_values(kN * kK, 1);  // [N, K]
  const ox::model path = two_layers([&](graph_builder& g) {
    g.initializer("lin.weight", onnx_float, {kN, kK}, w);
    g.node("Transpose", {"lin.weight"}, {"wt"}, "tr");
    g.matmul("mm1", "x", "wt", "h");
  });
  const ox::model twin = two_layers([&](graph_builder& g) {
    g.initializer("w", onnx_float, {kK, kN}, transposed(w, kN, kK));
    g.matmul("mm1", "x", "w", "h");
  });
  const auto ws = ox::find_weights(path);
  ASSERT_EQ(ws.size(), 2u);
  EXPECT_TRUE(ws[0].quantizable) << ws[0].reason;
  EXPECT_EQ(ws[0].name, "wt");
  EXPECT_EQ(ws[0].source, "lin.weight");
  EXPECT_EQ(ws[0].path_nodes, std::vector<int>{0});
  EXPECT_EQ(ws[0].k, std::size_t(kK));
  EXPECT_EQ(ws[0].n, std::size_t(kN));
  EXPECT_EQ(ws[1].source, "w2");
  EXPECT_TRUE(ws[1].path_nodes.empty());
  const auto r = expect_same_as_twin(path, twin, 2);
  EXPECT_EQ(report_of(r, "wt").constant_path, "'lin.weight' -> Transpose 'tr'");
  EXPECT_EQ(report_of(r, "w2").constant_path, "");
}

// Gemm transB = 1 reading a Reshape of a 3-D stored tensor (shape from a Constant node), bias.
TEST(ConstPath, ReshapeIntoGemmTransB) {
  const std::vector<float> w = random_values(kN * kK, 2);  // [N, K] row-major
  const std::vector<float> bias = random_values(kN, 3);
  gemm_attrs a;
  a.trans_b = true;
  a.alpha = 0.5f;
  const ox::model path = two_layers([&](graph_builder& g) {
    g.initializer("w3", onnx_float, {kN, 4, kK / 4}, w);
    g.constant_i64("shape", {2}, {0, -1});  // 0 copies N, -1 infers K
    g.node("Reshape", {"w3", "shape"}, {"w2d"}, "reshape");
    g.initializer("b", onnx_float, {kN}, bias);
    g.gemm("gemm", "x", "w2d", "b", "h", a);
  });
  const ox::model twin = two_layers([&](graph_builder& g) {
    g.initializer("w", onnx_float, {kN, kK}, w);
    g.initializer("b", onnx_float, {kN}, bias);
    g.gemm("gemm", "x", "w", "b", "h", a);
  });
  const auto r = expect_same_as_twin(path, twin, 2);
  EXPECT_EQ(report_of(r, "w2d").constant_path, "'w3' -> Reshape 'reshape'");
}

// Mixed-precision export: an fp16 weight Cast to float for an fp32 MatMul. The logical weight is
// the fp16 values (exact in float); the twin stores them as float.
TEST(ConstPath, CastFromFloat16) {
  const std::vector<float> w = random_values(kK * kN, 4);
  const ox::model path = two_layers([&](graph_builder& g) {
    g.initializer("w16", onnx_float16, {kK, kN}, w);
    auto& c = g.node("Cast", {"w16"}, {"w32"}, "cast");
    set_attr(c, "to", onnx_float);
    g.matmul("mm1", "x", "w32", "h");
  });
  const ox::model twin = two_layers([&](graph_builder& g) {
    g.initializer("w", onnx_float, {kK, kN}, rounded_to(onnx_float16, w));
    g.matmul("mm1", "x", "w", "h");
  });
  const auto ws = ox::find_weights(path);
  EXPECT_EQ(ws[0].type, ox::elem_type::float32);
  EXPECT_EQ(ws[0].source_type, ox::elem_type::float16);
  expect_same_as_twin(path, twin, 2);
}

// A narrowing Cast rounds: float -> float16 -> float holds the fp16 rounding of the values.
TEST(ConstPath, NarrowingCastRounds) {
  const std::vector<float> w = random_values(kK * kN, 5);
  const ox::model path = two_layers([&](graph_builder& g) {
    g.initializer("w32", onnx_float, {kK, kN}, w);
    set_attr(g.node("Cast", {"w32"}, {"w16"}, "down"), "to", onnx_float16);
    set_attr(g.node("Cast", {"w16"}, {"wf"}, "up"), "to", onnx_float);
    g.matmul("mm1", "x", "wf", "h");
  });
  const ox::model twin = two_layers([&](graph_builder& g) {
    g.initializer("w", onnx_float, {kK, kN}, rounded_to(onnx_float16, w));
    g.matmul("mm1", "x", "w", "h");
  });
  expect_same_as_twin(path, twin, 2);
}

// A Constant node source through Unsqueeze and Squeeze (axes inputs, opset 13), Identity and
// Flatten.
TEST(ConstPath, ShapeOpChainFromAConstantNode) {
  const std::vector<float> w = random_values(kK * kN, 6);
  const ox::model path = two_layers([&](graph_builder& g) {
    g.constant("wc", onnx_float, {kK, 4, kN / 4}, w);
    g.initializer_i64("axes0", {1}, {0});
    g.node("Unsqueeze", {"wc", "axes0"}, {"wu"}, "unsq");  // [1, K, 4, N/4]
    g.node("Squeeze", {"wu", "axes0"}, {"ws"}, "sq");      // [K, 4, N/4]
    g.node("Identity", {"ws"}, {"wi"}, "id");
    set_attr(g.node("Flatten", {"wi"}, {"wflat"}, "flat"), "axis", std::int64_t{1});  // [K, N]
    g.matmul("mm1", "x", "wflat", "h");
  });
  const ox::model twin = two_layers([&](graph_builder& g) {
    g.initializer("w", onnx_float, {kK, kN}, w);
    g.matmul("mm1", "x", "w", "h");
  });
  const auto ws = ox::find_weights(path);
  EXPECT_TRUE(ws[0].from_constant_node);
  EXPECT_EQ(ws[0].path_nodes.size(), 4u);
  expect_same_as_twin(path, twin, 2);
}

// One fp16 source Cast once, read by a MatMul directly and by a Transpose feeding another: two
// weights sharing the Cast, which goes with the last of them.
TEST(ConstPath, SharedPrefixGoesWithItsLastWeight) {
  const std::vector<float> w = random_values(kK * kK, 7);
  auto build = [&](bool folded) {
    graph_builder g;
    g.input("x", onnx_float, {kRows, kK});
    if (folded) {
      g.initializer("wa", onnx_float, {kK, kK}, rounded_to(onnx_float16, w));
      g.initializer("wb", onnx_float, {kK, kK}, rounded_to(onnx_float16, transposed(w, kK, kK)));
      g.matmul("mm_a", "x", "wa", "ya");
      g.matmul("mm_b", "x", "wb", "yb");
    } else {
      g.initializer("w16", onnx_float16, {kK, kK}, w);
      set_attr(g.node("Cast", {"w16"}, {"w32"}, "cast"), "to", onnx_float);
      g.matmul("mm_a", "x", "w32", "ya");
      g.node("Transpose", {"w32"}, {"w32t"}, "tr");
      g.matmul("mm_b", "x", "w32t", "yb");
    }
    g.output("ya", onnx_float, {kRows, kK});
    g.output("yb", onnx_float, {kRows, kK});
    return g.model();
  };
  const ox::model path = build(false);
  const auto ws = ox::find_weights(path);
  ASSERT_EQ(ws.size(), 2u);
  EXPECT_TRUE(ws[0].quantizable) << ws[0].reason;
  EXPECT_TRUE(ws[1].quantizable) << ws[1].reason;
  expect_same_as_twin(path, build(true), 2);
}

// A tensor on the path also read by something else: not a weight int4q may quantize (as for a
// stored tensor with another reader); the reason names the reader.
TEST(ConstPath, PathTensorReadElsewhereIsNotQuantizable) {
  const ox::model m = two_layers([&](graph_builder& g) {
    g.initializer("w16", onnx_float16, {kK, kN}, random_values(kK * kN, 8));
    set_attr(g.node("Cast", {"w16"}, {"w32"}, "cast"), "to", onnx_float);
    g.node("Transpose", {"w32"}, {"wt"}, "tr");
    g.node("Transpose", {"wt"}, {"w"}, "tr_back");
    g.node("ReduceSum", {"wt"}, {"total"}, "other_reader");
    g.output("total", onnx_float, {1, 1});
    g.matmul("mm1", "x", "w", "h");
  });
  const auto ws = ox::find_weights(m);
  ASSERT_EQ(ws.size(), 2u);
  EXPECT_FALSE(ws[0].quantizable);
  EXPECT_NE(ws[0].reason.find("ReduceSum 'other_reader'"), std::string::npos) << ws[0].reason;
  EXPECT_TRUE(ws[1].quantizable);
}

// Paths that are not constant or not value-preserving keep the run-time reason.
TEST(ConstPath, NonConstantPathsAreNamed) {
  graph_builder g;
  g.input("x", onnx_float, {kRows, kK});
  g.input("k", onnx_float, {kN, kK});
  g.node("Transpose", {"k"}, {"kt"}, "tr");
  g.matmul("scores", "x", "kt", "s");
  g.initializer("wi", onnx_float, {kK, kN}, random_values(kK * kN, 9));
  set_attr(g.node("Cast", {"wi"}, {"wint"}, "to_int"), "to", std::int64_t{7});  // INT64
  set_attr(g.node("Cast", {"wint"}, {"wf"}, "back"), "to", onnx_float);
  g.matmul("mm", "x", "wf", "y");
  g.input("shape", int4q::test::onnx_int64, {2});
  g.node("Reshape", {"wi", "shape"}, {"wr"}, "dyn_reshape");
  g.matmul("mm_r", "x", "wr", "z");
  g.output("s", onnx_float, {kRows, kN});
  g.output("y", onnx_float, {kRows, kN});
  g.output("z", onnx_float, {kRows, kN});
  const auto ws = ox::find_weights(g.model());
  ASSERT_EQ(ws.size(), 3u);
  EXPECT_NE(ws[0].reason.find("computed at run time by Transpose 'tr' (from 'k', a graph input)"),
            std::string::npos)
      << ws[0].reason;
  EXPECT_NE(ws[1].reason.find("casts to a non-float type"), std::string::npos) << ws[1].reason;
  EXPECT_NE(ws[2].reason.find("'shape', not a constant"), std::string::npos) << ws[2].reason;
}

// ---- Embedding tables on a constant path (issue 16): a Gather reading the table through
// Cast/Transpose/Reshape/Identity nodes is quantized as the same table stored directly, the
// path removed; a tied lm_head reading it through a Transpose shares the quantized table.

constexpr std::int64_t kV = 64, kD = 32, kTokens = 10;

/// ids [10] -> Gather(`table(g)`) -> h [10, D]; tied: logits [10, V] = h @ Transpose(table)
/// (torch's tied lm_head without constant folding), or Gemm transB = 1 on the table. `table`
/// adds the table's nodes and returns the name the Gather reads.
enum class head { none, transpose, gemm };
template <class F>
ox::model embedding_model(F table, head h) {
  graph_builder g;
  g.input("ids", onnx_int64, {kTokens});
  const std::string t = table(g);
  g.node("Gather", {t, "ids"}, {"h"}, "embed");
  g.output("h", onnx_float, {kTokens, kD});
  if (h == head::transpose) {
    g.node("Transpose", {t}, {"emb_t"}, "emb_transpose");
    g.matmul("lm_head", "h", "emb_t", "logits");
  } else if (h == head::gemm) {
    gemm_attrs a;
    a.trans_b = true;
    g.gemm("lm_head", "h", t, "", "logits", a);
  }
  if (h != head::none) g.output("logits", onnx_float, {kTokens, kV});
  return g.model();
}

ox::quantize_options embedding_options(ox::output_format f) {
  ox::quantize_options o = options(f, ox::method::rtn);
  o.embeddings = ox::embedding_policy::quantize;
  o.config.group_size = 16;
  return o;
}

std::map<std::string, ox::value> run_tokens(const ox::model& m) {
  std::vector<std::int64_t> ids(kTokens);
  for (std::int64_t i = 0; i < kTokens; ++i) ids[i] = (i * 7 + 3) % kV;
  return ox::executor(m, 1).run({{"ids", ox::value::ints({kTokens}, ids)}});
}

/// Quantizes the path form and its twin in the three formats (matmulnbits only: `only_nbits`):
/// the same tensors byte for byte, the same nodes, the same outputs bit for bit. Returns the
/// path form's matmulnbits report.
ox::quantize_report expect_embedding_twin(const ox::model& path, const ox::model& twin,
                                          bool only_nbits = false) {
  ox::quantize_report first;
  for (const ox::output_format f :
       {ox::output_format::matmulnbits, ox::output_format::qdq, ox::output_format::fake}) {
    if (only_nbits && f != ox::output_format::matmulnbits) continue;
    SCOPED_TRACE(ox::to_string(f));
    ox::model a = path, b = twin;
    const ox::quantize_report ra = ox::quantize_model(a, embedding_options(f));
    const ox::quantize_report rb = ox::quantize_model(b, embedding_options(f));
    EXPECT_EQ(ra.embeddings.size(), 1u);
    EXPECT_TRUE(!ra.embeddings.empty() && ra.embeddings[0].tensor.quantized);
    EXPECT_TRUE(!rb.embeddings.empty() && rb.embeddings[0].tensor.quantized);
    EXPECT_TRUE(signature_of(a) == signature_of(b));
    EXPECT_EQ(a.proto.graph().node_size(), b.proto.graph().node_size());
    const auto ya = run_tokens(a), yb = run_tokens(b);
    EXPECT_EQ(ya.size(), yb.size());
    for (const auto& [name, v] : ya) {
      EXPECT_TRUE(yb.count(name)) << name;
      if (!yb.count(name)) continue;
      EXPECT_EQ(v.shape, yb.at(name).shape) << name;
      EXPECT_TRUE(v.f == yb.at(name).f) << name;  // bit for bit (no NaN here)
    }
    if (f == ox::output_format::matmulnbits) first = ra;
  }
  return first;
}

// Mixed-precision export: an fp16 table Cast to float, read by the Gather and, through a
// Transpose, by the tied lm_head. The twin stores the fp16 values as float.
TEST(ConstPathEmbedding, CastFromFloat16WithTiedLmHead) {
  const std::vector<float> t = random_values(kV * kD, 21, 0.5f);
  for (const head h : {head::none, head::transpose}) {
    SCOPED_TRACE(h == head::none ? "untied" : "tied through a Transpose");
    const ox::model path = embedding_model(
        [&](graph_builder& g) {
          g.initializer("emb16", onnx_float16, {kV, kD}, t);
          set_attr(g.node("Cast", {"emb16"}, {"emb32"}, "cast"), "to", onnx_float);
          return std::string("emb32");
        },
        h);
    const ox::model twin = embedding_model(
        [&](graph_builder& g) {
          g.initializer("emb16", onnx_float, {kV, kD}, rounded_to(onnx_float16, t));
          return std::string("emb16");
        },
        h);
    const auto es = ox::find_embeddings(path);
    ASSERT_EQ(es.size(), 1u);
    EXPECT_TRUE(es[0].quantizable) << es[0].reason;
    EXPECT_EQ(es[0].name, "emb32");
    EXPECT_EQ(es[0].source, "emb16");
    EXPECT_EQ(es[0].path_nodes, std::vector<int>{0});
    EXPECT_EQ(es[0].type, ox::elem_type::float32);
    EXPECT_EQ(es[0].source_type, ox::elem_type::float16);
    EXPECT_EQ(es[0].tied.size(), h == head::none ? 0u : 1u);
    EXPECT_TRUE(h == head::none || es[0].tied[0].trans_b);
    const auto r = expect_embedding_twin(path, twin);
    ASSERT_EQ(r.embeddings.size(), 1u);
    EXPECT_EQ(r.embeddings[0].tensor.constant_path, "'emb16' -> Cast 'cast'");
    EXPECT_EQ(r.embeddings[0].tied.size(), h == head::none ? 0u : 1u);
    EXPECT_EQ(r.embeddings[0].tensor.bytes_before, std::size_t(kV * kD * 2));  // as stored
    const auto j = ox::to_json(r);
    EXPECT_EQ(j["embeddings"][0]["constant_path"], "'emb16' -> Cast 'cast'");
    ox::model q = path;
    ox::quantize_model(q, embedding_options(ox::output_format::matmulnbits));
    for (const auto& n : q.proto.graph().node()) {
      EXPECT_NE(n.op_type(), "Cast");
      EXPECT_NE(n.op_type(), "Transpose");
    }
    for (const auto& init : q.proto.graph().initializer()) EXPECT_NE(init.name(), "emb16");
  }
}

// The tied lm_head through a Transpose of a Cast table is quantized as the direct twin tied by
// Gemm transB = 1: the same MatMulNBits reading the GatherBlockQuantized codes.
TEST(ConstPathEmbedding, TiedThroughTransposeAsGemmTransB) {
  const std::vector<float> t = random_values(kV * kD, 22, 0.5f);
  const ox::model path = embedding_model(
      [&](graph_builder& g) {
        g.initializer("emb16", onnx_float16, {kV, kD}, t);
        set_attr(g.node("Cast", {"emb16"}, {"emb32"}, "cast"), "to", onnx_float);
        return std::string("emb32");
      },
      head::transpose);
  const ox::model twin = embedding_model(
      [&](graph_builder& g) {
        g.initializer("emb", onnx_float, {kV, kD}, rounded_to(onnx_float16, t));
        return std::string("emb");
      },
      head::gemm);
  expect_embedding_twin(path, twin, true);
}

// A table stored transposed [D, V] (a Reshape shape from a Constant node) read through
// Transpose -> Reshape -> Identity.
TEST(ConstPathEmbedding, TransposeReshapeIdentityChain) {
  const std::vector<float> t = random_values(kV * kD, 23, 0.5f);  // [V, D]
  const ox::model path = embedding_model(
      [&](graph_builder& g) {
        g.initializer("emb_dv", onnx_float, {kD, 2, kV / 2}, transposed(t, kV, kD));
        g.constant_i64("dv", {2}, {kD, kV});
        g.node("Reshape", {"emb_dv", "dv"}, {"emb_2d"}, "reshape");
        g.node("Transpose", {"emb_2d"}, {"emb_vd"}, "tr");
        g.node("Identity", {"emb_vd"}, {"emb"}, "id");
        return std::string("emb");
      },
      head::none);
  const ox::model twin = embedding_model(
      [&](graph_builder& g) {
        g.initializer("emb_dv", onnx_float, {kV, kD}, t);
        return std::string("emb_dv");
      },
      head::none);
  const auto r = expect_embedding_twin(path, twin);
  EXPECT_EQ(r.embeddings[0].tensor.constant_path,
            "'emb_dv' -> Reshape 'reshape' -> Transpose 'tr' -> Identity 'id'");
}

// The path's source also read by another node: the table is quantized, the Cast goes, the
// source stays for its other reader.
TEST(ConstPathEmbedding, SourceReadElsewhereStays) {
  const ox::model m = embedding_model(
      [&](graph_builder& g) {
        g.initializer("emb16", onnx_float16, {kV, kD}, random_values(kV * kD, 24, 0.5f));
        set_attr(g.node("Cast", {"emb16"}, {"emb32"}, "cast"), "to", onnx_float);
        g.node("Identity", {"emb16"}, {"emb_copy"}, "other_reader");
        g.output("emb_copy", onnx_float16, {kV, kD});
        return std::string("emb32");
      },
      head::none);
  ox::model q = m;
  const auto r = ox::quantize_model(q, embedding_options(ox::output_format::matmulnbits));
  ASSERT_EQ(r.embeddings.size(), 1u);
  EXPECT_TRUE(r.embeddings[0].tensor.quantized) << r.embeddings[0].tensor.reason;
  std::vector<std::string> ops;
  for (const auto& n : q.proto.graph().node()) ops.push_back(n.op_type());
  EXPECT_EQ(ops, (std::vector<std::string>{"Identity", "GatherBlockQuantized"}));
  bool source = false;
  for (const auto& init : q.proto.graph().initializer()) source = source || init.name() == "emb16";
  EXPECT_TRUE(source);
}

// A Gather on a path from a run-time tensor or from an int64 constant is no embedding.
TEST(ConstPathEmbedding, NonConstantOrIntegerPathsAreNoTables) {
  graph_builder g;
  g.input("ids", onnx_int64, {kTokens});
  g.input("x", onnx_float, {kV, kD});
  g.node("Identity", {"x"}, {"xi"}, "id");
  g.node("Gather", {"xi", "ids"}, {"h"}, "g1");
  g.initializer_i64("lut", {kV}, std::vector<std::int64_t>(kV, 1));
  g.node("Identity", {"lut"}, {"lut_i"}, "id2");
  g.node("Gather", {"lut_i", "ids"}, {"k"}, "g2");
  g.output("h", onnx_float, {kTokens, kD});
  g.output("k", onnx_int64, {kTokens});
  EXPECT_TRUE(ox::find_embeddings(g.model()).empty());
}

}  // namespace

// AWQ folding (awq_fold.hpp): for each producer of the activation x that 1/s can go into, and for
// the inserted Mul, a small graph run by the executor before and after the fold, with the
// consumers' weights replaced by diag(s) W (not quantized): the outputs agree within float
// rounding. Also where 1/s goes when the producer cannot take it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <int4q/onnx/awq_fold.hpp>
#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>

#include "onnx/graph_builder.hpp"

namespace {

namespace ox = int4q::onnx;
using int4q::test::graph_builder;
using int4q::test::onnx_float;
using int4q::test::random_values;

constexpr std::int64_t kRows = 6, kIn = 12, kK = 16, kN = 10;

// Folding changes the rounding of each product once or twice (x / s rounded, gamma / s rounded,
// diag(s) W rounded): a few float ulps of the operands, summed over K = 16 terms of magnitude
// <= ~10. 1e-4 relative to the output's largest magnitude is ~100x that.
constexpr double kFoldRelTol = 1e-4;

/// s[k] in [0.25, 4): far from 1, not powers of two (so the fold is not trivially exact).
std::vector<double> test_scales() {
  std::vector<double> s(kK);
  for (std::int64_t k = 0; k < kK; ++k) s[k] = std::pow(2.0, -2.0 + 4.0 * double(k) / kK) * 1.07;
  return s;
}

/// Replaces initializer `name` [K, N] (or [N, K] when trans) by diag(s) W in double, rounded once.
void scale_weight(ox::model& m, const std::string& name, const std::vector<double>& s,
                  bool trans = false) {
  for (auto& t : *m.proto.mutable_graph()->mutable_initializer()) {
    if (t.name() != name) continue;
    std::vector<float> v(t.raw_data().size() / 4);
    std::memcpy(v.data(), t.raw_data().data(), t.raw_data().size());
    const std::size_t cols = trans ? s.size() : v.size() / s.size();
    for (std::size_t i = 0; i < v.size(); ++i) {
      const std::size_t k = trans ? i % cols : i / cols;
      v[i] = static_cast<float>(static_cast<double>(v[i]) * s[k]);
    }
    t.set_raw_data(std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4));
    return;
  }
  FAIL() << "no initializer " << name;
}

std::map<std::string, ox::value> run(const ox::model& m) {
  const ox::executor e(m);
  return e.run({{"in", ox::value::floats({kRows, kIn}, random_values(kRows * kIn, 7, 2.0f))}});
}

/// Every output of `after` equals `before`'s within kFoldRelTol of the output's largest |value|.
void expect_same_outputs(const std::map<std::string, ox::value>& before,
                         const std::map<std::string, ox::value>& after) {
  ASSERT_EQ(before.size(), after.size());
  for (const auto& [name, b] : before) {
    const ox::value& a = after.at(name);
    ASSERT_EQ(a.shape, b.shape) << name;
    double scale = 0;
    for (const float v : b.f) scale = std::max(scale, std::abs(double(v)));
    ASSERT_GT(scale, 0.0) << name;
    for (std::size_t i = 0; i < b.f.size(); ++i)
      EXPECT_NEAR(a.f[i], b.f[i], kFoldRelTol * scale) << name << "[" << i << "]";
  }
}

/// The graph: in [6, 12] -> (producer built by `producer`, output "x" [6, 16]) -> two MatMul
/// consumers x @ w1, x @ w2 (q/k/v-like siblings) -> outputs y1, y2. Returns the model.
template <class F>
ox::model siblings_graph(F producer, bool x_is_output = false) {
  graph_builder g;
  g.input("in", onnx_float, {kRows, kIn});
  producer(g);
  g.initializer("w1", onnx_float, {kK, kN}, random_values(kK * kN, 11));
  g.initializer("w2", onnx_float, {kK, kN}, random_values(kK * kN, 12));
  g.matmul("mm1", "x", "w1", "y1");
  g.matmul("mm2", "x", "w2", "y2");
  g.output("y1", onnx_float, {kRows, kN});
  g.output("y2", onnx_float, {kRows, kN});
  if (x_is_output) g.output("x", onnx_float, {kRows, kK});
  return g.model();
}

int node_index(const ox::model& m, const std::string& name) {
  for (int i = 0; i < m.proto.graph().node_size(); ++i)
    if (m.proto.graph().node(i).name() == name) return i;
  return -1;
}

/// Folds s for mm1 and mm2, scales w1 and w2, and checks the outputs; returns the plan.
ox::awq_fold_plan fold_and_check(const ox::model& before, ox::awq_fold_kind expected,
                                 const std::set<std::string>& frozen = {}) {
  const std::vector<double> s = test_scales();
  ox::model after = before;
  const ox::awq_fold_plan plan =
      ox::plan_awq_fold(after, "x", {node_index(after, "mm1"), node_index(after, "mm2")}, s,
                        ox::elem_type::float32, frozen);
  EXPECT_EQ(plan.kind, expected) << plan.description();
  ox::apply_awq_folds(after, {plan});
  scale_weight(after, "w1", s);
  scale_weight(after, "w2", s);
  expect_same_outputs(run(before), run(after));
  return plan;
}

/// in @ p (+ optional) -> "pre", the input of the producers below: [6, 16].
void projection(graph_builder& g, const std::string& out) {
  g.initializer("p", onnx_float, {kIn, kK}, random_values(kIn * kK, 3));
  g.matmul("proj", "in", "p", out);
}

TEST(AwqFold, IntoLayerNormalizationGammaAndBeta) {
  const ox::model m = siblings_graph([](graph_builder& g) {
    projection(g, "pre");
    g.initializer("gamma", onnx_float, {kK}, random_values(kK, 4, 1.5f));
    g.initializer("beta", onnx_float, {kK}, random_values(kK, 5, 0.5f));
    g.node("LayerNormalization", {"pre", "gamma", "beta"}, {"x"}, "ln");
  });
  const auto plan = fold_and_check(m, ox::awq_fold_kind::layer_norm);
  EXPECT_EQ(plan.divided, (std::vector<std::string>{"gamma", "beta"}));
}

TEST(AwqFold, IntoSimplifiedLayerNormalizationGamma) {
  const ox::model m = siblings_graph([](graph_builder& g) {
    projection(g, "pre");
    g.initializer("gamma", onnx_float, {kK}, random_values(kK, 4, 1.5f));
    g.node("SimplifiedLayerNormalization", {"pre", "gamma"}, {"x"}, "rms");
  });
  fold_and_check(m, ox::awq_fold_kind::simplified_layer_norm);
}

// com.microsoft SkipSimplifiedLayerNormalization and SkipLayerNormalization (ONNX Runtime
// GenAI's residual + norm): gamma (and beta) divided; the sum output (a graph output here) is
// unchanged.
TEST(AwqFold, IntoTheSkipNormsGamma) {
  for (const bool simplified : {true, false}) {
    const ox::model m = siblings_graph([simplified](graph_builder& g) {
      g.set_opset(1, "com.microsoft");
      projection(g, "pre");
      g.node("Relu", {"pre"}, {"skip"}, "relu");
      g.initializer("gamma", onnx_float, {kK}, random_values(kK, 4, 1.5f));
      std::vector<std::string> in{"pre", "skip", "gamma"};
      if (!simplified) {
        g.initializer("beta", onnx_float, {kK}, random_values(kK, 5, 0.5f));
        in.push_back("beta");
      }
      g.node(simplified ? "SkipSimplifiedLayerNormalization" : "SkipLayerNormalization", in,
             {"x", "", "", "sum"}, "skip_norm", "com.microsoft");
      g.output("sum", onnx_float, {kRows, kK});
    });
    const auto plan = fold_and_check(
        m, simplified ? ox::awq_fold_kind::simplified_layer_norm : ox::awq_fold_kind::layer_norm);
    const std::vector<std::string> divided =
        simplified ? std::vector<std::string>{"gamma"} : std::vector<std::string>{"gamma", "beta"};
    EXPECT_EQ(plan.divided, divided);
  }
}

// The decomposed RMSNorm: pre * 1 / sqrt(mean(pre^2) + eps) * gamma; the last Mul takes 1/s.
TEST(AwqFold, IntoTheDecomposedRmsNormGamma) {
  const ox::model m = siblings_graph([](graph_builder& g) {
    projection(g, "pre");
    g.initializer("two", onnx_float, {}, {2.0f});
    g.initializer("eps", onnx_float, {}, {1e-6f});
    g.initializer("gamma", onnx_float, {kK}, random_values(kK, 4, 1.5f));
    g.node("Pow", {"pre", "two"}, {"sq"}, "pow");
    auto& rm = g.node("ReduceMean", {"sq"}, {"ms"}, "mean");
    int4q::test::set_attr(rm, "axes", std::vector<std::int64_t>{-1});
    g.node("Add", {"ms", "eps"}, {"mse"}, "add_eps");
    g.node("Sqrt", {"mse"}, {"rms"}, "sqrt");
    g.node("Div", {"pre", "rms"}, {"normed"}, "div");
    g.node("Mul", {"normed", "gamma"}, {"x"}, "mul_gamma");
  });
  const auto plan = fold_and_check(m, ox::awq_fold_kind::mul_constant);
  EXPECT_EQ(plan.producer_name, "mul_gamma");
}

TEST(AwqFold, IntoAMulByAConstantOnEitherSide) {
  const ox::model m = siblings_graph([](graph_builder& g) {
    projection(g, "pre");
    g.initializer("c", onnx_float, {1, kK}, random_values(kK, 4, 1.5f));
    g.node("Mul", {"c", "pre"}, {"x"}, "mul_c");
  });
  fold_and_check(m, ox::awq_fold_kind::mul_constant);
}

TEST(AwqFold, IntoAPrecedingMatMulsColumns) {
  const ox::model m = siblings_graph([](graph_builder& g) { projection(g, "x"); });
  const auto plan = fold_and_check(m, ox::awq_fold_kind::matmul);
  EXPECT_EQ(plan.weight, "p");
}

TEST(AwqFold, IntoAPrecedingGemmsColumnsAndBias) {
  for (const bool trans : {false, true}) {
    const ox::model m = siblings_graph([trans](graph_builder& g) {
      g.initializer("p", onnx_float,
                    trans ? std::vector<std::int64_t>{kK, kIn} : std::vector<std::int64_t>{kIn, kK},
                    random_values(kIn * kK, 3));
      g.initializer("bias", onnx_float, {kK}, random_values(kK, 6));
      int4q::test::gemm_attrs a;
      a.alpha = 0.5f;
      a.trans_b = trans;
      g.gemm("gemm", "in", "p", "bias", "x", a);
    });
    const auto plan = fold_and_check(m, ox::awq_fold_kind::gemm);
    EXPECT_EQ(plan.weight_trans, trans);
    EXPECT_EQ(plan.divided, std::vector<std::string>{"bias"});
  }
}

// A producer that cannot take 1/s (Relu), a reader outside the group (x is a graph output), a
// frozen preceding weight (being quantized), a gamma read twice: one Mul in front of the
// consumers, and the other readers still read x unchanged.
TEST(AwqFold, OtherwiseOneMulInFrontOfTheConsumers) {
  const ox::model relu = siblings_graph([](graph_builder& g) {
    projection(g, "pre");
    g.node("Relu", {"pre"}, {"x"}, "relu");
  });
  EXPECT_NE(fold_and_check(relu, ox::awq_fold_kind::inserted_mul).why_not_producer.find("Relu"),
            std::string::npos);

  const ox::model output = siblings_graph([](graph_builder& g) { projection(g, "x"); }, true);
  const auto plan = fold_and_check(output, ox::awq_fold_kind::inserted_mul);
  EXPECT_NE(plan.why_not_producer.find("other"), std::string::npos) << plan.why_not_producer;

  const ox::model frozen = siblings_graph([](graph_builder& g) { projection(g, "x"); });
  fold_and_check(frozen, ox::awq_fold_kind::inserted_mul, {"p"});

  const ox::model shared = siblings_graph([](graph_builder& g) {
    projection(g, "pre");
    g.initializer("gamma", onnx_float, {kK}, random_values(kK, 4, 1.5f));
    g.node("Mul", {"pre", "gamma"}, {"x"}, "mul_gamma");
    g.node("Add", {"pre", "gamma"}, {"z"}, "other_reader");
    g.output("z", onnx_float, {kRows, kK});
  });
  fold_and_check(shared, ox::awq_fold_kind::inserted_mul);
}

// Shape and Size read only x's shape, which a fold keeps (torch exports read the normalized
// tensor's shape for the attention reshapes): they do not stop the fold into the norm, and their
// outputs (here cast to float) are unchanged. A reader of the values (Add) still does.
TEST(AwqFold, ShapeAndSizeReadersDoNotBlockTheFold) {
  auto graph = [](bool value_reader) {
    return siblings_graph([value_reader](graph_builder& g) {
      projection(g, "pre");
      g.initializer("gamma", onnx_float, {kK}, random_values(kK, 4, 1.5f));
      g.node("SimplifiedLayerNormalization", {"pre", "gamma"}, {"x"}, "rms");
      g.node("Shape", {"x"}, {"xs"}, "shape_of_x");
      g.node("Size", {"x"}, {"xn"}, "size_of_x");
      int4q::test::set_attr(g.node("Cast", {"xs"}, {"xs_f"}, "cast_shape"), "to", onnx_float);
      int4q::test::set_attr(g.node("Cast", {"xn"}, {"xn_f"}, "cast_size"), "to", onnx_float);
      g.output("xs_f", onnx_float, {2});
      g.output("xn_f", onnx_float, {});
      if (value_reader) {
        g.node("Add", {"x", "x"}, {"z"}, "value_reader");
        g.output("z", onnx_float, {kRows, kK});
      }
    });
  };
  const auto plan = fold_and_check(graph(false), ox::awq_fold_kind::simplified_layer_norm);
  EXPECT_EQ(plan.description(), "simplified_layer_norm 'rms'");
  const auto blocked = fold_and_check(graph(true), ox::awq_fold_kind::inserted_mul);
  EXPECT_NE(blocked.why_not_producer.find("other"), std::string::npos) << blocked.why_not_producer;
}

// Only some consumers of x are scaled (one weight per scale): they read x / s through the Mul,
// the other consumer still reads x.
TEST(AwqFold, OneConsumerOfSeveral) {
  const ox::model before = siblings_graph([](graph_builder& g) { projection(g, "x"); });
  ox::model after = before;
  const std::vector<double> s = test_scales();
  const auto plan = ox::plan_awq_fold(after, "x", {node_index(after, "mm2")}, s);
  EXPECT_EQ(plan.kind, ox::awq_fold_kind::inserted_mul);
  ox::apply_awq_folds(after, {plan});
  scale_weight(after, "w2", s);
  expect_same_outputs(run(before), run(after));
  EXPECT_EQ(after.proto.graph().node(node_index(after, "mm1")).input(0), "x");
  EXPECT_NE(after.proto.graph().node(node_index(after, "mm2")).input(0), "x");
}

TEST(AwqFold, BadArgumentsAreModelErrors) {
  const ox::model m = siblings_graph([](graph_builder& g) { projection(g, "x"); });
  const int mm1 = node_index(m, "mm1");
  std::vector<double> s = test_scales();
  EXPECT_THROW(ox::plan_awq_fold(m, "x", {node_index(m, "proj")}, s), ox::model_error);
  s[3] = 0;
  EXPECT_THROW(ox::plan_awq_fold(m, "x", {mm1}, s), ox::model_error);
  s[3] = NAN;
  EXPECT_THROW(ox::plan_awq_fold(m, "x", {mm1}, s), ox::model_error);
}

}  // namespace

// 8- and 2-bit weights through the writers (issue 7): MatMulNBits bits 8 and 2, DequantizeLinear
// INT8/UINT8 blocked and per-axis. Tensors are decoded with plain loops from the layouts of
// ../shared/reference/formats.md and compared with the core's dequantized grid, exactly; the
// models are run by int4q's executor against the fake-quant twin. Bit widths a writer cannot
// hold are refused with a message that names the way out.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/quantize_model.hpp>
#include <int4q/quant.hpp>

#include "onnx/graph_builder.hpp"

namespace {

using int4q::onnx::model;
using int4q::onnx::model_error;
using int4q::onnx::output_format;
using int4q::onnx::quantize_model;
using int4q::onnx::quantize_options;
using int4q::onnx::value;
using int4q::test::find_attr;
using int4q::test::find_initializer;
using int4q::test::find_nodes;
using int4q::test::graph_builder;
using int4q::test::onnx_float;

constexpr std::int64_t K = 72, N = 24, M = 5;  // K = 72: a ragged last group at 16, 32 and 64

/// x [5, 72] @ W: MatMul (W [K, N]) or Gemm transB = 1 (W stored [N, K]).
graph_builder graph(bool gemm_trans_b) {
  graph_builder g;
  g.input("x", onnx_float, {M, K});
  const auto v = int4q::test::random_values(std::size_t(K * N), 17, 0.7f);
  if (gemm_trans_b) {
    g.initializer("w", onnx_float, {N, K}, v);
    int4q::test::gemm_attrs a;
    a.trans_b = true;
    g.gemm("mm", "x", "w", "", "y", a);
  } else {
    g.initializer("w", onnx_float, {K, N}, v);
    g.matmul("mm", "x", "w", "y");
  }
  g.output("y", onnx_float, {M, N});
  return g;
}

/// The logical weight W[K, N] of the graph and its dequantized grid from the core.
xt::xtensor<float, 2> reference(bool trans, const int4q::quant_config& c) {
  const ::onnx::ModelProto p = graph(trans).build();
  const auto* t = find_initializer(p, "w");
  std::vector<float> v(std::size_t(K * N));
  std::memcpy(v.data(), t->raw_data().data(), v.size() * 4);
  xt::xtensor<float, 2> w = xt::zeros<float>({std::size_t(K), std::size_t(N)});
  for (std::int64_t k = 0; k < K; ++k)
    for (std::int64_t n = 0; n < N; ++n) w(k, n) = trans ? v[n * K + k] : v[k * N + n];
  return int4q::qdq(w, c);
}

std::vector<float> floats_of(const ::onnx::TensorProto& t) {
  std::vector<float> v(t.raw_data().size() / 4);
  std::memcpy(v.data(), t.raw_data().data(), v.size() * 4);
  return v;
}

int stream_code(const std::string& bytes, std::size_t offset, std::size_t index, int bits) {
  const std::size_t bit = index * static_cast<std::size_t>(bits);
  return (static_cast<std::uint8_t>(bytes[offset + bit / 8]) >> (bit % 8)) & ((1 << bits) - 1);
}

quantize_options options_for(output_format f, int bits, std::size_t group, bool symmetric) {
  quantize_options o;
  o.format = f;
  o.config.bits = bits;
  if (group == 0) {
    o.config.granularity = int4q::grouping::per_channel;
  } else {
    o.config.group_size = group;
  }
  o.config.scheme = symmetric ? int4q::scheme::symmetric : int4q::scheme::asymmetric;
  o.lm_head = int4q::onnx::lm_head_policy::quantize;
  o.threads = 1;
  return o;
}

void expect_runs_like_fake(const model& q, bool trans, const quantize_options& o) {
  model fake = graph(trans).model();
  quantize_options f = o;
  f.format = output_format::fake;
  quantize_model(fake, f);
  const std::map<std::string, value> in{
      {"x", value::floats({M, K}, int4q::test::random_values(std::size_t(M * K), 3))}};
  const value a = int4q::onnx::executor(q, 1).run(in).at("y");
  const value b = int4q::onnx::executor(fake, 1).run(in).at("y");
  double peak = 0;
  for (float v : b.f) peak = std::max(peak, std::fabs(double(v)));
  for (std::size_t i = 0; i < a.f.size(); ++i)
    ASSERT_LE(std::fabs(double(a.f[i]) - b.f[i]), 1e-6 * peak) << i;
}

TEST(Bits, MatMulNBits8And2DecodeToTheGrid) {
  struct grid {
    int bits;
    std::size_t group;
    bool symmetric;
    bool trans;
  };
  for (const grid gr :
       {grid{8, 32, false, false}, grid{8, 16, true, true}, grid{8, 64, false, true},
        grid{2, 16, false, false}, grid{2, 32, true, false}, grid{2, 64, false, true}}) {
    SCOPED_TRACE("bits " + std::to_string(gr.bits) + " group " + std::to_string(gr.group) +
                 (gr.symmetric ? " symmetric" : " asymmetric") + (gr.trans ? " Gemm transB" : ""));
    model q = graph(gr.trans).model();
    const quantize_options o =
        options_for(output_format::matmulnbits, gr.bits, gr.group, gr.symmetric);
    quantize_model(q, o);
    const auto nodes = find_nodes(q.proto, "MatMulNBits");
    ASSERT_EQ(nodes.size(), 1u);
    const auto& n = *nodes[0];
    EXPECT_EQ(find_attr(n, "bits")->i(), gr.bits);
    EXPECT_EQ(find_attr(n, "block_size")->i(), std::int64_t(gr.group));
    const std::int64_t bs = std::int64_t(gr.group), G = (K + bs - 1) / bs;
    const std::int64_t blob = bs * gr.bits / 8;
    const auto* b = find_initializer(q.proto, n.input(1));
    ASSERT_EQ(b->dims_size(), 3);
    EXPECT_EQ(b->dims(0), N);
    EXPECT_EQ(b->dims(1), G);
    EXPECT_EQ(b->dims(2), blob);
    const std::vector<float> s = floats_of(*find_initializer(q.proto, n.input(2)));
    const ::onnx::TensorProto* zp = nullptr;
    if (n.input_size() > 3 && !n.input(3).empty()) zp = find_initializer(q.proto, n.input(3));
    EXPECT_EQ(zp == nullptr, gr.symmetric);
    const std::size_t zrow = std::size_t((G * gr.bits + 7) / 8);
    // W[k, n] = (q[n][k] - zp[n][k / bs]) * scale[n][k / bs], q of column n, group g as one
    // stream of blob bytes; zero points one stream per column; default 2^(bits - 1).
    const xt::xtensor<float, 2> want = reference(gr.trans, o.config);
    for (std::int64_t c = 0; c < N; ++c)
      for (std::int64_t k = 0; k < K; ++k) {
        const std::int64_t g = k / bs;
        const int code = stream_code(b->raw_data(), std::size_t((c * G + g) * blob),
                                     std::size_t(k % bs), gr.bits);
        const int z =
            zp ? stream_code(zp->raw_data(), std::size_t(c) * zrow, std::size_t(g), gr.bits)
               : 1 << (gr.bits - 1);
        ASSERT_EQ(static_cast<float>(code - z) * s[std::size_t(c * G + g)], want(k, c))
            << "k " << k << " n " << c;
      }
    expect_runs_like_fake(q, gr.trans, o);
  }
}

TEST(Bits, DequantizeLinear8BitBlockedAndPerAxis) {
  for (const bool trans : {false, true}) {
    for (const std::size_t group : {std::size_t(0), std::size_t(32)}) {
      for (const bool symmetric : {false, true}) {
        SCOPED_TRACE(std::string(trans ? "Gemm transB" : "MatMul") +
                     (group ? " g32" : " per-channel") + (symmetric ? " INT8" : " UINT8"));
        model q = graph(trans).model();
        const quantize_options o = options_for(output_format::qdq, 8, group, symmetric);
        quantize_model(q, o);
        const auto dq = find_nodes(q.proto, "DequantizeLinear");
        ASSERT_EQ(dq.size(), 1u);
        const auto* data = find_initializer(q.proto, dq[0]->input(0));
        EXPECT_EQ(data->data_type(), symmetric ? int4q::test::onnx_int8 : int4q::test::onnx_uint8);
        const std::int64_t axis = find_attr(*dq[0], "axis")->i();
        const auto* block = find_attr(*dq[0], "block_size");
        // The stored layout: [K, N] (MatMul) or [N, K] (Gemm transB); blocks along K, per-axis
        // scales along N.
        if (group) {
          EXPECT_EQ(axis, trans ? 1 : 0);
          ASSERT_NE(block, nullptr);
          EXPECT_EQ(block->i(), 32);
        } else {
          EXPECT_EQ(axis, trans ? 0 : 1);
          EXPECT_EQ(block, nullptr);
        }
        const std::vector<float> s = floats_of(*find_initializer(q.proto, dq[0]->input(1)));
        const ::onnx::TensorProto* zp =
            dq[0]->input_size() > 2 ? find_initializer(q.proto, dq[0]->input(2)) : nullptr;
        EXPECT_EQ(zp == nullptr, symmetric);
        const std::int64_t G = group ? (K + 31) / 32 : 1;
        const xt::xtensor<float, 2> want = reference(trans, o.config);
        for (std::int64_t k = 0; k < K; ++k)
          for (std::int64_t c = 0; c < N; ++c) {
            const std::size_t at = std::size_t(trans ? c * K + k : k * N + c);
            // Scale index in the stored layout: blocked [G, N] / [N, G]; per-axis [N].
            const std::int64_t g = group ? k / 32 : 0;
            const std::size_t p =
                group ? std::size_t(trans ? c * G + g : g * N + c) : std::size_t(c);
            const int x = symmetric ? int(static_cast<std::int8_t>(data->raw_data()[at]))
                                    : int(static_cast<std::uint8_t>(data->raw_data()[at]));
            const int z = zp ? int(static_cast<std::uint8_t>(zp->raw_data()[p])) : 0;
            ASSERT_EQ(static_cast<float>(x - z) * s[p], want(k, c)) << "k " << k << " n " << c;
          }
        expect_runs_like_fake(q, trans, o);
      }
    }
  }
}

TEST(Bits, WidthsAWriterCannotHoldAreRefused) {
  // ONNX Runtime 1.30's MatMulNBits accepts bits 2, 4, 8 only (checked in ORT: 3, 5, 6, 7 fail
  // at session creation); DequantizeLinear-21 has 4- and 8-bit types only.
  struct refused {
    output_format f;
    int bits;
    const char* says;
  };
  for (const refused r :
       {refused{output_format::matmulnbits, 3, "use `config.bits = 4`, or `format = fake`"},
        refused{output_format::matmulnbits, 6, "(2, 4 or 8 bits)"},
        refused{output_format::qdq, 2, "`format = matmulnbits`"},
        refused{output_format::qdq, 3, "`format = fake`"}}) {
    SCOPED_TRACE(std::to_string(r.bits) + " bits");
    model q = graph(false).model();
    const std::string before = q.proto.SerializeAsString();
    try {
      quantize_model(q, options_for(r.f, r.bits, 32, false));
      FAIL() << "not refused";
    } catch (const model_error& e) {
      EXPECT_EQ(e.what_kind(), model_error::kind::unsupported);
      EXPECT_NE(std::string(e.what()).find(r.says), std::string::npos) << e.what();
    }
    EXPECT_EQ(q.proto.SerializeAsString(), before);
  }
  // 3 bits is fine with --format fake.
  model q = graph(false).model();
  EXPECT_NO_THROW(quantize_model(q, options_for(output_format::fake, 3, 32, false)));
}

}  // namespace

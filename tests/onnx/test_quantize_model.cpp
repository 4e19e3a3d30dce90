// quantize_model: every rewrite form (MatMul / Constant weight / Gemm transB 0 and 1 with alpha,
// beta and bias / shared weights / fp16 / ragged K / odd group counts / odd N) in the three
// formats. The emitted tensors are decoded here with independent loops written from
// ../shared/reference/formats.md and must equal the core's int4q::qdq of the logical weight
// exactly. Also: wiring, selection, overrides, lm_head, errors that leave the model unchanged,
// determinism, and the ORT preset against ONNX Runtime's own output for devgpt.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <int4q/onnx/opset.hpp>
#include <int4q/onnx/quantize_model.hpp>
#include <int4q/quant.hpp>

#include "onnx/graph_builder.hpp"

namespace {

using int4q::onnx::model;
using int4q::onnx::model_error;
using int4q::onnx::output_format;
using int4q::onnx::quantize_model;
using int4q::onnx::quantize_options;
using int4q::test::find_attr;
using int4q::test::find_initializer;
using int4q::test::find_node;
using int4q::test::find_nodes;
using int4q::test::graph_builder;
using int4q::test::onnx_float;
using int4q::test::onnx_float16;
using Matrix = xt::xtensor<float, 2>;

const output_format all_formats[] = {output_format::matmulnbits, output_format::qdq,
                                     output_format::fake};

// ---- Independent decoders ----------------------------------------------------------------------

/// Float values of a FLOAT / FLOAT16 / BFLOAT16 tensor stored in raw_data.
std::vector<float> float_values(const onnx::TensorProto& t) {
  const std::string& raw = t.raw_data();
  std::vector<float> out;
  if (t.data_type() == onnx_float) {
    out.resize(raw.size() / 4);
    std::memcpy(out.data(), raw.data(), raw.size());
  } else {
    EXPECT_TRUE(t.data_type() == onnx_float16 || t.data_type() == int4q::test::onnx_bfloat16);
    for (std::size_t i = 0; i + 1 < raw.size(); i += 2) {
      std::uint16_t h;
      std::memcpy(&h, raw.data() + i, 2);
      out.push_back(t.data_type() == onnx_float16 ? int4q::half_bits_to_float(h)
                                                  : int4q::bfloat16_bits_to_float(h));
    }
  }
  return out;
}

std::vector<std::int64_t> dims_of(const onnx::TensorProto& t) {
  return std::vector<std::int64_t>(t.dims().begin(), t.dims().end());
}

unsigned bits_at(const std::string& bytes, std::size_t bit_offset, int bits) {
  const auto byte = static_cast<unsigned char>(bytes.at(bit_offset / 8));
  return (byte >> (bit_offset % 8)) & ((1u << bits) - 1u);
}

/// MatMulNBits: W[k, n] = (q[n][k] - zp[n][k / bs]) * scale[n][k / bs]; B [N, G, bs*bits/8]
/// with element k of a block at bits k*bits of the block (even k in the low nibble for 4 bits);
/// zero points [N, ceil(G*bits/8)] per row, default 2^(bits-1).
Matrix decode_matmulnbits(const onnx::TensorProto& b, const onnx::TensorProto& scales,
                          const onnx::TensorProto* zero_points, std::size_t K, std::size_t N,
                          int bits, std::size_t bs) {
  const std::size_t G = (K + bs - 1) / bs, blob = bs * bits / 8, zp_row = (G * bits + 7) / 8;
  EXPECT_EQ(b.data_type(), 2);
  EXPECT_EQ(dims_of(b),
            (std::vector<std::int64_t>{std::int64_t(N), std::int64_t(G), std::int64_t(blob)}));
  EXPECT_EQ(b.raw_data().size(), N * G * blob);
  const std::vector<float> s = float_values(scales);
  EXPECT_EQ(s.size(), N * G);
  if (zero_points) {
    EXPECT_EQ(zero_points->data_type(), 2);
    EXPECT_EQ(dims_of(*zero_points),
              (std::vector<std::int64_t>{std::int64_t(N), std::int64_t(zp_row)}));
  }
  Matrix w = xt::zeros<float>({K, N});
  for (std::size_t n = 0; n < N; ++n) {
    for (std::size_t k = 0; k < K; ++k) {
      const std::size_t g = k / bs, kk = k % bs;
      const unsigned q = bits_at(b.raw_data(), ((n * G + g) * blob) * 8 + kk * bits, bits);
      const unsigned zp = zero_points
                              ? bits_at(zero_points->raw_data(), n * zp_row * 8 + g * bits, bits)
                              : (1u << (bits - 1));
      w(k, n) = (static_cast<float>(q) - static_cast<float>(zp)) * s[n * G + g];
    }
  }
  return w;
}

/// DequantizeLinear-21: flat codes (first element in the low bits), INT4/INT8 signed; the
/// stored [R, C] tensor, blocked along `axis` (block_size 0: per-axis along `axis`).
Matrix decode_dequantize(const onnx::TensorProto& x, const onnx::TensorProto& scale,
                         const onnx::TensorProto* zp, std::int64_t axis, std::size_t block) {
  const auto d = dims_of(x);
  EXPECT_EQ(d.size(), 2u);
  const std::size_t R = d[0], C = d[1];
  const int type = x.data_type();
  const int bits = (type == 21 || type == 22) ? 4 : 8;
  const bool is_signed = type == 22 || type == 3;
  const std::vector<float> s = float_values(scale);
  Matrix w = xt::zeros<float>({R, C});
  for (std::size_t r = 0; r < R; ++r) {
    for (std::size_t c = 0; c < C; ++c) {
      const std::size_t i = r * C + c;
      int q = static_cast<int>(bits_at(x.raw_data(), i * bits, bits));
      if (is_signed && q >= (1 << (bits - 1))) q -= 1 << bits;
      std::size_t si;  // index into the scale tensor
      if (block == 0) {
        si = axis == 0 ? r : c;
      } else if (axis == 0) {
        si = (r / block) * C + c;  // scale [ceil(R/bs), C]
      } else {
        si = r * ((C + block - 1) / block) + c / block;  // scale [R, ceil(C/bs)]
      }
      int z = 0;
      if (zp) {
        z = static_cast<int>(bits_at(zp->raw_data(), si * bits, bits));
        EXPECT_EQ(zp->data_type(), type);
      }
      w(r, c) = static_cast<float>(q - z) * s.at(si);
    }
  }
  return w;
}

::testing::AssertionResult same_values(const Matrix& expected, const Matrix& actual,
                                       const std::string& what) {
  if (expected.shape() != actual.shape()) {
    return ::testing::AssertionFailure()
           << what << ": shape [" << actual.shape()[0] << ", " << actual.shape()[1]
           << "], expected [" << expected.shape()[0] << ", " << expected.shape()[1] << "]";
  }
  for (std::size_t i = 0; i < expected.size(); ++i) {
    if (expected.data()[i] != actual.data()[i]) {
      return ::testing::AssertionFailure()
             << what << ": element " << i << " (row " << i / expected.shape()[1] << ", col "
             << i % expected.shape()[1] << ") is " << actual.data()[i] << ", int4q::qdq gives "
             << expected.data()[i];
    }
  }
  return ::testing::AssertionSuccess();
}

Matrix transposed(const Matrix& m) { return Matrix(xt::transpose(m)); }

Matrix matrix(const std::vector<float>& v, std::size_t rows, std::size_t cols) {
  Matrix m = Matrix::from_shape({rows, cols});
  std::copy(v.begin(), v.end(), m.begin());
  return m;
}

int4q::quant_config grid(int bits, std::size_t group, bool symmetric) {
  int4q::quant_config c;
  c.bits = bits;
  c.group_size = group;
  c.scheme = symmetric ? int4q::scheme::symmetric : int4q::scheme::asymmetric;
  return c;
}

quantize_options options_for(output_format f, const int4q::quant_config& c) {
  quantize_options o;
  o.format = f;
  o.config = c;
  o.threads = 1;
  // Most small graphs end in their projection, which find_weights calls the lm_head: quantize it
  // unless a test is about that policy.
  o.lm_head = int4q::onnx::lm_head_policy::quantize;
  return o;
}

const onnx::NodeProto* consumer_of(const onnx::ModelProto& m, const std::string& tensor) {
  for (const auto& n : m.graph().node())
    for (const auto& i : n.input())
      if (i == tensor) return &n;
  return nullptr;
}

/// Checks that `weight` (logical [K, N] values `logical`, already times alpha) was written in
/// format `f` and decodes to exactly int4q::qdq(logical, expected grid). `stored_trans`: the
/// original tensor was [N, K] (Gemm transB = 1). `dtype`: the model's float type.
void expect_decodes(const onnx::ModelProto& out, const std::string& weight, const Matrix& logical,
                    int4q::quant_config c, output_format f, bool stored_trans, int dtype) {
  SCOPED_TRACE("weight " + weight + ", format " + int4q::onnx::to_string(f));
  if (dtype == onnx_float16) c.scale_type = int4q::scale_type::float16;
  const Matrix expected = int4q::qdq(logical, c);
  const std::size_t K = logical.shape()[0], N = logical.shape()[1];
  const std::string bits = std::to_string(c.bits);
  switch (f) {
    case output_format::matmulnbits: {
      const auto* b = find_initializer(out, weight + "_Q" + bits);
      const auto* s = find_initializer(out, weight + "_scales");
      const auto* z = find_initializer(out, weight + "_zero_points");
      ASSERT_NE(b, nullptr);
      ASSERT_NE(s, nullptr);
      EXPECT_EQ(s->data_type(), dtype);
      EXPECT_EQ(z != nullptr, !c.is_symmetric());
      EXPECT_TRUE(same_values(expected, decode_matmulnbits(*b, *s, z, K, N, c.bits, c.group_size),
                              "MatMulNBits decode"));
      EXPECT_EQ(find_initializer(out, weight), nullptr) << "the fp weight must be removed";
      break;
    }
    case output_format::qdq: {
      const auto* x = find_initializer(out, weight + "_DQ_Q" + bits);
      const auto* s = find_initializer(out, weight + "_DQ_scales");
      const auto* z = find_initializer(out, weight + "_DQ_zero_points");
      ASSERT_NE(x, nullptr);
      ASSERT_NE(s, nullptr);
      EXPECT_EQ(s->data_type(), dtype);
      EXPECT_EQ(z != nullptr, !c.is_symmetric());
      const int want_type = c.bits == 4 ? (c.is_symmetric() ? 22 : 21) : (c.is_symmetric() ? 3 : 2);
      EXPECT_EQ(x->data_type(), want_type);
      const auto* dq = consumer_of(out, x->name());
      ASSERT_NE(dq, nullptr);
      EXPECT_EQ(dq->op_type(), "DequantizeLinear");
      EXPECT_EQ(dq->input(1), s->name());
      const auto* axis = find_attr(*dq, "axis");
      const auto* block = find_attr(*dq, "block_size");
      ASSERT_NE(axis, nullptr);
      const bool per_channel = c.granularity == int4q::grouping::per_channel;
      EXPECT_EQ(axis->i(), per_channel ? (stored_trans ? 0 : 1) : (stored_trans ? 1 : 0));
      EXPECT_EQ(block != nullptr, !per_channel);
      if (block) {
        EXPECT_EQ(block->i(), static_cast<std::int64_t>(c.group_size));
      }
      const std::size_t G = per_channel ? 1 : (K + c.group_size - 1) / c.group_size;
      std::vector<std::int64_t> scale_dims;
      if (per_channel) {
        scale_dims = {std::int64_t(N)};
      } else if (stored_trans) {
        scale_dims = {std::int64_t(N), std::int64_t(G)};
      } else {
        scale_dims = {std::int64_t(G), std::int64_t(N)};
      }
      EXPECT_EQ(dims_of(*s), scale_dims);
      if (z) {
        EXPECT_EQ(dims_of(*z), scale_dims);
      }
      const Matrix stored = decode_dequantize(*x, *s, z, axis->i(), block ? block->i() : 0);
      EXPECT_TRUE(same_values(expected, stored_trans ? transposed(stored) : stored, "DQ decode"));
      EXPECT_EQ(find_initializer(out, weight), nullptr) << "the fp weight must be removed";
      for (const auto& v : float_values(*s)) EXPECT_GT(v, 0.0f) << "QDQ scales must be positive";
      break;
    }
    case output_format::fake: {
      const auto* t = find_initializer(out, weight);
      if (!t) t = find_initializer(out, weight + "_fake");
      ASSERT_NE(t, nullptr);
      EXPECT_EQ(t->data_type(), dtype);
      const std::vector<float> v = float_values(*t);
      Matrix stored = stored_trans ? matrix(v, N, K) : matrix(v, K, N);
      Matrix want = expected;
      if (dtype == onnx_float16)
        for (auto& x : want) x = int4q::half_bits_to_float(int4q::float_to_half_bits(x));
      EXPECT_TRUE(same_values(want, stored_trans ? transposed(stored) : stored, "fake values"));
      break;
    }
  }
}

// ---- Small graphs
// ----------------------------------------------------------------------------------

/// x[?, K] @ w[K, N] -> y, weight in an initializer (or a Constant node).
graph_builder matmul_graph(std::size_t K, std::size_t N, int dtype = onnx_float,
                           bool constant_node = false, std::uint32_t seed = 1) {
  graph_builder g;
  g.input("x", dtype, {-1, std::int64_t(K)});
  const auto values = int4q::test::random_values(K * N, seed);
  if (constant_node) {
    g.constant("w", dtype, {std::int64_t(K), std::int64_t(N)}, values);
  } else {
    g.initializer("w", dtype, {std::int64_t(K), std::int64_t(N)}, values);
  }
  g.matmul("mm", "x", "w", "h");
  g.node("Relu", {"h"}, {"y"}, "relu");
  g.output("y", dtype, {-1, std::int64_t(N)});
  return g;
}

Matrix logical_of(const std::vector<float>& stored, std::size_t K, std::size_t N, bool trans,
                  int dtype, float alpha = 1.0f) {
  const std::vector<float> v = int4q::test::rounded_to(dtype, stored);
  Matrix w = trans ? transposed(matrix(v, N, K)) : matrix(v, K, N);
  if (alpha != 1.0f)
    for (auto& x : w) x *= alpha;
  return w;
}

class QuantizeForm : public ::testing::TestWithParam<output_format> {};

std::string format_name(const ::testing::TestParamInfo<output_format>& i) {
  return int4q::onnx::to_string(i.param);
}

TEST_P(QuantizeForm, MatMulInitializer) {
  for (bool sym : {true, false}) {
    SCOPED_TRACE(sym ? "symmetric" : "asymmetric");
    model m = matmul_graph(64, 24).model();
    const auto c = grid(4, 32, sym);
    const auto r = quantize_model(m, options_for(GetParam(), c));
    EXPECT_EQ(r.weights_quantized, 1u);
    expect_decodes(m.proto, "w",
                   logical_of(int4q::test::random_values(64 * 24, 1), 64, 24, false, onnx_float), c,
                   GetParam(), false, onnx_float);
  }
}

TEST_P(QuantizeForm, MatMulConstantNodeWeight) {
  model m = matmul_graph(64, 16, onnx_float, /*constant_node=*/true).model();
  const auto c = grid(4, 16, false);
  quantize_model(m, options_for(GetParam(), c));
  const Matrix w = logical_of(int4q::test::random_values(64 * 16, 1), 64, 16, false, onnx_float);
  if (GetParam() == output_format::fake) {
    // The Constant node keeps its place and gets the fake-quant values.
    const auto* n = find_node(m.proto, "w_const");
    ASSERT_NE(n, nullptr);
    const Matrix got = matrix(float_values(find_attr(*n, "value")->t()), 64, 16);
    EXPECT_TRUE(same_values(int4q::qdq(w, c), got, "Constant value"));
  } else {
    expect_decodes(m.proto, "w", w, c, GetParam(), false, onnx_float);
    EXPECT_EQ(find_node(m.proto, "w_const"), nullptr) << "the Constant node must be removed";
  }
}

/// Gemm(x, w, C) with alpha/beta; w stored [K, N] (transB 0) or [N, K] (transB 1).
void gemm_case(output_format f, bool trans_b) {
  const std::size_t K = 48, N = 10;
  const float alpha = 0.5f, beta = 2.0f;
  graph_builder g;
  g.input("x", onnx_float, {3, std::int64_t(K)});
  const auto wv = int4q::test::random_values(K * N, 7);
  const auto cv = int4q::test::random_values(N, 8);
  g.initializer("w", onnx_float,
                trans_b ? std::vector<std::int64_t>{std::int64_t(N), std::int64_t(K)}
                        : std::vector<std::int64_t>{std::int64_t(K), std::int64_t(N)},
                wv);
  g.initializer("c", onnx_float, {std::int64_t(N)}, cv);
  int4q::test::gemm_attrs a;
  a.trans_b = trans_b;
  a.alpha = alpha;
  a.beta = beta;
  g.gemm("gemm", "x", "w", "c", "y", a);
  g.output("y", onnx_float, {3, std::int64_t(N)});
  model m = g.model();
  const auto c = grid(4, 16, true);
  const auto r = quantize_model(m, options_for(f, c));
  ASSERT_EQ(r.weights_quantized, 1u) << (r.tensors.empty() ? "" : r.tensors[0].reason);
  expect_decodes(m.proto, "w", logical_of(wv, K, N, trans_b, onnx_float, alpha), c, f, trans_b,
                 onnx_float);
  if (f == output_format::matmulnbits) {
    const auto nodes = find_nodes(m.proto, "MatMulNBits");
    ASSERT_EQ(nodes.size(), 1u);
    EXPECT_TRUE(find_nodes(m.proto, "Gemm").empty());
    const auto& n = *nodes[0];
    ASSERT_EQ(n.input_size(), 6);
    EXPECT_EQ(n.input(3), "");  // symmetric: no zero points
    EXPECT_EQ(n.input(4), "");  // g_idx
    const auto* bias = find_initializer(m.proto, n.input(5));
    ASSERT_NE(bias, nullptr);
    EXPECT_EQ(dims_of(*bias), (std::vector<std::int64_t>{std::int64_t(N)}));
    const auto b = float_values(*bias);
    for (std::size_t j = 0; j < N; ++j) EXPECT_EQ(b[j], beta * cv[j]) << "bias " << j;
    EXPECT_EQ(find_initializer(m.proto, "c"), nullptr) << "the unused C must be removed";
    EXPECT_EQ(n.output(0), "y");
  } else {
    const auto* gemm = find_node(m.proto, "gemm");
    ASSERT_NE(gemm, nullptr);
    EXPECT_EQ(find_attr(*gemm, "alpha"), nullptr) << "alpha is folded into the weight";
    EXPECT_EQ(find_attr(*gemm, "beta")->f(), beta);
    EXPECT_EQ(find_attr(*gemm, "transB") != nullptr, trans_b);
    EXPECT_EQ(gemm->input(2), "c");
    ASSERT_NE(find_initializer(m.proto, "c"), nullptr);
  }
}

TEST_P(QuantizeForm, GemmTransB0AlphaBetaBias) { gemm_case(GetParam(), false); }
TEST_P(QuantizeForm, GemmTransB1AlphaBetaBias) { gemm_case(GetParam(), true); }

TEST_P(QuantizeForm, SharedWeightQuantizedOnce) {
  graph_builder g;
  g.input("x", onnx_float, {-1, 32});
  g.input("x2", onnx_float, {-1, 32});
  const auto wv = int4q::test::random_values(32 * 8, 3);
  g.initializer("w", onnx_float, {32, 8}, wv);
  g.matmul("mm_a", "x", "w", "ya");
  g.matmul("mm_b", "x2", "w", "yb");
  g.output("ya", onnx_float, {-1, 8});
  g.output("yb", onnx_float, {-1, 8});
  model m = g.model();
  const auto c = grid(4, 32, false);
  const auto r = quantize_model(m, options_for(GetParam(), c));
  ASSERT_EQ(r.tensors.size(), 1u);
  EXPECT_EQ(r.tensors[0].nodes, (std::vector<std::string>{"mm_a", "mm_b"}));
  expect_decodes(m.proto, "w", logical_of(wv, 32, 8, false, onnx_float), c, GetParam(), false,
                 onnx_float);
  EXPECT_EQ(m.proto.graph().initializer_size(),
            GetParam() == output_format::fake ? 1 : 3);  // data, scales, zero points: once
  if (GetParam() == output_format::matmulnbits) {
    const auto nodes = find_nodes(m.proto, "MatMulNBits");
    ASSERT_EQ(nodes.size(), 2u);
    EXPECT_EQ(nodes[0]->input(1), nodes[1]->input(1));
    EXPECT_EQ(nodes[0]->name(), "mm_a_Q4");
    EXPECT_EQ(nodes[1]->name(), "mm_b_Q4");
  } else if (GetParam() == output_format::qdq) {
    ASSERT_EQ(find_nodes(m.proto, "DequantizeLinear").size(), 1u);
    EXPECT_EQ(find_node(m.proto, "mm_a")->input(1), find_node(m.proto, "mm_b")->input(1));
  }
}

TEST_P(QuantizeForm, Float16Model) {
  model m = matmul_graph(64, 12, onnx_float16).model();
  for (bool sym : {true, false}) {
    model mm = m;
    const auto c = grid(4, 32, sym);
    quantize_model(mm, options_for(GetParam(), c));
    expect_decodes(mm.proto, "w",
                   logical_of(int4q::test::random_values(64 * 12, 1), 64, 12, false, onnx_float16),
                   c, GetParam(), false, onnx_float16);
  }
}

TEST_P(QuantizeForm, RaggedKOddGroupCountOddN) {
  struct shape {
    std::size_t k, n;
  };
  for (const shape s : {shape{100, 7}, shape{80, 5}, shape{20, 3}}) {
    for (bool sym : {true, false}) {
      SCOPED_TRACE("K " + std::to_string(s.k) + " N " + std::to_string(s.n) +
                   (sym ? " sym" : " asym"));
      model m = matmul_graph(s.k, s.n, onnx_float, false, 11).model();
      const auto c = grid(4, 32, sym);
      quantize_model(m, options_for(GetParam(), c));
      expect_decodes(
          m.proto, "w",
          logical_of(int4q::test::random_values(s.k * s.n, 11), s.k, s.n, false, onnx_float), c,
          GetParam(), false, onnx_float);
    }
  }
}

TEST_P(QuantizeForm, EightBitsAndTwoBits) {
  for (int bits : {8, 2}) {
    if (bits == 2 && GetParam() == output_format::qdq) continue;  // INT2 is not an ONNX type
    for (bool sym : {true, false}) {
      SCOPED_TRACE(std::to_string(bits) + (sym ? " bits sym" : " bits asym"));
      model m = matmul_graph(96, 9).model();
      const auto c = grid(bits, 64, sym);
      quantize_model(m, options_for(GetParam(), c));
      expect_decodes(m.proto, "w",
                     logical_of(int4q::test::random_values(96 * 9, 1), 96, 9, false, onnx_float), c,
                     GetParam(), false, onnx_float);
    }
  }
}

TEST_P(QuantizeForm, DeterministicAcrossThreadCounts) {
  graph_builder g2;
  g2.input("x", onnx_float, {-1, 256});
  g2.initializer("w0", onnx_float, {256, 200}, int4q::test::random_values(256 * 200, 20));
  g2.initializer("w1", onnx_float, {200, 256}, int4q::test::random_values(200 * 256, 21));
  g2.matmul("mm0", "x", "w0", "h0");
  g2.matmul("mm1", "h0", "w1", "h1");
  g2.output("h1", onnx_float, {-1, 256});
  std::string first;
  for (std::size_t threads : {1u, 2u, 0u}) {
    model m = g2.model();
    auto o = options_for(GetParam(), grid(4, 32, false));
    o.threads = threads;
    quantize_model(m, o);
    const std::string bytes = m.proto.SerializeAsString();
    if (first.empty()) {
      first = bytes;
    } else {
      EXPECT_TRUE(bytes == first) << "output differs with " << threads << " threads";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Quantize, QuantizeForm, ::testing::ValuesIn(all_formats), format_name);

// ---- Wiring
// ----------------------------------------------------------------------------------------

TEST(QuantizeModel, MatMulNBitsNodeAndOpsets) {
  model m = matmul_graph(64, 24).model();
  auto o = options_for(output_format::matmulnbits, grid(4, 32, false));
  o.accuracy_level = 4;
  quantize_model(m, o);
  const auto nodes = find_nodes(m.proto, "MatMulNBits");
  ASSERT_EQ(nodes.size(), 1u);
  const auto& n = *nodes[0];
  EXPECT_EQ(n.name(), "mm_Q4");
  EXPECT_EQ(n.domain(), "com.microsoft");
  EXPECT_EQ(std::vector<std::string>(n.input().begin(), n.input().end()),
            (std::vector<std::string>{"x", "w_Q4", "w_scales", "w_zero_points"}));
  EXPECT_EQ(std::vector<std::string>(n.output().begin(), n.output().end()),
            std::vector<std::string>{"h"});
  EXPECT_EQ(find_attr(n, "K")->i(), 64);
  EXPECT_EQ(find_attr(n, "N")->i(), 24);
  EXPECT_EQ(find_attr(n, "bits")->i(), 4);
  EXPECT_EQ(find_attr(n, "block_size")->i(), 32);
  EXPECT_EQ(find_attr(n, "accuracy_level")->i(), 4);
  EXPECT_EQ(int4q::test::opset_of(m.proto, "com.microsoft"), 1);
  EXPECT_EQ(int4q::test::opset_of(m.proto), 17);
  EXPECT_EQ(m.proto.ir_version(), 8) << "MatMulNBits needs no IR change";
  EXPECT_TRUE(find_nodes(m.proto, "MatMul").empty());
  ASSERT_EQ(m.proto.graph().node_size(), 2);
  EXPECT_EQ(m.proto.graph().node(1).op_type(), "Relu") << "order kept";

  model m2 = matmul_graph(64, 24).model();
  quantize_model(m2, options_for(output_format::matmulnbits, grid(4, 32, true)));
  const auto& n2 = *find_nodes(m2.proto, "MatMulNBits")[0];
  EXPECT_EQ(n2.input_size(), 3) << "symmetric: implicit zero point 8";
  EXPECT_EQ(find_attr(n2, "accuracy_level"), nullptr) << "absent unless asked";
}

TEST(QuantizeModel, QdqNodeOpsetAndIrVersion) {
  model m = matmul_graph(64, 24).model();
  quantize_model(m, options_for(output_format::qdq, grid(4, 32, true)));
  EXPECT_EQ(int4q::test::opset_of(m.proto), 21);
  EXPECT_EQ(m.proto.ir_version(), 10);
  const auto dq = find_nodes(m.proto, "DequantizeLinear");
  ASSERT_EQ(dq.size(), 1u);
  EXPECT_EQ(dq[0]->domain(), "");
  EXPECT_EQ(dq[0]->input_size(), 2) << "INT4 symmetric: no zero point";
  EXPECT_EQ(dq[0]->name(), "mm_DQ_Q4");
  ASSERT_EQ(m.proto.graph().node_size(), 3);
  EXPECT_EQ(m.proto.graph().node(0).op_type(), "DequantizeLinear") << "before its user";
  const auto* mm = find_node(m.proto, "mm");
  ASSERT_NE(mm, nullptr);
  EXPECT_EQ(mm->op_type(), "MatMul");
  EXPECT_EQ(mm->input(1), dq[0]->output(0));
  EXPECT_EQ(find_initializer(m.proto, "w_DQ_Q4")->data_type(), 22);

  model m2 = matmul_graph(64, 24).model();
  quantize_model(m2, options_for(output_format::qdq, grid(4, 32, false)));
  const auto dq2 = find_nodes(m2.proto, "DequantizeLinear");
  ASSERT_EQ(dq2.size(), 1u);
  EXPECT_EQ(dq2[0]->input_size(), 3);
  EXPECT_EQ(find_initializer(m2.proto, "w_DQ_Q4")->data_type(), 21);
  EXPECT_EQ(find_initializer(m2.proto, "w_DQ_zero_points")->data_type(), 21);
}

TEST(QuantizeModel, QdqPerChannel) {
  for (bool trans : {false, true}) {
    graph_builder g;
    g.input("x", onnx_float, {2, 40});
    const auto wv = int4q::test::random_values(40 * 6, 5);
    g.initializer("w", onnx_float,
                  trans ? std::vector<std::int64_t>{6, 40} : std::vector<std::int64_t>{40, 6}, wv);
    int4q::test::gemm_attrs a;
    a.trans_b = trans;
    g.gemm("gemm", "x", "w", "", "y", a);
    g.output("y", onnx_float, {2, 6});
    model m = g.model();
    auto c = grid(8, 32, false);
    c.granularity = int4q::grouping::per_channel;
    quantize_model(m, options_for(output_format::qdq, c));
    expect_decodes(m.proto, "w", logical_of(wv, 40, 6, trans, onnx_float), c, output_format::qdq,
                   trans, onnx_float);
  }
}

TEST(QuantizeModel, GemmWithNonConstantBiasKeepsAnAdd) {
  graph_builder g;
  g.input("x", onnx_float, {3, 32});
  g.input("c", onnx_float, {3, 8});
  g.initializer("w", onnx_float, {32, 8}, int4q::test::random_values(32 * 8, 2));
  int4q::test::gemm_attrs a;
  a.beta = 0.25f;
  g.gemm("gemm", "x", "w", "c", "y", a);
  g.output("y", onnx_float, {3, 8});
  model m = g.model();
  quantize_model(m, options_for(output_format::matmulnbits, grid(4, 32, false)));
  ASSERT_EQ(m.proto.graph().node_size(), 3);
  const auto& mul = m.proto.graph().node(0);
  const auto& mnb = m.proto.graph().node(1);
  const auto& add = m.proto.graph().node(2);
  EXPECT_EQ(mul.op_type(), "Mul");
  EXPECT_EQ(mul.input(0), "c");
  EXPECT_EQ(float_values(*find_initializer(m.proto, mul.input(1)))[0], 0.25f);
  EXPECT_EQ(mnb.op_type(), "MatMulNBits");
  EXPECT_EQ(mnb.input_size(), 4) << "no bias input";
  EXPECT_EQ(add.op_type(), "Add");
  EXPECT_EQ(add.input(0), mnb.output(0));
  EXPECT_EQ(add.input(1), mul.output(0));
  EXPECT_EQ(add.output(0), "y");
}

TEST(QuantizeModel, GemmBiasNotBroadcastableToNIsReported) {
  graph_builder g;
  g.input("x", onnx_float, {3, 32});
  g.initializer("w", onnx_float, {32, 8}, int4q::test::random_values(32 * 8, 2));
  g.initializer("c", onnx_float, {3, 8}, int4q::test::random_values(24, 3));
  g.gemm("gemm", "x", "w", "c", "y");
  g.output("y", onnx_float, {3, 8});
  model m = g.model();
  const std::string before = m.proto.SerializeAsString();
  const auto r = quantize_model(m, options_for(output_format::matmulnbits, grid(4, 32, false)));
  ASSERT_EQ(r.tensors.size(), 1u);
  EXPECT_FALSE(r.tensors[0].quantized);
  EXPECT_NE(r.tensors[0].reason.find("`format = qdq`"), std::string::npos) << r.tensors[0].reason;
  EXPECT_TRUE(m.proto.SerializeAsString() == before);
  // The QDQ writer keeps the Gemm, so it handles it.
  const auto r2 = quantize_model(m, options_for(output_format::qdq, grid(4, 32, false)));
  EXPECT_EQ(r2.weights_quantized, 1u);
}

TEST(QuantizeModel, WeightWithAnotherConsumerIsNotQuantized) {
  graph_builder g;
  g.input("x", onnx_float, {-1, 32});
  g.input("ids", int4q::test::onnx_int64, {-1});
  g.initializer("w", onnx_float, {32, 32}, int4q::test::random_values(32 * 32, 4));
  g.node("Gather", {"w", "ids"}, {"emb"}, "gather");
  g.matmul("mm", "x", "w", "y");
  g.output("y", onnx_float, {-1, 32});
  g.output("emb", onnx_float, {-1, 32});
  for (output_format f : all_formats) {
    SCOPED_TRACE(int4q::onnx::to_string(f));
    model m = g.model();
    const std::string before = m.proto.SerializeAsString();
    const auto r = quantize_model(m, options_for(f, grid(4, 32, true)));
    ASSERT_EQ(r.tensors.size(), 1u);
    EXPECT_FALSE(r.tensors[0].quantized);
    EXPECT_NE(r.tensors[0].reason.find("Gather"), std::string::npos) << r.tensors[0].reason;
    EXPECT_TRUE(m.proto.SerializeAsString() == before);
  }
}

TEST(QuantizeModel, NamesDoNotCollide) {
  graph_builder g = matmul_graph(32, 8);
  g.initializer("w_Q4", onnx_float, {1}, {1.0f});
  g.node("Identity", {"w_Q4"}, {"keep"}, "id");
  g.output("keep", onnx_float, {1});
  model m = g.model();
  quantize_model(m, options_for(output_format::matmulnbits, grid(4, 32, true)));
  const auto& n = *find_nodes(m.proto, "MatMulNBits")[0];
  EXPECT_EQ(n.input(1), "w_Q4_1");
  EXPECT_EQ(find_initializer(m.proto, "w_Q4")->data_type(), onnx_float);
}

// ---- Errors leave the model unchanged
// ----------------------------------------------------------------

void expect_refused(const model& original, const quantize_options& o, model_error::kind kind,
                    const std::string& fix) {
  model m = original;
  const std::string before = m.proto.SerializeAsString();
  try {
    quantize_model(m, o);
    ADD_FAILURE() << "no error; expected one mentioning '" << fix << "'";
  } catch (const model_error& e) {
    EXPECT_EQ(e.what_kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(fix), std::string::npos)
        << "message: " << e.what() << "\nexpected to contain: " << fix;
  }
  EXPECT_TRUE(m.proto.SerializeAsString() == before) << "the model was changed";
}

TEST(QuantizeModel, UnsupportedOptionsAreRefusedBeforeAnyChange) {
  const model m = matmul_graph(64, 8).model();
  const auto unsupported = model_error::kind::unsupported;
  const auto mnb = output_format::matmulnbits, qdq = output_format::qdq;
  expect_refused(m, options_for(mnb, grid(4, 48, false)), unsupported,
                 "`config.group_size = 48` cannot be stored by MatMulNBits (power of two "
                 "16..256): use `format = qdq` or a group size of 32/64/128");
  expect_refused(m, options_for(mnb, grid(4, 512, false)), unsupported, "use `format = qdq`");
  expect_refused(m, options_for(mnb, grid(4, 8, false)), unsupported, "use `format = qdq`");
  auto per_channel = grid(4, 32, false);
  per_channel.granularity = int4q::grouping::per_channel;
  expect_refused(m, options_for(mnb, per_channel), unsupported, "use `format = qdq`");
  expect_refused(m, options_for(mnb, grid(3, 32, false)), unsupported, "`format = fake`");
  expect_refused(m, options_for(qdq, grid(2, 32, false)), unsupported, "`format = matmulnbits`");
  expect_refused(m, options_for(qdq, grid(6, 32, false)), unsupported, "`config.bits` 4 or 8");
  expect_refused(m, options_for(qdq, grid(9, 32, false)), unsupported, "2 to 8");
  auto nf4 = grid(4, 32, false);
  nf4.data_type = int4q::data_type::nf4;
  expect_refused(m, options_for(qdq, nf4), unsupported, "`format = fake`");
  expect_refused(m, options_for(mnb, nf4), unsupported, "`format = fake`");
  auto full = grid(4, 32, false);
  full.scheme = int4q::scheme::symmetric_full_range;
  expect_refused(m, options_for(qdq, full), unsupported, "`config.scheme` symmetric");
  auto acc = options_for(qdq, grid(4, 32, false));
  acc.accuracy_level = 1;
  expect_refused(m, acc, unsupported, "`format = matmulnbits`");
  auto acc5 = options_for(mnb, grid(4, 32, false));
  acc5.accuracy_level = 5;
  expect_refused(m, acc5, unsupported, "0..4");
  auto bad_include = options_for(mnb, grid(4, 32, false));
  bad_include.include = {"mm["};
  expect_refused(m, bad_include, model_error::kind::invalid, "`include` 'mm['");
  auto bad_override = options_for(mnb, grid(4, 32, false));
  bad_override.overrides.push_back({});
  bad_override.overrides.back().match = "(";
  expect_refused(m, bad_override, model_error::kind::invalid, "override #0");
  auto override_group = options_for(mnb, grid(4, 32, false));
  override_group.overrides.push_back({});
  override_group.overrides.back().match = "nothing-matches";
  override_group.overrides.back().group_size = 48;
  expect_refused(m, override_group, unsupported,
                 "override #0 ('nothing-matches'): `config.group_size = 48`");

  // fake accepts every grid the core accepts.
  model f = m;
  EXPECT_EQ(quantize_model(f, options_for(output_format::fake, nf4)).weights_quantized, 1u);
}

TEST(QuantizeModel, NonFiniteWeightIsAnErrorBeforeAnyChange) {
  graph_builder g;
  g.input("x", onnx_float, {-1, 32});
  g.initializer("a", onnx_float, {32, 32}, int4q::test::random_values(32 * 32, 1));
  auto bad = int4q::test::random_values(32 * 8, 2);
  bad[17] = std::numeric_limits<float>::quiet_NaN();
  g.initializer("b", onnx_float, {32, 8}, bad);
  g.matmul("mm_a", "x", "a", "h");
  g.matmul("mm_b", "h", "b", "y");
  g.output("y", onnx_float, {-1, 8});
  expect_refused(g.model(), options_for(output_format::matmulnbits, grid(4, 32, false)),
                 model_error::kind::invalid, "weight 'b'");
}

TEST(QuantizeModel, SpillMovesNewTensorsToTheScratchFile) {
  // quantize_options::spill_file: every new tensor of at least spill_min_bytes becomes an
  // external reference into the scratch file; reading it back gives the in-memory bytes.
  const std::filesystem::path scratch =
      std::filesystem::temp_directory_path() / ("int4q_spill_test_" + std::to_string(::getpid()));
  for (const output_format f : all_formats) {
    const model original = matmul_graph(96, 40).model();
    model in_memory = original;
    quantize_model(in_memory, options_for(f, grid(4, 32, false)));
    model spilled = original;
    quantize_options o = options_for(f, grid(4, 32, false));
    o.spill_file = scratch;
    o.spill_min_bytes = 64;  // the scales [40, 3] fp32 (480 bytes) and the data go
    quantize_model(spilled, o);
    EXPECT_EQ(spilled.spill_location, scratch.filename().string());
    std::size_t external = 0;
    for (const auto& t : spilled.proto.graph().initializer()) {
      const onnx::TensorProto* mem = nullptr;
      for (const auto& u : in_memory.proto.graph().initializer())
        if (u.name() == t.name()) mem = &u;
      ASSERT_NE(mem, nullptr) << t.name();
      external += int4q::onnx::is_external(t) ? 1 : 0;
      EXPECT_EQ(int4q::onnx::is_external(t), mem->raw_data().size() >= 64) << t.name();
      EXPECT_TRUE(int4q::onnx::read_tensor_bytes(spilled, t) ==
                  int4q::onnx::read_tensor_bytes(in_memory, *mem))
          << t.name();
    }
    EXPECT_GE(external, f == output_format::fake ? 1u : 2u) << "the new tensors stayed in memory";
  }
  std::filesystem::remove(scratch);
}

TEST(QuantizeModel, QdqOnAnOpsetThatCannotBeRaisedIsRefused) {
  graph_builder g = matmul_graph(32, 8);
  g.set_opset(9);
  g.input("img", onnx_float, {1, 1, 4, 4});
  g.initializer("scales", onnx_float, {4}, {1, 1, 2, 2});
  g.node("Upsample", {"img", "scales"}, {"big"}, "up1");
  g.output("big", onnx_float, {1, 1, 8, 8});
  expect_refused(g.model(), options_for(output_format::qdq, grid(4, 32, false)),
                 model_error::kind::unsupported, "node Upsample 'up1'");
  expect_refused(g.model(), options_for(output_format::qdq, grid(4, 32, false)),
                 model_error::kind::unsupported, "`format = matmulnbits`");
  // MatMulNBits needs no opset change.
  model m = g.model();
  EXPECT_EQ(quantize_model(m, options_for(output_format::matmulnbits, grid(4, 32, false)))
                .weights_quantized,
            1u);
  EXPECT_EQ(int4q::test::opset_of(m.proto), 9);
}

TEST(QuantizeModel, QdqRaisesAnOldOpsetConvertingClip) {
  graph_builder g(9, 4);
  g.input("x", onnx_float, {-1, 32});
  g.initializer("w", onnx_float, {32, 8}, int4q::test::random_values(32 * 8, 2));
  g.matmul("mm", "x", "w", "h");
  auto& clip = g.node("Clip", {"h"}, {"y"}, "clip");
  int4q::test::set_attr(clip, "min", 0.0f);
  int4q::test::set_attr(clip, "max", 6.0f);
  g.output("y", onnx_float, {-1, 8});
  model m = g.model();
  quantize_model(m, options_for(output_format::qdq, grid(4, 32, false)));
  EXPECT_EQ(int4q::test::opset_of(m.proto), 21);
  EXPECT_EQ(m.proto.ir_version(), 10);
  const auto* c = find_node(m.proto, "clip");
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(c->input_size(), 3);
  EXPECT_EQ(c->attribute_size(), 0);
  EXPECT_EQ(float_values(*find_initializer(m.proto, c->input(2)))[0], 6.0f);
}

// ---- Selection
// --------------------------------------------------------------------------------------

/// x -> q_proj -> k_proj -> v_proj -> o (4 MatMuls, the last one feeds the graph output).
graph_builder chain_graph() {
  graph_builder g;
  g.input("x", onnx_float, {-1, 32});
  const char* names[] = {"q_proj", "k_proj", "v_proj", "o_proj"};
  std::string in = "x";
  for (int i = 0; i < 4; ++i) {
    const std::string w = std::string("w_") + names[i];
    g.initializer(w, onnx_float, {32, 32}, int4q::test::random_values(32 * 32, 30 + i));
    const std::string out = i == 3 ? "y" : std::string(names[i]) + "_out";
    g.matmul(names[i], in, w, out);
    in = out;
  }
  g.output("y", onnx_float, {-1, 32});
  return g;
}

std::map<std::string, int4q::onnx::tensor_report> by_weight(const int4q::onnx::quantize_report& r) {
  std::map<std::string, int4q::onnx::tensor_report> out;
  for (const auto& t : r.tensors) out[t.weight] = t;
  return out;
}

TEST(QuantizeModel, IncludeAndExclude) {
  model m = chain_graph().model();
  auto o = options_for(output_format::matmulnbits, grid(4, 32, false));
  o.include = {"q_|k_", "v_proj"};
  o.exclude = {"^k"};
  o.lm_head = int4q::onnx::lm_head_policy::quantize;
  const auto r = by_weight(quantize_model(m, o));
  EXPECT_TRUE(r.at("w_q_proj").quantized);
  EXPECT_FALSE(r.at("w_k_proj").quantized);
  EXPECT_EQ(r.at("w_k_proj").reason, "excluded by `exclude` '^k'");
  EXPECT_TRUE(r.at("w_v_proj").quantized);
  EXPECT_FALSE(r.at("w_o_proj").quantized);
  EXPECT_EQ(r.at("w_o_proj").reason, "not selected by `include`");
  EXPECT_EQ(find_nodes(m.proto, "MatMulNBits").size(), 2u);
  EXPECT_EQ(find_nodes(m.proto, "MatMul").size(), 2u);
  ASSERT_NE(find_initializer(m.proto, "w_k_proj"), nullptr);
}

TEST(QuantizeModel, OverridesFirstMatchWins) {
  model m = chain_graph().model();
  auto o = options_for(output_format::qdq, grid(4, 32, false));
  o.lm_head = int4q::onnx::lm_head_policy::quantize;
  int4q::onnx::node_override a, b, c;
  a.match = "q_proj";
  a.bits = 8;
  a.scheme = int4q::scheme::symmetric;
  b.match = "proj";  // would also match q_proj: the first match wins
  b.group_size = 0;  // per-channel
  c.match = "k_proj";
  c.skip = true;  // never reached for k_proj: b matches first
  o.overrides = {a, b, c};
  const auto r = by_weight(quantize_model(m, o));
  EXPECT_EQ(r.at("w_q_proj").bits, 8);
  EXPECT_EQ(r.at("w_q_proj").scheme, "symmetric");
  EXPECT_EQ(r.at("w_q_proj").group_size, 32u);
  EXPECT_EQ(r.at("w_k_proj").bits, 4);
  EXPECT_EQ(r.at("w_k_proj").group_size, 32u) << "per-channel: the group is all of K";
  EXPECT_TRUE(r.at("w_k_proj").quantized);
  EXPECT_EQ(find_initializer(m.proto, "w_q_proj_DQ_Q8")->data_type(), 3);  // INT8
  EXPECT_EQ(dims_of(*find_initializer(m.proto, "w_k_proj_DQ_scales")),
            std::vector<std::int64_t>{32});

  model m2 = chain_graph().model();
  o.overrides = {c};
  const auto r2 = by_weight(quantize_model(m2, o));
  EXPECT_FALSE(r2.at("w_k_proj").quantized);
  EXPECT_EQ(r2.at("w_k_proj").reason, "skipped by override #0 ('k_proj')");
}

TEST(QuantizeModel, LmHeadPolicy) {
  using int4q::onnx::lm_head_policy;
  {
    model m = chain_graph().model();
    auto o = options_for(output_format::matmulnbits, grid(4, 32, false));
    o.lm_head = lm_head_policy::keep;  // the default
    EXPECT_EQ(quantize_options().lm_head, lm_head_policy::keep);
    const auto r = by_weight(quantize_model(m, o));
    EXPECT_FALSE(r.at("w_o_proj").quantized);
    EXPECT_EQ(r.at("w_o_proj").reason, "lm_head kept in float (`lm_head = quantize` to change)");
    EXPECT_TRUE(r.at("w_v_proj").quantized);
  }
  {
    model m = chain_graph().model();
    auto o = options_for(output_format::matmulnbits, grid(4, 16, false));
    o.lm_head = lm_head_policy::int8;
    const auto r = by_weight(quantize_model(m, o));
    EXPECT_EQ(r.at("w_o_proj").bits, 8);
    EXPECT_EQ(r.at("w_o_proj").group_size, 32u) << "largest power of two <= min(256, K = 32)";
    EXPECT_EQ(r.at("w_v_proj").bits, 4);
    EXPECT_EQ(r.at("w_v_proj").group_size, 16u);
    const auto& n = *find_node(m.proto, "o_proj_Q8");
    EXPECT_EQ(find_attr(n, "block_size")->i(), 32);
    EXPECT_EQ(find_attr(n, "bits")->i(), 8);
  }
  {
    model m = chain_graph().model();
    auto o = options_for(output_format::qdq, grid(4, 32, false));
    o.lm_head = lm_head_policy::int8;
    const auto r = by_weight(quantize_model(m, o));
    EXPECT_EQ(r.at("w_o_proj").bits, 8);
    auto c = grid(8, 32, false);
    c.granularity = int4q::grouping::per_channel;
    expect_decodes(m.proto, "w_o_proj",
                   logical_of(int4q::test::random_values(32 * 32, 33), 32, 32, false, onnx_float),
                   c, output_format::qdq, false, onnx_float);
  }
}

// ---- Report
// ------------------------------------------------------------------------------------------

TEST(QuantizeModel, ReportAndJson) {
  model m = chain_graph().model();
  auto o = options_for(output_format::matmulnbits, grid(4, 32, false));
  o.lm_head = int4q::onnx::lm_head_policy::keep;
  std::vector<std::string> progress;
  o.on_progress = [&](const int4q::onnx::quantize_progress& p) {
    progress.push_back(std::to_string(p.done) + "/" + std::to_string(p.total) + " " + p.weight);
  };
  const auto r = quantize_model(m, o);
  EXPECT_EQ(progress, (std::vector<std::string>{"1/3 w_q_proj", "2/3 w_k_proj", "3/3 w_v_proj"}));
  ASSERT_EQ(r.tensors.size(), 4u);
  const auto& t = r.tensors[0];
  EXPECT_EQ(t.k, 32u);
  EXPECT_EQ(t.n, 32u);
  EXPECT_EQ(t.bytes_before, 32u * 32u * 4u);
  EXPECT_EQ(t.bytes_after, 32u * 16u + 32u * 4u + 32u);  // B + fp32 scales + packed zero points
  EXPECT_GT(t.rmse, 0.0);
  const Matrix w = logical_of(int4q::test::random_values(32 * 32, 30), 32, 32, false, onnx_float);
  const auto stats = int4q::measure_error(w, int4q::qdq(w, grid(4, 32, false)));
  EXPECT_EQ(t.rmse, stats.rmse);
  EXPECT_EQ(t.max_abs, stats.max_abs);
  EXPECT_EQ(r.weights_quantized, 3u);
  EXPECT_EQ(r.bytes_before, 4u * 32u * 32u * 4u);
  EXPECT_EQ(r.bytes_after, 3u * t.bytes_after + 32u * 32u * 4u);

  const auto j = int4q::onnx::to_json(r);
  EXPECT_EQ(j["config"]["format"], "matmulnbits");
  EXPECT_EQ(j["config"]["bits"], 4);
  EXPECT_EQ(j["config"]["group_size"], 32);
  EXPECT_EQ(j["config"]["lm_head"], "keep");
  EXPECT_EQ(j["tensors"].size(), 4u);
  EXPECT_EQ(j["tensors"][0]["weight"], "w_q_proj");
  EXPECT_EQ(j["tensors"][0]["nodes"][0], "q_proj");
  EXPECT_EQ(j["tensors"][0]["scheme"], "asymmetric");
  EXPECT_EQ(j["tensors"][0]["error"]["rmse"], stats.rmse);
  EXPECT_EQ(j["tensors"][3]["quantized"], false);
  EXPECT_TRUE(j["tensors"][3].contains("reason"));
  EXPECT_EQ(j["totals"]["weights"], 4);
  EXPECT_EQ(j["totals"]["weights_quantized"], 3);
  EXPECT_EQ(j["totals"]["bytes_before"], r.bytes_before);
  EXPECT_TRUE(j["totals"]["compression"].is_number());
}

// ---- Config files
// ------------------------------------------------------------------------------------

TEST(QuantizeConfig, ParseOverrides) {
  const auto j = nlohmann::json::parse(R"({"overrides": [
      {"match": "attn", "bits": 8, "group_size": 64, "scheme": "symmetric"},
      {"match": "mlp", "group_size": "per_channel", "method": "rtn"},
      {"match": "head", "skip": true}]})");
  const auto o = int4q::onnx::parse_overrides(j);
  ASSERT_EQ(o.size(), 3u);
  EXPECT_EQ(o[0].match, "attn");
  EXPECT_EQ(o[0].bits, 8);
  EXPECT_EQ(o[0].group_size, 64u);
  EXPECT_EQ(o[0].scheme, int4q::scheme::symmetric);
  EXPECT_FALSE(o[0].skip.has_value());
  EXPECT_EQ(o[1].group_size, 0u);
  EXPECT_EQ(o[2].skip, true);
}

void expect_config_error(const char* text, const std::string& names) {
  try {
    int4q::onnx::parse_overrides(nlohmann::json::parse(text));
    ADD_FAILURE() << "no error for " << text;
  } catch (const model_error& e) {
    EXPECT_EQ(e.what_kind(), model_error::kind::invalid);
    EXPECT_NE(std::string(e.what()).find(names), std::string::npos)
        << e.what() << "\nexpected to name: " << names;
  }
}

TEST(QuantizeConfig, ErrorsNameTheKeyAndTheEntry) {
  expect_config_error(R"({"overrides": [{"match": "a"}, {"match": "b", "bit": 8}]})",
                      "overrides[1] has an unknown key \"bit\"");
  expect_config_error(R"({"overrides": [{"match": "a", "bits": "8"}]})", "overrides[0].bits");
  expect_config_error(R"({"overrides": [{"match": "a", "bits": 12}]})", "overrides[0].bits");
  expect_config_error(R"({"overrides": [{"match": "a", "group_size": -1}]})",
                      "overrides[0].group_size");
  expect_config_error(R"({"overrides": [{"match": "a", "scheme": "sym"}]})", "overrides[0].scheme");
  expect_config_error(R"({"overrides": [{"match": "a", "skip": 1}]})", "overrides[0].skip");
  expect_config_error(R"({"overrides": [{"match": "a", "method": "hqq"}]})", "overrides[0].method");
  expect_config_error(R"({"overrides": [{"bits": 8}]})", "overrides[0] has no \"match\"");
  expect_config_error(R"({"overrides": {"match": "a"}})", "\"overrides\"");
  expect_config_error(R"({"overides": []})", "unknown key \"overides\"");
  expect_config_error(R"([1, 2])", "JSON object");
}

TEST(QuantizeConfig, ApplyConfigSetsBaseSettings) {
  quantize_options o;
  int4q::onnx::apply_config(nlohmann::json::parse(R"({"format": "qdq", "bits": 8,
      "group_size": "per_channel", "scheme": "symmetric", "preset": "ort", "lm_head": "int8",
      "include": "attn", "exclude": ["x", "y"], "overrides": [{"match": "a", "bits": 4}]})"),
                            o);
  EXPECT_EQ(o.format, output_format::qdq);
  EXPECT_EQ(o.config.bits, 8);
  EXPECT_EQ(o.config.granularity, int4q::grouping::per_channel);
  EXPECT_EQ(o.config.scheme, int4q::scheme::symmetric);
  EXPECT_TRUE(o.ort_preset);
  EXPECT_EQ(o.lm_head, int4q::onnx::lm_head_policy::int8);
  EXPECT_EQ(o.include, std::vector<std::string>{"attn"});
  EXPECT_EQ(o.exclude.size(), 2u);
  ASSERT_EQ(o.overrides.size(), 1u);
  // A wrong key leaves the options unchanged.
  quantize_options before = o;
  EXPECT_THROW(int4q::onnx::apply_config(nlohmann::json::parse(R"({"bits": 4, "lm": 1})"), o),
               model_error);
  EXPECT_EQ(o.config.bits, before.config.bits);
}

// ---- ORT preset: byte-identical with ONNX Runtime's quantizer on devgpt
// ---------------------------------

std::string devgpt_dir() { return std::string(INT4Q_SOURCE_DIR) + "/../shared/models/devgpt"; }

onnx::ModelProto parse_file(const std::string& path) {
  onnx::ModelProto m;
  std::ifstream f(path, std::ios::binary);
  if (!f || !m.ParseFromIstream(&f)) ADD_FAILURE() << "cannot read " << path;
  return m;
}

struct golden {
  const char* file;
  output_format format;
  std::size_t group;
  bool symmetric;
};

void PrintTo(const golden& g, std::ostream* os) { *os << g.file; }

class QuantizeOrtPreset : public ::testing::TestWithParam<golden> {};

TEST_P(QuantizeOrtPreset, DevgptMatchesOnnxRuntimeByteForByte) {
  const golden gc = GetParam();
  model m;
  m.proto = parse_file(devgpt_dir() + "/devgpt_fp32.onnx");
  m.path = devgpt_dir() + "/devgpt_fp32.onnx";
  m.base_dir = devgpt_dir();
  const onnx::ModelProto ort = parse_file(devgpt_dir() + "/ort/" + gc.file);
  quantize_options o = options_for(gc.format, grid(4, gc.group, gc.symmetric));
  o.ort_preset = true;
  o.lm_head = int4q::onnx::lm_head_policy::quantize;
  o.threads = 0;
  const auto r = quantize_model(m, o);
  EXPECT_EQ(r.weights_quantized, 17u);
  const bool mnb = gc.format == output_format::matmulnbits;
  int compared = 0;
  for (const auto& t : ort.graph().initializer()) {
    const std::string& name = t.name();
    const bool ours = name.find(mnb ? "_Q4" : "_DQ_") != std::string::npos ||
                      (mnb && (name.find("_scales") != std::string::npos ||
                               name.find("_zero_points") != std::string::npos));
    if (!ours) continue;
    SCOPED_TRACE(name);
    const auto* mine = find_initializer(m.proto, name);
    ASSERT_NE(mine, nullptr) << "int4q wrote no initializer " << name;
    EXPECT_EQ(mine->data_type(), t.data_type());
    EXPECT_TRUE(mine->raw_data() == t.raw_data()) << "bytes differ";
    ++compared;
  }
  EXPECT_EQ(compared, 17 * (gc.symmetric ? 2 : 3));
  // The same nodes, by name and inputs.
  for (const auto& n : ort.graph().node()) {
    if (n.op_type() != "MatMulNBits" && n.op_type() != "DequantizeLinear") continue;
    bool found = false;
    for (const auto& x : m.proto.graph().node()) {
      if (x.op_type() != n.op_type()) continue;
      if (std::vector<std::string>(x.input().begin(), x.input().end()) ==
          std::vector<std::string>(n.input().begin(), n.input().end())) {
        found = true;
        if (mnb) {
          EXPECT_EQ(x.name(), n.name());
        }
        for (const auto& a : n.attribute()) {
          const auto* mine = find_attr(x, a.name());
          ASSERT_NE(mine, nullptr) << a.name();
          EXPECT_EQ(mine->i(), a.i()) << a.name();
        }
      }
    }
    EXPECT_TRUE(found) << n.op_type() << " " << n.name();
  }
  EXPECT_EQ(int4q::test::opset_of(m.proto), mnb ? 17 : 21);
}

INSTANTIATE_TEST_SUITE_P(
    QuantizeDevgpt, QuantizeOrtPreset,
    ::testing::Values(golden{"devgpt_ort_mnb_b32_sym.onnx", output_format::matmulnbits, 32, true},
                      golden{"devgpt_ort_mnb_b32_asym.onnx", output_format::matmulnbits, 32, false},
                      golden{"devgpt_ort_mnb_b128_sym.onnx", output_format::matmulnbits, 128, true},
                      golden{"devgpt_ort_mnb_b128_asym.onnx", output_format::matmulnbits, 128,
                             false},
                      golden{"devgpt_ort_qdq_b128_sym.onnx", output_format::qdq, 128, true},
                      golden{"devgpt_ort_qdq_b128_asym.onnx", output_format::qdq, 128, false}),
    [](const ::testing::TestParamInfo<golden>& i) {
      std::string n = i.param.file;
      return n.substr(11, n.size() - 16);  // strip "devgpt_ort_" and ".onnx"
    });

}  // namespace

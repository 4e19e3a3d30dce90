// int4q_ort_graphs: writes the small fp32/fp16 ONNX graphs that the ONNX Runtime interoperability
// tests quantize with `int4q quantize` (both writers and fake-quant) and run in ONNX Runtime.
// One graph per rewrite form of the adapter: plain MatMul (3-D activations), weights in Constant
// nodes, Gemm transB 0 and 1 with alpha, beta and a bias, Gemm without bias and an odd N, a weight
// shared by several nodes, fp16, a ragged K, an odd number of groups; token embeddings, alone
// and tied to a lm_head (Gemm transB = 1, Transpose + MatMul); and the exporter styles of
// export_styles.hpp (torch.onnx with and without constant folding, mixed precision, fp16,
// Optimum decoder with past, ONNX Runtime GenAI).
//
//   int4q_ort_graphs OUTDIR NAME...      writes OUTDIR/NAME.onnx for each NAME
//   int4q_ort_graphs --list              prints the names it knows
//
// Weights are uniform random (deterministic seeds), activations come from the test harness.
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include "onnx/graph_builder.hpp"
#include "ort/export_styles.hpp"

namespace {

using int4q::test::gemm_attrs;
using int4q::test::graph_builder;
using int4q::test::onnx_float;
using int4q::test::onnx_float16;
using int4q::test::random_values;

std::vector<float> weights(std::size_t rows, std::size_t cols, std::uint32_t seed) {
  return random_values(rows * cols, seed, 1.0f);
}

// x [2, 5, 64] @ W [64, 48]: MatMul with 3-D activations, the batch dimension symbolic.
graph_builder matmul() {
  graph_builder g;
  g.input("x", onnx_float, {-1, 5, 64});
  g.initializer("w", onnx_float, {64, 48}, weights(64, 48, 11));
  g.matmul("mm", "x", "w", "y");
  g.output("y", onnx_float, {-1, 5, 48});
  return g;
}

// Weights held by Constant nodes (what paddle2onnx writes), two layers, the second with a ragged K.
graph_builder matmul_constant() {
  graph_builder g;
  g.input("x", onnx_float, {4, 96});
  g.constant("w0", onnx_float, {96, 40}, weights(96, 40, 12));
  g.matmul("mm0", "x", "w0", "h");
  g.node("Relu", {"h"}, {"hr"}, "relu");
  g.constant("w1", onnx_float, {40, 24}, weights(40, 24, 13));
  g.matmul("mm1", "hr", "w1", "y");
  g.output("y", onnx_float, {4, 24});
  return g;
}

// Gemm transB = 0 (W [K, N]) with alpha, beta and a bias [N].
graph_builder gemm_transb0() {
  graph_builder g;
  g.input("x", onnx_float, {6, 80});
  g.initializer("w", onnx_float, {80, 36}, weights(80, 36, 14));
  g.initializer("b", onnx_float, {36}, random_values(36, 15));
  gemm_attrs a;
  a.alpha = 0.5f;
  a.beta = 2.0f;
  g.gemm("gemm", "x", "w", "b", "y", a);
  g.output("y", onnx_float, {6, 36});
  return g;
}

// Gemm transB = 1 (W [N, K], what torch exports for nn.Linear) with alpha, beta and a bias [N].
graph_builder gemm_transb1() {
  graph_builder g;
  g.input("x", onnx_float, {6, 80});
  g.initializer("w", onnx_float, {36, 80}, weights(36, 80, 16));
  g.initializer("b", onnx_float, {36}, random_values(36, 17));
  gemm_attrs a;
  a.trans_b = true;
  a.alpha = 1.5f;
  a.beta = 0.25f;
  a.write_defaults = true;  // transA = 0 written explicitly
  g.gemm("gemm", "x", "w", "b", "y", a);
  g.output("y", onnx_float, {6, 36});
  return g;
}

// Gemm transB = 1 without a bias, alpha only; N = 33 makes the weight's element count odd
// (the last INT4 byte half filled).
graph_builder gemm_nobias() {
  graph_builder g;
  g.input("x", onnx_float, {5, 64});
  g.initializer("w", onnx_float, {33, 64}, weights(33, 64, 18));
  gemm_attrs a;
  a.trans_b = true;
  a.alpha = 0.75f;
  g.gemm("gemm", "x", "w", "", "y", a);
  g.output("y", onnx_float, {5, 33});
  return g;
}

// One weight used by two MatMuls and a Gemm (transB = 0, with a bias): quantized once, shared.
graph_builder shared_weight() {
  graph_builder g;
  g.input("a", onnx_float, {3, 64});
  g.input("b", onnx_float, {5, 64});
  g.input("c", onnx_float, {2, 64});
  g.initializer("w", onnx_float, {64, 32}, weights(64, 32, 19));
  g.initializer("bias", onnx_float, {32}, random_values(32, 20));
  g.matmul("mm_a", "a", "w", "ya");
  g.matmul("mm_b", "b", "w", "yb");
  g.gemm("gemm_c", "c", "w", "bias", "yc");
  g.output("ya", onnx_float, {3, 32});
  g.output("yb", onnx_float, {5, 32});
  g.output("yc", onnx_float, {2, 32});
  return g;
}

// fp16 activations and weights: MatMul, then Gemm transB = 1 with an fp16 bias (scales must be
// fp16 too).
graph_builder fp16() {
  graph_builder g;
  g.input("x", onnx_float16, {4, 128});
  g.initializer("w0", onnx_float16, {128, 64}, random_values(128 * 64, 21, 0.125f));
  g.matmul("mm", "x", "w0", "h");
  g.initializer("w1", onnx_float16, {48, 64}, random_values(48 * 64, 22, 0.125f));
  g.initializer("b1", onnx_float16, {48}, random_values(48, 23));
  gemm_attrs a;
  a.trans_b = true;
  g.gemm("gemm", "h", "w1", "b1", "y", a);
  g.output("y", onnx_float16, {4, 48});
  return g;
}

// K = 200: a ragged last group for every power-of-two group size 16..128 (200 = 6 * 32 + 8 =
// 128 + 72), 7 groups at group size 32 (odd).
graph_builder ragged_k() {
  graph_builder g;
  g.input("x", onnx_float, {3, 200});
  g.initializer("w", onnx_float, {200, 24}, weights(200, 24, 24));
  g.matmul("mm", "x", "w", "y");
  g.output("y", onnx_float, {3, 24});
  return g;
}

// K = 96: 3 groups of 32 (odd: packed MatMulNBits zero points pad each row to a whole byte),
// and a single ragged group at group size 128; N = 20.
graph_builder odd_groups() {
  graph_builder g;
  g.input("x", onnx_float, {3, 96});
  g.initializer("w", onnx_float, {96, 20}, weights(96, 20, 25));
  g.matmul("mm", "x", "w", "y");
  g.output("y", onnx_float, {3, 20});
  return g;
}

// Token embedding (issue 7): ids [d0, 6] -> Gather(emb [256, 64]) -> MatMul(w [64, 48]). The
// vocabulary is 256 because the harness feeds int64 inputs with text bytes.
graph_builder embedding() {
  graph_builder g;
  g.input("ids", int4q::test::onnx_int64, {-1, 6});
  g.initializer("emb", onnx_float, {256, 64}, weights(256, 64, 31));
  g.node("Gather", {"emb", "ids"}, {"h"}, "embed");
  g.initializer("w", onnx_float, {64, 48}, weights(64, 48, 32));
  g.matmul("mm", "h", "w", "y");
  g.output("y", onnx_float, {-1, 6, 48});
  return g;
}

// Tied embedding, Gemm transB = 1 with a bias: ids [7] -> Gather(emb [256, 64]) -> Relu ->
// Gemm(emb^T) + b -> logits [7, 256].
graph_builder tied_gemm() {
  graph_builder g;
  g.input("ids", int4q::test::onnx_int64, {7});
  g.initializer("emb", onnx_float, {256, 64}, weights(256, 64, 33));
  g.node("Gather", {"emb", "ids"}, {"h"}, "embed");
  g.node("Relu", {"h"}, {"hr"}, "relu");
  g.initializer("b", onnx_float, {256}, weights(1, 256, 34));
  gemm_attrs a;
  a.trans_b = true;
  g.gemm("head", "hr", "emb", "b", "logits", a);
  g.output("logits", onnx_float, {7, 256});
  return g;
}

// Tied embedding through a Transpose: ids [d0, 5] -> Gather(emb [256, 96]) -> MatMul(Transpose(
// emb)) -> logits [d0, 5, 256]; the embedding output is a graph output too.
graph_builder tied_transpose() {
  graph_builder g;
  g.input("ids", int4q::test::onnx_int64, {-1, 5});
  g.initializer("emb", onnx_float, {256, 96}, weights(256, 96, 35));
  g.node("Gather", {"emb", "ids"}, {"h"}, "embed");
  g.node("Transpose", {"emb"}, {"emb_t"}, "emb_transpose");
  g.matmul("head", "h", "emb_t", "logits");
  g.output("logits", onnx_float, {-1, 5, 256});
  g.output("h", onnx_float, {-1, 5, 96});
  return g;
}

// A mixed-precision tied embedding (issue 16): the fp16 table is Cast to float, read by the Gather
// and, through a Transpose of the Cast's output, by the lm_head: ids [d0, 5] -> Gather(Cast(emb16
// [256, 96])) -> MatMul(Transpose(Cast(emb16))) -> logits [d0, 5, 256].
graph_builder tied_cast_fp16() {
  graph_builder g;
  g.input("ids", int4q::test::onnx_int64, {-1, 5});
  g.initializer("emb16", onnx_float16, {256, 96}, weights(256, 96, 36));
  int4q::test::set_attr(g.node("Cast", {"emb16"}, {"emb"}, "emb_cast"), "to", onnx_float);
  g.node("Gather", {"emb", "ids"}, {"h"}, "embed");
  g.node("Transpose", {"emb"}, {"emb_t"}, "emb_transpose");
  g.matmul("head", "h", "emb_t", "logits");
  g.output("logits", onnx_float, {-1, 5, 256});
  g.output("h", onnx_float, {-1, 5, 96});
  return g;
}

const std::map<std::string, std::function<graph_builder()>>& graphs() {
  static std::map<std::string, std::function<graph_builder()>> all{
      {"matmul", matmul},
      {"matmul_constant", matmul_constant},
      {"gemm_transb0", gemm_transb0},
      {"gemm_transb1", gemm_transb1},
      {"gemm_nobias", gemm_nobias},
      {"shared_weight", shared_weight},
      {"fp16", fp16},
      {"ragged_k", ragged_k},
      {"odd_groups", odd_groups},
      {"embedding", embedding},
      {"tied_gemm", tied_gemm},
      {"tied_transpose", tied_transpose},
      {"tied_cast_fp16", tied_cast_fp16},
  };
  static const bool styles_added = [] {
    for (const auto& [name, make] : int4q::test::styles::all()) all.emplace(name, make);
    return true;
  }();
  (void)styles_added;
  return all;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc == 2 && std::string(argv[1]) == "--list") {
      for (const auto& [name, make] : graphs()) std::printf("%s\n", name.c_str());
      return 0;
    }
    if (argc < 3) {
      std::fprintf(stderr, "usage: int4q_ort_graphs OUTDIR NAME... | --list\n");
      return 2;
    }
    const std::filesystem::path dir = argv[1];
    std::filesystem::create_directories(dir);
    for (int i = 2; i < argc; ++i) {
      const auto it = graphs().find(argv[i]);
      if (it == graphs().end()) {
        std::fprintf(stderr, "int4q_ort_graphs: unknown graph '%s' (see --list)\n", argv[i]);
        return 2;
      }
      const ::onnx::ModelProto proto = it->second().build();
      const auto path = dir / (it->first + ".onnx");
      std::ofstream f(path, std::ios::binary | std::ios::trunc);
      if (!f || !proto.SerializeToOstream(&f)) {
        std::fprintf(stderr, "int4q_ort_graphs: cannot write %s\n", path.string().c_str());
        return 1;
      }
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "int4q_ort_graphs: %s\n", e.what());
    return 1;
  }
}

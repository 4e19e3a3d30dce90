// Writes the seed corpus of the fuzz targets: small models for fuzz_model, small .npy, .npz,
// .pb and token inputs for fuzz_calib (formats: the comments of fuzz_model.cpp and
// fuzz_calib.cpp). The committed tests/fuzz/seeds/ is this program's output; CTest
// fuzz.seeds_fresh checks that it still is.
//
//   int4q_fuzz_make_seeds DIR      writes DIR/model/*.onnx and DIR/calib/*
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include "fuzz/fuzz_common.hpp"
#include "onnx/graph_builder.hpp"
#include "onnx/npy_files.hpp"

namespace {

namespace fs = std::filesystem;
namespace t = int4q::test;
using t::graph_builder;

void write_file(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "make_seeds: cannot write %s\n", p.c_str());
    std::exit(3);
  }
}

std::string serialize(const ::onnx::ModelProto& m) {
  std::string s;
  if (!m.SerializeToString(&s)) std::exit(1);
  return s;
}

// ---- Models ------------------------------------------------------------------------------------

/// x [-1, 8] @ w [8, 4] (fp32, raw_data).
std::string matmul_model() {
  graph_builder g;
  g.input("x", t::onnx_float, {-1, 8});
  g.initializer("w", t::onnx_float, {8, 4}, t::random_values(32, 1));
  g.matmul("mm", "x", "w", "y");
  g.output("y", t::onnx_float, {-1, 4});
  return serialize(g.build());
}

/// Gemm transB = 1 with a bias, fp16 weights; a second Gemm, transB = 0, alpha/beta.
std::string gemm_fp16_model() {
  graph_builder g;
  g.input("x", t::onnx_float16, {2, 16});
  g.initializer("w0", t::onnx_float16, {8, 16}, t::random_values(128, 2));
  g.initializer("b0", t::onnx_float16, {8}, t::random_values(8, 3));
  g.initializer("w1", t::onnx_float16, {8, 4}, t::random_values(32, 4));
  t::gemm_attrs a;
  a.trans_b = true;
  g.gemm("g0", "x", "w0", "b0", "h", a);
  t::gemm_attrs b;
  b.alpha = 0.5f;
  b.beta = 2.0f;
  b.write_defaults = true;
  g.gemm("g1", "h", "w1", "", "y", b);
  g.output("y", t::onnx_float16, {2, 4});
  return serialize(g.build());
}

/// The weights in an external data file (data.bin, the name fuzz_model gives the second part):
/// w at offset 0 with its length, w2 at an aligned offset without one.
std::string external_model() {
  graph_builder g;
  g.input("x", t::onnx_float, {-1, 8});
  const std::string w = t::float_bytes(t::onnx_float, t::random_values(8 * 8, 5));
  const std::string w2 = t::float_bytes(t::onnx_float, t::random_values(8 * 4, 6));
  auto add_external = [&](const std::string& name, std::vector<std::int64_t> dims,
                          std::uint64_t offset, const std::string* length) {
    ::onnx::TensorProto tp;
    tp.set_name(name);
    tp.set_data_type(t::onnx_float);
    for (auto d : dims) tp.add_dims(d);
    tp.set_data_location(::onnx::TensorProto::EXTERNAL);
    auto* e = tp.add_external_data();
    e->set_key("location");
    e->set_value("data.bin");
    e = tp.add_external_data();
    e->set_key("offset");
    e->set_value(std::to_string(offset));
    if (length) {
      e = tp.add_external_data();
      e->set_key("length");
      e->set_value(*length);
    }
    g.initializer(tp);
  };
  const std::string len = std::to_string(w.size());
  add_external("w", {8, 8}, 0, &len);
  add_external("w2", {8, 4}, 256, nullptr);
  g.matmul("mm0", "x", "w", "h");
  g.matmul("mm1", "h", "w2", "y");
  g.output("y", t::onnx_float, {-1, 4});
  std::string data = w;
  data.resize(256, '\0');
  data += w2;
  return int4q::fuzz::join_parts({serialize(g.build()), data});
}

/// Typed fields instead of raw_data: float_data, double_data, int32_data (bf16), int64_data; a
/// Constant node's weight.
std::string typed_fields_model() {
  graph_builder g;
  g.input("x", t::onnx_float, {-1, 4});
  ::onnx::TensorProto f;
  f.set_name("wf");
  f.set_data_type(t::onnx_float);
  f.add_dims(4);
  f.add_dims(4);
  for (float v : t::random_values(16, 7)) f.add_float_data(v);
  g.initializer(f);
  ::onnx::TensorProto d;
  d.set_name("wd");
  d.set_data_type(t::onnx_double);
  d.add_dims(4);
  d.add_dims(4);
  for (float v : t::random_values(16, 8)) d.add_double_data(v);
  g.initializer(d);
  ::onnx::TensorProto b;
  b.set_name("wb");
  b.set_data_type(t::onnx_bfloat16);
  b.add_dims(4);
  b.add_dims(4);
  for (float v : t::random_values(16, 9)) b.add_int32_data(int4q::float_to_bfloat16_bits(v));
  g.initializer(b);
  ::onnx::TensorProto shape;
  shape.set_name("shape");
  shape.set_data_type(t::onnx_int64);
  shape.add_dims(2);
  shape.add_int64_data(-1);
  shape.add_int64_data(4);
  g.initializer(shape);
  g.constant("wc", t::onnx_float, {4, 4}, t::random_values(16, 10));
  g.matmul("m0", "x", "wf", "h0");
  g.node("Cast", {"wd"}, {"wd32"}, "cast_d").add_attribute()->CopyFrom([] {
    ::onnx::AttributeProto a;
    a.set_name("to");
    a.set_type(::onnx::AttributeProto::INT);
    a.set_i(t::onnx_float);
    return a;
  }());
  g.matmul("m1", "h0", "wd32", "h1");
  g.node("Cast", {"wb"}, {"wb32"}, "cast_b").add_attribute()->CopyFrom([] {
    ::onnx::AttributeProto a;
    a.set_name("to");
    a.set_type(::onnx::AttributeProto::INT);
    a.set_i(t::onnx_float);
    return a;
  }());
  g.matmul("m2", "h1", "wb32", "h2");
  g.matmul("m3", "h2", "wc", "h3");
  g.node("Reshape", {"h3", "shape"}, {"y"}, "reshape");
  g.output("y", t::onnx_float, {-1, 4});
  return serialize(g.build());
}

/// A tiny transformer block: token embedding (Gather), LayerNormalization, q/k projections
/// sharing an input, Softmax, a lm_head tied to the embedding through a Transpose.
std::string transformer_model() {
  graph_builder g;
  g.input("input_ids", t::onnx_int64, {1, -1});
  g.initializer("embed", t::onnx_float, {16, 8}, t::random_values(128, 11));
  g.initializer("ln_scale", t::onnx_float, {8}, std::vector<float>(8, 1.0f));
  g.initializer("ln_bias", t::onnx_float, {8}, std::vector<float>(8, 0.0f));
  g.initializer("wq", t::onnx_float, {8, 8}, t::random_values(64, 12));
  g.initializer("wk", t::onnx_float, {8, 8}, t::random_values(64, 13));
  g.node("Gather", {"embed", "input_ids"}, {"h"}, "tok");
  auto& ln = g.node("LayerNormalization", {"h", "ln_scale", "ln_bias"}, {"n"}, "ln");
  t::set_attr(ln, "axis", -1);
  g.matmul("q_proj", "n", "wq", "q");
  g.matmul("k_proj", "n", "wk", "k");
  g.node("Add", {"q", "k"}, {"qk"}, "add");
  auto& sm = g.node("Softmax", {"qk"}, {"p"}, "softmax");
  t::set_attr(sm, "axis", -1);
  auto& tr = g.node("Transpose", {"embed"}, {"embed_t"}, "tied_t");
  t::set_attr(tr, "perm", std::vector<std::int64_t>{1, 0});
  g.matmul("lm_head", "p", "embed_t", "logits");
  g.output("logits", t::onnx_float, {1, -1, 16});
  return serialize(g.build());
}

/// An If whose branches hold MatMuls: one on an outer initializer, one on its own.
std::string subgraph_model() {
  graph_builder g;
  g.input("x", t::onnx_float, {2, 4});
  g.input("cond", t::onnx_bool, {});
  g.initializer("w_outer", t::onnx_float, {4, 4}, t::random_values(16, 14));
  graph_builder then_b, else_b;
  then_b.matmul("then_mm", "x", "w_outer", "then_y");
  then_b.output("then_y", t::onnx_float, {2, 4});
  else_b.initializer("w_inner", t::onnx_float, {4, 4}, t::random_values(16, 15));
  else_b.matmul("else_mm", "x", "w_inner", "else_y");
  else_b.output("else_y", t::onnx_float, {2, 4});
  auto& n = g.node("If", {"cond"}, {"y"}, "branch");
  for (auto* b : {&then_b, &else_b}) {
    auto* a = n.add_attribute();
    a->set_name(b == &then_b ? "then_branch" : "else_branch");
    a->set_type(::onnx::AttributeProto::GRAPH);
    *a->mutable_g() = b->graph();
    a->mutable_g()->set_name(a->name());
  }
  g.output("y", t::onnx_float, {2, 4});
  return serialize(g.build());
}

/// Opset 10 (Clip with min/max attributes, what --format qdq must convert), IR 5.
std::string old_opset_model() {
  graph_builder g(10, 5);
  g.input("x", t::onnx_float, {-1, 8});
  g.initializer("w", t::onnx_float, {8, 4}, t::random_values(32, 16));
  g.matmul("mm", "x", "w", "h");
  auto& c = g.node("Clip", {"h"}, {"y"}, "clip");
  t::set_attr(c, "min", -1.0f);
  t::set_attr(c, "max", 1.0f);
  g.output("y", t::onnx_float, {-1, 4});
  return serialize(g.build());
}

/// Already quantized: an INT4 initializer (IR 10, opset 21) through DequantizeLinear.
std::string int4_model() {
  graph_builder g(21, 10);
  g.input("x", t::onnx_float, {-1, 4});
  ::onnx::TensorProto q;
  q.set_name("w_q");
  q.set_data_type(t::onnx_int4);
  q.add_dims(4);
  q.add_dims(2);
  q.set_raw_data(std::string("\x12\x34\xF5\x07", 4));
  g.initializer(q);
  g.initializer("w_scale", t::onnx_float, {}, {0.25f});
  g.node("DequantizeLinear", {"w_q", "w_scale"}, {"w"}, "dq");
  g.matmul("mm", "x", "w", "y");
  g.output("y", t::onnx_float, {-1, 2});
  return serialize(g.build());
}

// ---- Calibration data
// ----------------------------------------------------------------------------

using t::raw;

/// A .npy file (tests/onnx/npy_files.hpp), C order.
std::string npy(const std::string& descr, const std::string& shape, const std::string& data,
                int major = 1) {
  return t::npy(t::npy_dict(descr, shape), data, major);
}

/// A ZIP archive of .npy members, all stored or all deflated; `zip64`: ZIP64 everywhere.
std::string zip(const std::vector<std::pair<std::string, std::string>>& members, bool deflated,
                bool zip64) {
  std::vector<t::zip_member> m;
  for (const auto& [name, data] : members) m.push_back({name, data, deflated});
  return t::zip(m, zip64 ? t::zip64::full : t::zip64::none);
}

std::string pb(const ::onnx::TensorProto& tp) {
  std::string s;
  tp.SerializeToString(&s);
  return s;
}

/// fuzz_calib's first two bytes: byte 0 (format | model << 2 | token dtype << 3 | sets << 5),
/// byte 1 (samples | (seq_len - 1) << 3).
std::string calib_input(int format, int model, int dtype, int sets, int samples, int seq_len,
                        const std::string& body) {
  std::string s;
  s += static_cast<char>(format | model << 2 | dtype << 3 | sets << 5);
  s += static_cast<char>(samples | (seq_len - 1) << 3);
  return s + body;
}

std::vector<std::int64_t> ids(std::size_t n) {
  std::vector<std::int64_t> v(n);
  for (std::size_t k = 0; k < n; ++k) v[k] = static_cast<std::int64_t>((k * 5) % 16);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  const fs::path dir = argv[1];
  const fs::path md = dir / "model", cd = dir / "calib";

  write_file(md / "matmul.onnx", matmul_model());
  write_file(md / "gemm_fp16.onnx", gemm_fp16_model());
  write_file(md / "external.bin", external_model());
  write_file(md / "typed_fields.onnx", typed_fields_model());
  write_file(md / "transformer.onnx", transformer_model());
  write_file(md / "subgraph.onnx", subgraph_model());
  write_file(md / "opset10.onnx", old_opset_model());
  write_file(md / "int4.onnx", int4_model());

  // Language model (model 0): input_ids int64; float model (1): x f4 [n, 3, 4], ids [n, 2].
  const std::string ids_npy = npy("<i8", "(2, 5)", raw(ids(10)));
  const std::string mask_npy = npy("|u1", "(2, 5)", std::string(10, '\1'));
  const std::string x_npy = npy("<f4", "(2, 3, 4)", raw(t::random_values(24, 20)));
  const std::string fids_npy = npy("<i4", "(2, 2)", raw(std::vector<std::int32_t>{1, 2, 3, 7}));
  write_file(cd / "npy_lm_i8", calib_input(0, 0, 0, 0, 0, 5, ids_npy));
  write_file(cd / "npy_lm_u2_v2",
             calib_input(0, 0, 0, 0, 1, 3,
                         npy("<u2", "(3, 3)",
                             raw(std::vector<std::uint16_t>{1, 2, 3, 4, 5, 6, 7, 8, 9}), 2)));
  write_file(cd / "npy_float_f2",
             calib_input(0, 1, 0, 0, 0, 1, npy("<f2", "(1, 3, 4)", std::string(24, '\x3C'))));
  write_file(cd / "npz_lm_stored",
             calib_input(1, 0, 0, 0, 0, 5,
                         zip({{"input_ids.npy", ids_npy}, {"attention_mask.npy", mask_npy}}, false,
                             false)));
  write_file(
      cd / "npz_float_deflated",
      calib_input(1, 1, 0, 0, 2, 1, zip({{"x.npy", x_npy}, {"ids.npy", fids_npy}}, true, false)));
  write_file(
      cd / "npz_float_zip64",
      calib_input(1, 1, 0, 0, 0, 1, zip({{"x.npy", x_npy}, {"ids.npy", fids_npy}}, true, true)));
  write_file(cd / "npz_lm_zip64_stored",
             calib_input(1, 0, 0, 0, 0, 5, zip({{"input_ids.npy", ids_npy}}, false, true)));

  ::onnx::TensorProto tok = t::int64_tensor("input_ids", {1, 4}, ids(4));
  ::onnx::TensorProto x = t::float_tensor("", t::onnx_float, {1, 3, 4}, t::random_values(12, 21));
  ::onnx::TensorProto fid = t::int64_tensor("ids", {1, 2}, {3, 4});
  write_file(cd / "pb_lm_flat", calib_input(2, 0, 0, 0, 0, 4, pb(tok)));
  write_file(
      cd / "pb_float_sets",
      calib_input(2, 1, 0, 1, 0, 1, int4q::fuzz::join_parts({pb(x), pb(fid), pb(x), pb(fid)})));

  std::string u8;
  for (int k = 0; k < 40; ++k) u8 += static_cast<char>(k % 16);
  write_file(cd / "tokens_u8", calib_input(3, 0, 0, 0, 4, 8, u8));
  write_file(cd / "tokens_u16",
             calib_input(3, 0, 1, 0, 2, 6,
                         raw(std::vector<std::uint16_t>({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}))));
  write_file(cd / "tokens_i64_float_model",
             calib_input(3, 1, 3, 0, 2, 2, raw(std::vector<std::int64_t>{1, 2, 3, 4, 5, 6})));
  return 0;
}

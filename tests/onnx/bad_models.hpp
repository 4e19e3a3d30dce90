// bad_models: small valid models and the ways to break them, plus .npy/.npz bytes, for the
// bad-input tests (test_bad_inputs.cpp) and anything else that needs a broken model on disk.
//
//   auto m = int4q::test::bad::small_model();           // x -> MatMul mm0 (w0) -> Gemm gemm1 (w1,
//   b1) int4q::test::bad::tensor(m, "b1").set_data_type(99); // an unknown data type
//   int4q::test::bad::write_model(m, dir / "m.onnx");
//
// Every model is built with graph_builder; the helpers here change one thing each.
#ifndef INT4Q_TESTS_ONNX_BAD_MODELS_HPP
#define INT4Q_TESTS_ONNX_BAD_MODELS_HPP

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <onnx/onnx_pb.h>

#include "onnx/graph_builder.hpp"
#include "onnx/npy_files.hpp"

namespace int4q {
namespace test {
namespace bad {

namespace fs = std::filesystem;

// ---- Files -------------------------------------------------------------------------------------

inline void write_bytes(const fs::path& p, const std::string& bytes) {
  if (p.has_parent_path()) fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + p.string());
}

inline std::string serialized(const ::onnx::ModelProto& m) {
  std::string bytes;
  if (!m.SerializeToString(&bytes)) throw std::runtime_error("cannot serialize a test model");
  return bytes;
}

inline void write_model(const ::onnx::ModelProto& m, const fs::path& p) {
  write_bytes(p, serialized(m));
}

// ---- Models ------------------------------------------------------------------------------------

/// x[*, 64] -MatMul mm0 (w0[64, 32])-> h -Gemm gemm1 (w1[48, 32] transB, b1[48])-> y[*, 48].
/// gemm1 feeds the graph output: it is the lm_head, kept in float unless --lm-head quantize.
inline ::onnx::ModelProto small_model() {
  graph_builder g;
  g.input("x", onnx_float, {-1, 64});
  g.initializer("w0", onnx_float, {64, 32}, random_values(64 * 32, 1));
  g.initializer("w1", onnx_float, {48, 32}, random_values(48 * 32, 2));
  g.initializer("b1", onnx_float, {48}, random_values(48, 3));
  g.matmul("mm0", "x", "w0", "h");
  gemm_attrs attrs;
  attrs.trans_b = true;
  g.gemm("gemm1", "h", "w1", "b1", "y", attrs);
  g.output("y", onnx_float, {-1, 48});
  return g.build();
}

/// A byte-level language model for `eval --tokens`: input_ids int64 [batch, seq] -Gather
/// (embed[vocab, 32])-> e -MatMul mid (w_mid[32, 32])-> h -MatMul lm (w_lm[32, vocab])->
/// `logits` [batch, seq, vocab].
inline ::onnx::ModelProto lm_model(std::int64_t vocab = 16, const std::string& input = "input_ids",
                                   const std::string& logits = "lm_out") {
  graph_builder g;
  g.input(input, onnx_int64, {-1, -1});
  g.initializer("embed", onnx_float, {vocab, 32},
                random_values(static_cast<std::size_t>(vocab) * 32, 21));
  g.initializer("w_mid", onnx_float, {32, 32}, random_values(32 * 32, 22));
  g.initializer("w_lm", onnx_float, {32, vocab},
                random_values(32 * static_cast<std::size_t>(vocab), 23));
  g.node("Gather", {"embed", input}, {"e"}, "embed_gather");
  g.matmul("mid", "e", "w_mid", "h");
  g.matmul("lm", "h", "w_lm", logits);
  g.output(logits, onnx_float, {-1, -1, vocab});
  return g.build();
}

// ---- Changing one thing ------------------------------------------------------------------------

/// The initializer `name` (the first, if there are several).
inline ::onnx::TensorProto& tensor(::onnx::ModelProto& m, const std::string& name) {
  for (auto& t : *m.mutable_graph()->mutable_initializer())
    if (t.name() == name) return t;
  throw std::invalid_argument("bad_models: no initializer " + name);
}

/// The node `name`.
inline ::onnx::NodeProto& node(::onnx::ModelProto& m, const std::string& name) {
  for (auto& n : *m.mutable_graph()->mutable_node())
    if (n.name() == name) return n;
  throw std::invalid_argument("bad_models: no node " + name);
}

/// Moves a FLOAT tensor's raw_data into float_data, with `extra` values more (negative: fewer).
inline void to_float_data(::onnx::TensorProto& t, int extra = 0) {
  std::vector<float> v(t.raw_data().size() / 4);
  if (!v.empty()) std::memcpy(v.data(), t.raw_data().data(), v.size() * 4);
  if (extra < 0) v.resize(v.size() - static_cast<std::size_t>(-extra));
  for (int i = 0; i < extra; ++i) v.push_back(0.5f);
  t.clear_raw_data();
  for (float x : v) t.add_float_data(x);
}

/// Sets the dims of `t` (its payload unchanged).
inline void set_dims(::onnx::TensorProto& t, const std::vector<std::int64_t>& dims) {
  t.clear_dims();
  for (auto d : dims) t.add_dims(d);
}

/// Moves `t`'s raw_data into external data: `location` (relative to the model's folder
/// `model_dir`, or absolute), written at `offset` of `file` (the file on disk; "" = model_dir /
/// location). `length_key`: also write the "length" key.
inline void to_external(::onnx::TensorProto& t, const fs::path& model_dir,
                        const std::string& location, const fs::path& file = {},
                        bool length_key = true) {
  const fs::path target = file.empty() ? model_dir / location : file;
  write_bytes(target, t.raw_data());
  const std::size_t bytes = t.raw_data().size();
  t.clear_raw_data();
  t.set_data_location(::onnx::TensorProto::EXTERNAL);
  auto* e = t.add_external_data();
  e->set_key("location");
  e->set_value(location);
  if (length_key) {
    e = t.add_external_data();
    e->set_key("length");
    e->set_value(std::to_string(bytes));
  }
}

/// Sets (or adds) the external_data entry `key` of `t`.
inline void set_external_key(::onnx::TensorProto& t, const std::string& key,
                             const std::string& value) {
  for (auto& e : *t.mutable_external_data()) {
    if (e.key() == key) {
      e.set_value(value);
      return;
    }
  }
  auto* e = t.add_external_data();
  e->set_key(key);
  e->set_value(value);
}

/// Sets value `index` of a FLOAT raw_data tensor.
inline void set_value(::onnx::TensorProto& t, std::size_t index, float v) {
  std::string raw = t.raw_data();
  std::memcpy(&raw[index * 4], &v, 4);
  t.set_raw_data(raw);
}

// ---- NumPy and ZIP bytes, from their specifications
// ----------------------------------------------

using test::npy_array;
using test::zip_stored;

/// Raw little-endian float32 bytes.
inline std::string f32_bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

}  // namespace bad
}  // namespace test
}  // namespace int4q

#endif  // INT4Q_TESTS_ONNX_BAD_MODELS_HPP

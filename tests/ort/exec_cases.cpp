// int4q_ort_exec_cases: writes the cases of the executor-vs-ONNX Runtime agreement tests
// (ort.exec.<case>, checked by check_exec.mjs). A case is a folder:
//
//   model.onnx                  the graph (absent when case.json names a model file elsewhere)
//   input_<k>.npy               graph input k (deterministic random data, or given values)
//   executor_output_<k>.npy     graph output k as int4q's executor computes it
//   case.json                   {"model", "inputs": [{name, file}], "outputs": [{name, file}],
//                                "tolerance": name in check_exec.mjs, "perturbed": bool}
//
//   int4q_ort_exec_cases OUTDIR CASE...   writes OUTDIR/CASE/ for each CASE
//   int4q_ort_exec_cases --list           prints the case names
//   int4q_ort_exec_cases OUTDIR --real MODELS_DIR DEVGPT_DIR SPEECH_S16 real_<name>...
//                                         real models (see write_real_case)
//
// write_case() takes any model (a ModelProto or a .onnx file with its external data) and inputs,
// so real models can become cases too. Float inputs are N(0, 1) from a fixed seed per case;
// integer inputs (masks, sequence lengths, indices) are given explicitly.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>

#include "llama_model.hpp"
#include "onnx/graph_builder.hpp"

namespace {

namespace fs = std::filesystem;
using int4q::onnx::value;
using int4q::onnx::value_type;
using int4q::test::graph_builder;
using int4q::test::onnx_bool;
using int4q::test::onnx_float;
using int4q::test::onnx_int32;
using int4q::test::onnx_int4;
using int4q::test::onnx_int64;
using int4q::test::onnx_uint4;
using int4q::test::onnx_uint8;
using int4q::test::random_values;
using int4q::test::set_attr;
using shape_t = std::vector<std::int64_t>;

const char* kMs = "com.microsoft";

// ---- .npy files (format version 1.0)
// ----------------------------------------------------------------

std::string npy_descr(int elem_type) {
  switch (elem_type) {
    case onnx_float: return "<f4";
    case onnx_int32: return "<i4";
    case onnx_int64: return "<i8";
    case onnx_bool: return "|b1";
    default:
      throw std::runtime_error("exec_cases: no .npy form for ONNX element type " +
                               std::to_string(elem_type));
  }
}

/// Writes `v` as an .npy array of `elem_type` (FLOAT, INT32, INT64 or BOOL).
void write_npy(const fs::path& path, const value& v, int elem_type) {
  std::string shape = "(";
  for (std::size_t k = 0; k < v.shape.size(); ++k)
    shape += std::to_string(v.shape[k]) + (v.shape.size() == 1      ? ","
                                           : k + 1 < v.shape.size() ? ", "
                                                                    : "");
  shape += ")";
  std::string header =
      "{'descr': '" + npy_descr(elem_type) + "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64, ending
  // in a newline.
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string bytes;
  const std::size_t n = v.size();
  auto put = [&bytes](const void* p, std::size_t size) {
    bytes.append(static_cast<const char*>(p), size);
  };
  for (std::size_t e = 0; e < n; ++e) {
    if (elem_type == onnx_float) {
      if (v.type != value_type::float32) throw std::runtime_error("exec_cases: float expected");
      put(&v.f[e], 4);
    } else {
      if (v.type == value_type::float32) throw std::runtime_error("exec_cases: integers expected");
      const std::int64_t x = v.i[e];
      if (elem_type == onnx_int32) {
        const auto y = static_cast<std::int32_t>(x);
        put(&y, 4);
      } else if (elem_type == onnx_int64) {
        put(&x, 8);
      } else {
        const std::uint8_t b = x != 0;
        put(&b, 1);
      }
    }
  }
  std::ofstream out(path, std::ios::binary);
  const char magic[8] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  out.write(magic, 8);
  const auto len = static_cast<std::uint16_t>(header.size());
  const char len_bytes[2] = {static_cast<char>(len & 0xFF), static_cast<char>(len >> 8)};
  out.write(len_bytes, 2);
  out << header << bytes;
  if (!out) throw std::runtime_error("exec_cases: cannot write " + path.string());
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    out += ch;
  }
  return out + "\"";
}

// ---- Cases
// --------------------------------------------------------------------------------------------

/// One graph input of a case: its name, ONNX element type and values.
struct case_input {
  std::string name;
  int elem_type = onnx_float;
  value data;
};

struct case_options {
  /// Name of the tolerance check_exec.mjs applies (its TOLERANCES table).
  std::string tolerance = "executor_vs_ort";
  /// Negative control: the first float output's element 0 is moved by 5x the tolerance of
  /// executor_vs_ort, so that check_exec.mjs must report a mismatch.
  bool perturb = false;
};

/// Element type and static shape of graph input `name` of `proto`.
std::pair<int, shape_t> input_type(const ::onnx::ModelProto& proto, const std::string& name) {
  for (const auto& in : proto.graph().input()) {
    if (in.name() != name) continue;
    const auto& tt = in.type().tensor_type();
    shape_t dims;
    for (const auto& d : tt.shape().dim()) {
      if (!d.has_dim_value())
        throw std::runtime_error("exec_cases: input '" + name +
                                 "' has a symbolic dimension: give it");
      dims.push_back(d.dim_value());
    }
    return {tt.elem_type(), dims};
  }
  throw std::runtime_error("exec_cases: the model has no input '" + name + "'");
}

/// Every graph input of `proto` that is not an initializer: `given` ones as given, float ones
/// N(0, 1) from `seed` (one stream per input), others an error (give them).
std::vector<case_input> make_inputs(const ::onnx::ModelProto& proto, std::uint32_t seed,
                                    const std::vector<case_input>& given = {}) {
  std::vector<case_input> out;
  std::uint32_t stream = 0;
  for (const auto& in : proto.graph().input()) {
    bool is_init = false;
    for (const auto& t : proto.graph().initializer()) is_init = is_init || t.name() == in.name();
    if (is_init) continue;
    ++stream;
    bool found = false;
    for (const case_input& g : given) {
      if (g.name == in.name()) {
        out.push_back(g);
        found = true;
      }
    }
    if (found) continue;
    const auto [type, dims] = input_type(proto, in.name());
    if (type != onnx_float)
      throw std::runtime_error("exec_cases: give values for non-float input '" + in.name() + "'");
    std::size_t n = 1;
    for (const auto d : dims) n *= static_cast<std::size_t>(d);
    std::mt19937 rng(seed * 1000u + stream);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    out.push_back({in.name(), onnx_float, value::floats(dims, std::move(v))});
  }
  return out;
}

/// Runs `m` in the executor on `inputs` and writes the case folder `dir` (see the top of the
/// file). `model_ref` is what case.json names as the model ("model.onnx" or a path).
void write_case_files(const fs::path& dir, const int4q::onnx::model& m,
                      const std::string& model_ref, const std::vector<case_input>& inputs,
                      const case_options& options) {
  int4q::onnx::executor ex(m);
  std::map<std::string, value> feeds;
  for (const case_input& in : inputs) feeds[in.name] = in.data;
  std::map<std::string, value> results = ex.run(feeds);
  std::string json = "{\n  \"model\": " + json_string(model_ref) + ",\n  \"inputs\": [";
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    const std::string file = "input_" + std::to_string(k) + ".npy";
    write_npy(dir / file, inputs[k].data, inputs[k].elem_type);
    json += std::string(k ? ", " : "") + "{\"name\": " + json_string(inputs[k].name) +
            ", \"file\": \"" + file + "\"}";
  }
  json += "],\n  \"outputs\": [";
  bool perturbed = false;
  const auto& outs = m.proto.graph().output();
  for (int k = 0; k < outs.size(); ++k) {
    value& v = results.at(outs[k].name());
    if (options.perturb && !perturbed && v.type == value_type::float32 && !v.f.empty()) {
      v.f[0] += 5.0f * (1e-5f + 1e-4f * std::fabs(v.f[0]));
      perturbed = true;
    }
    const int type = v.type == value_type::float32 ? onnx_float
                     : v.type == value_type::int64 ? onnx_int64
                                                   : onnx_bool;
    const std::string file = "executor_output_" + std::to_string(k) + ".npy";
    write_npy(dir / file, v, type);
    json += std::string(k ? ", " : "") + "{\"name\": " + json_string(outs[k].name()) +
            ", \"file\": \"" + file + "\"}";
  }
  if (options.perturb && !perturbed)
    throw std::runtime_error("exec_cases: nothing to perturb (no float output)");
  json += "],\n  \"tolerance\": " + json_string(options.tolerance) +
          ",\n  \"perturbed\": " + (perturbed ? "true" : "false") + "\n}\n";
  std::ofstream(dir / "case.json") << json;
}

/// Writes case folder `dir` for an in-memory model: dir/model.onnx plus inputs and the executor's
/// outputs.
void write_case(const fs::path& dir, const ::onnx::ModelProto& proto,
                const std::vector<case_input>& inputs, const case_options& options = {}) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  {
    std::ofstream out(dir / "model.onnx", std::ios::binary);
    if (!proto.SerializeToOstream(&out))
      throw std::runtime_error("exec_cases: cannot write " + (dir / "model.onnx").string());
  }
  int4q::onnx::model m;
  m.proto = proto;
  write_case_files(dir, m, "model.onnx", inputs, options);
}

/// Writes case folder `dir` for a model file (external data next to it is read from there); the
/// model is not copied: case.json names its absolute path.
[[maybe_unused]] void write_case(const fs::path& dir, const fs::path& model_path,
                                 const std::vector<case_input>& inputs,
                                 const case_options& options = {}) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  const int4q::onnx::model m = int4q::onnx::load_model(model_path);
  write_case_files(dir, m, fs::absolute(model_path).string(), inputs, options);
}

// ---- Graph helpers
// -------------------------------------------------------------------------------------

value ints(shape_t shape, std::vector<std::int64_t> v) {
  return value::ints(std::move(shape), std::move(v));
}

/// A UINT4/INT4 initializer from codes (two per byte, low nibble first).
::onnx::TensorProto int4_tensor(const std::string& name, int type, const shape_t& dims,
                                const std::vector<std::int64_t>& codes) {
  ::onnx::TensorProto t;
  t.set_name(name);
  t.set_data_type(type);
  for (const auto d : dims) t.add_dims(d);
  std::string raw((codes.size() + 1) / 2, '\0');
  for (std::size_t e = 0; e < codes.size(); ++e)
    raw[e / 2] = static_cast<char>(raw[e / 2] | ((codes[e] & 0xF) << (4 * (e % 2))));
  t.set_raw_data(raw);
  return t;
}

::onnx::TensorProto uint8_tensor(const std::string& name, const shape_t& dims,
                                 const std::vector<std::int64_t>& bytes) {
  ::onnx::TensorProto t;
  t.set_name(name);
  t.set_data_type(onnx_uint8);
  for (const auto d : dims) t.add_dims(d);
  std::string raw(bytes.size(), '\0');
  for (std::size_t e = 0; e < bytes.size(); ++e) raw[e] = static_cast<char>(bytes[e]);
  t.set_raw_data(raw);
  return t;
}

std::vector<std::int64_t> random_codes(std::size_t n, std::uint32_t seed, int lo, int hi) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(lo, hi);
  std::vector<std::int64_t> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::vector<float> positive_values(std::size_t n, std::uint32_t seed) {
  std::vector<float> v = random_values(n, seed, 0.5f);
  for (float& x : v) x = 0.05f + std::fabs(x);
  return v;
}

/// cos/sin caches of `rows` positions and `half` frequencies (RoPE, base 10000).
void rope_caches(graph_builder& g, std::int64_t rows, std::int64_t half) {
  std::vector<float> cs(static_cast<std::size_t>(rows * half)), sn(cs.size());
  for (std::int64_t p = 0; p < rows; ++p)
    for (std::int64_t i = 0; i < half; ++i) {
      const double theta = p * std::pow(10000.0, -double(i) / double(half));
      cs[static_cast<std::size_t>(p * half + i)] = static_cast<float>(std::cos(theta));
      sn[static_cast<std::size_t>(p * half + i)] = static_cast<float>(std::sin(theta));
    }
  g.initializer("cos_cache", onnx_float, {rows, half}, cs);
  g.initializer("sin_cache", onnx_float, {rows, half}, sn);
}

graph_builder ms_graph(std::int64_t ir = 8) {
  graph_builder g(17, ir);
  g.set_opset(1, kMs);
  return g;
}

struct built {
  ::onnx::ModelProto proto;
  std::vector<case_input> given;  // non-float inputs
};

// ---- Default-domain sanity graphs
// --------------------------------------------------------------------

built softmax() {
  graph_builder g;
  g.input("x", onnx_float, {2, 3, 7});
  set_attr(g.node("Softmax", {"x"}, {"y"}, "softmax"), "axis", -1);
  g.output("y", onnx_float, {2, 3, 7});
  return {g.build(), {}};
}

built layer_norm() {
  graph_builder g;
  g.input("x", onnx_float, {2, 4, 16});
  g.initializer("scale", onnx_float, {16}, random_values(16, 1));
  g.initializer("bias", onnx_float, {16}, random_values(16, 2));
  set_attr(g.node("LayerNormalization", {"x", "scale", "bias"}, {"y"}, "ln"), "epsilon", 1e-5f);
  g.output("y", onnx_float, {2, 4, 16});
  return {g.build(), {}};
}

built matmul_broadcast() {
  graph_builder g;
  g.input("a", onnx_float, {2, 1, 3, 8});
  g.input("b", onnx_float, {4, 8, 5});
  g.matmul("mm", "a", "b", "y");
  g.output("y", onnx_float, {2, 4, 3, 5});
  return {g.build(), {}};
}

built gather() {
  graph_builder g;
  g.input("data", onnx_float, {10, 6});
  g.input("idx", onnx_int64, {2, 3});
  g.node("Gather", {"data", "idx"}, {"rows"}, "gather_rows");
  g.initializer_i64("cols", {2}, {-1, 2});
  set_attr(g.node("Gather", {"data", "cols"}, {"picked"}, "gather_cols"), "axis", 1);
  g.output("rows", onnx_float, {2, 3, 6});
  g.output("picked", onnx_float, {10, 2});
  return {g.build(), {{"idx", onnx_int64, ints({2, 3}, {0, 9, 3, 3, -1, 5})}}};
}

// ---- Normalizations
// ------------------------------------------------------------------------------------

built simplified_layer_norm() {
  graph_builder g;  // default domain, as ONNX Runtime registers it
  g.input("x", onnx_float, {2, 3, 32});
  g.initializer("scale", onnx_float, {32}, random_values(32, 3));
  auto& n = g.node("SimplifiedLayerNormalization", {"x", "scale"}, {"y", "inv_std"}, "rms");
  set_attr(n, "epsilon", 1e-6f);
  g.output("y", onnx_float, {2, 3, 32});
  g.output("inv_std", onnx_float, {2, 3, 1});
  return {g.build(), {}};
}

built simplified_layer_norm_axis1() {
  graph_builder g;
  g.input("x", onnx_float, {2, 3, 8});
  g.initializer("scale", onnx_float, {3, 8}, random_values(24, 4));
  auto& n = g.node("SimplifiedLayerNormalization", {"x", "scale"}, {"y"}, "rms");
  set_attr(n, "axis", 1);
  g.output("y", onnx_float, {2, 3, 8});
  return {g.build(), {}};
}

built skip_layer_norm() {
  graph_builder g = ms_graph();
  g.input("x", onnx_float, {2, 3, 32});
  g.input("skip", onnx_float, {2, 3, 32});
  g.initializer("gamma", onnx_float, {32}, random_values(32, 5));
  g.initializer("beta", onnx_float, {32}, random_values(32, 6));
  g.initializer("bias", onnx_float, {32}, random_values(32, 7));
  auto& n = g.node("SkipLayerNormalization", {"x", "skip", "gamma", "beta", "bias"},
                   {"y", "", "", "sum"}, "sln", kMs);
  set_attr(n, "epsilon", 1e-5f);
  g.output("y", onnx_float, {2, 3, 32});
  g.output("sum", onnx_float, {2, 3, 32});
  return {g.build(), {}};
}

built skip_layer_norm_broadcast() {
  graph_builder g = ms_graph();
  g.input("x", onnx_float, {2, 3, 16});
  g.input("skip", onnx_float, {3, 16});
  g.initializer("gamma", onnx_float, {16}, random_values(16, 8));
  set_attr(g.node("SkipLayerNormalization", {"x", "skip", "gamma"}, {"y"}, "sln", kMs), "epsilon",
           1e-5f);
  g.output("y", onnx_float, {2, 3, 16});
  return {g.build(), {}};
}

built skip_simplified_layer_norm() {
  graph_builder g = ms_graph();
  g.input("x", onnx_float, {2, 3, 32});
  g.input("skip", onnx_float, {2, 3, 32});
  g.initializer("gamma", onnx_float, {32}, random_values(32, 9));
  g.initializer("bias", onnx_float, {32}, random_values(32, 10));
  auto& n = g.node("SkipSimplifiedLayerNormalization", {"x", "skip", "gamma", "bias"},
                   {"y", "", "", "sum"}, "ssln", kMs);
  set_attr(n, "epsilon", 1e-6f);
  g.output("y", onnx_float, {2, 3, 32});
  g.output("sum", onnx_float, {2, 3, 32});
  return {g.build(), {}};
}

built skip_simplified_layer_norm_nobias() {
  graph_builder g = ms_graph();
  g.input("x", onnx_float, {4, 24});
  g.input("skip", onnx_float, {4, 24});
  g.initializer("gamma", onnx_float, {24}, random_values(24, 11));
  set_attr(g.node("SkipSimplifiedLayerNormalization", {"x", "skip", "gamma"}, {"y"}, "ssln", kMs),
           "epsilon", 1e-5f);
  g.output("y", onnx_float, {4, 24});
  return {g.build(), {}};
}

// ---- GELU variants
// -------------------------------------------------------------------------------------

built unary_ms(const std::string& op, const shape_t& shape, bool bias,
               const std::function<void(::onnx::NodeProto&)>& attrs = {}) {
  graph_builder g = ms_graph();
  g.input("x", onnx_float, shape);
  std::vector<std::string> ins{"x"};
  if (bias) {
    g.initializer("bias", onnx_float, {shape.back()}, random_values(std::size_t(shape.back()), 12));
    ins.push_back("bias");
  }
  auto& n = g.node(op, ins, {"y"}, "act", kMs);
  if (attrs) attrs(n);
  g.output("y", onnx_float, shape);
  return {g.build(), {}};
}

// ---- RotaryEmbedding
// -------------------------------------------------------------------------------------

built rotary(const shape_t& shape, bool interleaved, bool offset_positions, std::int64_t heads,
             std::int64_t rot_dim, std::int64_t half, float scale = 0.0f) {
  graph_builder g = ms_graph();
  g.input("x", onnx_float, shape);
  const std::int64_t B = shape[0], S = shape.size() == 4 ? shape[2] : shape[1];
  built b;
  if (offset_positions) {
    g.input("pos", onnx_int64, {1});
    b.given.push_back({"pos", onnx_int64, ints({1}, {2})});
  } else {
    g.input("pos", onnx_int64, {B, S});
    std::vector<std::int64_t> p(static_cast<std::size_t>(B * S));
    for (std::size_t e = 0; e < p.size(); ++e) p[e] = static_cast<std::int64_t>((e * 5 + 3) % 12);
    b.given.push_back({"pos", onnx_int64, ints({B, S}, p)});
  }
  rope_caches(g, 12, half);
  auto& n = g.node("RotaryEmbedding", {"x", "pos", "cos_cache", "sin_cache"}, {"y"}, "rope", kMs);
  if (interleaved) set_attr(n, "interleaved", 1);
  if (heads > 0) set_attr(n, "num_heads", heads);
  if (rot_dim > 0) set_attr(n, "rotary_embedding_dim", rot_dim);
  if (scale != 0.0f) set_attr(n, "scale", scale);
  g.output("y", onnx_float, shape);
  b.proto = g.build();
  return b;
}

// ---- MultiHeadAttention
// ----------------------------------------------------------------------------------

struct mha_config {
  std::int64_t B = 2, S = 4, L = 5, N = 4, H = 8, Hv = 8, P = 0;
  bool bias = false, attention_bias = false, causal = false, bnsh_kv = false;
  std::string mask;  // "", "1d", "2d"
  float scale = 0.0f;
};

built mha(const mha_config& c) {
  graph_builder g = ms_graph();
  built b;
  const std::int64_t D = c.N * c.H, Dv = c.N * c.Hv, T = c.P + c.L;
  g.input("q", onnx_float, {c.B, c.S, D});
  if (c.bnsh_kv) {
    g.input("k", onnx_float, {c.B, c.N, c.L, c.H});
    g.input("v", onnx_float, {c.B, c.N, c.L, c.Hv});
  } else {
    g.input("k", onnx_float, {c.B, c.L, D});
    g.input("v", onnx_float, {c.B, c.L, Dv});
  }
  std::vector<std::string> ins{"q", "k", "v", "", "", "", "", ""};
  if (c.bias) {
    g.initializer("bias", onnx_float, {2 * D + Dv}, random_values(std::size_t(2 * D + Dv), 13));
    ins[3] = "bias";
  }
  if (c.mask == "1d") {
    g.input("mask", onnx_int32, {c.B});
    b.given.push_back({"mask", onnx_int32, ints({c.B}, {T - 2, T})});
    ins[4] = "mask";
  } else if (c.mask == "2d") {
    g.input("mask", onnx_int32, {c.B, T});
    std::vector<std::int64_t> m(static_cast<std::size_t>(c.B * T), 1);
    m[1] = 0;                                    // entry 0: key 1 padded
    m[static_cast<std::size_t>(T + T - 1)] = 0;  // entry 1: last key padded
    m[static_cast<std::size_t>(T + T - 2)] = 0;
    b.given.push_back({"mask", onnx_int32, ints({c.B, T}, m)});
    ins[4] = "mask";
  }
  if (c.attention_bias) {
    g.initializer("attn_bias", onnx_float, {1, c.N, c.S, T},
                  random_values(std::size_t(c.N * c.S * T), 14));
    ins[5] = "attn_bias";
  }
  std::vector<std::string> outs{"y"};
  if (c.P > 0) {
    g.input("past_k", onnx_float, {c.B, c.N, c.P, c.H});
    g.input("past_v", onnx_float, {c.B, c.N, c.P, c.Hv});
    ins[6] = "past_k";
    ins[7] = "past_v";
  }
  if (c.P > 0 || c.bnsh_kv) outs = {"y", "present_k", "present_v"};
  while (!ins.empty() && ins.back().empty()) ins.pop_back();
  auto& n = g.node("MultiHeadAttention", ins, outs, "mha", kMs);
  set_attr(n, "num_heads", c.N);
  if (c.causal) set_attr(n, "unidirectional", 1);
  if (c.scale != 0.0f) set_attr(n, "scale", c.scale);
  g.output("y", onnx_float, {c.B, c.S, Dv});
  if (outs.size() > 1) {
    g.output("present_k", onnx_float, {c.B, c.N, T, c.H});
    g.output("present_v", onnx_float, {c.B, c.N, T, c.Hv});
  }
  b.proto = g.build();
  return b;
}

// ---- GroupQueryAttention
// --------------------------------------------------------------------------------

struct gqa_config {
  std::int64_t B = 2, S = 5, N = 4, Nkv = 2, H = 16, P = 0;
  std::vector<std::int64_t> seqlens;  // per entry: total - 1
  std::int64_t total = 5;
  bool packed = false, rotary = false, interleaved = false;
  std::int64_t rot_half = 8;  // cos/sin cache columns
  std::int64_t window = -1;
  float softcap = 0.0f, scale = 0.0f;
};

built gqa(const gqa_config& c) {
  graph_builder g = ms_graph();
  built b;
  const std::int64_t Pres = std::max(c.total, c.P);
  if (c.packed) {
    g.input("q", onnx_float, {c.B, c.S, (c.N + 2 * c.Nkv) * c.H});
  } else {
    g.input("q", onnx_float, {c.B, c.S, c.N * c.H});
    g.input("k", onnx_float, {c.B, c.S, c.Nkv * c.H});
    g.input("v", onnx_float, {c.B, c.S, c.Nkv * c.H});
  }
  std::vector<std::string> ins{"q", c.packed ? "" : "k", c.packed ? "" : "v", "",
                               "",  "seqlens_k",         "total_len"};
  if (c.P > 0) {
    g.input("past_k", onnx_float, {c.B, c.Nkv, c.P, c.H});
    g.input("past_v", onnx_float, {c.B, c.Nkv, c.P, c.H});
    ins[3] = "past_k";
    ins[4] = "past_v";
  }
  g.input("seqlens_k", onnx_int32, {c.B});
  g.input("total_len", onnx_int32, {});
  b.given.push_back({"seqlens_k", onnx_int32, ints({c.B}, c.seqlens)});
  b.given.push_back({"total_len", onnx_int32, ints({}, {c.total})});
  if (c.rotary) {
    rope_caches(g, 16, c.rot_half);
    ins.push_back("cos_cache");
    ins.push_back("sin_cache");
  }
  auto& n = g.node("GroupQueryAttention", ins, {"y", "present_k", "present_v"}, "gqa", kMs);
  set_attr(n, "num_heads", c.N);
  set_attr(n, "kv_num_heads", c.Nkv);
  if (c.rotary) set_attr(n, "do_rotary", 1);
  if (c.interleaved) set_attr(n, "rotary_interleaved", 1);
  if (c.window > 0) set_attr(n, "local_window_size", c.window);
  if (c.softcap != 0.0f) set_attr(n, "softcap", c.softcap);
  if (c.scale != 0.0f) set_attr(n, "scale", c.scale);
  g.output("y", onnx_float, {c.B, c.S, c.N * c.H});
  g.output("present_k", onnx_float, {c.B, c.Nkv, Pres, c.H});
  g.output("present_v", onnx_float, {c.B, c.Nkv, Pres, c.H});
  b.proto = g.build();
  return b;
}

// ---- GatherBlockQuantized
// -----------------------------------------------------------------------------

struct gbq_config {
  int type = onnx_uint4;  // onnx_uint4, onnx_int4, onnx_uint8
  int bits = 4;           // uint8 only
  shape_t shape{8, 64};   // logical shape
  std::int64_t gather_axis = 0, quantize_axis = 1, block = 32;
  bool zero_points = true;
  shape_t idx_shape{2, 3};
  std::vector<std::int64_t> idx{0, 7, 3, 3, -1, 5};
};

built gbq(const gbq_config& c) {
  graph_builder g = ms_graph(10);  // IR 10 for 4-bit types
  const std::size_t rank = c.shape.size();
  const auto qa = static_cast<std::size_t>(
      c.quantize_axis < 0 ? c.quantize_axis + std::int64_t(rank) : c.quantize_axis);
  shape_t sshape = c.shape;
  sshape[qa] = (sshape[qa] + c.block - 1) / c.block;
  std::size_t n = 1, sn = 1;
  for (const auto d : c.shape) n *= static_cast<std::size_t>(d);
  for (const auto d : sshape) sn *= static_cast<std::size_t>(d);
  const bool is_signed = c.type == onnx_int4;
  const int bits = c.type == onnx_uint8 ? c.bits : 4;
  const int lo = is_signed ? -8 : 0, hi = is_signed ? 7 : (1 << bits) - 1;
  const std::vector<std::int64_t> codes = random_codes(n, 21, lo, hi);
  const std::vector<std::int64_t> zps = random_codes(sn, 22, lo, hi);
  // uint8 holding 8 / bits codes per byte along the last axis, low bits first.
  auto pack_bytes = [bits](const std::vector<std::int64_t>& v, shape_t& dims) {
    const std::int64_t per = 8 / bits, last = dims.back(), bytes = (last + per - 1) / per;
    const std::size_t rows = v.size() / static_cast<std::size_t>(last);
    std::vector<std::int64_t> out(rows * static_cast<std::size_t>(bytes), 0);
    for (std::size_t r = 0; r < rows; ++r)
      for (std::int64_t k = 0; k < last; ++k)
        out[r * std::size_t(bytes) + std::size_t(k / per)] |=
            v[r * std::size_t(last) + std::size_t(k)] << (bits * (k % per));
    dims.back() = bytes;
    return out;
  };
  if (c.type == onnx_uint8) {
    shape_t dims = c.shape, zdims = sshape;
    g.initializer(uint8_tensor("data", dims, pack_bytes(codes, dims)));
    if (c.zero_points) g.initializer(uint8_tensor("zp", zdims, pack_bytes(zps, zdims)));
  } else {
    g.initializer(int4_tensor("data", c.type, c.shape, codes));
    if (c.zero_points) g.initializer(int4_tensor("zp", c.type, sshape, zps));
  }
  g.initializer("scales", onnx_float, sshape, positive_values(sn, 23));
  g.input("idx", onnx_int64, c.idx_shape);
  std::vector<std::string> ins{"data", "idx", "scales"};
  if (c.zero_points) ins.push_back("zp");
  auto& node = g.node("GatherBlockQuantized", ins, {"y"}, "gbq", kMs);
  set_attr(node, "gather_axis", c.gather_axis);
  set_attr(node, "quantize_axis", c.quantize_axis);
  set_attr(node, "block_size", c.block);
  if (c.type == onnx_uint8) set_attr(node, "bits", c.bits);
  shape_t oshape(c.shape.begin(), c.shape.begin() + c.gather_axis);
  oshape.insert(oshape.end(), c.idx_shape.begin(), c.idx_shape.end());
  oshape.insert(oshape.end(), c.shape.begin() + c.gather_axis + 1, c.shape.end());
  g.output("y", onnx_float, oshape);
  built b;
  b.proto = g.build();
  b.given.push_back({"idx", onnx_int64, ints(c.idx_shape, c.idx)});
  return b;
}

// ---- Generated Llama models (tests/models/llama_model.hpp)
// ---------------------------------------------------------------

// The whole small Llama (2 layers, hidden 64, 4 heads, 2 kv heads, MLP 172, vocab 256; fp32:
// ONNX Runtime's CPU provider lacks fp16 kernels for some of its ops), tokens [2, 16].
built llama_small() {
  built b;
  b.proto = int4q::test::build_llama_model(int4q::test::llama_options());
  std::vector<std::int64_t> ids(2 * 16);
  for (std::size_t e = 0; e < ids.size(); ++e)
    ids[e] = static_cast<std::int64_t>((e * 89 + 3) % 256);
  b.given = {{"input_ids", onnx_int64, ints({2, 16}, ids)}};
  return b;
}

// ---- The case table
// -------------------------------------------------------------------------------------

const std::map<std::string, std::function<built()>>& cases() {
  static const std::map<std::string, std::function<built()>> table = {
      {"softmax", softmax},
      {"llama_small", llama_small},
      {"layer_norm", layer_norm},
      {"matmul_broadcast", matmul_broadcast},
      {"gather", gather},
      {"simplified_layer_norm", simplified_layer_norm},
      {"simplified_layer_norm_axis1", simplified_layer_norm_axis1},
      {"skip_layer_norm", skip_layer_norm},
      {"skip_layer_norm_broadcast", skip_layer_norm_broadcast},
      {"skip_simplified_layer_norm", skip_simplified_layer_norm},
      {"skip_simplified_layer_norm_nobias", skip_simplified_layer_norm_nobias},
      {"gelu",
       [] {
         return unary_ms("Gelu", {3, 40}, false);
       }},
      {"bias_gelu",
       [] {
         return unary_ms("BiasGelu", {2, 3, 16}, true);
       }},
      {"fast_gelu",
       [] {
         return unary_ms("FastGelu", {2, 3, 16}, true);
       }},
      {"fast_gelu_nobias",
       [] {
         return unary_ms("FastGelu", {5, 12}, false);
       }},
      {"quick_gelu",
       [] {
         return unary_ms("QuickGelu", {4, 10}, false);
       }},
      {"quick_gelu_alpha",
       [] {
         return unary_ms("QuickGelu", {4, 10}, false,
                         [](::onnx::NodeProto& n) { set_attr(n, "alpha", 1.0f); });
       }},
      {"rotary_3d",
       [] {
         return rotary({2, 4, 32}, false, false, 0, 0, 8);
       }},
      {"rotary_3d_interleaved_offset",
       [] {
         return rotary({2, 4, 32}, true, true, 0, 0, 8);
       }},
      {"rotary_4d",
       [] {
         return rotary({2, 2, 4, 16}, false, false, 0, 0, 8);
       }},
      {"rotary_partial",
       [] {
         return rotary({2, 3, 32}, false, false, 2, 8, 4);
       }},
      // ONNX Runtime's CPU kernel does not apply `scale`; neither does the executor.
      {"rotary_scale_ignored",
       [] {
         return rotary({2, 3, 32}, false, false, 0, 0, 8, 2.0f);
       }},
      {"mha_cross", [] { return mha({}); }},
      {"mha_mask_bias",
       [] {
         mha_config c;
         c.bias = true;
         c.mask = "2d";
         c.attention_bias = true;
         return mha(c);
       }},
      {"mha_mask_1d",
       [] {
         mha_config c;
         c.mask = "1d";
         c.Hv = 4;
         return mha(c);
       }},
      {"mha_past_causal",
       [] {
         mha_config c;
         c.S = 3;
         c.L = 3;
         c.P = 4;
         c.causal = true;
         c.scale = 0.3f;
         return mha(c);
       }},
      {"mha_bnsh_kv",
       [] {
         mha_config c;
         c.bnsh_kv = true;
         return mha(c);
       }},
      {"gqa_prompt",
       [] {
         gqa_config c;
         c.seqlens = {4, 4};
         return gqa(c);
       }},
      {"gqa_past",
       [] {
         gqa_config c;
         c.S = 1;
         c.P = 6;
         c.seqlens = {6, 4};
         c.total = 7;
         return gqa(c);
       }},
      {"gqa_rotary_packed",
       [] {
         gqa_config c;
         c.B = 1;
         c.S = 4;
         c.total = 4;
         c.seqlens = {3};
         c.packed = true;
         c.rotary = true;
         return gqa(c);
       }},
      {"gqa_rotary_past_interleaved",
       [] {
         gqa_config c;
         c.N = 4;
         c.Nkv = 1;
         c.H = 32;
         c.S = 1;
         c.P = 5;
         c.seqlens = {5, 3};
         c.total = 6;
         c.rotary = true;
         c.interleaved = true;
         c.rot_half = 8;  // rotates 16 of 32
         return gqa(c);
       }},
      {"gqa_window_softcap",
       [] {
         gqa_config c;
         c.S = 6;
         c.total = 6;
         c.seqlens = {5, 5};
         c.window = 2;
         c.softcap = 5.0f;
         c.scale = 0.2f;
         return gqa(c);
       }},
      {"gqa_window",
       [] {
         gqa_config c;
         c.S = 6;
         c.total = 6;
         c.seqlens = {5, 5};
         c.window = 2;
         return gqa(c);
       }},
      {"gqa_softcap",
       [] {
         gqa_config c;
         c.S = 6;
         c.total = 6;
         c.seqlens = {5, 5};
         c.softcap = 5.0f;
         return gqa(c);
       }},
      {"gqa_subsequent_prompt",
       [] {
         gqa_config c;
         c.B = 1;
         c.S = 3;
         c.P = 4;
         c.seqlens = {6};
         c.total = 7;
         c.N = 2;
         c.Nkv = 2;
         return gqa(c);
       }},
      {"gbq_uint4", [] { return gbq({}); }},
      {"gbq_int4_nozp",
       [] {
         gbq_config c;
         c.type = onnx_int4;
         c.shape = {6, 32};
         c.block = 16;
         c.zero_points = false;
         c.idx_shape = {4};
         c.idx = {5, -6, 2, 0};
         return gbq(c);
       }},
      {"gbq_uint4_nozp",
       [] {
         gbq_config c;
         c.zero_points = false;
         return gbq(c);
       }},
      {"gbq_uint4_gather_axis1",
       [] {
         gbq_config c;
         c.shape = {64, 8};
         c.gather_axis = 1;
         c.quantize_axis = 0;
         c.block = 16;
         c.idx_shape = {3};
         c.idx = {7, 0, 4};
         return gbq(c);
       }},
      {"gbq_uint8_bits4",
       [] {
         gbq_config c;
         c.type = onnx_uint8;
         return gbq(c);
       }},
      {"gbq_uint8_bits8",
       [] {
         gbq_config c;
         c.type = onnx_uint8;
         c.bits = 8;
         c.shape = {5, 32};
         c.block = 16;
         c.idx_shape = {2};
         c.idx = {4, 1};
         return gbq(c);
       }},
  };
  return table;
}

/// Real models as cases (ort.exec.real_<name>): the model file in `models_dir` (PP-OCRv4
/// recognizer, Silero VAD, openWakeWord; fetched by scripts/fetch-test-models) or devgpt, with
/// inputs of the kind they are used with: an image-sized N(0, 1) tensor, 512 samples of the
/// committed speech recording with a zero LSTM state, 25 x 96 features, and bytes of devgpt's
/// validation text.
void write_real_case(const fs::path& out, const std::string& name, const fs::path& models_dir,
                     const fs::path& devgpt_dir, const fs::path& speech) {
  auto normal = [](shape_t dims, std::uint32_t seed) {
    std::size_t n = 1;
    for (const auto d : dims) n *= static_cast<std::size_t>(d);
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    return value::floats(std::move(dims), std::move(v));
  };
  case_options options;
  options.tolerance = "real_model";
  if (name == "real_ppocr") {
    write_case(out / name, models_dir / "ppocr_v4_rec.onnx",
               {{"x", onnx_float, normal({1, 3, 48, 320}, 1)}}, options);
  } else if (name == "real_silero") {
    std::ifstream in(speech, std::ios::binary);
    std::vector<std::int16_t> pcm(512 + 16000);
    in.read(reinterpret_cast<char*>(pcm.data()), std::streamsize(pcm.size() * 2));
    if (!in) throw std::runtime_error("exec_cases: cannot read 16 k samples of " + speech.string());
    std::vector<float> x(512);
    for (std::size_t e = 0; e < x.size(); ++e) x[e] = pcm[16000 + e] / 32768.0f;  // 1 s in
    write_case(out / name, models_dir / "silero_vad_op18_ifless.onnx",
               {{"input", onnx_float, value::floats({1, 512}, x)},
                {"sr", onnx_int64, value::ints({}, {16000})},
                {"state", onnx_float, value::floats({2, 1, 128}, std::vector<float>(256, 0.0f))}},
               options);
  } else if (name == "real_wakeword") {
    write_case(out / name, models_dir / "openwakeword_hello_deepa.onnx",
               {{"onnx::Flatten_0", onnx_float, normal({1, 25, 96}, 2)}}, options);
  } else if (name == "real_devgpt") {
    std::ifstream in(devgpt_dir / "devgpt_val.u8", std::ios::binary);
    std::vector<std::int64_t> ids(2 * 64);
    for (auto& v : ids) v = static_cast<unsigned char>(in.get());
    write_case(out / name, devgpt_dir / "devgpt_fp32.onnx",
               {{"input_ids", onnx_int64, value::ints({2, 64}, ids)}}, options);
  } else {
    throw std::runtime_error("exec_cases: unknown real case '" + name + "'");
  }
}

/// A case's seed: a hash of its name, so that adding a case changes no other case's data.
std::uint32_t seed_of(const std::string& name) {
  std::uint32_t h = 2166136261u;
  for (const char ch : name) h = (h ^ static_cast<std::uint8_t>(ch)) * 16777619u;
  return h % 100000u;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc == 2 && std::string(argv[1]) == "--list") {
      for (const auto& [name, make] : cases()) std::printf("%s\n", name.c_str());
      return 0;
    }
    if (argc < 3) {
      std::fprintf(stderr, "usage: int4q_ort_exec_cases OUTDIR CASE... | --list\n");
      return 2;
    }
    const fs::path dir = argv[1];
    // int4q_ort_exec_cases OUTDIR --real MODELS_DIR DEVGPT_DIR SPEECH_S16 CASE...
    if (argc >= 6 && std::string(argv[2]) == "--real") {
      for (int a = 6; a < argc; ++a) write_real_case(dir, argv[a], argv[3], argv[4], argv[5]);
      return 0;
    }
    for (int a = 2; a < argc; ++a) {
      std::string name = argv[a];
      // "control_<case>": the case with one executor output element moved by 5x the tolerance.
      case_options options;
      std::string base = name;
      if (name.rfind("control_", 0) == 0) {
        base = name.substr(8);
        options.perturb = true;
      }
      const auto it = cases().find(base);
      if (it == cases().end()) {
        std::fprintf(stderr, "int4q_ort_exec_cases: unknown case '%s' (--list)\n", name.c_str());
        return 2;
      }
      built b = it->second();
      write_case(dir / name, b.proto, make_inputs(b.proto, seed_of(base), b.given), options);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "int4q_ort_exec_cases: %s\n", e.what());
    return 1;
  }
}

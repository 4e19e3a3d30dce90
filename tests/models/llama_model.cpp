// llama_model: see llama_model.hpp.
#include "llama_model.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <int4q/float16.hpp>

#include "onnx/graph_builder.hpp"

namespace int4q {
namespace test {

namespace {

namespace fs = std::filesystem;

// ---- Weights ------------------------------------------------------------------------------------

enum class weight_kind { linear, embedding, norm };

/// One weight of the model: its name, dims, how it is drawn and its own random stream.
struct weight_spec {
  std::string name;
  std::vector<std::int64_t> dims;
  weight_kind kind = weight_kind::linear;
  std::uint64_t stream = 0;
  std::uint64_t count() const {
    std::uint64_t n = 1;
    for (auto d : dims) n *= static_cast<std::uint64_t>(d);
    return n;
  }
};

std::string layer_prefix(int l) { return "model.layers." + std::to_string(l) + "."; }

/// Every weight in the order they are written (the order of the data file).
std::vector<weight_spec> weight_specs(const llama_options& o) {
  const std::int64_t h = o.hidden, i = o.intermediate, d = o.head_dim();
  const std::int64_t q = o.heads * d, kv = o.kv_heads * d;
  std::vector<weight_spec> w;
  auto add = [&w](std::string name, std::vector<std::int64_t> dims, weight_kind kind) {
    const std::uint64_t stream = w.size();
    w.push_back({std::move(name), std::move(dims), kind, stream});
  };
  add("model.embed_tokens.weight", {o.vocab, h}, weight_kind::embedding);
  for (int l = 0; l < o.layers; ++l) {
    const std::string p = layer_prefix(l);
    add(p + "input_layernorm.weight", {h}, weight_kind::norm);
    add(p + "self_attn.q_proj.weight", {h, q}, weight_kind::linear);
    add(p + "self_attn.k_proj.weight", {h, kv}, weight_kind::linear);
    add(p + "self_attn.v_proj.weight", {h, kv}, weight_kind::linear);
    add(p + "self_attn.o_proj.weight", {q, h}, weight_kind::linear);
    add(p + "post_attention_layernorm.weight", {h}, weight_kind::norm);
    add(p + "mlp.gate_proj.weight", {h, i}, weight_kind::linear);
    add(p + "mlp.up_proj.weight", {h, i}, weight_kind::linear);
    add(p + "mlp.down_proj.weight", {i, h}, weight_kind::linear);
  }
  add("model.norm.weight", {h}, weight_kind::norm);
  add("lm_head.weight", {h, o.vocab}, weight_kind::linear);
  return w;
}

/// The next value of the splitmix64 generator whose state is `state`.
std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// N(0, 1) values from splitmix64 and the Box-Muller transform: fast (the 7B model draws 6.7e9
/// values), deterministic on every platform libm agrees on, one stream per (seed, tensor).
class normal_stream {
 public:
  normal_stream(std::uint64_t seed, std::uint64_t stream)
      : state_(seed * 0x9E3779B97F4A7C15ull + (stream + 1) * 0xD1B54A32D192ED03ull) {}
  float next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    // u1 in (0, 1], u2 in [0, 1): 53-bit uniforms.
    const double u1 = (static_cast<double>(bits() >> 11) + 1.0) * 0x1.0p-53;
    const double u2 = static_cast<double>(bits() >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double a = 6.283185307179586 * u2;
    spare_ = static_cast<float>(r * std::sin(a));
    has_spare_ = true;
    return static_cast<float>(r * std::cos(a));
  }

 private:
  std::uint64_t bits() { return splitmix64(state_); }
  std::uint64_t state_;
  float spare_ = 0;
  bool has_spare_ = false;
};

/// Draws the values of `w` in chunks of at most `chunk` values, calling `sink(values, n)`.
template <class Sink>
void draw_weight(const llama_options& o, const weight_spec& w, std::size_t chunk, Sink sink) {
  normal_stream rng(o.seed, w.stream);
  double std_dev = 1.0, mean = 0.0;
  if (w.kind == weight_kind::linear) {
    std_dev = o.weight_std > 0 ? o.weight_std : 1.0 / std::sqrt(static_cast<double>(w.dims[0]));
  } else if (w.kind == weight_kind::norm) {
    std_dev = 0.1;
    mean = 1.0;
  }
  std::vector<float> buf(static_cast<std::size_t>(std::min<std::uint64_t>(chunk, w.count())));
  for (std::uint64_t done = 0; done < w.count();) {
    const std::size_t n =
        static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), w.count() - done));
    for (std::size_t e = 0; e < n; ++e)
      buf[e] = static_cast<float>(mean + std_dev * static_cast<double>(rng.next()));
    sink(buf.data(), n);
    done += n;
  }
}

/// Raw little-endian bytes of `n` floats as fp16 or fp32.
std::string to_bytes(const float* v, std::size_t n, bool fp16) {
  std::string out(n * (fp16 ? 2 : 4), '\0');
  if (fp16) {
    for (std::size_t e = 0; e < n; ++e) {
      const std::uint16_t b = int4q::float_to_half_bits(v[e]);
      std::memcpy(&out[e * 2], &b, 2);
    }
  } else if (n > 0) {
    std::memcpy(&out[0], v, n * 4);
  }
  return out;
}

/// cos (or sin) of the RoPE angles pos * theta^(-2j/d), j < d/2, repeated for both halves of
/// the head ([max_positions, d], what HF's LlamaRotaryEmbedding computes), in double.
std::vector<float> rope_table(const llama_options& o, bool sine) {
  const int d = o.head_dim(), half = d / 2;
  std::vector<float> t(static_cast<std::size_t>(o.max_positions) * d);
  for (int p = 0; p < o.max_positions; ++p) {
    for (int j = 0; j < half; ++j) {
      const double inv_freq = std::pow(o.rope_theta, -2.0 * j / d);
      const double a = p * inv_freq;
      const float v = static_cast<float>(sine ? std::sin(a) : std::cos(a));
      t[static_cast<std::size_t>(p) * d + j] = v;
      t[static_cast<std::size_t>(p) * d + j + half] = v;
    }
  }
  return t;
}

// ---- Graph --------------------------------------------------------------------------------------

/// Writes the nodes of the model (and its small constant initializers) into `g`.
class llama_graph {
 public:
  llama_graph(const llama_options& o, graph_builder& g)
      : o_(o), g_(g), t_(o.fp16 ? onnx_float16 : onnx_float) {}

  void build() {
    const std::int64_t d = o_.head_dim();
    g_.input("input_ids", onnx_int64, {-1, -1});
    rename_dims(*g_.graph().mutable_input(0));
    // Small constants (inline initializers).
    g_.initializer_i64("const_0", {}, {0});
    g_.initializer_i64("const_1", {}, {1});
    g_.initializer_i64("axes_0", {1}, {0});
    g_.initializer_i64("axes_1", {1}, {1});
    g_.initializer_i64("axes_2", {1}, {2});
    g_.initializer_i64("axes_last", {1}, {-1});
    g_.initializer_i64("half_start", {1}, {0});
    g_.initializer_i64("half_mid", {1}, {d / 2});
    g_.initializer_i64("half_end", {1}, {d});
    g_.initializer_i64("shape_q", {4}, {0, 0, o_.heads, d});
    g_.initializer_i64("shape_kv", {4}, {0, 0, o_.kv_heads, d});
    g_.initializer_i64("shape_rep", {5}, {1, 1, o_.heads / o_.kv_heads, 1, 1});
    g_.initializer_i64("shape_heads", {4}, {0, o_.heads, -1, d});
    g_.initializer_i64("shape_out", {3}, {0, 0, o_.heads * d});
    g_.initializer("pow_2", onnx_float, {}, {2.0f});
    g_.initializer("rms_eps", onnx_float, {}, {static_cast<float>(o_.rms_eps)});
    g_.initializer("sqrt_head_dim", t_, {}, {static_cast<float>(std::sqrt(double(d)))});
    // The most negative finite value of the compute type: HF's causal mask (finfo.min).
    g_.initializer("mask_min", t_, {}, {o_.fp16 ? -65504.0f : -3.4028234663852886e38f});
    g_.initializer("mask_zero", t_, {}, {0.0f});
    g_.initializer("rope_cos", t_, {o_.max_positions, d}, rope_table(o_, false));
    g_.initializer("rope_sin", t_, {o_.max_positions, d}, rope_table(o_, true));

    // Positions 0..seq-1, their cos/sin rows and the causal mask [seq, seq].
    node("Shape", "/model/Shape", {"input_ids"}, "ids_shape");
    node("Gather", "/model/Gather_seq", {"ids_shape", "const_1"}, "seq_len");
    node("Range", "/model/Range", {"const_0", "seq_len", "const_1"}, "positions");
    node("Gather", "/model/rotary_emb/Gather_cos", {"rope_cos", "positions"}, "cos");
    node("Gather", "/model/rotary_emb/Gather_sin", {"rope_sin", "positions"}, "sin");
    node("Unsqueeze", "/model/Unsqueeze_rows", {"positions", "axes_1"}, "pos_rows");
    node("Unsqueeze", "/model/Unsqueeze_cols", {"positions", "axes_0"}, "pos_cols");
    node("Greater", "/model/Greater", {"pos_cols", "pos_rows"}, "future");
    node("Where", "/model/Where", {"future", "mask_min", "mask_zero"}, "causal_mask");

    std::string x = node("Gather", "/model/embed_tokens/Gather",
                         {"model.embed_tokens.weight", "input_ids"}, "/model/embed_tokens/out");
    for (int l = 0; l < o_.layers; ++l) x = layer(l, x);
    const std::string h = rms_norm("/model/norm", x, "model.norm.weight");
    node("MatMul", "/lm_head/MatMul", {h, "lm_head.weight"}, "logits");
    g_.output("logits", t_, {-1, -1, o_.vocab});
    rename_dims(*g_.graph().mutable_output(0));
  }

 private:
  /// Appends a node; returns its (first) output.
  std::string node(const std::string& op, const std::string& name,
                   const std::vector<std::string>& inputs, const std::string& output) {
    g_.node(op, inputs, {output}, name);
    return output;
  }
  ::onnx::NodeProto& last() { return *g_.graph().mutable_node(g_.graph().node_size() - 1); }

  static void rename_dims(::onnx::ValueInfoProto& vi) {
    auto* shape = vi.mutable_type()->mutable_tensor_type()->mutable_shape();
    shape->mutable_dim(0)->set_dim_param("batch");
    shape->mutable_dim(1)->set_dim_param("sequence");
  }

  /// w * (x / sqrt(mean(x^2) + eps)), the statistics in fp32.
  std::string rms_norm(const std::string& p, const std::string& x, const std::string& weight) {
    std::string x32 = x;
    if (o_.fp16) {
      x32 = node("Cast", p + "/Cast", {x}, p + "/Cast_out");
      set_attr(last(), "to", onnx_float);
    }
    node("Pow", p + "/Pow", {x32, "pow_2"}, p + "/Pow_out");
    node("ReduceMean", p + "/ReduceMean", {p + "/Pow_out"}, p + "/ReduceMean_out");
    set_attr(last(), "axes", std::vector<std::int64_t>{-1});
    set_attr(last(), "keepdims", 1);
    node("Add", p + "/Add", {p + "/ReduceMean_out", "rms_eps"}, p + "/Add_out");
    node("Sqrt", p + "/Sqrt", {p + "/Add_out"}, p + "/Sqrt_out");
    node("Reciprocal", p + "/Reciprocal", {p + "/Sqrt_out"}, p + "/Reciprocal_out");
    std::string y = node("Mul", p + "/Mul", {x32, p + "/Reciprocal_out"}, p + "/Mul_out");
    if (o_.fp16) {
      y = node("Cast", p + "/Cast_1", {y}, p + "/Cast_1_out");
      set_attr(last(), "to", onnx_float16);
    }
    return node("Mul", p + "/Mul_1", {weight, y}, p + "/Mul_1_out");
  }

  /// x [b, h, s, d] -> x * cos + rotate_half(x) * sin.
  std::string rope(const std::string& p, const std::string& x) {
    node("Slice", p + "/Slice", {x, "half_start", "half_mid", "axes_last"}, p + "/x1");
    node("Slice", p + "/Slice_1", {x, "half_mid", "half_end", "axes_last"}, p + "/x2");
    node("Neg", p + "/Neg", {p + "/x2"}, p + "/neg_x2");
    node("Concat", p + "/Concat", {p + "/neg_x2", p + "/x1"}, p + "/rotated");
    set_attr(last(), "axis", -1);
    node("Mul", p + "/Mul", {x, "cos"}, p + "/x_cos");
    node("Mul", p + "/Mul_1", {p + "/rotated", "sin"}, p + "/rot_sin");
    return node("Add", p + "/Add", {p + "/x_cos", p + "/rot_sin"}, p + "/out");
  }

  /// [b, s, n*d] -> [b, n, s, d].
  std::string to_heads(const std::string& p, const std::string& x, const std::string& shape) {
    node("Reshape", p + "/Reshape", {x, shape}, p + "/Reshape_out");
    node("Transpose", p + "/Transpose", {p + "/Reshape_out"}, p + "/Transpose_out");
    set_attr(last(), "perm", std::vector<std::int64_t>{0, 2, 1, 3});
    return p + "/Transpose_out";
  }

  /// [b, kv, s, d] -> [b, heads, s, d]: each kv head repeated heads/kv times (HF's repeat_kv).
  std::string repeat_kv(const std::string& p, const std::string& x) {
    if (o_.heads == o_.kv_heads) return x;
    node("Unsqueeze", p + "/Unsqueeze", {x, "axes_2"}, p + "/Unsqueeze_out");
    node("Expand", p + "/Expand", {p + "/Unsqueeze_out", "shape_rep"}, p + "/Expand_out");
    return node("Reshape", p + "/Reshape", {p + "/Expand_out", "shape_heads"}, p + "/out");
  }

  std::string layer(int l, const std::string& x) {
    const std::string w = layer_prefix(l);
    const std::string p = "/model/layers." + std::to_string(l);
    const std::string a = p + "/self_attn";
    const std::string h = rms_norm(p + "/input_layernorm", x, w + "input_layernorm.weight");
    auto linear = [&](const std::string& scope, const std::string& in, const std::string& weight) {
      return node("MatMul", scope + "/MatMul", {in, weight}, scope + "/MatMul_out");
    };
    const std::string q = linear(a + "/q_proj", h, w + "self_attn.q_proj.weight");
    const std::string k = linear(a + "/k_proj", h, w + "self_attn.k_proj.weight");
    const std::string v = linear(a + "/v_proj", h, w + "self_attn.v_proj.weight");
    const std::string qr = rope(a + "/rope_q", to_heads(a + "/q", q, "shape_q"));
    const std::string kr =
        repeat_kv(a + "/repeat_k", rope(a + "/rope_k", to_heads(a + "/k", k, "shape_kv")));
    const std::string vr = repeat_kv(a + "/repeat_v", to_heads(a + "/v", v, "shape_kv"));
    node("Transpose", a + "/Transpose_k", {kr}, a + "/k_t");
    set_attr(last(), "perm", std::vector<std::int64_t>{0, 1, 3, 2});
    node("MatMul", a + "/MatMul_qk", {qr, a + "/k_t"}, a + "/scores");
    node("Div", a + "/Div", {a + "/scores", "sqrt_head_dim"}, a + "/scaled");
    node("Add", a + "/Add_mask", {a + "/scaled", "causal_mask"}, a + "/masked");
    node("Softmax", a + "/Softmax", {a + "/masked"}, a + "/probs");
    set_attr(last(), "axis", -1);
    node("MatMul", a + "/MatMul_pv", {a + "/probs", vr}, a + "/context");
    node("Transpose", a + "/Transpose_out", {a + "/context"}, a + "/context_t");
    set_attr(last(), "perm", std::vector<std::int64_t>{0, 2, 1, 3});
    node("Reshape", a + "/Reshape_out", {a + "/context_t", "shape_out"}, a + "/merged");
    const std::string o = linear(a + "/o_proj", a + "/merged", w + "self_attn.o_proj.weight");
    const std::string x1 = node("Add", p + "/Add", {x, o}, p + "/Add_out");

    const std::string h2 =
        rms_norm(p + "/post_attention_layernorm", x1, w + "post_attention_layernorm.weight");
    const std::string m = p + "/mlp";
    const std::string gate = linear(m + "/gate_proj", h2, w + "mlp.gate_proj.weight");
    const std::string up = linear(m + "/up_proj", h2, w + "mlp.up_proj.weight");
    node("Sigmoid", m + "/act_fn/Sigmoid", {gate}, m + "/act_fn/Sigmoid_out");
    node("Mul", m + "/act_fn/Mul", {gate, m + "/act_fn/Sigmoid_out"}, m + "/act_fn/out");
    node("Mul", m + "/Mul", {m + "/act_fn/out", up}, m + "/Mul_out");
    const std::string down = linear(m + "/down_proj", m + "/Mul_out", w + "mlp.down_proj.weight");
    return node("Add", p + "/Add_1", {x1, down}, p + "/Add_1_out");
  }

  const llama_options& o_;
  graph_builder& g_;
  int t_;
};

/// The graph (nodes and small constants) of `o`, without the large weights.
graph_builder llama_skeleton(const llama_options& o) {
  validate(o);
  graph_builder g(17, 8);
  g.proto().set_producer_name("int4q-tests llama_model");
  g.graph().set_name("llama");
  llama_graph(o, g).build();
  return g;
}

/// A weight's TensorProto header (name, type, dims; no data yet).
::onnx::TensorProto weight_header(const llama_options& o, const weight_spec& w) {
  ::onnx::TensorProto t;
  t.set_name(w.name);
  t.set_data_type(o.fp16 ? onnx_float16 : onnx_float);
  for (auto d : w.dims) t.add_dims(d);
  return t;
}

constexpr std::size_t draw_chunk = std::size_t(1) << 20;

}  // namespace

llama_options llama_options::llama2_7b(int layers) {
  llama_options o;
  o.layers = layers;
  o.hidden = 4096;
  o.intermediate = 11008;
  o.heads = 32;
  o.kv_heads = 32;
  o.vocab = 32000;
  o.max_positions = 4096;
  o.fp16 = true;
  o.external_data = true;
  return o;
}

void validate(const llama_options& o) {
  auto bad = [](const std::string& what) { throw std::invalid_argument("llama_options: " + what); };
  if (o.layers < 0) bad("layers must be >= 0");
  if (o.hidden <= 0 || o.intermediate <= 0 || o.vocab <= 0 || o.max_positions <= 0)
    bad("hidden, intermediate, vocab and max_positions must be positive");
  if (o.heads <= 0 || o.hidden % o.heads != 0) bad("heads must divide hidden");
  if (o.kv_heads <= 0 || o.heads % o.kv_heads != 0) bad("kv_heads must divide heads");
  if (o.head_dim() % 2 != 0) bad("head_dim (hidden / heads) must be even (RoPE halves)");
  if (!(o.rope_theta > 0) || !(o.rms_eps > 0)) bad("rope_theta and rms_eps must be positive");
}

std::uint64_t parameter_count(const llama_options& o) {
  validate(o);
  std::uint64_t n = 0;
  for (const weight_spec& w : weight_specs(o)) n += w.count();
  return n;
}

std::vector<float> llama_weight(const llama_options& o, const std::string& name) {
  validate(o);
  for (const weight_spec& w : weight_specs(o)) {
    if (w.name != name) continue;
    std::vector<float> out;
    out.reserve(static_cast<std::size_t>(w.count()));
    draw_weight(o, w, draw_chunk,
                [&out](const float* v, std::size_t n) { out.insert(out.end(), v, v + n); });
    return out;
  }
  throw std::invalid_argument("llama_weight: no weight named '" + name + "'");
}

::onnx::ModelProto build_llama_model(const llama_options& o) {
  graph_builder g = llama_skeleton(o);
  for (const weight_spec& w : weight_specs(o)) {
    ::onnx::TensorProto t = weight_header(o, w);
    std::string raw;
    draw_weight(o, w, draw_chunk,
                [&](const float* v, std::size_t n) { raw += to_bytes(v, n, o.fp16); });
    t.set_raw_data(raw);
    g.initializer(t);
  }
  return g.build();
}

void write_llama_model(const llama_options& o, const fs::path& path) {
  if (!o.external_data) {
    const ::onnx::ModelProto m = build_llama_model(o);
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out || !m.SerializeToOstream(&out) || !out.flush())
      throw std::runtime_error("write_llama_model: cannot write " + path.string());
    return;
  }
  graph_builder g = llama_skeleton(o);
  const fs::path data_path = fs::path(path.string() + ".data");
  const std::string location = data_path.filename().string();
  std::ofstream data(data_path, std::ios::binary | std::ios::trunc);
  if (!data) throw std::runtime_error("write_llama_model: cannot write " + data_path.string());
  // Offsets aligned to 4096 bytes, so that a reader can memory-map each tensor.
  std::uint64_t offset = 0;
  for (const weight_spec& w : weight_specs(o)) {
    const std::uint64_t aligned = (offset + 4095) / 4096 * 4096;
    if (aligned > offset)
      data.write(std::string(aligned - offset, '\0').data(), std::streamsize(aligned - offset));
    offset = aligned;
    std::uint64_t length = 0;
    draw_weight(o, w, draw_chunk, [&](const float* v, std::size_t n) {
      const std::string bytes = to_bytes(v, n, o.fp16);
      data.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      length += bytes.size();
    });
    if (!data) throw std::runtime_error("write_llama_model: cannot write " + data_path.string());
    ::onnx::TensorProto t = weight_header(o, w);
    set_external(t, location, static_cast<std::int64_t>(offset), static_cast<std::int64_t>(length));
    g.initializer(t);
    offset += length;
  }
  data.close();
  if (!data) throw std::runtime_error("write_llama_model: cannot write " + data_path.string());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out || !g.proto().SerializeToOstream(&out) || !out.flush())
    throw std::runtime_error("write_llama_model: cannot write " + path.string());
}

std::string write_token_file(const fs::path& path, int vocab, std::uint64_t count,
                             std::uint64_t seed) {
  if (vocab <= 0 || vocab > 65536)
    throw std::invalid_argument("write_token_file: vocab must be in 1..65536");
  const bool one_byte = vocab <= 256;
  std::string bytes(static_cast<std::size_t>(count) * (one_byte ? 1 : 2), '\0');
  std::uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (std::uint64_t e = 0; e < count; ++e) {
    // The modulo bias (< vocab / 2^64) does not matter for calibration tokens.
    const auto token =
        static_cast<std::uint16_t>(splitmix64(state) % static_cast<std::uint64_t>(vocab));
    if (one_byte)
      bytes[e] = static_cast<char>(token);
    else
      std::memcpy(&bytes[e * 2], &token, 2);  // little endian hosts only (as int4q itself)
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out || !out.write(bytes.data(), static_cast<std::streamsize>(bytes.size())) || !out.flush())
    throw std::runtime_error("write_token_file: cannot write " + path.string());
  return one_byte ? "u8" : "u16";
}

}  // namespace test
}  // namespace int4q

// onnx_quantize_weight: how much error does each quantization grid add to a model's weights?
//
//   onnx_quantize_weight MODEL.onnx
//
// Reads an ONNX model, takes the weight of every MatMul whose second input is a 2-D float
// initializer (W[K, N], K = input features), quantizes it with several int4q configurations,
// dequantizes it again and prints the reconstruction error of each weight and, per configuration,
// the totals over all weights: error, storage cost in bits per weight, and quantization time.
// The model file is only read, never written.
//
// Limits of this example (the int4q CLI handles more):
//  - only initializers stored inside the .onnx file (raw_data or float_data); models saved with
//    external data are rejected with a message saying how to re-save them;
//  - only MatMul weights held in initializers. Weights held in `Constant` nodes or used by Gemm
//    are not looked at: the models this example is meant for (e.g. devgpt) keep every MatMul
//    weight as an initializer.
//
// Exit status: 0 done, 2 usage, 1 error (one line on stderr naming the file and what to do).
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include <onnx/onnx_pb.h>
#include <xtensor/xtensor.hpp>

#include <int4q/quant.hpp>

namespace {

constexpr const char* program = "onnx_quantize_weight";

/// A failure to report as one line (exit status 1).
struct fatal : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- Reading the model
// ---------------------------------------------------------------------------

struct weight {
  std::string name;
  xt::xtensor<float, 2> values;  // [K, N]
};

onnx::ModelProto load_model(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    throw fatal("'" + path + "' is a directory; pass the path of an .onnx file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw fatal("cannot open '" + path + "': " + std::strerror(errno) +
                "; pass the path of an existing .onnx file");
  }
  onnx::ModelProto model;
  if (!model.ParseFromIstream(&in) || !model.has_graph() || model.ir_version() <= 0) {
    throw fatal("'" + path +
                "' is not an ONNX model (it does not parse as an onnx.ModelProto with a graph); "
                "pass a .onnx file");
  }
  return model;
}

/// The values of a 2-D float initializer stored inline in the model.
xt::xtensor<float, 2> read_matrix(const onnx::TensorProto& t, const std::string& path) {
  if (t.data_location() == onnx::TensorProto::EXTERNAL || t.external_data_size() > 0) {
    throw fatal("'" + path + "': initializer '" + t.name() +
                "' is stored in an external data file, which this example does not read; "
                "re-save the model with its data inside (onnx.save(model, path, "
                "save_as_external_data=False); models must then be under 2 GB)");
  }
  const std::size_t K = static_cast<std::size_t>(t.dims(0));
  const std::size_t N = static_cast<std::size_t>(t.dims(1));
  auto m = xt::xtensor<float, 2>::from_shape({K, N});
  if (t.has_raw_data()) {
    // raw_data is little-endian IEEE float, as on every platform int4q targets.
    if (t.raw_data().size() != m.size() * sizeof(float)) {
      throw fatal("'" + path + "': initializer '" + t.name() + "' has " +
                  std::to_string(t.raw_data().size()) + " bytes of data for " +
                  std::to_string(m.size()) + " floats; the model is damaged");
    }
    std::memcpy(m.data(), t.raw_data().data(), t.raw_data().size());
  } else {
    if (static_cast<std::size_t>(t.float_data_size()) != m.size()) {
      throw fatal("'" + path + "': initializer '" + t.name() + "' has " +
                  std::to_string(t.float_data_size()) + " values for " + std::to_string(m.size()) +
                  " elements; the model is damaged");
    }
    std::copy(t.float_data().begin(), t.float_data().end(), m.begin());
  }
  return m;
}

/// Every distinct 2-D float initializer used as the second input (B) of a MatMul, in node order.
std::vector<weight> matmul_weights(const onnx::ModelProto& model, const std::string& path) {
  std::map<std::string, const onnx::TensorProto*> initializers;
  for (const auto& t : model.graph().initializer()) initializers[t.name()] = &t;
  std::vector<weight> out;
  std::set<std::string> seen;
  for (const auto& node : model.graph().node()) {
    if (node.op_type() != "MatMul" || node.domain().size() > 0 || node.input_size() < 2) continue;
    const auto it = initializers.find(node.input(1));
    if (it == initializers.end() || !seen.insert(it->first).second) continue;
    const onnx::TensorProto& t = *it->second;
    if (t.data_type() != onnx::TensorProto::FLOAT || t.dims_size() != 2) {
      std::fprintf(stderr, "%s: skipping '%s': not a 2-D float tensor\n", program,
                   t.name().c_str());
      continue;
    }
    out.push_back({t.name(), read_matrix(t, path)});
  }
  return out;
}

// ---- The configurations compared ----------------------------------------------------------------

struct method {
  std::string name;
  int4q::quant_config config;
  bool clip_search = false;  // search_clip first, then quantize with the ratios it found
};

std::vector<method> methods() {
  using int4q::quant_config;
  std::vector<method> m;
  auto add = [&](std::string name, const std::function<void(quant_config&)>& edit,
                 bool clip = false) {
    quant_config c;  // int4q's default: 4 bits, groups of 128 rows, asymmetric, ties to even
    edit(c);
    m.push_back({std::move(name), c, clip});
  };
  add("int4 g32 asym", [](quant_config& c) { c.group_size = 32; });
  add("int4 g128 asym", [](quant_config&) {});
  add("int4 g128 sym", [](quant_config& c) { c.scheme = int4q::scheme::symmetric; });
  add(
      "int4 g128 asym +clip", [](quant_config&) {}, true);
  add("int8 per-channel asym", [](quant_config& c) {
    c.bits = 8;
    c.granularity = int4q::grouping::per_channel;
  });
  add("nf4 g64", [](quant_config& c) {
    c.data_type = int4q::data_type::nf4;
    c.group_size = 64;
  });
  m.push_back({"ort MatMulNBits int4 g128 asym", int4q::presets::ort_matmulnbits(4, 128, false)});
  return m;
}

/// Storage of a quantized weight in bits: codes, scales of `scale_bits` each, and zero points
/// (packed at the code width, as MatMulNBits stores them) when the grid has them.
double storage_bits(const int4q::quantized<float>& q, int scale_bits) {
  const double groups = static_cast<double>(q.scales.size());
  const double zero_point_bits = q.config.has_zero_points() ? q.config.bits : 0;
  return static_cast<double>(q.codes.size()) * q.config.bits +
         groups * (scale_bits + zero_point_bits);
}

// ---- Running
// -------------------------------------------------------------------------------------

/// Sums over all weights for one method.
struct totals {
  double err2 = 0, sig2 = 0, max_abs = 0;  // sum (W - Q)^2, sum W^2, max |W - Q|
  double elements = 0, bits_fp32 = 0, bits_fp16 = 0, seconds = 0;
};

int run(const std::string& path) {
  const onnx::ModelProto model = load_model(path);
  const std::vector<weight> weights = matmul_weights(model, path);
  if (weights.empty()) {
    throw fatal("'" + path +
                "' has no MatMul whose weight is a 2-D float initializer; nothing to quantize");
  }
  const std::vector<method> ms = methods();
  std::vector<totals> sum(ms.size());

  std::printf("%s: %zu MatMul weights\n\n", path.c_str(), weights.size());
  std::printf("%-34s %-32s %9s %8s %9s\n", "weight [K, N]", "config", "rel_l2", "sqnr_dB",
              "max_abs");
  for (const weight& w : weights) {
    const std::string label = w.name + " [" + std::to_string(w.values.shape()[0]) + ", " +
                              std::to_string(w.values.shape()[1]) + "]";
    double sig2 = 0;
    for (float v : w.values) sig2 += static_cast<double>(v) * v;
    for (std::size_t i = 0; i < ms.size(); ++i) {
      const method& m = ms[i];
      const auto start = std::chrono::steady_clock::now();
      int4q::quantized<float> q;
      if (m.clip_search) {
        const auto found = int4q::search_clip(w.values, m.config);
        q = int4q::quant_tensor(w.values, m.config, found.ratios);
      } else {
        q = int4q::quant_tensor(w.values, m.config);
      }
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const int4q::error_stats e = int4q::measure_error(w.values, int4q::dequant(q));

      std::printf("%-34s %-32s %9.5f %8.2f %9.6f\n", i == 0 ? label.c_str() : "", m.name.c_str(),
                  e.relative_l2, e.sqnr_db, e.max_abs);
      totals& t = sum[i];
      t.err2 += e.mse * static_cast<double>(e.count);
      t.sig2 += sig2;
      t.max_abs = std::max(t.max_abs, e.max_abs);
      t.elements += static_cast<double>(e.count);
      t.bits_fp32 += storage_bits(q, 32);
      t.bits_fp16 += storage_bits(q, 16);
      t.seconds += seconds;
    }
  }

  std::printf(
      "\nTotals over all %zu weights (bits per weight include scales and zero points;\n"
      "time = quantization, plus clip search where used, on one thread)\n\n",
      weights.size());
  std::printf("%-32s %9s %8s %9s %12s %12s %9s\n", "config", "rel_l2", "sqnr_dB", "max_abs",
              "bits/w fp32s", "bits/w fp16s", "time_ms");
  for (std::size_t i = 0; i < ms.size(); ++i) {
    const totals& t = sum[i];
    const double rel = t.sig2 > 0 ? std::sqrt(t.err2 / t.sig2) : 0.0;
    const double sqnr = t.err2 > 0 ? 10.0 * std::log10(t.sig2 / t.err2) : INFINITY;
    std::printf("%-32s %9.5f %8.2f %9.6f %12.3f %12.3f %9.1f\n", ms[i].name.c_str(), rel, sqnr,
                t.max_abs, t.bits_fp32 / t.elements, t.bits_fp16 / t.elements, 1e3 * t.seconds);
  }
  return 0;
}

void usage(std::FILE* to) {
  std::fprintf(to,
               "usage: %s MODEL.onnx\n"
               "Quantizes every MatMul weight of MODEL.onnx with several int4q configurations\n"
               "and prints the reconstruction error of each (the model is not modified).\n",
               program);
}

}  // namespace

int main(int argc, char** argv) {
  GOOGLE_PROTOBUF_VERIFY_VERSION;
  if (argc == 2 && (std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "--help") == 0)) {
    usage(stdout);
    return 0;
  }
  if (argc != 2) {
    usage(stderr);
    return 2;
  }
  try {
    return run(argv[1]);
  } catch (const fatal& e) {
    std::fprintf(stderr, "%s: error: %s\n", program, e.what());
  } catch (const int4q::error& e) {
    std::fprintf(stderr, "%s: error: '%s': int4q: %s\n", program, argv[1], e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: '%s': %s\n", program, argv[1], e.what());
  }
  return 1;
}

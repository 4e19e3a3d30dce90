// End-to-end quantization of whole ONNX models through the adapter (int4q::onnx): load, quantize
// (reading each weight, RTN, packing), save. Reported against the disk's read and write
// bandwidth measured in the same run, with the time split and the peak resident memory.
//
//   machine/disk_write_1GiB      write 1 GiB with fsync: GB/s the output can be written at
//   machine/disk_read_1GiB       read it back (page cache: the file was just written; that is
//                                also the state of a model the generator just wrote)
//   e2e/devgpt/<format>          the real devgpt model (13 MB, inline weights)
//   e2e/llama7b_layers/<n>       n Llama-7B-shaped decoder layers (q,k,v,o [4096,4096], gate, up
//                                [4096,11008], down [11008,4096]: 202 M parameters, 808 MB fp32
//                                per layer), weights in an external data file
//
// Counters: load_s, read_s (reading every weight as float), quantize_s (quantize_model: read +
// RTN + pack), save_s, GBps (fp32 bytes in / total seconds), pct_disk (that rate against the
// slower of disk read and write), peak_rss_MB (VmHWM above the RSS the process had before the
// model was loaded: the benchmark's own buffers are not counted), rss_vs_largest (that peak /
// bytes of the largest fp32 weight).
#include "bench_common.hpp"

#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <int4q/onnx/calib_data.hpp>
#include <int4q/onnx/model.hpp>
#include <int4q/onnx/quantize_model.hpp>
#include <int4q/onnx/weights.hpp>

namespace fs = std::filesystem;

namespace {

fs::path work_dir() {
  static const fs::path dir = [] {
    const char* env = std::getenv("INT4Q_BENCH_DIR");
    fs::path d = env ? fs::path(env) : fs::temp_directory_path() / "int4q_bench_e2e";
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

/// A /proc/self/status field in bytes: "VmHWM:" (peak resident set) or "VmRSS:" (current).
/// reset_peak_rss() starts a new peak measurement window.
std::size_t status_bytes(const std::string& field) {
  std::ifstream f("/proc/self/status");
  std::string key;
  while (f >> key) {
    if (key == field) {
      std::size_t kb = 0;
      f >> kb;
      return kb * 1024;
    }
    std::string rest;
    std::getline(f, rest);
  }
  return 0;
}
void reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";  // Linux: reset the peak RSS to the current RSS
}

// ---- disk bandwidth -----------------------------------------------------------------------

double g_disk_write = 0, g_disk_read = 0;

void bm_disk(benchmark::State& state) {
  const std::size_t bytes = std::size_t(1) << 30;
  const fs::path file = work_dir() / "disk_probe.bin";
  std::vector<char> buffer(std::size_t(16) << 20, 1);
  for (auto _ : state) {
    int4q_bench::stopwatch w;
    {
      std::FILE* f = std::fopen(file.c_str(), "wb");
      for (std::size_t done = 0; done < bytes; done += buffer.size()) {
        std::fwrite(buffer.data(), 1, buffer.size(), f);
      }
      std::fflush(f);
      fsync(fileno(f));
      std::fclose(f);
    }
    const double ws = w.seconds();
    int4q_bench::stopwatch r;
    {
      std::FILE* f = std::fopen(file.c_str(), "rb");
      while (std::fread(buffer.data(), 1, buffer.size(), f) == buffer.size()) {
      }
      std::fclose(f);
    }
    const double rs = r.seconds();
    g_disk_write = std::max(g_disk_write, bytes / ws / 1e9);
    g_disk_read = std::max(g_disk_read, bytes / rs / 1e9);
    state.SetIterationTime(ws + rs);
  }
  state.counters["write_GBps"] = g_disk_write;
  state.counters["read_GBps"] = g_disk_read;
  fs::remove(file);
}
BENCHMARK(bm_disk)
    ->Name("machine/disk_1GiB")
    ->Iterations(2)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// ---- synthetic Llama-7B-shaped layers ---------------------------------------------------

/// Writes (once) a model of `layers` decoder layers' linear weights with external data.
fs::path llama_model(int layers) {
  const fs::path path = work_dir() / ("llama7b_layers_" + std::to_string(layers) + ".onnx");
  if (fs::exists(path)) return path;
  struct shape {
    const char* name;
    std::int64_t k, n;
  };
  const shape shapes[] = {{"q_proj", 4096, 4096},     {"k_proj", 4096, 4096},
                          {"v_proj", 4096, 4096},     {"o_proj", 4096, 4096},
                          {"gate_proj", 4096, 11008}, {"up_proj", 4096, 11008},
                          {"down_proj", 11008, 4096}};
  ::onnx::ModelProto m;
  m.set_ir_version(8);
  m.set_producer_name("int4q bench");
  m.add_opset_import()->set_version(17);
  auto* g = m.mutable_graph();
  g->set_name("llama7b_layers");
  auto add_value = [](::onnx::ValueInfoProto* v, const std::string& name, std::int64_t width) {
    v->set_name(name);
    auto* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(::onnx::TensorProto::FLOAT);
    t->mutable_shape()->add_dim()->set_dim_param("tokens");
    t->mutable_shape()->add_dim()->set_dim_value(width);
  };
  add_value(g->add_input(), "x", 4096);
  add_value(g->add_input(), "h", 11008);
  const std::string data_name = path.filename().string() + ".data";
  std::ofstream data(work_dir() / data_name, std::ios::binary);
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::size_t offset = 0;
  std::vector<float> values;
  for (int l = 0; l < layers; ++l) {
    for (const shape& s : shapes) {
      const std::string w = "layers." + std::to_string(l) + "." + s.name + ".weight";
      values.resize(static_cast<std::size_t>(s.k * s.n));
      for (float& v : values) v = normal(rng);
      data.write(reinterpret_cast<const char*>(values.data()),
                 static_cast<std::streamsize>(values.size() * sizeof(float)));
      auto* t = g->add_initializer();
      t->set_name(w);
      t->set_data_type(::onnx::TensorProto::FLOAT);
      t->add_dims(s.k);
      t->add_dims(s.n);
      t->set_data_location(::onnx::TensorProto::EXTERNAL);
      auto add_entry = [t](const std::string& key, const std::string& value) {
        auto* e = t->add_external_data();
        e->set_key(key);
        e->set_value(value);
      };
      add_entry("location", data_name);
      add_entry("offset", std::to_string(offset));
      add_entry("length", std::to_string(values.size() * sizeof(float)));
      offset += values.size() * sizeof(float);
      auto* node = g->add_node();
      node->set_op_type("MatMul");
      node->set_name("/layers." + std::to_string(l) + "/" + s.name + "/MatMul");
      node->add_input(s.k == 4096 ? "x" : "h");
      node->add_input(w);
      node->add_output(w + ".out");
      add_value(g->add_output(), w + ".out", s.n);
    }
  }
  data.close();
  std::ofstream out(path, std::ios::binary);
  m.SerializeToOstream(&out);
  return path;
}

// ---- end to end --------------------------------------------------------------------------

void run_e2e(benchmark::State& state, const fs::path& input, int4q::onnx::output_format format) {
  namespace io = int4q::onnx;
  const fs::path output = work_dir() / ("out_" + input.stem().string() + ".onnx");
  double load_s = 0, read_s = 0, quant_s = 0, save_s = 0, fp32_bytes = 0, largest = 0;
  std::size_t rss = 0;
  for (auto _ : state) {
    reset_peak_rss();
    const std::size_t baseline = status_bytes("VmRSS:");
    int4q_bench::stopwatch total;
    int4q_bench::stopwatch t0;
    io::model m = io::load_model(input);
    load_s = t0.seconds();
    // reading alone (what quantize_model also does, one weight at a time)
    int4q_bench::stopwatch t1;
    fp32_bytes = 0;
    for (const auto& w : io::find_weights(m)) {
      if (!w.quantizable) continue;
      for (const auto& init : m.proto.graph().initializer()) {
        if (init.name() != w.name) continue;
        const auto x = io::read_matrix(m, init);
        benchmark::DoNotOptimize(x.data());
        fp32_bytes += static_cast<double>(x.size() * sizeof(float));
        largest = std::max(largest, static_cast<double>(x.size() * sizeof(float)));
      }
    }
    read_s = t1.seconds();
    io::quantize_options options;
    options.format = format;
    options.lm_head = io::lm_head_policy::quantize;
    // As `int4q quantize --spill auto`: inputs of 512 MiB or more spill their quantized tensors
    // to a scratch file next to the output.
    std::uintmax_t input_bytes = fs::file_size(input);
    if (fs::exists(input.string() + ".data"))
      input_bytes += fs::file_size(input.string() + ".data");
    if (input_bytes >= io::quantize_options::spill_input_bytes)
      options.spill_file = work_dir() / ".spill";
    int4q_bench::stopwatch t2;
    const auto report = io::quantize_model(m, options);
    quant_s = t2.seconds();
    benchmark::DoNotOptimize(report.bytes_after);
    int4q_bench::stopwatch t3;
    io::save_model(m, output);
    save_s = t3.seconds();
    if (!options.spill_file.empty()) fs::remove(options.spill_file);
    state.SetIterationTime(total.seconds());
    rss = status_bytes("VmHWM:") - baseline;
  }
  const double total_s = load_s + quant_s + save_s;
  state.counters["load_s"] = load_s;
  state.counters["read_s"] = read_s;
  state.counters["quantize_s"] = quant_s;
  state.counters["save_s"] = save_s;
  state.counters["GBps"] = fp32_bytes / total_s / 1e9;
  const double disk =
      std::min(g_disk_read > 0 ? g_disk_read : 1e9, g_disk_write > 0 ? g_disk_write : 1e9);
  state.counters["pct_disk"] = 100.0 * fp32_bytes / total_s / 1e9 / disk;
  state.counters["peak_rss_MB"] = static_cast<double>(rss) / 1e6;
  state.counters["rss_vs_largest"] = largest > 0 ? static_cast<double>(rss) / largest : 0;
  fs::remove(output);
  fs::remove(fs::path(output.string() + ".data"));
}

void bm_devgpt(benchmark::State& state) {
  const fs::path model =
      fs::path(INT4Q_SOURCE_DIR) / ".." / "shared" / "models" / "devgpt" / "devgpt_fp32.onnx";
  run_e2e(state, model, static_cast<int4q::onnx::output_format>(state.range(0)));
}
BENCHMARK(bm_devgpt)
    ->Name("e2e/devgpt")
    ->ArgName("format")
    ->Arg(static_cast<int>(int4q::onnx::output_format::matmulnbits))
    ->Arg(static_cast<int>(int4q::onnx::output_format::qdq))
    ->Iterations(3)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

void bm_llama(benchmark::State& state) {
  run_e2e(state, llama_model(static_cast<int>(state.range(0))),
          int4q::onnx::output_format::matmulnbits);
}
BENCHMARK(bm_llama)
    ->Name("e2e/llama7b_layers")
    ->Arg(1)
    ->Arg(2)
    ->Iterations(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// ---- GPTQ end to end ----------------------------------------------------------------------
//
// gptq/devgpt/mode:M             --method gptq on devgpt (64 windows of 128 calibration bytes,
//                                sequential or parallel): load, calibrate, GPTQ every weight
// gptq/llama7b_layer              one Llama-7B-shaped layer (7 weights, synthetic N(0, 0.02)
//                                weights and N(0, 1) activations, 512 calibration rows)
// Counters: total_s, x_rtn (time / the RTN run of the same model in this process). BLAS runs
// single-threaded, as in the CLI (byte-identical outputs); the executor's own threads: all.

double rtn_seconds(const fs::path& model) {
  namespace io = int4q::onnx;
  io::model m = io::load_model(model);
  io::quantize_options o;
  o.lm_head = io::lm_head_policy::quantize;
  int4q_bench::stopwatch sw;
  io::quantize_model(m, o);
  return sw.seconds();
}

using io_calib = int4q::onnx::calib_options;

void run_gptq(benchmark::State& state, const fs::path& model, const io_calib& calib,
              int4q::onnx::calibration_mode mode) {
  namespace io = int4q::onnx;
  int4q_bench::set_blas_threads(1);
  double total = 0;
  for (auto _ : state) {
    int4q_bench::stopwatch sw;
    io::model m = io::load_model(model);
    const io::calib_data data = io::calib_data::open(m, calib);
    std::size_t next = 0;
    io::quantize_options o;
    o.algo = io::method::gptq;
    o.lm_head = io::lm_head_policy::quantize;
    o.calibration.mode = mode;
    o.calibration.data = [&](std::map<std::string, io::value>& in) {
      if (next >= data.samples()) return false;
      const std::size_t count = std::min<std::size_t>(8, data.samples() - next);
      in = data.batch(next, std::min(count, data.max_batch()));
      next += std::min(count, data.max_batch());
      return true;
    };
    io::quantize_model(m, o);
    total = sw.seconds();
    state.SetIterationTime(total);
  }
  state.counters["total_s"] = total;
  state.counters["x_rtn"] = total / rtn_seconds(model);
}

void bm_gptq_devgpt(benchmark::State& state) {
  io_calib c;
  c.path = fs::path(INT4Q_SOURCE_DIR) / ".." / "shared" / "models" / "devgpt" / "devgpt_cal.u8";
  c.seq_len = 128;
  c.samples = 64;
  run_gptq(state,
           fs::path(INT4Q_SOURCE_DIR) / ".." / "shared" / "models" / "devgpt" / "devgpt_fp32.onnx",
           c, static_cast<int4q::onnx::calibration_mode>(state.range(0)));
}
BENCHMARK(bm_gptq_devgpt)
    ->Name("gptq/devgpt")
    ->ArgName("mode")
    ->Arg(static_cast<int>(int4q::onnx::calibration_mode::sequential))
    ->Arg(static_cast<int>(int4q::onnx::calibration_mode::parallel))
    ->Iterations(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

void bm_gptq_llama(benchmark::State& state) {
  io_calib c;  // random inputs: N(0, 1) rows of x [tokens, 4096] and h [tokens, 11008]
  c.samples = 512;
  run_gptq(state, llama_model(1), c, int4q::onnx::calibration_mode::parallel);
}
BENCHMARK(bm_gptq_llama)
    ->Name("gptq/llama7b_layer")
    ->Iterations(1)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  // The allocator settings of the int4q CLI (adapters/cli/main.cpp): large buffers are reused
  // from the heap instead of mapped and faulted in afresh for every weight.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  return int4q_bench::main(argc, argv);
}

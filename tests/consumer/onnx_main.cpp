// Uses the installed int4q::onnx the way a C++ program embedding int4q would: builds a small model
// (X[4, 64] -> MatMul W[64, 32] -> Y) in memory, quantizes W with GPTQ on random calibration
// inputs (the data layer), saves and reloads it (model I/O), runs the float and the quantized
// model in int4q's executor and checks that the quantized output stays close to the float one.
// The model is written to the folder given as the argument.
// Prints "int4q::onnx ok <op of the quantized node> <relative L2 error>"; exits 1 otherwise.
#include <int4q/onnx/calib_data.hpp>
#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>
#include <int4q/onnx/quantize_model.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace ox = int4q::onnx;

namespace {

constexpr std::int64_t rows = 4, k = 64, n = 32;

ox::model small_model() {
  ox::model m;
  m.proto.set_ir_version(8);
  auto* opset = m.proto.add_opset_import();
  opset->set_domain("");
  opset->set_version(17);
  auto* g = m.proto.mutable_graph();
  g->set_name("consumer");
  std::vector<float> w(static_cast<std::size_t>(k * n));
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = std::sin(0.37f * static_cast<float>(i));
  *g->add_initializer() =
      ox::make_float_tensor("W", ox::elem_type::float32, {k, n}, w.data(), w.size());
  auto add_io = [](::onnx::ValueInfoProto* v, const char* name, std::int64_t cols) {
    v->set_name(name);
    auto* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(::onnx::TensorProto::FLOAT);
    t->mutable_shape()->add_dim()->set_dim_value(rows);
    t->mutable_shape()->add_dim()->set_dim_value(cols);
  };
  add_io(g->add_input(), "X", k);
  add_io(g->add_output(), "Y", n);
  auto* node = g->add_node();
  node->set_op_type("MatMul");
  node->set_name("proj");
  node->add_input("X");
  node->add_input("W");
  node->add_output("Y");
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer_onnx <folder for the quantized model>\n");
    return 2;
  }
  try {
    const std::filesystem::path dir = argv[1];
    std::filesystem::create_directories(dir);
    ox::model quantized = small_model();
    const ox::model reference = small_model();

    ox::calib_options co;  // no path: random inputs
    co.samples = 8;
    co.seed = 7;
    const ox::calib_data data = ox::calib_data::open(quantized, co);
    std::size_t next = 0;

    ox::quantize_options qo;
    qo.config.group_size = 32;
    qo.algo = ox::method::gptq;
    qo.threads = 1;
    qo.lm_head = ox::lm_head_policy::quantize;  // the only MatMul feeds the output
    qo.calibration.data = [&](std::map<std::string, ox::value>& inputs) {
      if (next >= data.samples()) return false;
      inputs = data.batch(next++, 1);
      return true;
    };
    qo.calibration.rewind = [&] { next = 0; };
    const ox::quantize_report report = ox::quantize_model(quantized, qo);
    if (report.weights_quantized != 1) {
      std::fprintf(stderr, "expected 1 weight quantized, got %zu: %s\n", report.weights_quantized,
                   report.tensors.empty() ? "no weight found" : report.tensors[0].reason.c_str());
      return 1;
    }
    const std::filesystem::path file = dir / "quantized.onnx";
    ox::save_model(quantized, file);
    const ox::model reloaded = ox::load_model(file);

    const std::map<std::string, ox::value> inputs = data.batch(0, 1);
    const ox::value y_ref = ox::executor(reference, 1).run(inputs).at("Y");
    const ox::value y_q = ox::executor(reloaded, 1).run(inputs).at("Y");
    double diff = 0, norm = 0;
    for (std::size_t i = 0; i < y_ref.f.size(); ++i) {
      diff += (double(y_q.f[i]) - y_ref.f[i]) * (double(y_q.f[i]) - y_ref.f[i]);
      norm += double(y_ref.f[i]) * y_ref.f[i];
    }
    const double rel = std::sqrt(diff / norm);
    // 4 bits, group 32: about 2^-4 of each group's range per element; 0.2 is far above that
    // and far below an unrelated output (relative error ~1.4).
    if (!(y_q.f.size() == y_ref.f.size() && rel < 0.2)) {
      std::fprintf(stderr, "quantized output differs: relative L2 error %g\n", rel);
      return 1;
    }
    std::printf("int4q::onnx ok %s %.3f\n", reloaded.proto.graph().node(0).op_type().c_str(), rel);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "int4q::onnx consumer: %s\n", e.what());
    return 1;
  }
}

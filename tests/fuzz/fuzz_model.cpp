// Fuzz target: loading and checking a model, what every int4q subcommand does first.
//
// Input: an ONNX model, optionally followed by "INT4QSPLIT" and the bytes of an external data
// file. The model is written to <scratch>/model.onnx and the data to <scratch>/data.bin (the
// name the seed models' external_data entries use), then:
//   load_model -> validate_model (with the quantize options below) -> find_weights,
//   find_embeddings -> every initializer of the main graph read (read_tensor_bytes, and
//   read_matrix / read_vector for 2-D / 1-D float tensors) -> the executor's construction ->
//   save_model into the scratch folder and load_model of the result, whose initializers must
//   hold the same bytes -> quantize_model (RTN, MatMulNBits or QDQ) of small models.
// int4q::error (model_error, config_error, shape_error, ...) is the expected way to refuse an
// input; any other exception, a crash, a sanitizer report, a leak or a timeout is a finding.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <int4q/error.hpp>
#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>
#include <int4q/onnx/quantize_model.hpp>
#include <int4q/onnx/validate.hpp>
#include <int4q/onnx/weights.hpp>

#include "fuzz/fuzz_common.hpp"

namespace {

namespace ox = int4q::onnx;
namespace fz = int4q::fuzz;

/// Models whose initializers hold more than this are not quantized (time per input).
constexpr std::uint64_t quantize_max_payload = 64 * 1024;
/// The memory validate_model may assume (scripts/test runs the fuzzers with -rss_limit_mb=2560).
constexpr std::uint64_t validate_memory_bytes = std::uint64_t(512) << 20;

fz::scratch& scratch() {
  static fz::scratch s("model");
  return s;
}

/// Reads every initializer of the main graph; returns their payload bytes in graph order.
std::vector<std::vector<std::uint8_t>> read_initializers(const ox::model& m) {
  std::vector<std::vector<std::uint8_t>> out;
  for (const auto& t : m.proto.graph().initializer()) {
    out.push_back(ox::read_tensor_bytes(m, t));
    const ox::elem_type type = ox::elem_type_of(t.data_type());
    if (type == ox::elem_type::other) continue;
    if (t.dims_size() == 2) (void)ox::read_matrix(m, t);
    if (t.dims_size() == 1) (void)ox::read_vector(m, t);
  }
  return out;
}

std::uint64_t payload_bytes(const std::vector<std::vector<std::uint8_t>>& tensors) {
  std::uint64_t sum = 0;
  for (const auto& t : tensors) sum += t.size();
  return sum;
}

/// save_model, then load_model of what it wrote: same initializers, same bytes.
void check_round_trip(const ox::model& m, const std::vector<std::vector<std::uint8_t>>& before,
                      bool external) {
  const auto out = scratch().dir() / (external ? "saved_ext.onnx" : "saved.onnx");
  ox::save_options o;
  o.mode = external ? ox::external_data::always : ox::external_data::never;
  o.external_min_bytes = 16;
  ox::save_model(m, out, o);
  const ox::model back = ox::load_model(out);
  const auto after = read_initializers(back);
  if (after != before) {
    fz::fail("save_model then load_model changed the initializers' bytes (external " +
             std::to_string(external) + ")");
  }
}

void run_one(const std::uint8_t* data, std::size_t size) {
  scratch().reset();
  const auto parts = fz::split_input(data, size, 2);
  const auto path = scratch().write("model.onnx", parts[0]);
  if (parts.size() > 1) scratch().write("data.bin", parts[1]);

  ox::quantize_options q;
  q.threads = 1;
  q.format = size % 2 ? ox::output_format::qdq : ox::output_format::matmulnbits;

  ox::model m = ox::load_model(path);
  // As the CLI does before any work: the selection to quantize, a memory bound (here the
  // fuzzer's RSS limit), values read.
  ox::validate_options v;
  v.quantize = &q;
  v.available_memory_bytes = validate_memory_bytes;
  (void)ox::validate_model(m, v);
  (void)ox::find_weights(m);
  (void)ox::find_embeddings(m);
  const auto tensors = read_initializers(m);
  { const ox::executor e(m, 1); }
  check_round_trip(m, tensors, false);
  check_round_trip(m, tensors, true);

  if (payload_bytes(tensors) <= quantize_max_payload) (void)ox::quantize_model(m, q);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    run_one(data, size);
  } catch (const int4q::error& e) {
    fz::refused(e);  // a refusal with a message: what a bad model should get
  }
  return 0;
}

// Fuzz target: calibration and evaluation data (int4q::onnx::calib_data and the NumPy readers)
// against two small fixed models.
//
// Input: byte 0 chooses how the rest is read:
//   bits 0-1  format: 0 .npy, 1 .npz, 2 a folder of ONNX .pb files, 3 a raw token file
//   bit 2     model: 0 a language model (input_ids, attention_mask, position_ids, a past
//             key/value pair, use_cache_branch: the defaults get filled), 1 a float model with a
//             fixed first dimension (x [1, 3, 4]) and an int64 input (ids [-1, 2])
//   bits 3-4  token dtype (u8, u16, i32, i64)
//   bit 5     .pb folder: test_data_set_N/ folders (two files each) instead of one flat folder
// byte 1: samples (low 3 bits, 0 = all the file has) and seq_len (high 5 bits, 1-32).
// The rest is the file; for a .pb folder, files separated by "INT4QSPLIT" (at most 6).
// Then: calib_data::open, every batch (max_batch at a time) and the executor run on it; and the
// format's own reader (npy_to_value, read_npz) on the bytes. int4q::error is the expected way to
// refuse data; anything else is a finding.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <int4q/error.hpp>
#include <int4q/onnx/calib_data.hpp>
#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>

#include "fuzz/fuzz_common.hpp"
#include "onnx/graph_builder.hpp"

namespace {

namespace ox = int4q::onnx;
namespace fz = int4q::fuzz;
using int4q::test::graph_builder;

/// A language-model-like graph (as tests/onnx/test_calib_data.cpp's): input_ids -> Gather of a
/// [16, 4] embedding; the other inputs are left for calib_data's defaults.
ox::model lm_model() {
  graph_builder g;
  g.input("input_ids", int4q::test::onnx_int64, {-1, -1});
  g.input("attention_mask", int4q::test::onnx_int64, {-1, -1});
  g.input("position_ids", int4q::test::onnx_int64, {-1, -1});
  g.input("past_key_values.0.key", int4q::test::onnx_float, {-1, 2, -1, 4});
  g.input("past_key_values.0.value", int4q::test::onnx_float16, {-1, 2, -1, 4});
  g.input("use_cache_branch", int4q::test::onnx_bool, {1});
  g.initializer("embedding", int4q::test::onnx_float, {16, 4},
                int4q::test::random_values(16 * 4, 3));
  g.node("Gather", {"embedding", "input_ids"}, {"hidden"}, "embed");
  g.output("hidden", int4q::test::onnx_float, {-1, -1, 4});
  return g.model();
}

/// x [1, 3, 4] float -> MatMul [4, 2]; ids [-1, 2] int64 -> Gather of a [8, 2] table.
ox::model float_model() {
  graph_builder g;
  g.input("x", int4q::test::onnx_float, {1, 3, 4});
  g.input("ids", int4q::test::onnx_int64, {-1, 2});
  g.initializer("w", int4q::test::onnx_float, {4, 2}, int4q::test::random_values(8, 5));
  g.initializer("table", int4q::test::onnx_float, {8, 2}, int4q::test::random_values(16, 6));
  g.matmul("mm", "x", "w", "y");
  g.node("Gather", {"table", "ids"}, {"z"}, "gather");
  g.output("y", int4q::test::onnx_float, {1, 3, 2});
  g.output("z", int4q::test::onnx_float, {-1, 2, 2});
  return g.model();
}

struct fixture {
  ox::model lm = lm_model();
  ox::model floats = float_model();
  fz::scratch scratch{"calib"};
};

fixture& fix() {
  static fixture f;
  return f;
}

void run_one(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return;
  const std::uint8_t how = data[0], counts = data[1];
  const std::string_view body(reinterpret_cast<const char*>(data + 2), size - 2);
  fixture& f = fix();
  f.scratch.reset();
  const ox::model& m = (how >> 2) & 1 ? f.floats : f.lm;

  ox::calib_options o;
  o.tokens = static_cast<ox::token_dtype>((how >> 3) & 3);
  o.samples = counts & 7;
  o.seq_len = 1 + (counts >> 3);
  switch (how & 3) {
    case 0:
      // Named after the input it feeds (input_ids of the language model, x of the other).
      o.path = f.scratch.write(&m == &f.lm ? "input_ids.npy" : "x.npy", body);
      o.format = ox::data_format::npy;
      try {
        (void)ox::npy_to_value(std::string(body), "fuzz.npy");
      } catch (const int4q::error& e) {
        fz::refused(e);
      }
      break;
    case 1:
      o.path = f.scratch.write("data.npz", body);
      o.format = ox::data_format::npz;
      try {
        (void)ox::read_npz(o.path);
      } catch (const int4q::error& e) {
        fz::refused(e);
      }
      break;
    case 2: {
      const bool sets = (how >> 5) & 1;
      const auto parts = fz::split_input(data + 2, size - 2, 6);
      o.path = f.scratch.dir() / "pb";
      for (std::size_t i = 0; i < parts.size(); ++i) {
        const std::string file = "input_" + std::to_string(sets ? i % 2 : i) + ".pb";
        f.scratch.write(
            sets ? std::filesystem::path("pb") / ("test_data_set_" + std::to_string(i / 2)) / file
                 : std::filesystem::path("pb") / file,
            parts[i]);
      }
      o.format = ox::data_format::onnx_pb;
      break;
    }
    default:
      o.path = f.scratch.write("tokens.bin", body);
      o.format = ox::data_format::tokens;
      if (o.samples == 0) o.samples = 1;  // token files need a count
      break;
  }
  // The format detected from the content must be the one the writer meant, or an error.
  ox::calib_options detect = o;
  detect.format = ox::data_format::automatic;

  for (const ox::calib_options& opts : {o, detect}) {
    try {
      const ox::calib_data d = ox::calib_data::open(m, opts);
      if (d.max_batch() == 0 && d.samples() != 0) fz::fail("max_batch() is 0");
      if (d.max_batch() > d.samples() && d.samples() != 0) fz::fail("max_batch() > samples()");
      const ox::executor e(m, 1);
      for (std::size_t s = 0; s < d.samples(); s += d.max_batch()) {
        const auto feeds = d.batch(s, std::min(d.max_batch(), d.samples() - s));
        for (const auto& [name, v] : feeds) {
          std::uint64_t n = 1;
          for (auto dim : v.shape) {
            if (dim < 0) fz::fail("input '" + name + "' has a negative dimension");
            n *= static_cast<std::uint64_t>(dim);
          }
          const std::size_t held = v.type == ox::value_type::float32 ? v.f.size() : v.i.size();
          if (n != held) fz::fail("input '" + name + "' holds a size its shape does not give");
        }
        (void)e.run(feeds);
      }
    } catch (const int4q::error& e) {
      fz::refused(e);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    run_one(data, size);
  } catch (const int4q::error& e) {
    fz::refused(e);
  }
  return 0;
}

#include "calib_args.hpp"

#include <cstdio>

namespace int4q {
namespace cli {

namespace ox = int4q::onnx;

ox::calib_options data_args::to_options() const {
  ox::calib_options o;
  o.path = path;
  o.seq_len = seq_len;
  o.samples = samples;
  o.tokens = ox::parse_token_dtype(token_dtype);
  o.seed = seed;
  return o;
}

const char* data_formats_text() noexcept {
  return "Data: a .npy (one input), a .npz (arrays named after the inputs; first axis = samples), "
         "a folder of ONNX TensorProto files (input_0.pb, ...; or test_data_set_N/ folders, one "
         "sample each), or a raw token file (--token-dtype, windows of --seq-len). Inputs left "
         "out are filled: attention_mask, position_ids, empty past key/values, ...";
}

void add_data_options(CLI::App& sub, data_args& args, const std::string& flag,
                      const std::string& help) {
  sub.add_option(flag, args.path, help)->type_name("FILE|DIR");
  sub.add_option("--token-dtype", args.token_dtype,
                 "Element type of a raw token file: u8 (one byte per token), u16, i32, i64")
      ->capture_default_str()
      ->type_name("T");
}

ox::calib_data open_data(const ox::model& m, const data_args& args, bool quiet) {
  const ox::calib_data data = ox::calib_data::open(m, args.to_options());
  if (!quiet) {
    for (const auto& w : data.warnings()) std::fprintf(stderr, "int4q: warning: %s\n", w.c_str());
    std::fflush(stderr);
  }
  return data;
}

}  // namespace cli
}  // namespace int4q

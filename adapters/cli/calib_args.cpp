#include "calib_args.hpp"

#include <cstdio>
#include <limits>
#include <string>

#include <int4q/error.hpp>

#include "cli_common.hpp"
#include "option_checks.hpp"

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
  o.max_sample_bytes = physical_memory_bytes();  // a huge --seq-len: refused, not run
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

void add_count_options(CLI::App& sub, data_args& args, const std::string& samples_help,
                       const std::string& seq_len_help) {
  const int_range counts{0, std::numeric_limits<std::int64_t>::max(), "all of a data file"};
  add_int_option(
      sub, args.samples_flag, counts,
      [&args](std::int64_t v) {
        args.samples = static_cast<std::size_t>(v);
        args.samples_given = true;
      },
      samples_help, std::to_string(args.samples));
  add_int_option(sub, args.seq_len_flag, args.seq_len, {1}, seq_len_help);
}

namespace {

/// The library names its fields ("samples 0: ..."); the command line names its options.
std::string with_flags(std::string message, const data_args& args) {
  for (const auto& [field, flag] :
       {std::pair<std::string, std::string>{"samples ", args.samples_flag},
        {"seq_len ", args.seq_len_flag}}) {
    if (message.rfind(field, 0) == 0) return flag + " " + message.substr(field.size());
  }
  return message;
}

}  // namespace

ox::calib_data open_data(const ox::model& m, const data_args& args, bool quiet) {
  if (args.path == "-") {
    throw ox::model_error(ox::model_error::kind::io,
                          "data '-': int4q does not read data from stdin (it reads files by "
                          "offset, more than once); save the data to a file and pass its path");
  }
  const ox::calib_data data = [&] {
    try {
      return ox::calib_data::open(m, args.to_options());
    } catch (const int4q::config_error& e) {
      throw usage_error(with_flags(e.what(), args));
    }
  }();
  if (args.samples_given && args.samples > 0 && data.available_samples() < args.samples) {
    const std::string most = std::to_string(data.available_samples());
    throw usage_error(args.samples_flag + " " + std::to_string(args.samples) +
                      ": more samples than the data gives: " + data.available_description() +
                      "; use " + args.samples_flag + " " + most + " or less");
  }
  print_data_warnings(data, quiet);
  return data;
}

void print_data_warnings(const ox::calib_data& data, bool quiet) {
  if (quiet) return;
  for (const auto& w : data.warnings()) std::fprintf(stderr, "int4q: warning: %s\n", w.c_str());
  std::fflush(stderr);
}

}  // namespace cli
}  // namespace int4q

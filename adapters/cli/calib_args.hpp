// Command-line options for calibration/evaluation data (int4q::onnx::calib_data), shared by the
// subcommands that run models on data: `int4q eval --data`, and `int4q quantize --calib`.
#ifndef INT4Q_CLI_CALIB_ARGS_HPP
#define INT4Q_CLI_CALIB_ARGS_HPP

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

#include <CLI/CLI.hpp>

#include <int4q/onnx/calib_data.hpp>
#include <int4q/onnx/model.hpp>

namespace int4q {
namespace cli {

/// What the data options fill in; `to_options()` makes the library's options.
struct data_args {
  std::filesystem::path path;  ///< empty: none given
  std::size_t seq_len = 128;
  std::size_t samples = 64;
  std::string token_dtype = "u8";
  std::uint64_t seed = 0;
  /// The subcommand's names of the sample count and window length ("--calib-samples",
  /// "--calib-seq-len"), for messages; whether the count was given on the command line (a count
  /// given is an error when the data holds fewer; the default is cut to what the data holds).
  std::string samples_flag = "--samples", seq_len_flag = "--seq-len";
  bool samples_given = false;
  /// Throws config_error for a bad --token-dtype.
  int4q::onnx::calib_options to_options() const;
};

/// One paragraph on the data formats, for --help.
const char* data_formats_text() noexcept;

/// Adds `flag FILE|DIR` (e.g. "--data", "--calib") and `--token-dtype` to `sub`. --seq-len and
/// --samples are the subcommand's own (they may mean more there); bind them to args.seq_len and
/// args.samples.
void add_data_options(CLI::App& sub, data_args& args, const std::string& flag,
                      const std::string& help);

/// Adds `samples_flag` (an integer >= 0) and `seq_len_flag` (>= 1) bound to args.samples and
/// args.seq_len, with their help texts.
void add_count_options(CLI::App& sub, data_args& args, const std::string& samples_help,
                       const std::string& seq_len_help);

/// Opens the data for `m` and prints its warnings on stderr ("int4q: warning: ...") unless
/// `quiet`. A sample count given on the command line that the data cannot give is a usage
/// error naming the option, the value and what the data holds. Throws model_error (exit 3/4/5)
/// or usage_error (exit 2).
int4q::onnx::calib_data open_data(const int4q::onnx::model& m, const data_args& args, bool quiet);

/// Prints the data's warnings on stderr unless `quiet` (open_data with quiet = true, further
/// checks, then this: a refused request prints its error alone).
void print_data_warnings(const int4q::onnx::calib_data& data, bool quiet);

}  // namespace cli
}  // namespace int4q

#endif  // INT4Q_CLI_CALIB_ARGS_HPP

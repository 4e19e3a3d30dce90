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

/// Opens the data for `m` and prints its warnings on stderr ("int4q: warning: ...") unless
/// `quiet`. Throws model_error (exit 3/4/5) or config_error (exit 2).
int4q::onnx::calib_data open_data(const int4q::onnx::model& m, const data_args& args, bool quiet);

}  // namespace cli
}  // namespace int4q

#endif  // INT4Q_CLI_CALIB_ARGS_HPP

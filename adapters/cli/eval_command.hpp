// `int4q eval REFERENCE CANDIDATE`: what quantization cost, both models run by int4q's executor
// on the same inputs. With --tokens (a language model): the mean next-token NLL of each on
// windows of a token file, and the error of the candidate's logits. With --data (any model):
// per output, the candidate's error against the reference's (max abs, max relative, mean abs,
// cosine). With neither, for a model that is not a language model: random inputs, with a warning.
#ifndef INT4Q_CLI_EVAL_COMMAND_HPP
#define INT4Q_CLI_EVAL_COMMAND_HPP

#include <cstddef>
#include <filesystem>
#include <string>

#include <CLI/CLI.hpp>

#include "calib_args.hpp"

namespace int4q {
namespace cli {

struct eval_command_options {
  std::filesystem::path reference;
  std::filesystem::path candidate;
  std::filesystem::path tokens;  ///< raw token file for the NLL (token_dtype, u8 by default)
  /// --data FILE|DIR (path; empty: none), --token-dtype, --seq-len (tokens per window, both
  /// modes; symbolic dimensions of random inputs), --samples (windows, random samples, or at most
  /// this many samples of a data file; 0 = all of a data file).
  data_args data;
  std::size_t batch = 16;  ///< windows / samples per run (at most what the data allows)
  std::string json;        ///< "" none, "-" stdout, else a file
};

/// Adds the `eval` subcommand to `app`; parsing it runs run_eval.
void setup_eval(CLI::App& app);

/// Runs both models and prints the comparison. Throws usage_error, config_error or model_error.
void run_eval(const eval_command_options& options);

}  // namespace cli
}  // namespace int4q

#endif  // INT4Q_CLI_EVAL_COMMAND_HPP

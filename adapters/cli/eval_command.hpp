// `int4q eval REFERENCE CANDIDATE --tokens FILE`: what quantization cost, both models run by
// int4q's executor on the same token windows: the mean next-token NLL of each, and the error of
// each candidate output against the reference's.
#ifndef INT4Q_CLI_EVAL_COMMAND_HPP
#define INT4Q_CLI_EVAL_COMMAND_HPP

#include <cstddef>
#include <filesystem>
#include <string>

#include <CLI/CLI.hpp>

namespace int4q {
namespace cli {

struct eval_command_options {
  std::filesystem::path reference;
  std::filesystem::path candidate;
  std::filesystem::path tokens;  ///< raw token file: one byte per token (byte-level models)
  std::size_t seq_len = 128;     ///< tokens per window fed to the model
  std::size_t samples = 64;      ///< windows, evenly spaced over the file
  std::size_t batch = 16;        ///< windows per run
  std::string json;              ///< "" none, "-" stdout, else a file
};

/// Adds the `eval` subcommand to `app`; parsing it runs run_eval.
void setup_eval(CLI::App& app);

/// Runs both models and prints the comparison. Throws usage_error or model_error.
void run_eval(const eval_command_options& options);

}  // namespace cli
}  // namespace int4q

#endif  // INT4Q_CLI_EVAL_COMMAND_HPP

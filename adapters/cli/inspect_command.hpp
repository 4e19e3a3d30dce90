// `int4q inspect IN`: what a model holds and which of its weights int4q can quantize.
#ifndef INT4Q_CLI_INSPECT_COMMAND_HPP
#define INT4Q_CLI_INSPECT_COMMAND_HPP

#include <filesystem>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <int4q/onnx/model.hpp>

namespace int4q {
namespace cli {

struct inspect_command_options {
  std::filesystem::path input;
  bool json = false;
};

/// Adds the `inspect` subcommand to `app`; parsing it runs run_inspect.
void setup_inspect(CLI::App& app);

/// Prints the model's description to stdout (text or JSON). Throws model_error.
void run_inspect(const inspect_command_options& options);

/// The description `int4q inspect --json` prints.
nlohmann::json describe_model(const int4q::onnx::model& m);

}  // namespace cli
}  // namespace int4q

#endif  // INT4Q_CLI_INSPECT_COMMAND_HPP

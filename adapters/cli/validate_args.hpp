// The validation pass as the subcommands run it: right after load_model, before any work.
#ifndef INT4Q_CLI_VALIDATE_ARGS_HPP
#define INT4Q_CLI_VALIDATE_ARGS_HPP

#include <int4q/onnx/validate.hpp>

namespace int4q {
namespace cli {

/// Prints each warning of `report` on stderr as "int4q: warning: ..." unless `quiet`.
void print_validation_warnings(const int4q::onnx::validation_report& report, bool quiet);

}  // namespace cli
}  // namespace int4q

#endif  // INT4Q_CLI_VALIDATE_ARGS_HPP

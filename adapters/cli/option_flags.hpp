// The command line names of the library's option fields. The library names a field of
// quantize_options (auto_options, calib_options) between backticks in its messages, alone
// (`config.group_size`) or with a value (`format = qdq`); the CLI writes the flag instead
// (--group-size, --format qdq). This is the only table of them.
#ifndef INT4Q_CLI_OPTION_FLAGS_HPP
#define INT4Q_CLI_OPTION_FLAGS_HPP

#include <map>
#include <string>

#include <int4q/onnx/option_error.hpp>

namespace int4q {
namespace cli {

/// Field (or "field = value") -> flag text.
using flag_names = std::map<std::string, std::string>;

/// The flags of `int4q quantize` (its calibration data: --calib).
const flag_names& quantize_flags();
/// The flags of `int4q eval` (its data: --data).
const flag_names& eval_flags();

/// `message` with every backticked field written as its flag: `field = value` as the entry for
/// the whole phrase if there is one, else as the field's flag and the value ('_' read as '-' for
/// the enum options); a field without a flag keeps its name (without the backticks).
std::string with_flags(const std::string& message, const flag_names& flags);

}  // namespace cli
}  // namespace int4q

#endif  // INT4Q_CLI_OPTION_FLAGS_HPP

#include "validate_args.hpp"

#include <cstdio>

#include "option_flags.hpp"

namespace int4q {
namespace cli {

void print_validation_warnings(const int4q::onnx::validation_report& report, bool quiet) {
  if (quiet) return;
  for (const auto& w : report.warnings) {
    std::fprintf(stderr, "int4q: warning: %s\n", with_flags(w, quantize_flags()).c_str());
  }
}

}  // namespace cli
}  // namespace int4q

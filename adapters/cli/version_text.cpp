#include "version_text.hpp"

#include <string>

#include <google/protobuf/stubs/common.h>
#include <onnx/onnx_pb.h>
#include <CLI/Version.hpp>
#include <nlohmann/json.hpp>
#include <xsimd/config/xsimd_config.hpp>
#include <xtensor/xtensor_config.hpp>

#include <int4q/version.hpp>

#ifdef INT4Q_CLI_HAVE_OPENBLAS_CONFIG
extern "C" char* openblas_get_config(void);
#endif

namespace int4q {
namespace cli {

namespace {

std::string dotted(long major, long minor, long patch) {
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}

std::string blas_text() {
#ifdef INT4Q_CLI_HAVE_OPENBLAS_CONFIG
  const char* config = openblas_get_config();
  return config != nullptr ? std::string(config) : std::string("OpenBLAS (no configuration)");
#else
  return "a BLAS that is not OpenBLAS (no version reported)";
#endif
}

}  // namespace

std::string version_text() {
  const long pb = GOOGLE_PROTOBUF_VERSION;  // MAJOR * 1000000 + MINOR * 1000 + PATCH
  std::string text = std::string("int4q ") + INT4Q_VERSION_STRING + "\n";
  const auto line = [&text](const char* name, const std::string& version) {
    text +=
        std::string("  ") + name + std::string(15 - std::string(name).size(), ' ') + version + "\n";
  };
  line("protobuf", dotted(pb / 1000000, pb / 1000 % 1000, pb % 1000));
  line("onnx", std::string(INT4Q_CLI_ONNX_VERSION) + " (IR version " +
                   std::to_string(static_cast<int>(::onnx::IR_VERSION)) + ")");
  line("xtensor", dotted(XTENSOR_VERSION_MAJOR, XTENSOR_VERSION_MINOR, XTENSOR_VERSION_PATCH));
  line("xsimd", dotted(XSIMD_VERSION_MAJOR, XSIMD_VERSION_MINOR, XSIMD_VERSION_PATCH));
  line("BLAS", blas_text());
  line("nlohmann_json", dotted(NLOHMANN_JSON_VERSION_MAJOR, NLOHMANN_JSON_VERSION_MINOR,
                               NLOHMANN_JSON_VERSION_PATCH));
  line("CLI11", CLI11_VERSION);
  text.pop_back();  // CLI11 adds the final newline
  return text;
}

}  // namespace cli
}  // namespace int4q

// The files a save of a quantized model writes: the model, and its external data file when the
// save wrote one (for the report's output_files and sizes).
#ifndef INT4Q_ONNX_SAVED_FILES_HPP
#define INT4Q_ONNX_SAVED_FILES_HPP

#include <cstdint>
#include <filesystem>
#include <vector>

#include <int4q/onnx/model.hpp>

namespace int4q {
namespace onnx {

struct saved_file {
  std::filesystem::path path;
  std::uint64_t bytes = 0;
};

/// The external data file save_model writes next to `output` by default: "<output>.data".
std::filesystem::path default_data_file(const std::filesystem::path& output);

/// save_model(m, output, options), then the files it wrote: `output`, and
/// default_data_file(output) when it exists and this call created or changed it (a data file
/// left from another run is not listed).
std::vector<saved_file> save_model_files(const model& m, const std::filesystem::path& output,
                                         const save_options& options = {});

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_SAVED_FILES_HPP

#include <int4q/onnx/saved_files.hpp>

#include <system_error>

namespace int4q {
namespace onnx {

namespace fs = std::filesystem;

namespace {

std::uint64_t size_of(const fs::path& p) noexcept {
  std::error_code ec;
  const auto size = fs::file_size(p, ec);
  return ec ? 0 : static_cast<std::uint64_t>(size);
}

}  // namespace

fs::path default_data_file(const fs::path& output) {
  return output.parent_path() / (output.filename().string() + ".data");
}

std::vector<saved_file> save_model_files(const model& m, const fs::path& output,
                                         const save_options& options) {
  const fs::path data = options.data_file.empty() ? default_data_file(output)
                                                  : output.parent_path() / options.data_file;
  std::error_code ec;
  const bool data_existed = fs::exists(data, ec);
  const auto data_time = data_existed ? fs::last_write_time(data, ec) : fs::file_time_type::min();
  save_model(m, output, options);
  std::vector<saved_file> files = {{output, size_of(output)}};
  if (fs::exists(data, ec) && (!data_existed || fs::last_write_time(data, ec) != data_time)) {
    files.push_back({data, size_of(data)});
  }
  return files;
}

}  // namespace onnx
}  // namespace int4q

// Shared by the fuzz targets (tests/fuzz/fuzz_*.cpp): a scratch folder per process, input
// splitting, and writing files. Test code: it may read the environment (TMPDIR) and abort.
#ifndef INT4Q_TESTS_FUZZ_FUZZ_COMMON_HPP
#define INT4Q_TESTS_FUZZ_FUZZ_COMMON_HPP

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace int4q {
namespace fuzz {

/// Separates the files packed into one fuzz input ("model INT4QSPLIT external data"). Short, so
/// that mutations find it; tests/fuzz/int4q.dict offers it to libFuzzer.
inline constexpr std::string_view split_marker = "INT4QSPLIT";

/// `data` cut at every split_marker (at most `max_parts` parts; the last keeps the rest).
inline std::vector<std::string_view> split_input(const std::uint8_t* data, std::size_t size,
                                                 std::size_t max_parts) {
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    const std::size_t at = rest.find(split_marker);
    if (at == std::string_view::npos) break;
    parts.push_back(rest.substr(0, at));
    rest.remove_prefix(at + split_marker.size());
  }
  parts.push_back(rest);
  return parts;
}

/// Files packed into one input: the inverse of split_input (for seed generators).
inline std::string join_parts(const std::vector<std::string>& parts) {
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (i) out += split_marker;
    out += parts[i];
  }
  return out;
}

/// Stops the process with a message: a broken invariant is a finding, as a crash is.
[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "int4q fuzz: invariant broken: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

/// An input refused with an int4q::error: the expected outcome for bad input, silent unless
/// INT4Q_FUZZ_VERBOSE is set (then the message goes to stderr: to see how far a seed gets).
inline void refused(const std::exception& e) {
  static const bool verbose = std::getenv("INT4Q_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "int4q fuzz: refused: %s\n", e.what());
}

/// A fresh folder for this process (under TMPDIR), emptied by reset() before each input and
/// removed at exit.
class scratch {
 public:
  explicit scratch(const std::string& name) {
    dir_ = std::filesystem::temp_directory_path() /
           ("int4q_fuzz_" + name + "_" + std::to_string(::getpid()));
    reset();
  }
  ~scratch() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  scratch(const scratch&) = delete;
  scratch& operator=(const scratch&) = delete;

  void reset() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    std::filesystem::create_directories(dir_, ec);
    if (ec) fail("cannot create " + dir_.string() + ": " + ec.message());
  }
  const std::filesystem::path& dir() const noexcept { return dir_; }

  /// Writes `bytes` to dir()/relative (parent folders made).
  std::filesystem::path write(const std::filesystem::path& relative, std::string_view bytes) const {
    const std::filesystem::path p = dir_ / relative;
    std::error_code ec;
    std::filesystem::create_directories(p.parent_path(), ec);
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) fail("cannot write " + p.string());
    return p;
  }

 private:
  std::filesystem::path dir_;
};

}  // namespace fuzz
}  // namespace int4q

#endif  // INT4Q_TESTS_FUZZ_FUZZ_COMMON_HPP

// Running the int4q executable (INT4Q_CLI_PATH) from the CLI tests: one process per call, in a
// given directory, with stdout and stderr captured into files (so stderr is not a terminal: no
// progress line) and stdin closed.
#ifndef INT4Q_TESTS_ONNX_CLI_RUNNER_HPP
#define INT4Q_TESTS_ONNX_CLI_RUNNER_HPP

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#ifndef INT4Q_CLI_PATH
#error "INT4Q_CLI_PATH (the built int4q executable) must be defined by the build"
#endif

namespace int4q {
namespace test {

struct cli_result {
  int status = -1;  ///< exit status (-1: did not exit normally)
  std::string out;  ///< stdout
  std::string err;  ///< stderr
};

inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

/// Runs `int4q args...` in `cwd`.
inline cli_result run_cli(const std::filesystem::path& cwd, const std::vector<std::string>& args) {
  namespace fs = std::filesystem;
  static std::atomic<int> counter{0};
  const fs::path capture =
      fs::temp_directory_path() /
      ("int4q_cli_capture_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  fs::create_directories(capture);
  std::string command = "cd " + shell_quote(cwd.string()) + " && " + shell_quote(INT4Q_CLI_PATH);
  for (const auto& a : args) command += " " + shell_quote(a);
  command += " >" + shell_quote((capture / "out").string()) + " 2>" +
             shell_quote((capture / "err").string()) + " </dev/null";
  const int raw = std::system(command.c_str());
  cli_result r;
  r.status = (raw != -1 && WIFEXITED(raw)) ? WEXITSTATUS(raw) : -1;
  r.out = read_text(capture / "out");
  r.err = read_text(capture / "err");
  fs::remove_all(capture);
  return r;
}

/// The exit status and both streams, for failure messages.
inline std::string describe(const cli_result& r) {
  return "exit " + std::to_string(r.status) + "\n--- stdout:\n" + r.out + "\n--- stderr:\n" + r.err;
}

}  // namespace test
}  // namespace int4q

#endif  // INT4Q_TESTS_ONNX_CLI_RUNNER_HPP

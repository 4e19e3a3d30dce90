// What the int4q subcommands share: exit codes, the usage error, file checks, sizes of models on
// disk, peak memory, human-readable numbers and the progress line on stderr.
#ifndef INT4Q_CLI_CLI_COMMON_HPP
#define INT4Q_CLI_CLI_COMMON_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <int4q/onnx/model.hpp>
#include <int4q/onnx/quantize_model.hpp>
#include <int4q/onnx/temp_files.hpp>

namespace int4q {
namespace cli {

/// The documented exit codes of `int4q` (also in `int4q --help` and the README).
enum exit_code : int {
  exit_ok = 0,
  exit_internal = 1,  ///< an unexpected failure (a bug: please report it)
  exit_usage = 2,     ///< bad command line: option, value, or a combination the format cannot hold
  exit_io = 3,        ///< a file cannot be read or written (model_error::kind::io)
  exit_invalid = 4,   ///< the input is not a valid ONNX model (model_error::kind::invalid)
  exit_unsupported =
      5,  ///< the model has a form int4q cannot handle (model_error::kind::unsupported)
};

/// The text of the exit codes, for `--help` and the README.
const char* exit_codes_text() noexcept;

/// A command line that asks for something int4q cannot do; exit code 2. The message names the
/// option and says what to use instead.
class usage_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Throws model_error(io) unless `path` names an existing regular file (`what` names its role in
/// the message, e.g. "input model").
void require_readable_file(const std::filesystem::path& path, const std::string& what);

/// Throws unless a file can be created at `path`: its directory exists and is writable and
/// `path` is not a directory (model_error(io)); `option` names the option in messages.
void require_writable_path(const std::filesystem::path& path, const std::string& option);

/// True when `a` and `b` name the same existing file.
bool same_file(const std::filesystem::path& a, const std::filesystem::path& b) noexcept;

/// The distinct external data files a model's tensors refer to (initializers and Constant
/// nodes of the main graph), as paths.
std::vector<std::filesystem::path> external_data_files(const int4q::onnx::model& m);

/// Bytes of a model on disk: its file plus every external data file it refers to.
std::uint64_t model_bytes_on_disk(const int4q::onnx::model& m);

/// Size of a file in bytes, 0 if it does not exist.
std::uint64_t file_bytes(const std::filesystem::path& path) noexcept;

/// The process's peak resident memory (VmHWM of /proc/self/status), when known.
std::optional<std::uint64_t> peak_rss_bytes();

/// "13.4 MB"-style sizes (decimal units, one decimal).
std::string format_bytes(std::uint64_t bytes);
/// "0.21 s", "1 min 05 s"-style durations.
std::string format_seconds(double seconds);

/// The name int4q uses for an ONNX TensorProto data type ("float32", "int64", ...).
std::string onnx_type_name(int onnx_data_type);

/// An empty scratch file next to `near` ("." + its name + ".spill-XXXXXXXX"), removed when this
/// goes out of scope or by the signal handler (int4q::onnx::remove_registered_temp_files). An
/// empty `near` makes none (path() is empty).
class scratch_file {
 public:
  explicit scratch_file(const std::filesystem::path& near);
  const std::filesystem::path& path() const noexcept;

 private:
  std::optional<int4q::onnx::registered_temp_file> file_;
};

/// The resume journal of `int4q quantize --resume` for OUT = `output`: "." + its name +
/// ".resume" in its directory (with its manifest, that path + ".json").
std::filesystem::path resume_journal_path(const std::filesystem::path& output);

/// Removes the resume journal of `output` and its manifest (nothing when absent).
void remove_journal(const std::filesystem::path& output) noexcept;

/// {"path", "bytes", "mtime_ns"} of a file (absolute path), or of each regular file in a
/// directory (sorted by path): what a resume journal checks the inputs by.
nlohmann::json file_fingerprint(const std::filesystem::path& path);

/// Writes `content` to `path` through a temporary file in the same directory
/// ("." + its name + ".tmp-XXXXXXXX") and a rename, so that a failure or a signal leaves no
/// partial file. Throws model_error(io).
void write_file_atomically(const std::filesystem::path& path, const std::string& content);

/// Seconds since `start`.
double seconds_since(std::chrono::steady_clock::time_point start) noexcept;

/// "[k/n] name  elapsed  ETA" redrawn in place on stderr. Draws only when enabled (stderr is a
/// terminal and not --quiet); ends its line when destroyed, so an error starts on a new line.
class progress_line {
 public:
  explicit progress_line(bool enabled);
  ~progress_line();
  progress_line(const progress_line&) = delete;
  progress_line& operator=(const progress_line&) = delete;

  /// Weight `k` of `n` (from 1) is done: "[k/n] text  elapsed E  ETA T", the ETA `eta_s`
  /// ("?" when NaN: not known yet).
  void update(std::size_t k, std::size_t n, const std::string& text, double eta_s);
  /// Clears the line.
  void finish();

 private:
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

/// The progress line's text for quantize: the layer (the node of the weight just done), the
/// rate of this run's work in the cost model's FLOP per second (weight_cost; restored weights
/// excluded) and the weights restored from a resume journal.
std::string progress_text(const int4q::onnx::quantize_progress& p);

/// True when stderr is a terminal.
bool stderr_is_terminal() noexcept;

/// The machine's physical memory in bytes (sysconf: pages * page size); 0 when unknown.
std::uint64_t physical_memory_bytes() noexcept;

}  // namespace cli
}  // namespace int4q

#endif  // INT4Q_CLI_CLI_COMMON_HPP

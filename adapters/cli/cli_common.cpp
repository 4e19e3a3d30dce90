#include "cli_common.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <system_error>

#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace int4q {
namespace cli {

namespace fs = std::filesystem;
using int4q::onnx::model_error;

const char* exit_codes_text() noexcept {
  return "Exit codes:\n"
         "  0  success\n"
         "  1  internal error (a bug in int4q: please report it)\n"
         "  2  usage: unknown option, bad value (out of range, NaN, Inf), bad --config or\n"
         "     --plan file, an option the chosen --format cannot hold (e.g. --group-size 48\n"
         "     with matmulnbits), -o equal to the input, more samples than the data holds or\n"
         "     the memory allows\n"
         "  3  a file cannot be read or written: missing input or --config file, missing\n"
         "     external data file, output directory missing or not writable, an input that is\n"
         "     not a regular file (a pipe, -), an output that is a FIFO or a device\n"
         "  4  the input is not a valid ONNX model (not ONNX, truncated, inconsistent tensors,\n"
         "     a NaN/Inf weight)\n"
         "  5  the model has a form int4q cannot handle (the message names the node and the fix)\n"
         "On failure int4q prints one line \"int4q: error: ...\" on stderr and writes no output.";
}

namespace {
/// "a FIFO (named pipe)", "a character device", ...: what a path that is no regular file is.
std::string kind_of_file(const fs::file_status& st) {
  switch (st.type()) {
    case fs::file_type::fifo: return "a FIFO (pipe)";
    case fs::file_type::character: return "a character device";
    case fs::file_type::block: return "a block device";
    case fs::file_type::socket: return "a socket";
    case fs::file_type::directory: return "a directory";
    default: return "a special file";
  }
}
}  // namespace

void require_readable_file(const fs::path& path, const std::string& what) {
  if (path == "-") {
    throw model_error(model_error::kind::io,
                      what +
                          " '-': int4q does not read inputs from stdin (it reads them by "
                          "offset, more than once); save the data to a file and pass its path");
  }
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) {
    throw model_error(model_error::kind::io,
                      what + " '" + path.string() + "' does not exist; check the path");
  }
  if (fs::is_directory(st)) {
    throw model_error(model_error::kind::io,
                      what + " '" + path.string() + "' is a directory; pass the path of a file");
  }
  if (!fs::is_regular_file(st)) {
    // A pipe (`int4q quantize /dev/stdin` fed by `cat m.onnx |`, or a process substitution), a
    // device or a socket: int4q reads its inputs by offset and more than once.
    throw model_error(model_error::kind::io,
                      what + " '" + path.string() + "' is " + kind_of_file(st) +
                          ", not a regular file: int4q reads its inputs from files (save the "
                          "data to a file first)");
  }
  if (::access(path.c_str(), R_OK) != 0) {
    throw model_error(model_error::kind::io,
                      "cannot read " + what + " '" + path.string() + "': " + std::strerror(errno));
  }
}

void require_writable_path(const fs::path& path, const std::string& option) {
  std::error_code ec;
  if (path.empty()) {
    throw usage_error(option + " needs a file name");
  }
  const fs::file_status target = fs::status(path, ec);
  if (fs::is_directory(target)) {
    throw model_error(model_error::kind::io,
                      option + " '" + path.string() + "' is a directory; name the file to write");
  }
  if (fs::exists(target) && !fs::is_regular_file(target)) {
    // int4q writes a temporary file next to the output and renames it over the output, which
    // would replace a FIFO or a device node (/dev/null, /dev/stdout) with a plain file.
    throw model_error(model_error::kind::io,
                      option + " '" + path.string() + "' is " + kind_of_file(target) +
                          ": int4q writes a regular file (through a temporary file and a "
                          "rename); name a file" +
                          (option == "--report" || option == "--json" ? " (or - for stdout)" : ""));
  }
  fs::path dir = path.parent_path();
  if (dir.empty()) dir = ".";
  const fs::file_status st = fs::status(dir, ec);
  if (!fs::exists(st)) {
    throw model_error(model_error::kind::io, "cannot write " + option + " '" + path.string() +
                                                 "': directory '" + dir.string() +
                                                 "' does not exist; create it first");
  }
  if (!fs::is_directory(st)) {
    throw model_error(model_error::kind::io, "cannot write " + option + " '" + path.string() +
                                                 "': '" + dir.string() + "' is not a directory");
  }
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    throw model_error(model_error::kind::io, "cannot write " + option + " '" + path.string() +
                                                 "': directory '" + dir.string() +
                                                 "' is not writable (" + std::strerror(errno) +
                                                 "); choose another location");
  }
}

bool same_file(const fs::path& a, const fs::path& b) noexcept {
  std::error_code ec;
  if (!fs::exists(a, ec) || !fs::exists(b, ec)) return false;
  const bool same = fs::equivalent(a, b, ec);
  return !ec && same;
}

namespace {

void add_external_location(const int4q::onnx::model& m, const ::onnx::TensorProto& t,
                           std::set<fs::path>& out) {
  if (!int4q::onnx::is_external(t)) return;
  for (const auto& entry : t.external_data()) {
    if (entry.key() == "location") out.insert(m.base_dir / entry.value());
  }
}

}  // namespace

std::vector<fs::path> external_data_files(const int4q::onnx::model& m) {
  std::set<fs::path> files;
  const auto& graph = m.proto.graph();
  for (const auto& t : graph.initializer()) add_external_location(m, t, files);
  for (const auto& node : graph.node()) {
    for (const auto& attr : node.attribute()) {
      if (attr.has_t()) add_external_location(m, attr.t(), files);
    }
  }
  return {files.begin(), files.end()};
}

std::uint64_t file_bytes(const fs::path& path) noexcept {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  return ec ? 0 : static_cast<std::uint64_t>(size);
}

std::uint64_t model_bytes_on_disk(const int4q::onnx::model& m) {
  std::uint64_t total = m.path.empty() ? 0 : file_bytes(m.path);
  for (const auto& f : external_data_files(m)) total += file_bytes(f);
  return total;
}

std::optional<std::uint64_t> peak_rss_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      std::istringstream fields(line.substr(6));
      std::uint64_t kib = 0;
      if (fields >> kib) return kib * 1024;
    }
  }
  return std::nullopt;
}

std::string format_bytes(std::uint64_t bytes) {
  static const char* const units[] = {"B", "kB", "MB", "GB", "TB"};
  double value = static_cast<double>(bytes);
  std::size_t unit = 0;
  while (value >= 1000.0 && unit + 1 < sizeof(units) / sizeof(units[0])) {
    value /= 1000.0;
    ++unit;
  }
  char buffer[32];
  if (unit == 0) {
    std::snprintf(buffer, sizeof(buffer), "%llu B", static_cast<unsigned long long>(bytes));
  } else {
    std::snprintf(buffer, sizeof(buffer), "%.1f %s", value, units[unit]);
  }
  return buffer;
}

std::string format_seconds(double seconds) {
  char buffer[48];
  if (!(seconds >= 0)) seconds = 0;
  if (seconds < 60.0) {
    std::snprintf(buffer, sizeof(buffer), seconds < 10.0 ? "%.2f s" : "%.1f s", seconds);
  } else {
    const auto total = static_cast<long long>(std::llround(seconds));
    if (total < 3600) {
      std::snprintf(buffer, sizeof(buffer), "%lld min %02lld s", total / 60, total % 60);
    } else {
      std::snprintf(buffer, sizeof(buffer), "%lld h %02lld min", total / 3600, (total / 60) % 60);
    }
  }
  return buffer;
}

std::string onnx_type_name(int t) {
  using T = ::onnx::TensorProto;
  switch (t) {
    case T::FLOAT: return "float32";
    case T::UINT8: return "uint8";
    case T::INT8: return "int8";
    case T::UINT16: return "uint16";
    case T::INT16: return "int16";
    case T::INT32: return "int32";
    case T::INT64: return "int64";
    case T::STRING: return "string";
    case T::BOOL: return "bool";
    case T::FLOAT16: return "float16";
    case T::DOUBLE: return "float64";
    case T::UINT32: return "uint32";
    case T::UINT64: return "uint64";
    case T::COMPLEX64: return "complex64";
    case T::COMPLEX128: return "complex128";
    case T::BFLOAT16: return "bfloat16";
    // Types newer than libonnx 1.12's enum, by their numbers in onnx.proto.
    case 17: return "float8e4m3fn";
    case 18: return "float8e4m3fnuz";
    case 19: return "float8e5m2";
    case 20: return "float8e5m2fnuz";
    case 21: return "uint4";
    case 22: return "int4";
    case 23: return "float4e2m1";
    case T::UNDEFINED: return "undefined";
    default: return "type" + std::to_string(t);
  }
}

namespace {
/// "<dir of near>/.<name of near><suffix>": the prefix of a hidden temporary file next to `near`.
fs::path hidden_prefix(const fs::path& near, const std::string& suffix) {
  fs::path dir = near.parent_path();
  if (dir.empty()) dir = ".";
  return dir / ("." + near.filename().string() + suffix);
}
}  // namespace

scratch_file::scratch_file(const fs::path& near) {
  if (near.empty()) return;
  try {
    file_.emplace(hidden_prefix(near, ".spill-"), near);
  } catch (const model_error& e) {
    throw model_error(model_error::kind::io,
                      std::string(e.what()) + " (use --spill never to keep it all in memory)");
  }
  file_->close();  // quantize_model reopens it by name
}

const fs::path& scratch_file::path() const noexcept {
  static const fs::path none;
  return file_ ? file_->path() : none;
}

fs::path resume_journal_path(const fs::path& output) {
  fs::path p = hidden_prefix(output, ".resume");
  return p;
}

void remove_journal(const fs::path& output) noexcept {
  const fs::path journal = resume_journal_path(output);
  std::error_code ec;
  fs::remove(int4q::onnx::resume_manifest_path(journal), ec);  // first: no manifest, no journal
  fs::remove(journal, ec);
}

nlohmann::json file_fingerprint(const fs::path& path) {
  const auto one = [](const fs::path& p) {
    struct stat st {};
    const bool ok = ::stat(p.c_str(), &st) == 0;
    const std::int64_t mtime_ns =
        ok ? std::int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec : -1;
    return nlohmann::json{{"path", fs::absolute(p).lexically_normal().string()},
                          {"bytes", ok ? std::uint64_t(st.st_size) : 0},
                          {"mtime_ns", mtime_ns}};
  };
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return one(path);
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(path, ec))
    if (e.is_regular_file(ec)) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  nlohmann::json all = nlohmann::json::array();
  for (const fs::path& f : files) all.push_back(one(f));
  return all;
}

void write_file_atomically(const fs::path& path, const std::string& content) {
  // Created with mode 0666 less the umask, registered for the signal handler until renamed.
  int4q::onnx::registered_temp_file temp(hidden_prefix(path, ".tmp-"), path);
  int error = 0;
  std::size_t done = 0;
  while (error == 0 && done < content.size()) {
    const ssize_t n = ::write(temp.fd(), content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) error = n < 0 ? errno : EIO;
    if (n > 0) done += static_cast<std::size_t>(n);
  }
  if (error == 0) error = temp.close();
  if (error == 0) error = temp.commit(path);
  if (error != 0) {
    throw model_error(model_error::kind::io,
                      "cannot write '" + path.string() + "': " + std::strerror(error));
  }
}

double seconds_since(std::chrono::steady_clock::time_point start) noexcept {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

bool stderr_is_terminal() noexcept { return ::isatty(STDERR_FILENO) == 1; }

std::uint64_t physical_memory_bytes() noexcept {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? std::uint64_t(pages) * std::uint64_t(page) : 0;
}

progress_line::progress_line(bool enabled)
    : enabled_(enabled), start_(std::chrono::steady_clock::now()), last_draw_() {}

progress_line::~progress_line() { finish(); }

std::string progress_text(const int4q::onnx::quantize_progress& p) {
  std::string text = p.layer;
  const double fresh = p.cost_done - p.cost_restored;
  if (p.seconds > 0 && fresh > 0) {
    char rate[48];
    std::snprintf(rate, sizeof rate, "  %.1f GFLOP/s", fresh / p.seconds * 1e-9);
    text += rate;
  }
  if (p.restored > 0) text += "  (" + std::to_string(p.restored) + " resumed)";
  return text;
}

void progress_line::update(std::size_t k, std::size_t n, const std::string& text, double eta_s) {
  if (!enabled_ || n == 0) return;
  const auto now = std::chrono::steady_clock::now();
  // Redraw at most 10 times a second (and always for the last weight).
  if (drawn_ && k < n && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  const double elapsed = seconds_since(start_);
  std::string line = "[" + std::to_string(k) + "/" + std::to_string(n) + "] " + text +
                     "  elapsed " + format_seconds(elapsed) + "  ETA " +
                     (std::isnan(eta_s) ? std::string("?") : format_seconds(eta_s));
  winsize ws{};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1 && line.size() >= ws.ws_col) {
    line.resize(ws.ws_col - 1);
  }
  std::fprintf(stderr, "\r%s\033[K", line.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

void progress_line::finish() {
  if (!drawn_) return;
  std::fprintf(stderr, "\r\033[K");
  std::fflush(stderr);
  drawn_ = false;
}

}  // namespace cli
}  // namespace int4q

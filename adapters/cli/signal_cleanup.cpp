// The signal handler of the int4q command (signal_cleanup.hpp). Everything it calls is
// async-signal-safe: lock-free atomics, unlink (inside remove_registered_temp_files), stat,
// write, sigaction and raise; the message is assembled in a fixed buffer by hand.
#include "signal_cleanup.hpp"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <string>

#include <int4q/onnx/temp_files.hpp>

namespace int4q {
namespace cli {

namespace {

constexpr int handled_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGABRT};

// Set before the handler may read them (published by output_known).
char output_path[4096];
bool output_existed = false;
struct stat output_before {};
std::atomic<bool> output_known{false};
char journal_path[4096];
std::atomic<bool> journal_known{false};

std::atomic<bool> handling{false};

const char* signal_name(int sig) noexcept {
  switch (sig) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    case SIGHUP: return "SIGHUP";
    case SIGPIPE: return "SIGPIPE";
    case SIGABRT: return "SIGABRT";
    default: return "a signal";
  }
}

/// A line assembled without allocation.
class line_buffer {
 public:
  // Each add keeps room for the final newline, cutting the line if it is too long.
  void add(const char* s) noexcept {
    while (*s && size_ + 1 < sizeof(text_)) text_[size_++] = *s++;
  }
  void add(std::size_t n) noexcept {
    char digits[24];
    int k = 0;
    do {
      digits[k++] = static_cast<char>('0' + n % 10);
      n /= 10;
    } while (n > 0);
    while (k > 0 && size_ + 1 < sizeof(text_)) text_[size_++] = digits[--k];
  }
  void write_to(int fd) noexcept {
    text_[size_++] = '\n';
    std::size_t done = 0;
    while (done < size_) {
      const ssize_t n = ::write(fd, text_ + done, size_ - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      done += static_cast<std::size_t>(n);
    }
  }

 private:
  char text_[4096 + 256];
  std::size_t size_ = 0;
};

void on_signal(int sig) {
  if (handling.exchange(true)) {
    // Another thread is already cleaning up and will end the process.
    for (;;) ::pause();
  }
  const int saved_errno = errno;
  const std::size_t removed = int4q::onnx::remove_registered_temp_files();
  line_buffer line;
  line.add(sig == SIGABRT ? "int4q: internal error (please report it): ended by "
                          : "int4q: interrupted by ");
  line.add(signal_name(sig));
  line.add(": removed ");
  line.add(removed);
  line.add(removed == 1 ? " temporary file" : " temporary files");
  if (output_known.load()) {
    struct stat now {};
    const bool exists = ::stat(output_path, &now) == 0;
    line.add("; '");
    line.add(output_path);
    if (output_existed && exists && now.st_dev == output_before.st_dev &&
        now.st_ino == output_before.st_ino) {
      line.add("' was left unchanged");
    } else if (!output_existed && !exists) {
      line.add("' was not written");
    } else if (output_existed && !exists) {
      line.add("' is gone (removed by something else during the run)");
    } else {
      line.add("' was written completely before the signal");
    }
  }
  if (journal_known.load()) {
    line.add("; the resume journal '");
    line.add(journal_path);
    line.add("' is kept: run the same command with --resume to continue");
  }
  line.write_to(STDERR_FILENO);
  // End by the same signal: default disposition, raised again; it is blocked in this handler
  // and delivered as soon as the handler returns.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ::sigaction(sig, &dfl, nullptr);
  ::raise(sig);
  errno = saved_errno;
}

}  // namespace

void install_signal_cleanup() noexcept {
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  for (const int sig : handled_signals) sigaddset(&action.sa_mask, sig);
  for (const int sig : handled_signals) {
    struct sigaction old {};
    if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    ::sigaction(sig, &action, nullptr);
  }
  // A write past the file-size limit (ulimit -f) would end the process by SIGXFSZ, before any
  // cleanup. Ignored, the write fails with EFBIG instead: an I/O error (exit 3) that names the
  // file, after which the temporary files are removed as for any failed run.
  ::signal(SIGXFSZ, SIG_IGN);
}

void note_output_for_signals(const std::filesystem::path& output) noexcept {
  const std::string& text = output.native();
  if (text.empty() || text.size() >= sizeof output_path) return;
  output_known.store(false);
  std::memcpy(output_path, text.c_str(), text.size() + 1);
  output_existed = ::stat(output_path, &output_before) == 0;
  output_known.store(true);
}

void note_resume_journal_for_signals(const std::filesystem::path& journal) noexcept {
  const std::string& text = journal.native();
  if (text.empty() || text.size() >= sizeof journal_path) return;
  journal_known.store(false);
  std::memcpy(journal_path, text.c_str(), text.size() + 1);
  journal_known.store(true);
}

void wait_if_interrupted() noexcept {
  if (!handling.load()) return;
  for (;;) ::pause();
}

}  // namespace cli
}  // namespace int4q

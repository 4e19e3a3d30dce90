// Temporary files and signals: the registry of temp_files.hpp (in a forked child, since removing
// the registered files closes the table for the rest of the process), and real runs of the
// int4q executable (INT4Q_CLI_PATH) stopped by SIGTERM, SIGINT and SIGHUP while loading, while
// calibrating with a spill scratch file and while saving external data, and a run that fails
// midway: each leaves its folder exactly as it found it, keeps an existing output byte for byte,
// ends by the signal (WIFSIGNALED: a shell shows 128 + the signal number) and says so in one line,
// the last on stderr.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <int4q/onnx/model.hpp>
#include <int4q/onnx/temp_files.hpp>

#include "onnx/cli_runner.hpp"
#include "onnx/devgpt_eval.hpp"
#include "onnx/scratch_dir.hpp"

namespace {

namespace fs = std::filesystem;
namespace ox = int4q::onnx;
using int4q::test::read_text;

// ---- The registry ------------------------------------------------------------------------------

/// Runs `body` in a forked child and returns its exit status (the body's return value), so that
/// remove_registered_temp_files() closes the table of the child only.
int in_child(const std::function<int()>& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    int code = 99;
    try {
      code = body();
    } catch (...) {
      code = 98;
    }
    ::_exit(code);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::set<std::string> names_in(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

class TempFilesTest : public int4q::test::scratch_dir_test {};

TEST_F(TempFilesTest, CommitRenamesKeepLeavesRemoveUnlinks) {
  {
    ox::registered_temp_file a(dir_ / "a.onnx.tmp-", dir_ / "a.onnx");
    EXPECT_TRUE(fs::exists(a.path()));
    EXPECT_EQ(a.path().filename().string().size(), std::string("a.onnx.tmp-").size() + 8);
    ASSERT_EQ(::write(a.fd(), "abc", 3), 3);
    EXPECT_EQ(a.close(), 0);
    EXPECT_EQ(a.commit(dir_ / "a.onnx"), 0);
    ox::registered_temp_file b(dir_ / "b.tmp-", dir_ / "b");
    b.keep();
    ox::registered_temp_file c(dir_ / "c.tmp-", dir_ / "c");  // removed when destroyed
    EXPECT_EQ(names_in(dir_).size(), 3u);
  }
  const auto names = names_in(dir_);
  ASSERT_EQ(names.size(), 2u);
  EXPECT_EQ(*names.begin(), "a.onnx");
  EXPECT_EQ(names.rbegin()->rfind("b.tmp-", 0), 0u);
  EXPECT_EQ(read_text(dir_ / "a.onnx"), "abc");
  // A directory that does not exist: an io error naming the final path.
  try {
    ox::registered_temp_file d(dir_ / "missing" / "d.tmp-", dir_ / "missing" / "d.onnx");
    ADD_FAILURE() << "no error";
  } catch (const ox::model_error& e) {
    EXPECT_EQ(e.what_kind(), ox::model_error::kind::io);
    EXPECT_NE(std::string(e.what()).find("d.onnx"), std::string::npos) << e.what();
  }
}

TEST_F(TempFilesTest, RemoveRegisteredUnlinksExactlyTheLiveFilesAndClosesTheTable) {
  const fs::path dir = dir_;
  const int code = in_child([dir] {
    ox::registered_temp_file a(dir / "a.tmp-", dir / "a");
    ox::registered_temp_file b(dir / "b.tmp-", dir / "b");
    ox::registered_temp_file c(dir / "c.tmp-", dir / "c");
    ox::registered_temp_file d(dir / "d.tmp-", dir / "d");
    if (a.commit(dir / "a") != 0) return 1;                 // committed: never unlinked
    c.keep();                                               // kept: never unlinked
    std::ofstream(dir / "d") << "old";                      // an existing output of d
    if (ox::remove_registered_temp_files() != 2) return 2;  // b and d's temporary file
    if (fs::exists(b.path()) || fs::exists(d.path())) return 3;
    // Closed: nothing more is created or renamed, so d's old output stays.
    if (d.commit(dir / "d") != ECANCELED) return 4;
    if (ox::temp_file_section().allowed()) return 5;
    try {
      ox::registered_temp_file e(dir / "e.tmp-", dir / "e");
      return 6;
    } catch (const ox::model_error&) {
    }
    return 0;
  });
  EXPECT_EQ(code, 0);
  const auto names = names_in(dir_);
  ASSERT_EQ(names.size(), 3u) << ::testing::PrintToString(names);
  EXPECT_EQ(*names.begin(), "a");
  EXPECT_EQ(names.count("d"), 1u);
  EXPECT_EQ(read_text(dir_ / "d"), "old");
  // The parent's table is untouched: it still creates files.
  ox::registered_temp_file f(dir_ / "f.tmp-", dir_ / "f");
  EXPECT_TRUE(fs::exists(f.path()));
}

// ---- Real runs ---------------------------------------------------------------------------------

/// A run of int4q started with fork/exec in a folder, stdout and stderr to files.
class child_run {
 public:
  child_run(const fs::path& cwd, const std::vector<std::string>& args, const fs::path& capture)
      : err_(capture / "err") {
    std::vector<std::string> all = {INT4Q_CLI_PATH};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(&a[0]);
    argv.push_back(nullptr);
    const std::string out = (capture / "out").string(), err = err_.string(), dir = cwd.string();
    pid_ = ::fork();
    if (pid_ == 0) {  // only async-signal-safe calls until exec
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) ::sigaction(sig, &dfl, nullptr);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      const int in = ::open("/dev/null", O_RDONLY);
      const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (in < 0 || o < 0 || e < 0 || ::chdir(dir.c_str()) != 0) ::_exit(120);
      ::dup2(in, 0);
      ::dup2(o, 1);
      ::dup2(e, 2);
      ::execv(argv[0], argv.data());
      ::_exit(121);
    }
  }
  ~child_run() {
    if (pid_ > 0 && !done_) {
      ::kill(pid_, SIGKILL);
      wait();
    }
  }
  pid_t pid() const { return pid_; }
  /// Waits for the end; the raw status of waitpid.
  int wait() {
    if (!done_) {
      ::waitpid(pid_, &status_, 0);
      done_ = true;
    }
    return status_;
  }
  /// True when it has ended (without waiting).
  bool ended() {
    if (done_) return true;
    if (::waitpid(pid_, &status_, WNOHANG) == pid_) done_ = true;
    return done_;
  }
  std::string err() const { return read_text(err_); }

 private:
  fs::path err_;
  pid_t pid_ = -1;
  int status_ = 0;
  bool done_ = false;
};

/// Whether a file of `dir` starts with `prefix`.
bool has_file_starting(const fs::path& dir, const std::string& prefix) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().filename().string().rfind(prefix, 0) == 0) return true;
  }
  return false;
}

/// Whether the process runs int4q and has installed its handler for `sig` (SigCgt of
/// /proc/PID/status).
bool catches(pid_t pid, int sig) {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/" + std::to_string(pid) + "/exe", ec);
  if (ec || !fs::equivalent(exe, INT4Q_CLI_PATH, ec)) return false;
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("SigCgt:", 0) == 0) {
      const unsigned long long mask = std::strtoull(line.c_str() + 7, nullptr, 16);
      return ((mask >> (sig - 1)) & 1u) != 0;
    }
  }
  return false;
}

/// The last line of `text` with its newline ("" when `text` does not end with one). Other lines
/// before it (warnings about the model) are allowed; the message is the run's last word.
std::string last_line(const std::string& text) {
  if (text.empty() || text.back() != '\n') return "";
  const std::size_t start = text.rfind('\n', text.size() - 2);
  return text.substr(start == std::string::npos ? 0 : start + 1);
}

std::size_t count_lines_starting(const std::string& text, const std::string& prefix) {
  std::size_t n = 0;
  for (std::size_t at = 0; at < text.size();) {
    if (text.compare(at, prefix.size(), prefix) == 0) ++n;
    const std::size_t end = text.find('\n', at);
    if (end == std::string::npos) break;
    at = end + 1;
  }
  return n;
}

enum class outcome { signalled, missed };

class CliSignals : public int4q::test::scratch_dir_test {
 protected:
  void SetUp() override {
    scratch_dir_test::SetUp();
    if (!fs::exists(devgpt())) GTEST_SKIP() << "devgpt model not found at " << devgpt();
    work_ = dir_ / "work";
    capture_ = dir_ / "capture";
    fs::create_directories(work_);
    fs::create_directories(capture_);
  }
  static fs::path devgpt() { return int4q::test::devgpt_dir() / "devgpt_fp32.onnx"; }
  static std::string cal() { return (int4q::test::devgpt_dir() / "devgpt_cal.u8").string(); }

  /// Starts `args` in work_, waits until `ready()` holds, stops the process, checks `ready()`
  /// again (the phase may have passed between the look and the stop), calls `act(pid)` (send a
  /// signal, break something) and lets it go on. `missed` when the run ended or left the phase
  /// first (the caller tries again).
  outcome act_when(const std::vector<std::string>& args, const std::function<bool()>& ready,
                   const std::function<void(pid_t)>& act, int& status, std::string& err) {
    child_run run(work_, args, capture_);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!ready()) {
      if (run.ended() || std::chrono::steady_clock::now() > deadline) {
        status = run.wait();
        err = run.err();
        return outcome::missed;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    ::kill(run.pid(), SIGSTOP);
    int stopped = 0;
    ::waitpid(run.pid(), &stopped, WUNTRACED);
    if (!WIFSTOPPED(stopped)) {  // it ended just before the stop
      status = stopped;
      err = run.err();
      return outcome::missed;
    }
    const bool still = ready();
    if (still) act(run.pid());  // a signal stays pending while stopped
    ::kill(run.pid(), SIGCONT);
    status = run.wait();
    err = run.err();
    return still ? outcome::signalled : outcome::missed;
  }

  /// act_when, tried up to 5 times until it hits the phase; false if it never did.
  bool act_when_retried(const std::vector<std::string>& args, const std::function<bool()>& ready,
                        const std::function<void(pid_t)>& act, int& status, std::string& err) {
    const std::set<std::string> before = names_in(work_);
    for (int attempt = 0; attempt < 5; ++attempt) {
      if (act_when(args, ready, act, status, err) == outcome::signalled) return true;
      // A missed try may have finished the run: start again from the same folder.
      for (const auto& name : names_in(work_))
        if (!before.count(name)) fs::remove_all(work_ / name);
    }
    return false;
  }

  /// Sends `sig` in the phase where `ready()` holds; asserts the run ended by `sig` with one
  /// line on stderr that starts with `message` and that work_ holds exactly what it held before.
  void expect_clean_signal_exit(const std::vector<std::string>& args,
                                const std::function<bool()>& ready, int sig,
                                const std::string& message, const std::string& ending = "") {
    const std::set<std::string> before = names_in(work_);
    int status = 0;
    std::string err;
    const bool hit = act_when_retried(
        args, ready, [sig](pid_t pid) { ::kill(pid, sig); }, status, err);
    ASSERT_TRUE(hit) << "the run never reached the phase; last stderr:\n" << err;
    ASSERT_TRUE(WIFSIGNALED(status)) << "status " << status << "\n" << err;
    EXPECT_EQ(WTERMSIG(status), sig) << err;
    const std::string line = last_line(err);
    EXPECT_EQ(line.rfind(message, 0), 0u) << "stderr:\n" << err;
    EXPECT_TRUE(line.size() >= ending.size() &&
                line.compare(line.size() - ending.size(), ending.size(), ending) == 0)
        << "stderr:\n"
        << err;
    EXPECT_EQ(count_lines_starting(err, "int4q: interrupted"), 1u) << err;
    EXPECT_EQ(count_lines_starting(err, "int4q: error"), 0u) << err;
    EXPECT_EQ(names_in(work_), before) << "files left behind; stderr:\n" << err;
  }

  std::vector<std::string> gptq_args() const {
    return {"quantize", devgpt().string(), "-o", "out.onnx", "--method", "gptq",      "--calib",
            cal(),      "--calib-samples", "16", "--spill",  "always",   "--threads", "1"};
  }

  fs::path work_, capture_;
};

TEST_F(CliSignals, TermDuringGptqCalibrationRemovesTheScratchFile) {
  // The scratch file exists from just after loading to the end of saving; 0.2 s after it appears
  // GPTQ is calibrating (a whole run takes seconds).
  bool seen = false;
  auto calibrating = [&] {
    if (!has_file_starting(work_, ".out.onnx.spill-")) return false;
    if (!seen) {
      seen = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return has_file_starting(work_, ".out.onnx.spill-");
  };
  expect_clean_signal_exit(gptq_args(), calibrating, SIGTERM,
                           "int4q: interrupted by SIGTERM: removed 1 temporary file; 'out.onnx' "
                           "was not written\n");
  EXPECT_FALSE(fs::exists(work_ / "out.onnx"));
}

TEST_F(CliSignals, IntDuringGptqCalibrationLeavesAnExistingOutputUnchanged) {
  const std::string old = "an earlier output, not an ONNX model";
  std::ofstream(work_ / "out.onnx", std::ios::binary) << old;
  std::ofstream(work_ / "out.onnx.data", std::ios::binary) << old;
  auto calibrating = [&] { return has_file_starting(work_, ".out.onnx.spill-"); };
  expect_clean_signal_exit(gptq_args(), calibrating, SIGINT,
                           "int4q: interrupted by SIGINT: removed 1 temporary file; 'out.onnx' "
                           "was left unchanged\n");
  EXPECT_EQ(read_text(work_ / "out.onnx"), old);
  EXPECT_EQ(read_text(work_ / "out.onnx.data"), old);
}

TEST_F(CliSignals, TermDuringAResumableRunKeepsItsJournalAndResumeFinishesIt) {
  std::vector<std::string> args = gptq_args();
  args.push_back("--resume");
  const fs::path manifest = work_ / ".out.onnx.resume.json";
  int status = 0;
  std::string err;
  // Once a weight is journaled (a whole run takes seconds).
  const bool hit = act_when_retried(
      args, [&] { return fs::exists(manifest); }, [](pid_t pid) { ::kill(pid, SIGTERM); }, status,
      err);
  ASSERT_TRUE(hit) << "the run never journaled a weight; last stderr:\n" << err;
  ASSERT_TRUE(WIFSIGNALED(status)) << "status " << status << "\n" << err;
  EXPECT_EQ(WTERMSIG(status), SIGTERM) << err;
  // The spill file, and the manifest's temporary file when the signal came while it was written.
  const std::string line = last_line(err);
  EXPECT_EQ(line.rfind("int4q: interrupted by SIGTERM: removed ", 0), 0u) << err;
  const std::string ending =
      "'out.onnx' was not written; the resume journal './.out.onnx.resume' is kept: run the same "
      "command with --resume to continue\n";
  EXPECT_TRUE(line.size() > ending.size() &&
              line.compare(line.size() - ending.size(), ending.size(), ending) == 0)
      << err;
  EXPECT_EQ(names_in(work_), (std::set<std::string>{".out.onnx.resume", ".out.onnx.resume.json"}));
  const auto resumed = int4q::test::run_cli(work_, args);
  ASSERT_EQ(resumed.status, 0) << int4q::test::describe(resumed);
  std::vector<std::string> whole = gptq_args();
  whole[3] = "whole.onnx";
  ASSERT_EQ(int4q::test::run_cli(work_, whole).status, 0);
  EXPECT_TRUE(read_text(work_ / "out.onnx") == read_text(work_ / "whole.onnx"))
      << "the run resumed after SIGTERM wrote other bytes than a whole run";
  EXPECT_EQ(names_in(work_), (std::set<std::string>{"out.onnx", "whole.onnx"}));
}

TEST_F(CliSignals, TermWhileSavingExternalDataRemovesThePartialDataFile) {
  const std::string old = "an earlier output";
  std::ofstream(work_ / "out.onnx", std::ios::binary) << old;
  auto saving = [&] { return has_file_starting(work_, "out.onnx.data.tmp-"); };
  // The data file's temporary file, and the model's when it is already made.
  expect_clean_signal_exit({"quantize", devgpt().string(), "-o", "out.onnx", "--format", "fake",
                            "--external-data", "always", "--threads", "1"},
                           saving, SIGTERM, "int4q: interrupted by SIGTERM: removed ",
                           "; 'out.onnx' was left unchanged\n");
  EXPECT_EQ(read_text(work_ / "out.onnx"), old);
}

TEST_F(CliSignals, EarlySignalsWhileLoadingEndTheRunTheSameWay) {
  for (const int sig : {SIGINT, SIGHUP}) {
    SCOPED_TRACE(sig);
    pid_t pid = 0;
    // As soon as the handlers are installed: the command line is being read or the model loaded.
    // The fork/exec helper is wrapped so that the predicate can see the child's pid.
    const std::set<std::string> before = names_in(work_);
    child_run run(work_, gptq_args(), capture_);
    pid = run.pid();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!catches(pid, sig) && !run.ended() && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    ::kill(pid, sig);
    const int status = run.wait();
    const std::string err = run.err();
    ASSERT_TRUE(WIFSIGNALED(status)) << "status " << status << "\n" << err;
    EXPECT_EQ(WTERMSIG(status), sig);
    const std::string expected = std::string("int4q: interrupted by ") +
                                 (sig == SIGINT ? "SIGINT" : "SIGHUP") +
                                 ": removed 0 temporary files";
    EXPECT_EQ(last_line(err).rfind(expected, 0), 0u) << err;
    EXPECT_EQ(count_lines_starting(err, "int4q: interrupted"), 1u) << err;
    EXPECT_EQ(names_in(work_), before) << err;
  }
}

TEST_F(CliSignals, RunsThatFailMidwayLeaveNothingBehind) {
  // Stopped at a known point, a directory takes the output's name, and the run goes on to fail
  // with exit 3: while calibrating with a scratch file (save_model then refuses the directory
  // before it writes anything), and while saving external data (the model's final rename fails
  // after the data file's: that one is removed too). Every file of the run must go.
  struct failing_run {
    std::vector<std::string> args;
    std::string phase_file;  ///< the file whose existence marks the point
  };
  const failing_run runs[] = {
      {gptq_args(), ".out.onnx.spill-"},
      {{"quantize", devgpt().string(), "-o", "out.onnx", "--format", "fake", "--external-data",
        "always", "--threads", "1"},
       "out.onnx.data.tmp-"},
  };
  for (const failing_run& r : runs) {
    SCOPED_TRACE(r.phase_file);
    const std::set<std::string> before = names_in(work_);
    int status = 0;
    std::string err;
    const bool hit = act_when_retried(
        r.args, [&] { return has_file_starting(work_, r.phase_file); },
        [&](pid_t) { fs::create_directory(work_ / "out.onnx"); }, status, err);
    ASSERT_TRUE(hit) << "the run never reached the phase; last stderr:\n" << err;
    ASSERT_TRUE(WIFEXITED(status)) << "status " << status << "\n" << err;
    EXPECT_EQ(WEXITSTATUS(status), 3) << err;
    EXPECT_EQ(last_line(err).rfind("int4q: error: ", 0), 0u) << err;
    EXPECT_NE(last_line(err).find("out.onnx"), std::string::npos) << err;
    std::set<std::string> expected = before;
    expected.insert("out.onnx");
    EXPECT_EQ(names_in(work_), expected) << err;
    EXPECT_TRUE(fs::is_empty(work_ / "out.onnx"));
    fs::remove(work_ / "out.onnx");
  }
}

}  // namespace

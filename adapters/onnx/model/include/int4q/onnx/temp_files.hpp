// Temporary files that a signal handler can remove: the process-wide table behind them.
//
// int4q writes every output through temporary files in the output's directory (save_model's
// "<OUT>.tmp-XXXXXXXX" and "<OUT>.data.tmp-XXXXXXXX", the CLI's spill scratch file and its
// atomically written report and plan) and renames them into place at the end. Destructors
// remove them when a run fails by an exception; a run ended by a signal runs no destructor, so
// a handler must find them by itself. That needs state shared by the whole process, which the
// library otherwise never keeps: this header is the one exception, and it holds nothing but
// the paths of files that exist right now.
//
// The table is a fixed array of slots, each a state (an always-lock-free atomic) and a
// NUL-terminated path, in static storage (constant-initialized, no allocation, no lock), so
// that remove_registered_temp_files() may run in a signal handler: it uses only atomics and
// unlink(2). Races, and how they are closed:
//  - Creating a file and entering it in the table, renaming a file onto its final path and
//    taking it out, are each done inside a temp_file_section: the calling thread blocks all
//    signals for those few system calls, so no handler can run on it halfway; a handler on
//    another thread first closes the table and then waits for open sections to end. So the
//    handler never sees a file that exists but is not entered, nor one already renamed (it
//    never unlinks a final output), and several renames done in one section (a model and its
//    data file) happen all or none as far as the handler is concerned.
//  - After the table is closed, a section reports !allowed(): nothing new is created or renamed
//    (the process is ending), so an existing output stays as it was.
// A path is entered after its file is created (both in one section) and taken out after a
// successful rename or unlink, never before: at worst (a rename that succeeded and a section
// that cannot end because the thread is killed) the handler unlinks a path that no longer
// exists, which does nothing.
#ifndef INT4Q_ONNX_TEMP_FILES_HPP
#define INT4Q_ONNX_TEMP_FILES_HPP

#include <signal.h>

#include <cstddef>
#include <filesystem>

namespace int4q {
namespace onnx {

/// Temporary files that can be registered at once, and the longest path (with its NUL).
constexpr std::size_t temp_files_capacity = 64;
constexpr std::size_t temp_file_path_max = 4096;

/// Unlinks every registered temporary file, closes the table (later sections are not
/// allowed(): nothing more is created or renamed) and returns how many files it removed.
/// Async-signal-safe: meant for a signal handler that then ends the process (int4q's CLI
/// re-raises the signal). Waits for sections open on other threads to end first.
std::size_t remove_registered_temp_files() noexcept;

/// While one is alive, the calling thread takes no signals, and remove_registered_temp_files()
/// on another thread waits for it to end. Sections nest; an inner one answers allowed() like
/// the outermost, so that the renames of one outer section are all allowed or none.
class temp_file_section {
 public:
  temp_file_section() noexcept;
  ~temp_file_section();
  temp_file_section(const temp_file_section&) = delete;
  temp_file_section& operator=(const temp_file_section&) = delete;
  /// False once remove_registered_temp_files() has begun: create and rename nothing.
  bool allowed() const noexcept { return allowed_; }

 private:
  sigset_t old_mask_;
  bool allowed_;
};

/// A new file, registered in the table until it is committed (renamed onto its final path),
/// kept or removed. Destroying it uncommitted closes and removes it.
class registered_temp_file {
 public:
  /// Creates `prefix` followed by 8 random hex digits (O_CREAT | O_EXCL, mode 0666 less the
  /// umask), open for writing. Throws model_error(io) naming `final_path` when it cannot.
  registered_temp_file(const std::filesystem::path& prefix,
                       const std::filesystem::path& final_path);
  ~registered_temp_file();
  registered_temp_file(const registered_temp_file&) = delete;
  registered_temp_file& operator=(const registered_temp_file&) = delete;

  /// The open descriptor (-1 once closed).
  int fd() const noexcept { return fd_; }
  const std::filesystem::path& path() const noexcept { return path_; }
  /// Closes the descriptor; 0 or the errno of close(2) (a delayed write error).
  int close() noexcept;
  /// Renames the file onto `final_path` and unregisters it: 0, or an errno (the file then stays
  /// registered and is removed with this object; ECANCELED when the process is ending on a
  /// signal). Call it inside a temp_file_section to commit several files as one step.
  int commit(const std::filesystem::path& final_path) noexcept;
  /// Leaves the file where it is and unregisters it (state kept on purpose, e.g. to resume).
  void keep() noexcept;

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  int slot_ = -1;  ///< index in the table; -1 once committed, kept or removed
};

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_TEMP_FILES_HPP

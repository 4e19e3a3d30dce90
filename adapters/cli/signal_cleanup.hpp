// SIGINT, SIGTERM, SIGHUP, SIGPIPE and SIGABRT in the int4q command: remove the temporary files
// of the run (int4q::onnx::remove_registered_temp_files), say so in one line on stderr and end
// by the same signal, so that the exit status is the conventional one (a shell shows 128 + the
// signal number: 130 for SIGINT, 143 for SIGTERM). SIGXFSZ (a write past `ulimit -f`) is ignored,
// so that the write fails and the run ends as an I/O error (exit 3) with its files removed.
#ifndef INT4Q_CLI_SIGNAL_CLEANUP_HPP
#define INT4Q_CLI_SIGNAL_CLEANUP_HPP

#include <filesystem>

namespace int4q {
namespace cli {

/// Installs the handlers (once, at the start of main). Signals ignored when int4q starts (nohup,
/// a background job of a non-interactive shell) stay ignored.
void install_signal_cleanup() noexcept;

/// Names the run's output model for the handler's message, and notes whether it exists now (to
/// tell "left unchanged" from "not written"). Call before the first temporary file is made.
void note_output_for_signals(const std::filesystem::path& output) noexcept;

/// Names the resume journal (int4q quantize --resume) for the handler's message: it is kept,
/// and the line says how to continue.
void note_resume_journal_for_signals(const std::filesystem::path& journal) noexcept;

/// When a handler is removing files on another thread: waits (forever) for it to end the
/// process, so that no other exit status or error line races with it. Returns at once otherwise.
void wait_if_interrupted() noexcept;

}  // namespace cli
}  // namespace int4q

#endif  // INT4Q_CLI_SIGNAL_CLEANUP_HPP

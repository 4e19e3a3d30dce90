// The table of temporary files (temp_files.hpp): the only process-wide state of the library,
// kept for signal handlers.
#include <int4q/onnx/temp_files.hpp>

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <system_error>

#include <int4q/onnx/model.hpp>

namespace int4q {
namespace onnx {

namespace {

static_assert(std::atomic<int>::is_always_lock_free && std::atomic<bool>::is_always_lock_free &&
                  std::atomic<std::size_t>::is_always_lock_free,
              "a signal handler may only use lock-free atomics");

/// A slot's states. free -> busy (claimed inside a section, path being written) -> ready (the
/// file exists; the handler may take it) -> free (committed, kept or removed by its owner), or
/// ready -> taken (by remove_registered_temp_files, for good).
enum slot_state : int { slot_free = 0, slot_busy = 1, slot_ready = 2, slot_taken = 3 };

struct slot {
  std::atomic<int> state;
  char path[temp_file_path_max];
};

// Constant-initialized (zero: every slot free), so usable from a handler at any time.
slot table[temp_files_capacity];
std::atomic<std::size_t> open_sections{0};
std::atomic<bool> closing{false};
// This thread's open sections, and what the outermost one answered.
thread_local int section_depth = 0;
thread_local bool outer_allowed = false;

/// Claims a free slot (free -> busy); -1 when all are used. Call inside a section.
int claim_slot() noexcept {
  for (std::size_t k = 0; k < temp_files_capacity; ++k) {
    int expected = slot_free;
    if (table[k].state.compare_exchange_strong(expected, slot_busy)) return static_cast<int>(k);
  }
  return -1;
}

std::string quoted(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

std::string errno_text(int e) { return std::error_code(e, std::generic_category()).message(); }

}  // namespace

std::size_t remove_registered_temp_files() noexcept {
  closing.store(true);
  // Sections on other threads are a few system calls long. This thread is in none (it takes
  // signals) unless a fault that cannot be blocked struck inside one: then it cannot wait.
  while (section_depth == 0 && open_sections.load() != 0) {
  }
  std::size_t removed = 0;
  for (slot& s : table) {
    int expected = slot_ready;
    if (s.state.compare_exchange_strong(expected, slot_taken) && ::unlink(s.path) == 0) ++removed;
  }
  return removed;
}

temp_file_section::temp_file_section() noexcept {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old_mask_);
  open_sections.fetch_add(1);
  // A nested section answers like the outermost one, so that the renames of one outer section
  // are all allowed or none.
  allowed_ = section_depth > 0 ? outer_allowed : !closing.load();
  if (section_depth++ == 0) outer_allowed = allowed_;
}

temp_file_section::~temp_file_section() {
  --section_depth;
  open_sections.fetch_sub(1);
  pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
}

registered_temp_file::registered_temp_file(const std::filesystem::path& prefix,
                                           const std::filesystem::path& final_path) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  const std::string base = prefix.string();
  if (base.size() + 8 >= temp_file_path_max) {
    throw model_error(model_error::kind::io, "cannot write " + quoted(final_path) +
                                                 ": its path is too long for a temporary file "
                                                 "next to it; choose a shorter output path");
  }
  static const char hex[] = "0123456789abcdef";
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string name = base;
    std::uint64_t x = rng();
    for (int i = 0; i < 8; ++i, x >>= 4) name += hex[x & 15];
    int fd = -1, err = 0, k = -1;
    {
      // Create and register in one step as seen by a handler (temp_files.hpp).
      const temp_file_section section;
      k = section.allowed() ? claim_slot() : -1;
      if (!section.allowed()) {
        err = ECANCELED;
      } else if (k < 0) {
        err = EMFILE;
      } else {
        std::memcpy(table[k].path, name.c_str(), name.size() + 1);
        fd = ::open(name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        err = fd < 0 ? errno : 0;
        table[k].state.store(fd >= 0 ? slot_ready : slot_free);
      }
    }
    if (fd >= 0) {
      path_ = name;
      fd_ = fd;
      slot_ = k;
      return;
    }
    if (err == EEXIST) continue;
    if (err == EMFILE && k < 0) {
      throw model_error(model_error::kind::io,
                        "cannot write " + quoted(final_path) + ": more than " +
                            std::to_string(temp_files_capacity) +
                            " temporary files at once (a bug: please report it)");
    }
    throw model_error(model_error::kind::io, "cannot write " + quoted(final_path) + " (" +
                                                 errno_text(err) +
                                                 "): choose a writable output directory");
  }
  throw model_error(model_error::kind::io,
                    "cannot create a temporary file next to " + quoted(final_path));
}

registered_temp_file::~registered_temp_file() {
  close();
  if (slot_ < 0) return;
  const temp_file_section section;
  if (!section.allowed()) return;  // the handler removes it
  ::unlink(path_.c_str());
  table[slot_].state.store(slot_free);
}

int registered_temp_file::close() noexcept {
  if (fd_ < 0) return 0;
  const int rc = ::close(fd_);
  fd_ = -1;
  return rc == 0 ? 0 : errno;
}

int registered_temp_file::commit(const std::filesystem::path& final_path) noexcept {
  if (slot_ < 0) return EINVAL;
  const temp_file_section section;
  if (!section.allowed()) return ECANCELED;
  if (::rename(path_.c_str(), final_path.c_str()) != 0) return errno;
  // Taken out only now that the temporary name no longer exists.
  table[slot_].state.store(slot_free);
  slot_ = -1;
  return 0;
}

void registered_temp_file::keep() noexcept {
  if (slot_ < 0) return;
  const temp_file_section section;
  if (!section.allowed()) return;
  table[slot_].state.store(slot_free);
  slot_ = -1;
}

}  // namespace onnx
}  // namespace int4q

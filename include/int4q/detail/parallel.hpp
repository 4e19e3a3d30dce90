// A fork-join parallel loop over independent work items. Each item is computed by exactly one
// thread with the same arithmetic whatever the thread count, so results are byte-identical for
// any `threads`. No global pool: threads live for the duration of one call.
#ifndef INT4Q_DETAIL_PARALLEL_HPP
#define INT4Q_DETAIL_PARALLEL_HPP

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace int4q {
namespace detail {

/// Calls fn(i) for every i in [0, count), on up to `threads` threads (0 = hardware threads).
/// If items throw, the exception of the smallest failing index is rethrown after all threads
/// joined.
template <class F>
void parallel_for(std::size_t count, std::size_t threads, F&& fn) {
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  threads = std::min(threads, count);
  if (threads <= 1) {
    for (std::size_t i = 0; i < count; ++i) fn(i);
    return;
  }
  // Items are claimed in increasing order. When item i fails, no item above i is started, and
  // the failure of the smallest failing index is reported: the same error for any thread count.
  std::atomic<std::size_t> next{0};
  std::atomic<std::size_t> limit{count};
  std::exception_ptr failure;
  std::size_t failed_at = count;
  std::mutex failure_mutex;
  auto worker = [&]() {
    for (;;) {
      const std::size_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= limit.load(std::memory_order_relaxed)) return;
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(failure_mutex);
        if (i < failed_at) {
          failed_at = i;
          failure = std::current_exception();
          limit.store(i, std::memory_order_relaxed);
        }
        return;
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (std::size_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace detail
}  // namespace int4q

#endif  // INT4Q_DETAIL_PARALLEL_HPP

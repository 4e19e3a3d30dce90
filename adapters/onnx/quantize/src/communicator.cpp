// communicator helpers and local_group, the communicator between threads of one process.
#include <int4q/onnx/communicator.hpp>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>

#include <int4q/onnx/model.hpp>

namespace int4q {
namespace onnx {

void broadcast_string(communicator& comm, std::string& s, int root) {
  std::vector<char> v(s.begin(), s.end());
  broadcast_vector(comm, v, root);
  s.assign(v.begin(), v.end());
}

std::uint64_t digest_of(const std::string& text) {
  std::uint64_t h = 1469598103934665603ull;
  for (const unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

void check_same_on_all_ranks(communicator& comm, std::uint64_t digest, const std::string& what) {
  const std::vector<std::uint64_t> all = comm.all_gather(digest);
  bool same = true;
  for (const std::uint64_t d : all) same = same && d == all.front();
  if (same) return;
  std::string list;
  for (std::size_t r = 0; r < all.size(); ++r) {
    char hex[24];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(all[r]));
    list += (r ? ", rank " : "rank ") + std::to_string(r) + " " + hex;
  }
  throw model_error(model_error::kind::invalid,
                    "the " + std::to_string(all.size()) + " ranks disagree about " + what + " (" +
                        list + "): start every rank with the same model, data and options");
}

namespace {

/// What the threads of a local group share: one slot per rank and a reusable barrier.
struct local_state {
  explicit local_state(int n) : ranks(n), pointers(static_cast<std::size_t>(n)) {}
  const int ranks;
  std::mutex mutex;
  std::condition_variable changed;
  int waiting = 0;
  std::uint64_t generation = 0;
  std::vector<void*> pointers;  // each rank's published buffer

  void barrier() {
    std::unique_lock<std::mutex> lock(mutex);
    const std::uint64_t g = generation;
    if (++waiting == ranks) {
      waiting = 0;
      ++generation;
      changed.notify_all();
      return;
    }
    changed.wait(lock, [&] { return generation != g; });
  }
};

class local_communicator final : public communicator {
 public:
  local_communicator(std::shared_ptr<local_state> s, int rank) : s_(std::move(s)), rank_(rank) {}
  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return s_->ranks; }

  void broadcast(void* data, std::size_t bytes, int root) override {
    publish(data);
    s_->barrier();
    bytes_ += bytes;
    if (rank_ != root && bytes > 0)
      std::memcpy(data, s_->pointers[static_cast<std::size_t>(root)], bytes);
    s_->barrier();  // the root's buffer is read by all before anyone goes on
  }

  std::vector<std::uint64_t> all_gather(std::uint64_t v) override {
    bytes_ += static_cast<std::uint64_t>(s_->ranks) * sizeof v;
    publish(&v);
    s_->barrier();
    std::vector<std::uint64_t> all;
    for (int r = 0; r < s_->ranks; ++r)
      all.push_back(*static_cast<const std::uint64_t*>(s_->pointers[static_cast<std::size_t>(r)]));
    s_->barrier();
    return all;
  }

  [[noreturn]] void abort(int) override { std::abort(); }
  std::uint64_t bytes_moved() const noexcept override { return bytes_; }

 private:
  void publish(void* p) {
    std::lock_guard<std::mutex> lock(s_->mutex);
    s_->pointers[static_cast<std::size_t>(rank_)] = p;
  }
  std::shared_ptr<local_state> s_;
  int rank_;
  std::uint64_t bytes_ = 0;
};

}  // namespace

std::vector<std::unique_ptr<communicator>> local_group(int ranks) {
  if (ranks < 1) throw std::invalid_argument("local_group: ranks must be >= 1");
  auto state = std::make_shared<local_state>(ranks);
  std::vector<std::unique_ptr<communicator>> out;
  for (int r = 0; r < ranks; ++r) out.push_back(std::make_unique<local_communicator>(state, r));
  return out;
}

}  // namespace onnx
}  // namespace int4q

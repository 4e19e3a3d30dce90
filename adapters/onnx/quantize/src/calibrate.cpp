// Calibration statistics from executor runs: parallel (one pass) and sequential (paused runs).
#include <int4q/onnx/calibrate.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <unordered_map>
#include <utility>

#include <int4q/onnx/graph.hpp>
#include <int4q/onnx/temp_files.hpp>

namespace int4q {
namespace onnx {

namespace {

/// The nodes using each weight, by the address of their NodeProto (the executor's hooks see
/// the model's own NodeProto objects, in the main graph and in subgraphs alike).
std::unordered_map<const ::onnx::NodeProto*, std::vector<const weight_info*>> uses_by_node(
    const model& m, const std::vector<const weight_info*>& weights) {
  std::unordered_map<const ::onnx::NodeProto*, std::vector<const weight_info*>> out;
  for (const weight_info* w : weights)
    for (const weight_use& u : w->uses)
      out[&graph_at(m.proto.graph(), u.path).node(u.node_index)].push_back(w);
  return out;
}

/// f(w, rows) for each weight of `by_node` that `node` multiplies with its input 0 `in[0]`.
template <class Uses, class F>
void for_each_rows(const Uses& by_node, const ::onnx::NodeProto& node,
                   const std::vector<const value*>& in, F&& f) {
  const auto it = by_node.find(&node);
  if (it == by_node.end() || in.empty() || !in[0]) return;
  for (const weight_info* w : it->second) f(*w, rows_of(*w, node, *in[0]));
}

}  // namespace

activation_rows rows_of(const weight_info& w, const ::onnx::NodeProto& node, const value& a) {
  if (a.type != value_type::float32 || a.shape.empty() ||
      a.shape.back() != static_cast<std::int64_t>(w.k)) {
    throw model_error(model_error::kind::invalid,
                      node.op_type() + " node '" + node.name() + "': its input '" + node.input(0) +
                          "' has shape " + detail::dims_string(a.shape) + ", not [..., " +
                          std::to_string(w.k) + "] as weight '" + w.name + "' needs");
  }
  return {a.f.data(), a.size() / w.k};
}

namespace {

/// This rank's statistics options: its share of H's tiles when the run is distributed.
activation_stats_options stats_share(const collect_options& o) {
  activation_stats_options s = o.stats;
  if (distributed(o.comm)) {
    s.hessian_part = static_cast<std::size_t>(o.comm->rank());
    s.hessian_parts = static_cast<std::size_t>(o.comm->size());
  }
  return s;
}

/// Joins the ranks' shares of H: each tile from its rank to all (activation_stats::join_hessian).
void combine(activation_stats& s, const collect_options& o) {
  if (!distributed(o.comm)) return;
  s.join_hessian([&](double* data, std::size_t count, std::size_t owner) {
    o.comm->broadcast(data, count * sizeof(double), static_cast<int>(owner));
  });
}

/// Rows of `count` x `k` floats from rank `owner` to every rank (the owner's `data` is sent,
/// the others' `buffer` receives), added to `stats` on every rank.
void add_broadcast_rows(communicator& comm, int owner, activation_stats& stats, const float* data,
                        std::size_t count, std::vector<float>& buffer) {
  std::uint64_t n = count * stats.channels();
  comm.broadcast(&n, sizeof n, owner);
  if (comm.rank() != owner) {
    buffer.resize(static_cast<std::size_t>(n));
    data = buffer.data();
  }
  if (n > 0) comm.broadcast(const_cast<float*>(data), static_cast<std::size_t>(n) * 4, owner);
  stats.add(data, static_cast<std::size_t>(n) / stats.channels());
}

/// Distributed collect_activation_stats: rounds of `size` batches, batch b of a round on rank
/// b; after the round, each batch's rows of each weight (in the order its hooks saw them) go to
/// every rank, batch by batch, so every rank adds the rows in the order one process does.
std::map<std::string, activation_stats> collect_distributed(
    const model& m, const std::vector<const weight_info*>& weights, const batch_source& source,
    const collect_options& options) {
  communicator& comm = *options.comm;
  const int ranks = comm.size(), me = comm.rank();
  std::map<std::string, activation_stats> stats;
  for (const weight_info* w : weights)
    stats.emplace(w->name, activation_stats(w->k, stats_share(options)));
  const auto by_node = uses_by_node(m, weights);
  const executor ex(m, options.threads);
  std::map<std::string, std::vector<float>> rows;  // this rank's batch, by weight
  run_hooks hooks;
  hooks.before_node = [&](int, const ::onnx::NodeProto& node, std::vector<const value*>& in) {
    for_each_rows(by_node, node, in, [&](const weight_info& w, const activation_rows& r) {
      std::vector<float>& v = rows[w.name];
      v.insert(v.end(), r.data, r.data + r.rows * w.k);
    });
  };
  std::map<std::string, value> batch;
  std::vector<float> buffer;
  std::size_t done = 0;
  bool more = true;
  while (more) {
    int in_round = 0;
    for (; in_round < ranks; ++in_round) {
      if (!source(batch)) {
        more = false;
        break;
      }
      if (in_round == me) ex.run(batch, hooks);
      batch.clear();
    }
    check_same_on_all_ranks(comm, static_cast<std::uint64_t>(in_round),
                            "the number of calibration batches");
    for (int owner = 0; owner < in_round; ++owner) {
      for (auto& [name, s] : stats) {
        const std::vector<float>& mine = rows[name];
        add_broadcast_rows(comm, owner, s, mine.data(), mine.size() / s.channels(), buffer);
      }
    }
    rows.clear();
    done += static_cast<std::size_t>(in_round);
    if (in_round > 0 && options.on_progress) options.on_progress(done);
  }
  for (auto& entry : stats) combine(entry.second, options);
  return stats;
}

}  // namespace

std::map<std::string, activation_stats> collect_activation_stats(
    const model& m, const std::vector<const weight_info*>& weights, const batch_source& source,
    const collect_options& options) {
  if (distributed(options.comm)) return collect_distributed(m, weights, source, options);
  std::map<std::string, activation_stats> stats;
  for (const weight_info* w : weights)
    stats.emplace(w->name, activation_stats(w->k, options.stats));
  const auto by_node = uses_by_node(m, weights);
  const executor ex(m, options.threads);
  run_hooks hooks;
  hooks.before_node = [&](int, const ::onnx::NodeProto& node, std::vector<const value*>& in) {
    for_each_rows(by_node, node, in, [&](const weight_info& w, const activation_rows& r) {
      stats.at(w.name).add(r.data, r.rows);
    });
  };
  std::map<std::string, value> batch;
  std::size_t done = 0;
  while (source(batch)) {
    ex.run(batch, hooks);
    batch.clear();
    if (options.on_progress) options.on_progress(++done);
  }
  return stats;
}

// ---- sequential ------------------------------------------------------------------------------

namespace {

using run_values = std::vector<std::pair<std::string, value>>;

/// The scratch file of sequential calibration: the values of paused runs that do not fit in the
/// memory budget, one contiguous record per run written with positioned writes. A record is
/// rewritten in its run's slot while it fits there; a larger one takes the first free extent
/// big enough (freed slots merge with their neighbours) or the end of the file, so the file
/// stays about one copy of all runs' values. Created on first use in `dir` (the system's
/// temporary directory when empty) and removed with this object, by an error too.
///
/// Record: count, then per value: name length, type, rank, float count, int count (u64 each),
/// the name, the dims, the floats, the ints (native byte order: the file never leaves the run).
class run_store {
 public:
  explicit run_store(std::filesystem::path dir) : dir_(std::move(dir)) {}
  ~run_store() {
    if (fd_ >= 0) ::close(fd_);
  }
  run_store(const run_store&) = delete;
  run_store& operator=(const run_store&) = delete;

  void put(std::size_t run, const run_values& values) {
    open();
    std::uint64_t bytes = 8;
    for (const auto& [name, v] : values)
      bytes += 40 + name.size() + 8 * v.shape.size() + 4 * v.f.size() + 8 * v.i.size();
    if (slots_.size() <= run) slots_.resize(run + 1);
    slot& s = slots_[run];
    if (bytes > s.capacity) {
      if (s.capacity > 0) release(s.offset, s.capacity);
      s.offset = allocate(bytes);
      s.capacity = bytes;
    }
    std::uint64_t at = s.offset;
    write_u64(values.size(), at);
    for (const auto& [name, v] : values) {
      for (const std::uint64_t x :
           {std::uint64_t(name.size()), std::uint64_t(v.type), std::uint64_t(v.shape.size()),
            std::uint64_t(v.f.size()), std::uint64_t(v.i.size())})
        write_u64(x, at);
      write(name.data(), name.size(), at);
      write(v.shape.data(), 8 * v.shape.size(), at);
      write(v.f.data(), 4 * v.f.size(), at);
      write(v.i.data(), 8 * v.i.size(), at);
    }
  }

  run_values get(std::size_t run) {
    std::uint64_t at = slots_.at(run).offset;
    run_values values(read_u64(at));
    for (auto& [name, v] : values) {
      std::uint64_t h[5];
      for (std::uint64_t& x : h) x = read_u64(at);
      name.resize(h[0]);
      v.type = static_cast<value_type>(h[1]);
      v.shape.resize(h[2]);
      v.f.resize(h[3]);
      v.i.resize(h[4]);
      read(&name[0], name.size(), at);
      read(v.shape.data(), 8 * v.shape.size(), at);
      read(v.f.data(), 4 * v.f.size(), at);
      read(v.i.data(), 8 * v.i.size(), at);
    }
    return values;
  }

 private:
  struct slot {
    std::uint64_t offset = 0, capacity = 0;
  };

  void open() {
    if (fd_ >= 0) return;
    const std::filesystem::path dir = dir_.empty() ? std::filesystem::temp_directory_path() : dir_;
    file_.emplace(dir / ".int4q-activations-", dir / ".int4q-activations");
    file_->close();
    fd_ = ::open(file_->path().c_str(), O_RDWR | O_CLOEXEC);
    if (fd_ < 0) fail("open", errno);
  }

  /// First fit among the free extents, else the end of the file (joined to a free extent that
  /// ends there).
  std::uint64_t allocate(std::uint64_t bytes) {
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->second < bytes) continue;
      const std::uint64_t at = it->first, left = it->second - bytes;
      free_.erase(it);
      if (left > 0) free_[at + bytes] = left;
      return at;
    }
    if (!free_.empty()) {
      const auto last = std::prev(free_.end());
      if (last->first + last->second == end_) {
        const std::uint64_t at = last->first;
        free_.erase(last);
        end_ = at + bytes;
        return at;
      }
    }
    end_ += bytes;
    return end_ - bytes;
  }

  void release(std::uint64_t at, std::uint64_t bytes) {
    auto next = free_.lower_bound(at);
    if (next != free_.end() && at + bytes == next->first) {
      bytes += next->second;
      next = free_.erase(next);
    }
    if (next != free_.begin()) {
      const auto prev = std::prev(next);
      if (prev->first + prev->second == at) {
        prev->second += bytes;
        return;
      }
    }
    free_[at] = bytes;
  }

  void write_u64(std::uint64_t x, std::uint64_t& at) { write(&x, 8, at); }
  std::uint64_t read_u64(std::uint64_t& at) {
    std::uint64_t x = 0;
    read(&x, 8, at);
    return x;
  }
  void write(const void* data, std::size_t bytes, std::uint64_t& at) {
    const char* p = static_cast<const char*>(data);
    for (std::size_t done = 0; done < bytes;) {
      const ssize_t n = ::pwrite(fd_, p + done, bytes - done, static_cast<off_t>(at + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("write", n < 0 ? errno : EIO);
      done += static_cast<std::size_t>(n);
    }
    at += bytes;
  }
  void read(void* data, std::size_t bytes, std::uint64_t& at) {
    char* p = static_cast<char*>(data);
    for (std::size_t done = 0; done < bytes;) {
      const ssize_t n = ::pread(fd_, p + done, bytes - done, static_cast<off_t>(at + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("read", n < 0 ? errno : EIO);
      done += static_cast<std::size_t>(n);
    }
    at += bytes;
  }
  [[noreturn]] void fail(const char* what, int error) const {
    throw model_error(model_error::kind::io,
                      std::string("sequential calibration: cannot ") + what +
                          " the scratch file of activations '" + file_->path().string() +
                          "': " + std::strerror(error) +
                          " (it holds the paused runs beyond the activation memory budget)");
  }

  std::filesystem::path dir_;
  std::optional<registered_temp_file> file_;
  int fd_ = -1;
  std::uint64_t end_ = 0;
  std::map<std::uint64_t, std::uint64_t> free_;  ///< offset -> bytes
  std::vector<slot> slots_;
};

/// The last main-graph node using `w`; INT_MAX when a subgraph uses it too (kept to the end).
int last_main_use(const weight_info& w) {
  int last = -1;
  for (const weight_use& u : w.uses) {
    if (!u.path.empty()) return std::numeric_limits<int>::max();
    last = std::max(last, u.node_index);
  }
  return last < 0 ? std::numeric_limits<int>::max() : last;
}

}  // namespace

struct sequential_calibration::impl {
  const model& m;
  collect_options options;
  executor ex;
  std::vector<std::map<std::string, value>> inputs;  ///< kept for the subgraph-only pass
  /// This rank's runs: batch g is run g / size of rank g % size (collect_options::comm).
  std::vector<executor::session> runs;
  std::size_t total = 0;  ///< batches of all ranks
  /// Per run: bytes of its values and whether they are in the scratch file now.
  std::vector<std::size_t> run_bytes;
  std::vector<bool> spilled;
  std::uint64_t resident = 0;  ///< bytes of the values of runs in memory
  run_store store;
  std::map<std::string, value> replacements;        ///< weight name -> stored values
  std::map<std::string, int> replacement_last_use;  ///< weight name -> last main-graph node
  run_hooks hooks;
  /// The last statistics computed, by activation name: siblings sharing an input (q/k/v) reuse
  /// them. A name's value never changes once computed and the runs never go back, so they stay
  /// valid.
  std::string cached_name;
  std::unique_ptr<activation_stats> cached;
  /// Per activation name: the weights (first main-graph uses) that have yet to ask for it.
  std::map<std::string, std::size_t> readers;
  std::vector<const weight_info*> subgraph_only;
  std::map<std::string, activation_stats> subgraph_stats;
  bool subgraph_done = false;

  impl(const model& model_, const collect_options& o)
      : m(model_), options(o), ex(model_, o.threads), store(o.scratch_dir) {
    hooks.before_node = [this](int, const ::onnx::NodeProto& node, std::vector<const value*>& in) {
      if (replacements.empty()) return;
      for (int k = 0; k < node.input_size() && k < static_cast<int>(in.size()); ++k) {
        const auto it = replacements.find(node.input(k));
        if (it != replacements.end()) in[static_cast<std::size_t>(k)] = &it->second;
      }
    };
    // A replaced weight is never read: the executor need not convert the original.
    hooks.replaces = [this](const ::onnx::NodeProto&, const std::string& name) {
      return replacements.count(name) != 0;
    };
  }

  /// Run r's values back from the scratch file (when they are there).
  void load(std::size_t r) {
    if (!spilled[r]) return;
    runs[r].restore_values(store.get(r));
    spilled[r] = false;
    resident += run_bytes[r];
  }

  /// After run r moved or was read: its values stay in memory while all resident runs fit in
  /// the budget, else they go to the scratch file. So the resident runs never pass the budget
  /// but for the one being advanced.
  void fit_budget(std::size_t r) {
    resident -= run_bytes[r];
    run_bytes[r] = runs[r].value_bytes();
    if (resident + run_bytes[r] <= options.activation_budget_bytes) {
      resident += run_bytes[r];
      return;
    }
    run_values values = runs[r].take_values();
    try {
      store.put(r, values);
    } catch (...) {  // the file could not take them (disk full): the run keeps its values
      runs[r].restore_values(std::move(values));
      resident += run_bytes[r];
      throw;
    }
    spilled[r] = true;
  }

  /// Frees the replacements no run will read again: every run is at `next` (main-graph node
  /// index), past the weight's last main-graph use. Kept while the subgraph-only pass, which
  /// runs the whole graph with them, is still to come.
  void free_replacements(int next) {
    if (!subgraph_only.empty() && !subgraph_done) return;
    for (auto it = replacement_last_use.begin(); it != replacement_last_use.end();) {
      if (it->second < next) {
        replacements.erase(it->first);
        it = replacement_last_use.erase(it);
      } else {
        ++it;
      }
    }
  }
};

namespace {

int first_main_use(const weight_info& w) {
  int first = std::numeric_limits<int>::max();
  for (const weight_use& u : w.uses)
    if (u.path.empty()) first = std::min(first, u.node_index);
  return first == std::numeric_limits<int>::max() ? -1 : first;
}

}  // namespace

sequential_calibration::sequential_calibration(const model& m,
                                               const std::vector<const weight_info*>& weights,
                                               const batch_source& source,
                                               const collect_options& options)
    : p_(std::make_unique<impl>(m, options)) {
  for (const weight_info* w : weights) {
    const int first = first_main_use(*w);
    if (first < 0) {
      p_->subgraph_only.push_back(w);
    } else {
      ++p_->readers[m.proto.graph().node(first).input(0)];
    }
  }
  const bool comm = distributed(options.comm);
  const std::size_t ranks = comm ? static_cast<std::size_t>(options.comm->size()) : 1;
  const std::size_t me = comm ? static_cast<std::size_t>(options.comm->rank()) : 0;
  std::map<std::string, value> batch;
  for (; source(batch); ++p_->total) {
    // Every rank runs every batch in the subgraph-only pass (rare: weights only in If branches).
    if (!p_->subgraph_only.empty()) p_->inputs.push_back(batch);
    if (p_->total % ranks == me) {
      p_->runs.push_back(p_->ex.start(batch));
      p_->run_bytes.push_back(0);
      p_->spilled.push_back(false);
      p_->fit_budget(p_->runs.size() - 1);
    }
    batch.clear();
  }
  if (comm) check_same_on_all_ranks(*options.comm, p_->total, "the number of calibration batches");
}

sequential_calibration::~sequential_calibration() = default;

activation_stats sequential_calibration::stats_for(const weight_info& w) {
  impl& p = *p_;
  const int node_index = first_main_use(w);
  if (node_index < 0) {  // only inside subgraphs: one parallel pass with the replacements so far
    if (!p.subgraph_done) {
      std::size_t next = 0;
      const batch_source again = [&](std::map<std::string, value>& b) {
        if (next >= p.inputs.size()) return false;
        b = p.inputs[next++];
        return true;
      };
      // One run per batch with the replacements made so far (p.hooks), collecting the rows of
      // the weights used only inside subgraphs.
      std::map<std::string, activation_stats> stats;
      for (const weight_info* s : p.subgraph_only)
        stats.emplace(s->name, activation_stats(s->k, p.options.stats));
      const auto by_node = uses_by_node(p.m, p.subgraph_only);
      run_hooks hooks;
      hooks.before_node = [&](int k, const ::onnx::NodeProto& node, std::vector<const value*>& in) {
        p.hooks.before_node(k, node, in);
        for_each_rows(by_node, node, in, [&](const weight_info& s, const activation_rows& r) {
          stats.at(s.name).add(r.data, r.rows);
        });
      };
      std::map<std::string, value> b;
      while (again(b)) p.ex.run(b, hooks);
      p.subgraph_stats = std::move(stats);
      p.subgraph_done = true;
    }
    return p.subgraph_stats.at(w.name);
  }
  const ::onnx::NodeProto& node = p.m.proto.graph().node(node_index);
  const std::string& name = node.input(0);
  // Weights still to ask for this activation after this one: the last reader takes the cached
  // statistics (no copy: H is K x K doubles).
  const std::size_t others = --p.readers[name];
  if (p.cached && p.cached_name == name) {
    for (std::size_t r = 0; r < p.runs.size(); ++r) {
      if (p.runs[r].next_node() >= node_index) continue;
      p.load(r);
      p.ex.advance(p.runs[r], node_index, p.hooks);
      p.fit_budget(r);
    }
    p.free_replacements(node_index);
    if (others > 0) return *p.cached;
    activation_stats last = std::move(*p.cached);
    p.cached.reset();
    return last;
  }
  activation_stats stats(w.k, stats_share(p.options));
  communicator* comm = distributed(p.options.comm) ? p.options.comm : nullptr;
  const std::size_t ranks = comm ? static_cast<std::size_t>(comm->size()) : 1;
  const std::size_t me = comm ? static_cast<std::size_t>(comm->rank()) : 0;
  std::vector<float> buffer;
  // Takes run r to the node.
  const auto advance = [&](std::size_t r) {
    executor::session& s = p.runs[r];
    if (s.next_node() > node_index)
      throw model_error(model_error::kind::invalid,
                        "sequential calibration: weight '" + w.name +
                            "' was asked for after the runs passed its node '" + node.name() +
                            "' (ask in graph order)");
    p.load(r);
    p.ex.advance(s, node_index, p.hooks);
  };
  // Distributed: every rank first takes its own runs to the node, while the other ranks take
  // theirs; alone, each run is advanced when its rows are read (a spilled run loads once).
  if (comm) {
    for (std::size_t r = 0; r < p.runs.size(); ++r) {
      advance(r);
      p.fit_budget(r);
    }
  }
  // Batches in order; batch g is run r = g / ranks of rank g % ranks (all of them alone).
  for (std::size_t g = 0; g < p.total; ++g) {
    if (g % ranks != me) {
      add_broadcast_rows(*comm, static_cast<int>(g % ranks), stats, nullptr, 0, buffer);
      continue;
    }
    const std::size_t r = g / ranks;
    if (comm)
      p.load(r);
    else
      advance(r);
    const value* a = p.runs[r].find(name);
    if (!a)
      throw model_error(model_error::kind::invalid, "sequential calibration: input '" + name +
                                                        "' of node '" + node.name() +
                                                        "' is not computed");
    const activation_rows rows = rows_of(w, node, *a);
    if (comm)
      add_broadcast_rows(*comm, static_cast<int>(me), stats, rows.data, rows.rows, buffer);
    else
      stats.add(rows.data, rows.rows);
    p.fit_budget(r);
  }
  combine(stats, p.options);
  p.free_replacements(node_index);
  p.cached.reset();
  if (others > 0) {
    p.cached_name = name;
    p.cached = std::make_unique<activation_stats>(stats);
  }
  return stats;
}

void sequential_calibration::replace(const weight_info& w, value stored) {
  p_->replacements[w.name] = std::move(stored);
  p_->replacement_last_use[w.name] = last_main_use(w);
}

std::size_t sequential_calibration::replacements_held() const noexcept {
  return p_->replacements.size();
}

std::size_t sequential_calibration::runs_spilled() const noexcept {
  return static_cast<std::size_t>(std::count(p_->spilled.begin(), p_->spilled.end(), true));
}

void sequential_calibration::pass(const weight_info& w) {
  impl& p = *p_;
  const int node_index = first_main_use(w);
  if (node_index < 0) {
    if (!p.subgraph_done) stats_for(w);  // the one subgraph pass, with the replacements so far
    return;
  }
  // The reader count and the siblings' cache as stats_for leaves them.
  const std::string& name = p.m.proto.graph().node(node_index).input(0);
  if (--p.readers[name] == 0 && p.cached && p.cached_name == name) p.cached.reset();
  for (std::size_t r = 0; r < p.runs.size(); ++r) {
    if (p.runs[r].next_node() >= node_index) continue;
    p.load(r);  // as stats_for: spilled runs come back, go on, and fit the budget again
    p.ex.advance(p.runs[r], node_index, p.hooks);
    p.fit_budget(r);
  }
  p.free_replacements(node_index);
}

}  // namespace onnx
}  // namespace int4q

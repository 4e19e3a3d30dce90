// A CPU executor for ONNX graphs: runs a model on given inputs in fp32 (fp16/bf16/fp64 tensors
// are computed in fp32), so that int4q can calibrate (activations reaching each MatMul) and
// evaluate (int4q eval) without another runtime. BLAS for MatMul.
//
// Memory (issue 12): weights stay in the model in their stored type (fp16, bf16, fp32, ...;
// external data stays on disk) and are converted to the executor's fp32/int64 values when
// needed, so the executor's memory does not grow with the model:
// - initializers of at most small_initializer_bytes (64 KiB stored: biases, norms, shape
//   constants, masks) are converted once, when the executor is built;
// - larger ones are converted when a node that reads them runs, external data by positioned
//   reads of 4 MiB pieces converted straight into the value (tensor_reader: no whole-tensor
//   byte copy), into a weight cache shared by the executor's runs: least recently used first out
//   once its values pass executor_options::weight_cache_bytes (default 1 GiB). A value a node
//   reads stays alive while the node runs even if the cache drops it.
// Peak memory for weights: the small initializers, plus the cache bound, plus the large operands
// of the running node (a tensor larger than the whole cache is converted for each use and not
// kept). Outputs are bit-identical for any cache size (0: convert at every use) and thread count.
//
// Work in progress (issue 4): the operators of GPT-2-style torch exports (the devgpt model),
// elementwise math and logic, reductions and common shape operators are implemented;
// supported_ops() lists them. A graph using anything else is refused before any work starts,
// with every unsupported operator named.
#ifndef INT4Q_ONNX_EXECUTOR_HPP
#define INT4Q_ONNX_EXECUTOR_HPP

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <int4q/onnx/model.hpp>

namespace int4q {
namespace onnx {

/// Element type of a value inside the executor: float for every floating type, int64 for
/// every integer type, bool.
enum class value_type { float32, int64, boolean };

/// A dense row-major tensor. Float values live in `f`, integers and booleans (0/1) in `i`.
struct value {
  value_type type = value_type::float32;
  std::vector<std::int64_t> shape;
  std::vector<float> f;
  std::vector<std::int64_t> i;

  std::size_t size() const noexcept;
  static value floats(std::vector<std::int64_t> shape, std::vector<float> data);
  static value ints(std::vector<std::int64_t> shape, std::vector<std::int64_t> data,
                    value_type type = value_type::int64);
};

/// A TensorProto (inline or external data of `m`) as a value. Throws model_error.
value to_value(const model& m, const ::onnx::TensorProto& t);
/// The same through `reader` (its open data files, piece-by-piece conversion).
value to_value(const tensor_reader& reader, const ::onnx::TensorProto& t);

/// Initializers whose stored payload is at most this many bytes are converted when the executor
/// is built and kept; larger ones go through the weight cache.
inline constexpr std::size_t small_initializer_bytes = std::size_t{64} << 10;

/// How an executor runs.
struct executor_options {
  /// Of the executor's own parallel loops (MatMul/Gemm/Conv row blocks, attention heads,
  /// elementwise and row-wise operators in fixed items; 0 = all cores).
  std::size_t threads = 0;
  /// Bytes of converted large initializers kept between uses (LRU). The default, 1 GiB, holds a
  /// whole Llama-7B layer in fp32 (q, k, v, o: 4 x 64 MiB; gate, up, down: 3 x 172 MiB; 0.75
  /// GiB), so sequential calibration, which runs every paused batch over the same stretch of a
  /// layer one batch after another, converts each weight once per stretch, not once per batch.
  /// 0: convert at every use (least memory; outputs are the same).
  std::size_t weight_cache_bytes = std::size_t{1} << 30;
  /// Bytes of freed activation buffers kept from one run to the next, whose outputs then reuse
  /// them instead of faulting in fresh memory (within a run, freed buffers are reused up to the
  /// run's peak of live values). 0: a run gives every buffer back when it finishes. Outputs are
  /// the same either way.
  std::size_t kept_buffer_bytes = std::size_t{256} << 20;
};

/// The operators the executor implements (default domain), sorted.
std::vector<std::string> supported_ops();

/// Where a run's wall time went (run_hooks::profile): accumulated over every run given the same
/// profile, main graph and subgraphs together. Only measured when asked (two clock reads per
/// node); never changes what a run computes.
struct run_profile {
  struct entry {
    std::size_t calls = 0;
    double seconds = 0;
  };
  /// Time inside each operator, by registry key (op_type; "<domain>::<op_type>" outside the
  /// default domain): the operator's arithmetic, its output allocation and copies.
  std::map<std::string, entry> ops;
  /// Converting large initializers to the executor's values (weight cache misses; included in
  /// `inputs`).
  entry weight_conversion;
  /// Resolving each node's inputs (environment and initializer lookups, weight conversion).
  entry inputs;
  /// In run_hooks::before_node (statistics collection, weight swaps).
  entry hooks;
  /// Storing outputs and freeing values after their last reader.
  entry release;
  /// Whole runs (run(), or each advance()/finish()), everything above included.
  entry total;
};

/// What run() tells a caller while it runs the main graph (all optional).
struct run_hooks {
  /// Called before each node (of the main graph and of subgraphs) with its index in its graph,
  /// the node (its address identifies it: it is the model's own NodeProto) and its inputs
  /// (nullptr for absent optional inputs). It may replace an input pointer with a value it
  /// owns and keeps alive until run() returns (sequential calibration swaps a weight for its
  /// quantized version this way). Statistics collection reads the activations here.
  std::function<void(int node_index, const ::onnx::NodeProto& node,
                     std::vector<const value*>& inputs)>
      before_node;
  /// Optional: whether before_node will replace input `name` of `node` (sequential calibration:
  /// a weight already quantized). Such an input that is a large initializer is handed to
  /// before_node as nullptr instead of being converted first, and converted only if the hook
  /// leaves it null. Unset: every input is resolved before the hook.
  std::function<bool(const ::onnx::NodeProto& node, const std::string& name)> replaces;
  /// Optional: accumulates where the run's time goes (the caller's; one run at a time).
  run_profile* profile = nullptr;
};

/// Runs the main graph of a model. Construction checks the graph: every operator must be
/// supported (model_error unsupported, listing all the others), the graph must be sorted.
class executor {
 public:
  /// `threads`: of the executor's own parallel loops (MatMul/Gemm/Conv row blocks, attention
  /// heads; 0 = all cores). Outputs do not depend on it when BLAS runs single-threaded (the
  /// int4q CLI sets that): each block is one BLAS call with the same arithmetic.
  explicit executor(const model& m, std::size_t threads = 0);
  executor(const model& m, const executor_options& options);

  /// Runs the graph; `inputs` by graph input name (initializers that are also inputs may be
  /// overridden, missing ones keep their initializer). Returns the graph outputs by name.
  /// Throws model_error naming the node for bad inputs or shapes.
  std::map<std::string, value> run(const std::map<std::string, value>& inputs) const;
  std::map<std::string, value> run(const std::map<std::string, value>& inputs,
                                   const run_hooks& hooks) const;

  /// A run in progress, paused between nodes of the main graph: calibration interleaves it
  /// with quantization (run up to a weight's node, read its input, quantize the weight, go on
  /// with the quantized weight swapped in by a hook). Holds the live values only.
  class session {
   public:
    session(session&&) noexcept;
    session& operator=(session&&) noexcept;
    ~session();
    /// Index of the next main-graph node to run (node_size() when finished).
    int next_node() const noexcept;
    /// A value live at this point (an input, a computed value not yet freed, an initializer);
    /// nullptr when there is none. A large initializer is converted (or taken from the cache)
    /// and held by the session until its next advance() or finish().
    const value* find(const std::string& name) const;
    /// Bytes of the data of the values the session holds (its inputs and the computed values
    /// still live; initializers are the executor's, not the session's).
    std::size_t value_bytes() const noexcept;
    /// Moves the values the session holds out of it, sorted by name (calibration writes the
    /// paused runs' activations to a scratch file this way); the session keeps its place and
    /// must get them back with restore_values() before it runs on or is read.
    std::vector<std::pair<std::string, value>> take_values();
    /// Gives back the values take_values() took.
    void restore_values(std::vector<std::pair<std::string, value>> values);

   private:
    friend class executor;
    struct state;
    explicit session(std::unique_ptr<state> s);
    std::unique_ptr<state> s_;
  };

  /// Binds the inputs (checked as in run()); no node runs yet.
  session start(const std::map<std::string, value>& inputs) const;
  /// Runs the main graph's nodes from s.next_node() up to, excluding, `end_node`.
  void advance(session& s, int end_node, const run_hooks& hooks = {}) const;
  /// Runs the rest and returns the graph outputs (the session is finished then).
  std::map<std::string, value> finish(session& s, const run_hooks& hooks = {}) const;

  struct graph_plan;
  struct weight_cache;
  struct spare_buffers;

 private:
  const model& m_;
  std::size_t threads_ = 0;
  /// The main graph and, for each subgraph (If branches), its small initializers converted once,
  /// its large ones by tensor, and the index of the last node reading each name (values are
  /// freed after it).
  std::shared_ptr<const graph_plan> plan_;
  /// Large initializers converted, shared by the runs (thread-safe).
  std::shared_ptr<weight_cache> cache_;
  /// Buffers a finished run left for the next one (executor_options::kept_buffer_bytes).
  std::shared_ptr<spare_buffers> spare_;
};

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_EXECUTOR_HPP

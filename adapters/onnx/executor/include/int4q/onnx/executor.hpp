// A CPU executor for ONNX graphs: runs a model on given inputs in fp32 (fp16/bf16/fp64 tensors
// are computed in fp32), so that int4q can calibrate (activations reaching each MatMul) and
// evaluate (int4q eval) without another runtime. BLAS for MatMul.
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

/// The operators the executor implements (default domain), sorted.
std::vector<std::string> supported_ops();

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
};

/// Runs the main graph of a model. Construction checks the graph: every operator must be
/// supported (model_error unsupported, listing all the others), the graph must be sorted.
class executor {
 public:
  /// `threads`: of the executor's own parallel loops (MatMul/Gemm/Conv row blocks, attention
  /// heads; 0 = all cores). Outputs do not depend on it when BLAS runs single-threaded (the
  /// int4q CLI sets that): each block is one BLAS call with the same arithmetic.
  explicit executor(const model& m, std::size_t threads = 0);

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
    /// nullptr when there is none.
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

 private:
  const model& m_;
  std::size_t threads_ = 0;
  /// The main graph and, for each subgraph (If branches), its initializers converted once and
  /// the index of the last node reading each name (values are freed after it).
  std::shared_ptr<const graph_plan> plan_;
};

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_EXECUTOR_HPP

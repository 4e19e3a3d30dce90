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
#include <map>
#include <string>
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

/// Runs the main graph of a model. Construction checks the graph: every operator must be
/// supported (model_error unsupported, listing all the others), the graph must be sorted.
class executor {
 public:
  explicit executor(const model& m);

  /// Runs the graph; `inputs` by graph input name (initializers that are also inputs may be
  /// overridden, missing ones keep their initializer). Returns the graph outputs by name.
  /// Throws model_error naming the node for bad inputs or shapes.
  std::map<std::string, value> run(const std::map<std::string, value>& inputs) const;

 private:
  const model& m_;
  /// The initializers as values, converted once; run() reads them in place.
  std::map<std::string, value> initializers_;
  /// Index of the last node reading each name (values are freed after it), graph outputs kept.
  std::map<std::string, int> last_use_;
};

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_EXECUTOR_HPP

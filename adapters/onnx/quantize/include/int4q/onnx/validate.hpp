// The whole-model validation pass: graph structure, every tensor's type, dims and payload, the
// shapes of MatMul/Gemm against their constant weights, memory, and non-finite values, checked
// before any work so that a bad model is refused with a message naming what is wrong.
#ifndef INT4Q_ONNX_VALIDATE_HPP
#define INT4Q_ONNX_VALIDATE_HPP

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <int4q/onnx/model.hpp>
#include <int4q/onnx/quantize_model.hpp>

namespace int4q {
namespace onnx {

struct validate_options {
  /// Names of the tensors that will be quantized (weights, embedding tables): a NaN/Inf in one
  /// of them is an error, in any other float tensor a warning; their memory estimate is twice
  /// their float32 size. Ignored when `quantize` is set.
  std::set<std::string> quantized;
  /// When set, `quantized` is taken as quantized_tensors(m, *quantize), computed once the
  /// structure and tensor checks have passed (the selection needs a sound graph), plus the
  /// stored source of each such weight or table read through a constant path.
  const quantize_options* quantize = nullptr;
  /// The machine's memory in bytes (the CLI: physical pages * page size); 0 = unknown, no
  /// memory check. The library never reads it from the system itself.
  std::uint64_t available_memory_bytes = 0;
  /// Whether int4q will hold every tensor as float32 (the executor: eval, calibrated methods),
  /// so that each is checked against the memory; false: only the quantized ones are.
  bool materializes_all = true;
  /// Read every float initializer and Constant tensor for NaN/Inf (one streaming read of the
  /// weights, external data included). false: structure, tensors, shapes and memory only.
  bool check_values = true;
};

struct validation_report {
  /// Non-fatal findings, one line each (a NaN in a tensor that stays float, ...).
  std::vector<std::string> warnings;
  std::uint64_t tensors = 0;        ///< tensors checked (initializers, attributes, subgraphs)
  std::uint64_t nodes = 0;          ///< nodes checked, subgraphs and function bodies included
  std::uint64_t scanned_bytes = 0;  ///< float payload bytes read for NaN/Inf
  double seconds = 0;
};

/// Checks the whole model, in this order, and throws model_error for the first problem found
/// (the message names the file, the node or tensor, and what to do):
///
/// 1. Graph structure, in the main graph and every subgraph (GRAPH/GRAPHS attributes): unique
///    graph inputs, initializer names and node outputs (a node output may not redefine a graph
///    input or initializer); every node input is "" (omitted), a graph input, an initializer, a
///    sparse initializer, an output of an earlier node, or (in a subgraph) a value visible in
///    the enclosing graphs at the node holding it; every graph output is defined. Nodes must be
///    listed in topological order (ONNX requires it and int4q's executor and writers rely on
///    it): a cycle and an out-of-order node are both `invalid`, the message telling which.
/// 2. Every tensor (initializers, sparse initializers' values and indices, Constant and other
///    attribute tensors, in subgraphs and functions too): a known data type (UNDEFINED:
///    `invalid`; a number int4q does not know: `unsupported`), non-negative dims, element count
///    and byte size without overflow, and a payload that matches the dims (raw_data bytes, or
///    the count of float_data / int32_data / int64_data / double_data / uint64_data /
///    string_data for the type; external data: a valid reference, its range checked by
///    load_model). Sparse tensors are checked, not read for values.
/// 3. Every MatMul/Gemm (default domain) with a constant B: B's rank (Gemm: 2-D), A's last
///    dimension (Gemm: per transA) against B's K (per transB), and a Gemm bias C
///    unidirectionally broadcastable to [M, N], wherever the shapes are statically known (graph
///    inputs, value_info, graph outputs, initializers, Constant nodes, and MatMul/Gemm outputs
///    computed from those); unknown dimensions are not checked.
/// 4. Memory: a tensor whose float32 size (twice that when it is quantized) exceeds
///    `available_memory_bytes` is `invalid`, naming the tensor, its dims and the bytes needed
///    (every tensor with `materializes_all`, else the quantized ones).
/// 5. Values (check_values): every fp32/fp16/bf16/fp64 initializer and Constant tensor, inline
///    or external, read in chunks of at most 4 MiB: a NaN or Inf is an `invalid` error in a
///    tensor that will be quantized and a warning in any other initializer; in a Constant
///    node's tensor NaN is a warning, and +-Inf too when it is a MatMul/Gemm weight or Gather
///    table or their source on a constant path (find_weights, find_embeddings), else accepted
///    (exporters write attention masks as Constant -Inf).
validation_report validate_model(const model& m, const validate_options& options = {});

/// The names of the tensors quantize_model(m, options) would quantize: its selected weights and,
/// with --embeddings quantize, embedding tables. Reads no weight (only small Gemm biases).
/// Throws what quantize_model throws for bad options, before anything else.
std::set<std::string> quantized_tensors(const model& m, const quantize_options& options);

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_VALIDATE_HPP

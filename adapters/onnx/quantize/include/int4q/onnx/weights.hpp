// Finding the weights that can be quantized: MatMul and Gemm nodes whose weight is a constant
// (an initializer or a Constant node's output).
#ifndef INT4Q_ONNX_WEIGHTS_HPP
#define INT4Q_ONNX_WEIGHTS_HPP

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <int4q/onnx/graph.hpp>
#include <int4q/onnx/model.hpp>

namespace int4q {
namespace onnx {

/// One node that uses a weight.
struct weight_use {
  std::vector<graph_step> path;  ///< the graph holding the node (empty: the main graph)
  std::string scope;             ///< `path` for messages: "" or "<node>/<attribute>[/...]"
  int node_index = -1;           ///< index in that graph's node()
  std::string node_name;  ///< the node's name ("" if unnamed: then "<op>#<index>" is reported)
  std::string op_type;    ///< "MatMul" or "Gemm"
  bool trans_b = false;   ///< Gemm transB: the stored tensor is [N, K]
  float alpha = 1.0f;     ///< Gemm alpha (1 for MatMul)
  float beta = 1.0f;      ///< Gemm beta
  std::string bias;       ///< Gemm C input ("" when absent)
};

/// A constant weight used as the B operand of MatMul/Gemm nodes, in logical layout W[K, N].
///
/// Constant path: exporters often write B as a stored tensor followed by value-preserving or
/// layout nodes (Cast between float types, Transpose, Reshape, Flatten, Squeeze, Unsqueeze,
/// Identity, in any chain). Then `name` is B (the last node's output), `source` the stored
/// tensor, `path_nodes` the nodes in between; `type` and `dims` are B's (what the MatMul sees).
struct weight_info {
  std::string name;  ///< tensor name: the B input of the uses (initializer or Constant output,
                     ///< or the output of a constant path)
  std::vector<graph_step> defined_in;  ///< the graph holding the source (and the path nodes)
  bool from_constant_node = false;     ///< the source is a Constant node's output
  int constant_node_index = -1;        ///< index in the defined_in graph
  elem_type type = elem_type::other;   ///< B's type (after the path's Casts)
  std::vector<std::int64_t> dims;      ///< B's dims (as stored when there is no path)
  std::string source;                  ///< the stored tensor (== name without a path)
  std::vector<int> path_nodes;  ///< indices in defined_in of the path's nodes, source side first
  elem_type source_type = elem_type::other;
  std::vector<std::int64_t> source_dims;  ///< as stored
  std::size_t k = 0, n = 0;               ///< logical reduction size and output size
  std::vector<weight_use> uses;  ///< every MatMul/Gemm using it as B (shared weights: several)
  bool quantizable = false;
  std::string reason;       ///< why not, when !quantizable
  bool is_lm_head = false;  ///< the projection to the logits (feeds a graph output)
};

/// Every MatMul/Gemm (default domain) with its B operand, quantizable or not (with the reason:
/// not constant, not 2-D, not a float type, Gemm with transA, uses that disagree on transB, ...),
/// in the main graph and in subgraphs (GRAPH/GRAPHS attributes: If branches, Loop/Scan bodies,
/// recursively). Ordered by first use, nodes in graph order with a node's subgraphs visited
/// right after it.
///
/// Scoping follows ONNX: a name B is looked up from the node's graph outwards; the first graph
/// that defines it (an initializer, a graph input, a node output) is where it lives, so a
/// subgraph's own name shadows an outer one. A weight is that (graph, name) pair: uses of one
/// main-graph initializer from several subgraphs are one shared weight.
///
/// A B computed by a constant path (see weight_info) from an initializer or Constant of the same
/// graph is a weight: the path's nodes must be Cast to a float type, Transpose, Reshape with a
/// constant shape, Flatten, Squeeze/Unsqueeze with constant axes or Identity (at most 32), and the
/// source and every tensor on the path read only by path nodes (other weights' paths may share a
/// prefix), else it is not quantizable with the reason.
///
/// Not quantizable: an initializer that is also a graph input (overridable), a B computed at run
/// time (by other ops) or a (sub)graph input, fp64 or non-float types, not 2-D, K or N of 0, Gemm
/// transA = 1, uses that disagree on the layout (MatMul or Gemm transB = 0 vs Gemm transB = 1), or
/// any other read of the tensor, in any graph (another op such as Gather for tied embeddings,
/// another operand slot, a graph or subgraph output). `is_lm_head` is set on every weight with a
/// main-graph use whose output reaches a graph output through at most 8 of: Identity, Reshape,
/// Flatten, Squeeze, Unsqueeze, Cast, Softmax, LogSoftmax, Sigmoid, or an Add/Sub with a constant
/// operand (a bias); it is a fact about the graph, set whether or not the weight is quantizable.
/// Uses inside subgraphs are never taken for the lm_head.
std::vector<weight_info> find_weights(const model& m);

/// A Gather reading a constant table: the token embedding.
///
/// Constant path (as for weight_info): a table written as a stored tensor followed by
/// Cast/Transpose/Reshape/Flatten/Squeeze/Unsqueeze/Identity nodes (an fp16 table Cast to float
/// in mixed-precision exports). Then `name` is what the Gathers read (the last node's output),
/// `source` the stored tensor, `path_nodes` the nodes in between; `type` and `dims` are the
/// table's as the Gathers see it.
struct embedding_info {
  std::string name;  ///< the table (main-graph initializer or Constant output, or the output of
                     ///< a constant path)
  bool from_constant_node = false;  ///< the source is a Constant node's output
  int constant_node_index = -1;     ///< index in the main graph
  elem_type type = elem_type::other;
  std::vector<std::int64_t> dims;  ///< [V, D] (rows = vocabulary), as the Gathers see it
  std::string source;              ///< the stored tensor (== name without a path)
  std::vector<int> path_nodes;     ///< main-graph indices of the path's nodes, source side first
  elem_type source_type = elem_type::other;
  std::vector<std::int64_t> source_dims;  ///< as stored
  std::size_t rows = 0, cols = 0;         ///< V and D
  /// Every Gather (default domain, main graph, axis 0) with the table as data, in graph order
  /// (op_type "Gather"; `trans_b` unused).
  std::vector<weight_use> gathers;
  /// Tied uses: MatMul/Gemm nodes (main graph) reading the table as B directly or through a
  /// Transpose (perm [1, 0]). `trans_b` is true when the node multiplies by the table's
  /// transpose (W[K, N] = table^T: Gemm transB = 1 on the table, MatMul on its Transpose), the
  /// layout a lm_head needs; false when the node uses the table as [K, N] itself.
  std::vector<weight_use> tied;
  /// The Transpose nodes (main graph indices) between the table and tied uses.
  std::vector<int> transposes;
  bool quantizable = false;
  std::string reason;  ///< why not, when !quantizable
};

/// Every constant table read by a Gather in the main graph (the embeddings), whether it can be
/// quantized or not (reason: not 2-D, not float32/float16/bfloat16, a graph input, gathered on
/// axis 1, read by anything other than Gather axis 0, MatMul/Gemm B or a Transpose feeding
/// only those, read inside a subgraph, a graph output). A table may be the output of a constant
/// path (see embedding_info; at most 32 nodes, main graph, from a float initializer or Constant,
/// shapes and axes constants); the path's tensors may have other readers (then the writers keep
/// the path for them). Ordered by first Gather. find_weights is
/// unchanged: a tied table stays "not quantizable" there (read by a Gather); quantize_model
/// quantizes it as an embedding with --embeddings quantize and shares it with the tied uses.
std::vector<embedding_info> find_embeddings(const model& m);

/// The name a report and --include/--exclude use for a node: its name, or "<op>#<index>" (in a
/// subgraph: "<scope>/<op>#<index>").
std::string display_name(const weight_use& u);

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_WEIGHTS_HPP

// The blocks of a model's main graph for block-wise tuning: the stretches of nodes between two
// points of its residual stream, found from the graph's structure (not from names).
//
// A residual Add is an Add node one of whose inputs (the stream) is an ancestor of the other
// (the branch computed from it): x + f(x). The residual stream is the longest chain of residual
// Adds in which each Add's stream input is the previous Add's output (a transformer's
// x_0 -> +attn -> x_1 -> +mlp -> x_2 ...; an Add inside an activation such as tanh-GELU's
// x + c x^3 forms no chain). Its points are the first Add's stream input and every Add's output.
// Block i runs from the node after the Add that computed point i (block 0: from the graph's
// first node, embeddings included) through the Add that computes point i + 1; the nodes after
// the last Add (final normalization, lm_head) form the tail block. Blocks are consecutive ranges of
// the graph's node order, so a run paused at a block's first node holds everything the block reads.
// A graph without a residual stream is one block.
#ifndef INT4Q_ONNX_BLOCKS_HPP
#define INT4Q_ONNX_BLOCKS_HPP

#include <string>
#include <vector>

#include <int4q/onnx/model.hpp>

namespace int4q {
namespace onnx {

/// Main-graph nodes [first_node, end_node) between two points of the residual stream.
struct graph_block {
  int first_node = 0, end_node = 0;
  std::string input;   ///< the stream point it starts from ("" for a graph without a stream)
  std::string output;  ///< the stream point it computes ("" for the tail block)
};

/// The blocks covering nodes [0, node_size) of the main graph, in order (see the header).
std::vector<graph_block> find_blocks(const model& m);

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_BLOCKS_HPP

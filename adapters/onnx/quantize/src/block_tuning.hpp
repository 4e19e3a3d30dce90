// Internal to quantize_model: method block, block-wise output-aware tuning (quantize_model.hpp,
// method::block). For each block of the graph (find_blocks) holding weights to tune, in order:
//
//   1. the float runs (one per calibration batch, paused at the block's first node) advance
//      through the block; its outputs are the targets;
//   2. each weight's tuned_rounding starts at round to nearest; `iterations` steps, step t on
//      batch order[t mod B] (a seeded shuffle per pass over the B batches): the block runs
//      forward (stretch_gradient) on the quantized runs' values at its first node with the
//      weights' current dequantized values, L = mean over the outputs' elements of
//      (y - target)^2, backward gives dL/dWq, and every parameter moves by lr_t against the sign
//      of its gradient, lr_t = lr (1 - t / iterations);
//   3. the parameters of the lowest step loss are kept, the weights quantized with them, and the
//      quantized runs advance through the block with those values.
//
// Memory: the calibration batches' live values at the current point twice (float and quantized
// runs), the targets of one block, and one block's weights with their parameters and gradients.
#ifndef INT4Q_ONNX_SRC_BLOCK_TUNING_HPP
#define INT4Q_ONNX_SRC_BLOCK_TUNING_HPP

#include <cstddef>
#include <functional>
#include <vector>

#include <int4q/onnx/quantize_model.hpp>

#include "writers.hpp"

namespace int4q {
namespace onnx {
namespace detail {

/// Fills job.weight and job.q of every job (method block: tuned; rtn: round to nearest, its
/// values in the quantized runs from the start) and their report entries, calling `done(j,
/// seconds)` for job j as soon as it is final (blocks in graph order). Throws model_error before
/// any work for what the method cannot do (no calibration data, a weight to tune used in
/// several blocks, inside a subgraph or through a constant path, a calibrated method other
/// than block), and while running for a block it cannot differentiate (naming the node).
void tune_blocks(const model& m, const quantize_options& options, std::vector<weight_job>& jobs,
                 quantize_report& report,
                 const std::function<void(std::size_t job, double seconds)>& done);

}  // namespace detail
}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_SRC_BLOCK_TUNING_HPP

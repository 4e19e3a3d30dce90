// Reverse-mode gradients over a stretch of consecutive main-graph nodes of an ONNX model
// (issue 15): block-wise tuning of quantization parameters (rounding offsets, group ranges) by
// gradient descent on the error of a block's output needs dL/dW for the block's weights given
// dL/d(block output). int4q computes them itself, on the executor's own operators, with no
// other runtime.
//
// forward() runs the stretch with the executor's operator functions (so its outputs equal
// executor::run()'s bit for bit) and keeps what backward() needs; backward() walks the nodes in
// reverse and applies each operator's vector-Jacobian product (VJP). Only float values carry
// gradients. A node is differentiated only when one of its float inputs depends on a `wrt`
// name and it has a float output ("requires grad" propagated forward from the wrt names); every
// other node only runs forward. A node on that path whose operator has no VJP is refused by
// forward() (model_error naming the node and the operator: "cannot differentiate through ...").
//
// VJPs (g = dL/dY, the upstream gradient; a gradient of an operand that was broadcast is the
// sum of its full-size gradient over the broadcast axes):
//   Add/Sub: dA = g, dB = +-g.  Mul: dA = g B, dB = g A.  Div: dA = g / B, dB = -g Y / B.
//   MatMul (numpy batched/broadcast): dA = g B^T, dB = A^T g (summed over broadcast batches;
//     a weight B [K, N] under A [..., M, K]: one GEMM over all rows).
//   Gemm: Y = alpha op(A) op(B) + beta C: dop(A) = alpha g op(B)^T, dop(B) = alpha op(A)^T g,
//     dC = beta g (summed to C's shape).
//   Softmax along an axis: dX = Y (g - sum_axis(g Y)).
//   LayerNormalization: xh = (x - mean) r, r = 1 / sqrt(var + eps) per row; dscale = sum_rows
//     g xh, dbias = sum_rows g, dX = r (gs - mean(gs) - xh mean(gs xh)) with gs = g scale.
//   Erf: g 2/sqrt(pi) exp(-x^2).  Sqrt: g / (2 Y).  Reciprocal: -g Y^2.  Pow(x, p constant):
//   g p x^(p-1).  Exp: g Y.  Sigmoid: g Y (1 - Y).  Tanh: g (1 - Y^2).  Relu: g [x > 0].  Neg.
//   Abs: g sign(x).  Log: g / x.  Sin: g cos(x).  Cos: -g sin(x).  Softplus: g sigmoid(x).
//   LeakyRelu: g (x > 0 ? 1 : alpha).  Clip: g where min <= x <= max.  Dropout (inference): g.
//   LogSoftmax: dX = g - exp(Y) sum_axis(g).  Sum / Mean: g (/ count) to each input.
//   ReduceMean / ReduceSum: g spread back over the reduced axes (/ count for the mean).
//   Cast (float to float), Identity: g unchanged (a cast to fp16/bf16 is passed straight
//   through: its rounding has no useful derivative).
//   Where: g to the branch each element came from, 0 to the other.
//   Reshape, Flatten, Squeeze, Unsqueeze: g with the input's shape.  Transpose: g transposed by
//   the inverse permutation.  Expand: g summed over the expanded axes.  Gather (data input):
//   the rows of g added back to the rows they came from (scatter-add).
//   Split: the outputs' gradients concatenated.  Concat: each input's part of g.
//   Slice, Tile: each output element is some input element; dX is g scattered
//   (added) back to where the elements came from, found by running the operator itself on the
//   integers 0..n-1 in place of the float inputs, so the index logic is the forward's own.
//   com.microsoft: Skip(Simplified)LayerNormalization (s = x + skip + bias, y = norm(s), and s
//   as output 3: ds = dnorm + g3), SimplifiedLayerNormalization (RMS: no mean), RotaryEmbedding
//   (a rotation: dX = the operator applied to g with the sine negated), Gelu, BiasGelu,
//   FastGelu (tanh form), QuickGelu (x sigmoid(alpha x)); default-domain Gelu (both forms).
//   com.microsoft MultiHeadAttention and GroupQueryAttention without past key/value (a prompt's
//   block): per head P = softmax(X), X = cap(scale Q K^T) + bias (+ masks), O = P V:
//   dV = P^T dO, dX = P (dP - rowsum(dP P)) with dP = dO V^T, dQ = scale (dX cap') K,
//   dK = scale (dX cap')^T Q; MHA's bias, key_padding_mask, attention_bias, unidirectional;
//   GQA's packed QKV, do_rotary (undone on dQ, dK), softcap, local window, smooth_softmax /
//   head_sink (no gradient to the sink), attention_bias; present key/value outputs pass their
//   gradients to key and value.
//   The statistics outputs of the norms (mean, inverse std) pass no gradient (a nonzero one is
//   refused).
//
// Memory: a pass keeps every value the stretch computes until backward() (which frees them as
// it goes), plus the gradients live at one time; initializers the stretch reads are converted
// once per stretch_gradient and kept (the weights of one block). A pass refers to the `inputs`
// and `params` values it was given: they must outlive it (or its backward()).
//
// Deterministic: the same results for any thread count (fixed work partitions, sums in a fixed
// order; GEMMs in the executor's fixed row blocks, byte-identical when BLAS runs single-threaded,
// as the int4q CLI sets it).
#ifndef INT4Q_ONNX_GRADIENT_HPP
#define INT4Q_ONNX_GRADIENT_HPP

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>

namespace int4q {
namespace onnx {

/// Reverse-mode differentiation of the main-graph nodes [first_node, end_node) of a model.
class stretch_gradient {
 public:
  /// Throws model_error if the range is bad (or a node's operator is not in the executor).
  /// threads: as executor_options::threads (0 = all cores). `m` must outlive this object.
  stretch_gradient(const model& m, int first_node, int end_node, std::size_t threads = 0);
  ~stretch_gradient();
  stretch_gradient(const stretch_gradient&) = delete;
  stretch_gradient& operator=(const stretch_gradient&) = delete;

  /// Names the stretch reads that are neither computed in it nor initializers (computed before
  /// first_node, or graph inputs), sorted.
  const std::vector<std::string>& external_inputs() const;
  /// Names computed in the stretch that are read after it or are graph outputs, sorted.
  const std::vector<std::string>& outputs() const;

  /// A forward pass with what backward needs (opaque, movable).
  class pass {
   public:
    pass();
    pass(pass&&) noexcept;
    pass& operator=(pass&&) noexcept;
    ~pass();

   private:
    friend class stretch_gradient;
    struct state;
    std::unique_ptr<state> s_;
  };

  /// Runs the stretch. inputs: a value for each external input. params: values replacing
  /// initializers (or external inputs) by name (the tuner's dequantized weights). wrt: float
  /// names (initializers, params or external inputs) whose gradients backward() returns.
  /// Initializers not in params are converted from the model once and kept. Throws model_error
  /// for a missing input, an unknown or non-float wrt name, a node on the gradient path
  /// without a VJP, or a node's own error.
  pass forward(const std::map<std::string, const value*>& inputs,
               const std::map<std::string, const value*>& params,
               const std::vector<std::string>& wrt) const;

  /// An output (one of outputs()) of a pass. Throws model_error for another name.
  const value& output(const pass& p, const std::string& name) const;

  /// dL/d(each wrt name), same shape as that value, given dL/d(output) for some of outputs()
  /// (the others count as zero). Consumes the pass's saved values (a second call throws).
  std::map<std::string, value> backward(pass& p,
                                        const std::map<std::string, value>& output_grads) const;

 private:
  struct impl;
  std::unique_ptr<impl> d_;
};

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_GRADIENT_HPP

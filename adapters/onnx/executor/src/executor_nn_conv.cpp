// Convolution and pooling: Conv (im2col + one sgemm per group), ConvTranspose (sgemm + col2im),
// MaxPool (with Indices), AveragePool, GlobalAveragePool, GlobalMaxPool. Spatial ranks 1-3 are
// computed as 3-D with leading dimensions of size 1.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "executor_nn.hpp"

namespace int4q {
namespace onnx {
namespace exec {

namespace {

using dims3 = std::array<std::int64_t, 3>;

/// The sliding-window geometry of a convolution or pool, spatial dimensions padded to three
/// (leading size-1 dimensions with kernel 1, stride 1, dilation 1, no padding).
struct window {
  std::size_t spatial = 0;  ///< the input's spatial rank (1-3)
  dims3 in{1, 1, 1}, kernel{1, 1, 1}, stride{1, 1, 1}, dilation{1, 1, 1};
  dims3 pad_begin{0, 0, 0}, pad_end{0, 0, 0}, out{1, 1, 1};
  std::size_t in_size() const { return static_cast<std::size_t>(in[0] * in[1] * in[2]); }
  std::size_t out_size() const { return static_cast<std::size_t>(out[0] * out[1] * out[2]); }
  std::size_t kernel_size() const {
    return static_cast<std::size_t>(kernel[0] * kernel[1] * kernel[2]);
  }
};

struct window_options {
  bool ceil_mode = false;  ///< pools: output size rounded up
};

/// The attribute `name` (one value per spatial dimension, `fallback` when absent) checked for
/// length and positivity.
shape_t spatial_attr(const node_context& c, const char* name, std::size_t n,
                     std::int64_t fallback) {
  shape_t v = attr_ints(c.node, name);
  if (v.empty()) v.assign(n, fallback);
  if (v.size() != n)
    c.fail(std::string(name) + " has " + std::to_string(v.size()) + " values for " +
           std::to_string(n) + " spatial dimensions");
  for (const std::int64_t x : v)
    if (x < 1) c.fail(std::string(name) + " " + dims_string(v) + " must be positive");
  return v;
}

/// The window of an input of shape [N, C, spatial...] and a kernel of `kernel` (spatial) from the
/// node's strides, dilations, pads and auto_pad: NOTSET out = floor((in + pads - ek) / s) + 1
/// (ceil with ceil_mode, dropping a last window that would start in the end padding), VALID
/// the same without pads, SAME_UPPER/SAME_LOWER out = ceil(in / s) with the total padding
/// (out - 1) * s + ek - in split evenly, the odd one at the end (UPPER) or the beginning (LOWER);
/// ek = (k - 1) * dilation + 1.
window make_window(const node_context& c, const shape_t& x_shape, const shape_t& kernel,
                   const window_options& opt) {
  if (x_shape.size() < 3 || x_shape.size() > 5)
    c.fail("input " + dims_string(x_shape) + " must have rank 3 to 5 ([N, C, 1 to 3 spatial])");
  const std::size_t n = x_shape.size() - 2, off = 3 - n;
  if (kernel.size() != n)
    c.fail("kernel " + dims_string(kernel) + " does not match the input " + dims_string(x_shape));
  window w;
  w.spatial = n;
  const shape_t strides = spatial_attr(c, "strides", n, 1);
  const shape_t dilations = spatial_attr(c, "dilations", n, 1);
  shape_t pads = attr_ints(c.node, "pads");
  if (pads.empty()) pads.assign(2 * n, 0);
  if (pads.size() != 2 * n)
    c.fail("pads has " + std::to_string(pads.size()) + " values for " + std::to_string(n) +
           " spatial dimensions (want " + std::to_string(2 * n) + ")");
  const AttributeProto* ap = find_attr(c.node, "auto_pad");
  const std::string auto_pad = ap ? ap->s() : "NOTSET";
  if (auto_pad != "NOTSET" && auto_pad != "VALID" && auto_pad != "SAME_UPPER" &&
      auto_pad != "SAME_LOWER")
    c.fail("auto_pad '" + auto_pad + "' is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER");
  for (std::size_t k = 0; k < n; ++k) {
    const std::size_t q = off + k;
    w.in[q] = x_shape[2 + k];
    w.kernel[q] = kernel[k];
    w.stride[q] = strides[k];
    w.dilation[q] = dilations[k];
    if (kernel[k] < 1) c.fail("kernel " + dims_string(kernel) + " must be positive");
    const std::int64_t ek = (kernel[k] - 1) * dilations[k] + 1, in = w.in[q], s = strides[k];
    if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      w.out[q] = (in + s - 1) / s;
      const std::int64_t total = std::max<std::int64_t>(0, (w.out[q] - 1) * s + ek - in);
      const std::int64_t small = total / 2, large = total - small;
      w.pad_begin[q] = auto_pad == "SAME_UPPER" ? small : large;
      w.pad_end[q] = auto_pad == "SAME_UPPER" ? large : small;
    } else {
      if (auto_pad == "NOTSET") {
        w.pad_begin[q] = pads[k];
        w.pad_end[q] = pads[n + k];
        if (pads[k] < 0 || pads[n + k] < 0) c.fail("pads " + dims_string(pads) + " are negative");
      }
      const std::int64_t span = in + w.pad_begin[q] + w.pad_end[q] - ek;
      if (span < 0)
        c.fail("kernel extent " + std::to_string(ek) + " exceeds the padded input " +
               std::to_string(in + w.pad_begin[q] + w.pad_end[q]) + " of " + dims_string(x_shape));
      w.out[q] = (opt.ceil_mode ? (span + s - 1) / s : span / s) + 1;
      if (opt.ceil_mode && (w.out[q] - 1) * s >= in + w.pad_begin[q]) --w.out[q];
    }
  }
  return w;
}

/// The output shape [N, C, out...] of a window.
shape_t out_shape(const window& w, std::int64_t N, std::int64_t C) {
  shape_t s{N, C};
  for (std::size_t k = 3 - w.spatial; k < 3; ++k) s.push_back(w.out[k]);
  return s;
}

/// col[(c, kd, kh, kw), (od, oh, ow)] = x[c, od*s + kd*d - pad, ...] (0 in the padding).
/// x: [channels, in...], col: [channels * kernel_size, out_size].
void im2col(const float* x, std::size_t channels, const window& w, float* col) {
  const std::int64_t ID = w.in[0], IH = w.in[1], IW = w.in[2];
  const std::int64_t OD = w.out[0], OH = w.out[1], OW = w.out[2];
  const std::size_t out_n = w.out_size();
  float* row = col;
  for (std::size_t ch = 0; ch < channels; ++ch) {
    const float* xc = x + ch * w.in_size();
    for (std::int64_t kd = 0; kd < w.kernel[0]; ++kd) {
      for (std::int64_t kh = 0; kh < w.kernel[1]; ++kh) {
        for (std::int64_t kw = 0; kw < w.kernel[2]; ++kw, row += out_n) {
          const std::int64_t woff = kw * w.dilation[2] - w.pad_begin[2];
          for (std::int64_t od = 0; od < OD; ++od) {
            const std::int64_t id = od * w.stride[0] + kd * w.dilation[0] - w.pad_begin[0];
            float* plane = row + od * OH * OW;
            if (id < 0 || id >= ID) {
              std::fill(plane, plane + OH * OW, 0.0f);
              continue;
            }
            for (std::int64_t oh = 0; oh < OH; ++oh) {
              const std::int64_t ih = oh * w.stride[1] + kh * w.dilation[1] - w.pad_begin[1];
              float* dst = plane + oh * OW;
              if (ih < 0 || ih >= IH) {
                std::fill(dst, dst + OW, 0.0f);
                continue;
              }
              const float* src = xc + (id * IH + ih) * IW;
              if (w.stride[2] == 1 && woff >= 0 && woff + OW <= IW) {
                std::copy(src + woff, src + woff + OW, dst);
                continue;
              }
              for (std::int64_t ow = 0; ow < OW; ++ow) {
                const std::int64_t iw = ow * w.stride[2] + woff;
                dst[ow] = iw >= 0 && iw < IW ? src[iw] : 0.0f;
              }
            }
          }
        }
      }
    }
  }
}

/// The inverse scatter of im2col: y[c, od*s + kd*d - pad, ...] += col[(c, kd, kh, kw), (od, ...)]
/// where the position is inside y. Here `w.in` is col's grid (ConvTranspose's input) and
/// `w.out` is y's spatial shape.
void col2im_add(const float* col, std::size_t channels, const window& w, float* y) {
  const std::int64_t ID = w.in[0], IH = w.in[1], IW = w.in[2];
  const std::int64_t OD = w.out[0], OH = w.out[1], OW = w.out[2];
  const std::size_t in_n = w.in_size();
  const float* row = col;
  for (std::size_t ch = 0; ch < channels; ++ch) {
    float* yc = y + ch * w.out_size();
    for (std::int64_t kd = 0; kd < w.kernel[0]; ++kd) {
      for (std::int64_t kh = 0; kh < w.kernel[1]; ++kh) {
        for (std::int64_t kw = 0; kw < w.kernel[2]; ++kw, row += in_n) {
          for (std::int64_t id = 0; id < ID; ++id) {
            const std::int64_t od = id * w.stride[0] + kd * w.dilation[0] - w.pad_begin[0];
            if (od < 0 || od >= OD) continue;
            for (std::int64_t ih = 0; ih < IH; ++ih) {
              const std::int64_t oh = ih * w.stride[1] + kh * w.dilation[1] - w.pad_begin[1];
              if (oh < 0 || oh >= OH) continue;
              const float* src = row + (id * IH + ih) * IW;
              float* dst = yc + (od * OH + oh) * OW;
              for (std::int64_t iw = 0; iw < IW; ++iw) {
                const std::int64_t ow = iw * w.stride[2] + kw * w.dilation[2] - w.pad_begin[2];
                if (ow >= 0 && ow < OW) dst[ow] += src[iw];
              }
            }
          }
        }
      }
    }
  }
}

/// Depthwise convolution of one channel (one input and one output channel per group), where
/// a 1 x k sgemm would cost more than the arithmetic: y[o] += w[k] * x[o * s + k * d - pad] over
/// the kernel taps, one output row at a time. x: [in], w: [kernel], y: [out] (zeroed).
void depthwise_plane(const float* x, const float* wk, const window& w, float* y) {
  const std::int64_t IH = w.in[1], IW = w.in[2], OH = w.out[1], OW = w.out[2];
  for (std::int64_t kd = 0; kd < w.kernel[0]; ++kd) {
    for (std::int64_t kh = 0; kh < w.kernel[1]; ++kh) {
      for (std::int64_t kw = 0; kw < w.kernel[2]; ++kw) {
        const float wv = *wk++;
        const std::int64_t woff = kw * w.dilation[2] - w.pad_begin[2], sw = w.stride[2];
        // Output columns whose tap iw = ow * sw + woff lies in [0, IW).
        const std::int64_t lo = woff >= 0 ? 0 : (-woff + sw - 1) / sw;
        const std::int64_t hi = IW - 1 - woff < 0 ? 0 : std::min(OW, (IW - 1 - woff) / sw + 1);
        for (std::int64_t od = 0; od < w.out[0]; ++od) {
          const std::int64_t id = od * w.stride[0] + kd * w.dilation[0] - w.pad_begin[0];
          if (id < 0 || id >= w.in[0]) continue;
          for (std::int64_t oh = 0; oh < OH; ++oh) {
            const std::int64_t ih = oh * w.stride[1] + kh * w.dilation[1] - w.pad_begin[1];
            if (ih < 0 || ih >= IH) continue;
            const float* src = x + (id * IH + ih) * IW + woff;
            float* dst = y + (od * OH + oh) * OW;
            if (sw == 1) {
              for (std::int64_t ow = lo; ow < hi; ++ow) dst[ow] += wv * src[ow];
            } else {
              for (std::int64_t ow = lo; ow < hi; ++ow) dst[ow] += wv * src[ow * sw];
            }
          }
        }
      }
    }
  }
}

/// Conv: Y[n, m] = sum over the group's channels and the kernel of X * W, + B[m]. X [N, C, ...],
/// W [M, C / group, k...], B [M].
void op_conv(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& x = need_float(c, in, 0, "X");
  const value& wt = need_float(c, in, 1, "W");
  const value* bias = optional_input(in, 2);
  if (wt.shape.size() != x.shape.size())
    c.fail("W " + dims_string(wt.shape) + " and X " + dims_string(x.shape) + " differ in rank");
  shape_t kernel(wt.shape.begin() + 2, wt.shape.end());
  const shape_t ks = attr_ints(c.node, "kernel_shape");
  if (!ks.empty() && ks != kernel)
    c.fail("kernel_shape " + dims_string(ks) + " differs from W " + dims_string(wt.shape));
  const window w = make_window(c, x.shape, kernel, {});
  const std::int64_t group = attr_int(c.node, "group", 1);
  const std::int64_t N = x.shape[0], C = x.shape[1], M = wt.shape[0];
  if (group < 1 || C % group != 0 || M % group != 0 || wt.shape[1] * group != C)
    c.fail("group " + std::to_string(group) + " does not fit X " + dims_string(x.shape) +
           " and W " + dims_string(wt.shape) + " (want C = W[1] * group, M divisible by group)");
  if (bias && (bias->type != value_type::float32 || bias->size() != static_cast<std::size_t>(M)))
    c.fail("B must hold " + std::to_string(M) + " floats (one per output channel)");
  const auto Cg = static_cast<std::size_t>(C / group), Mg = static_cast<std::size_t>(M / group);
  const std::size_t K = Cg * w.kernel_size(), O = w.out_size(), I = w.in_size();
  value y =
      value::floats(out_shape(w, N, M), std::vector<float>(static_cast<std::size_t>(N * M) * O));
  bool pointwise = w.kernel_size() == 1;  // 1x1, stride 1, no padding: X is its own im2col
  for (std::size_t k = 0; k < 3; ++k)
    pointwise = pointwise && w.stride[k] == 1 && w.pad_begin[k] == 0 && w.pad_end[k] == 0;
  const bool depthwise = Cg == 1 && Mg == 1 && group > 1;
  std::vector<float> col(pointwise || depthwise ? 0 : K * O);
  for (std::int64_t n = 0; n < N; ++n) {
    if (depthwise) {
      for (std::int64_t g = 0; g < group; ++g)
        depthwise_plane(x.f.data() + static_cast<std::size_t>(n * C + g) * I,
                        wt.f.data() + static_cast<std::size_t>(g) * K, w,
                        y.f.data() + static_cast<std::size_t>(n * M + g) * O);
    }
    for (std::int64_t g = 0; g < (depthwise ? 0 : group); ++g) {
      const float* xg = x.f.data() + (static_cast<std::size_t>(n * C) + g * Cg) * I;
      const float* b = xg;
      if (!pointwise) {
        im2col(xg, Cg, w, col.data());
        b = col.data();
      }
      // Y_g [Mg, O] = W_g [Mg, K] @ col [K, O].
      gemm(false, false, std::size_t(Mg), std::size_t(O), std::size_t(K), 1.0f,
           wt.f.data() + g * Mg * K, std::size_t(K), b, std::size_t(O), 0.0f,
           y.f.data() + (static_cast<std::size_t>(n * M) + g * Mg) * O, std::size_t(O));
    }
    if (bias) {
      for (std::int64_t m = 0; m < M; ++m) {
        float* p = y.f.data() + static_cast<std::size_t>(n * M + m) * O;
        const float bm = bias->f[static_cast<std::size_t>(m)];
        for (std::size_t e = 0; e < O; ++e) p[e] += bm;
      }
    }
  }
  out.push_back(std::move(y));
}

/// ConvTranspose's window over X [N, C, ...] and W [C, M / group, k...] (rank checked): the
/// output size of each spatial axis, s * (in - 1) + output_padding + (k - 1) * d + 1 - pads,
/// its pads from output_shape or auto_pad SAME_* (the total split, the odd one at the end, or
/// at the beginning for SAME_LOWER), else from pads.
window conv_transpose_window(const node_context& c, const value& x, const value& wt) {
  const std::size_t n = x.shape.size() - 2, off = 3 - n;
  const shape_t kernel(wt.shape.begin() + 2, wt.shape.end());
  const shape_t strides = spatial_attr(c, "strides", n, 1);
  const shape_t dilations = spatial_attr(c, "dilations", n, 1);
  shape_t out_pad = attr_ints(c.node, "output_padding");
  if (out_pad.empty()) out_pad.assign(n, 0);
  shape_t pads = attr_ints(c.node, "pads");
  if (pads.empty()) pads.assign(2 * n, 0);
  shape_t output_shape = attr_ints(c.node, "output_shape");
  if (output_shape.size() == n + 2)
    output_shape.erase(output_shape.begin(), output_shape.begin() + 2);
  if (out_pad.size() != n || pads.size() != 2 * n ||
      (!output_shape.empty() && output_shape.size() != n))
    c.fail("output_padding, pads or output_shape do not match " + std::to_string(n) +
           " spatial dimensions");
  const AttributeProto* ap = find_attr(c.node, "auto_pad");
  const std::string auto_pad = ap ? ap->s() : "NOTSET";
  window w;
  w.spatial = n;
  for (std::size_t k = 0; k < n; ++k) {
    const std::size_t q = off + k;
    w.in[q] = x.shape[2 + k];
    w.kernel[q] = kernel[k];
    w.stride[q] = strides[k];
    w.dilation[q] = dilations[k];
    const std::int64_t full =
        strides[k] * (w.in[q] - 1) + out_pad[k] + (kernel[k] - 1) * dilations[k] + 1;
    std::int64_t target = -1;
    if (!output_shape.empty()) {
      target = output_shape[k];
    } else if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      target = w.in[q] * strides[k];
    }
    if (target >= 0) {
      const std::int64_t total = full - target;
      const std::int64_t small = total / 2, large = total - small;
      w.pad_begin[q] = auto_pad == "SAME_LOWER" ? large : small;
      w.pad_end[q] = auto_pad == "SAME_LOWER" ? small : large;
    } else if (auto_pad == "NOTSET") {
      w.pad_begin[q] = pads[k];
      w.pad_end[q] = pads[n + k];
    }
    w.out[q] = full - w.pad_begin[q] - w.pad_end[q];
    if (w.out[q] < 1)
      c.fail("the output would be empty along spatial dimension " + std::to_string(k));
  }
  return w;
}

/// ConvTranspose: Y[n, m, i*s + k*d - pad_begin] += X[n, c, i] * W[c, m, k] per group, + B[m].
/// X [N, C, ...], W [C, M / group, k...]. Output size s * (in - 1) + output_padding + (k - 1) * d
/// + 1 - pads; with output_shape (or auto_pad SAME_*: in * s) the total padding is derived from
/// it and split with the odd one at the end (SAME_UPPER, NOTSET) or beginning (SAME_LOWER).
void op_conv_transpose(const node_context& c, const model&, const inputs_t& in,
                       std::vector<value>& out) {
  const value& x = need_float(c, in, 0, "X");
  const value& wt = need_float(c, in, 1, "W");
  const value* bias = optional_input(in, 2);
  if (wt.shape.size() != x.shape.size() || x.shape.size() < 3 || x.shape.size() > 5)
    c.fail("X " + dims_string(x.shape) + " and W " + dims_string(wt.shape) +
           " must have the same rank, 3 to 5");
  const std::int64_t group = attr_int(c.node, "group", 1);
  const std::int64_t N = x.shape[0], C = x.shape[1];
  if (group < 1 || wt.shape[0] != C || C % group != 0)
    c.fail("group " + std::to_string(group) + " does not fit X " + dims_string(x.shape) +
           " and W " + dims_string(wt.shape) + " (want W[0] = C divisible by group)");
  const std::int64_t M = wt.shape[1] * group;
  if (bias && (bias->type != value_type::float32 || bias->size() != static_cast<std::size_t>(M)))
    c.fail("B must hold " + std::to_string(M) + " floats (one per output channel)");
  const window w = conv_transpose_window(c, x, wt);
  const auto Cg = static_cast<std::size_t>(C / group), Mg = static_cast<std::size_t>(M / group);
  const std::size_t K = Mg * w.kernel_size(), I = w.in_size(), O = w.out_size();
  value y =
      value::floats(out_shape(w, N, M), std::vector<float>(static_cast<std::size_t>(N * M) * O));
  std::vector<float> col(K * I);
  for (std::int64_t nn = 0; nn < N; ++nn) {
    for (std::int64_t g = 0; g < group; ++g) {
      // col [Mg * k, I] = W_g^T ([Cg, Mg * k] transposed) @ X_g [Cg, I].
      gemm(true, false, K, I, Cg, 1.0f, wt.f.data() + g * Cg * K, K,
           x.f.data() + (static_cast<std::size_t>(nn * C) + g * Cg) * I, I, 0.0f, col.data(), I);
      col2im_add(col.data(), Mg, w, y.f.data() + (static_cast<std::size_t>(nn * M) + g * Mg) * O);
    }
    if (bias) {
      for (std::int64_t m = 0; m < M; ++m) {
        float* p = y.f.data() + static_cast<std::size_t>(nn * M + m) * O;
        for (std::size_t e = 0; e < O; ++e) p[e] += bias->f[static_cast<std::size_t>(m)];
      }
    }
  }
  out.push_back(std::move(y));
}

/// The pool window of a node: kernel_shape (required), ceil_mode.
window pool_window(const node_context& c, const value& x) {
  const shape_t kernel = attr_ints(c.node, "kernel_shape");
  if (kernel.empty()) c.fail("kernel_shape is missing");
  window_options opt;
  opt.ceil_mode = attr_int(c.node, "ceil_mode", 0) != 0;
  return make_window(c, x.shape, kernel, opt);
}

/// MaxPool over one plane: y[o] = max of x over the window (padding excluded); idx[o] = the
/// flat position of the maximum within the plane, in row-major order (or column-major).
template <class T>
void max_pool_plane(const T* x, const window& w, T* y, std::int64_t* idx, bool column_major) {
  std::size_t o = 0;
  for (std::int64_t od = 0; od < w.out[0]; ++od) {
    for (std::int64_t oh = 0; oh < w.out[1]; ++oh) {
      for (std::int64_t ow = 0; ow < w.out[2]; ++ow, ++o) {
        bool any = false;
        T best = T();
        std::int64_t at = 0, bd = 0, bh = 0, bw = 0;
        for (std::int64_t kd = 0; kd < w.kernel[0]; ++kd) {
          const std::int64_t id = od * w.stride[0] + kd * w.dilation[0] - w.pad_begin[0];
          if (id < 0 || id >= w.in[0]) continue;
          for (std::int64_t kh = 0; kh < w.kernel[1]; ++kh) {
            const std::int64_t ih = oh * w.stride[1] + kh * w.dilation[1] - w.pad_begin[1];
            if (ih < 0 || ih >= w.in[1]) continue;
            const T* row = x + (id * w.in[1] + ih) * w.in[2];
            for (std::int64_t kw = 0; kw < w.kernel[2]; ++kw) {
              const std::int64_t iw = ow * w.stride[2] + kw * w.dilation[2] - w.pad_begin[2];
              if (iw < 0 || iw >= w.in[2]) continue;
              if (!any || row[iw] > best) {
                best = row[iw];
                bd = id;
                bh = ih;
                bw = iw;
                any = true;
              }
            }
          }
        }
        y[o] = any ? best : T();
        at = column_major ? (bw * w.in[1] + bh) * w.in[0] + bd : (bd * w.in[1] + bh) * w.in[2] + bw;
        if (idx) idx[o] = at;
      }
    }
  }
}

/// MaxPool: outputs Y and, when the node asks, Indices (int64 flat positions in X).
void op_max_pool(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& x = need(c, in, 0);
  if (x.type == value_type::boolean) c.fail("input must be numeric");
  const window w = pool_window(c, x);
  const std::int64_t N = x.shape[0], C = x.shape[1];
  const bool column_major = attr_int(c.node, "storage_order", 0) != 0;
  const bool want_indices = c.node.output_size() > 1 && !c.node.output(1).empty();
  value y;
  y.type = x.type;
  y.shape = out_shape(w, N, C);
  const std::size_t planes = static_cast<std::size_t>(N * C), I = w.in_size(), O = w.out_size();
  value idx = value::ints(y.shape, std::vector<std::int64_t>(want_indices ? planes * O : 0));
  if (x.type == value_type::float32) {
    y.f.resize(planes * O);
  } else {
    y.i.resize(planes * O);
  }
  for (std::size_t p = 0; p < planes; ++p) {
    std::int64_t* ip = want_indices ? idx.i.data() + p * O : nullptr;
    if (x.type == value_type::float32) {
      max_pool_plane(x.f.data() + p * I, w, y.f.data() + p * O, ip, column_major);
    } else {
      max_pool_plane(x.i.data() + p * I, w, y.i.data() + p * O, ip, column_major);
    }
    if (ip)
      for (std::size_t e = 0; e < O; ++e) ip[e] += static_cast<std::int64_t>(p * I);
  }
  out.push_back(std::move(y));
  if (want_indices) out.push_back(std::move(idx));
}

/// AveragePool: y = sum of x over the window / count, count = the window's positions inside x
/// (count_include_pad = 0) or inside the padded input (1).
void op_average_pool(const node_context& c, const model&, const inputs_t& in,
                     std::vector<value>& out) {
  const value& x = need_float(c, in, 0, "X");
  const window w = pool_window(c, x);
  const bool include_pad = attr_int(c.node, "count_include_pad", 0) != 0;
  const std::int64_t N = x.shape[0], C = x.shape[1];
  const std::size_t planes = static_cast<std::size_t>(N * C), I = w.in_size(), O = w.out_size();
  value y = value::floats(out_shape(w, N, C), std::vector<float>(planes * O));
  // Per axis and output position: the kernel taps inside x, and inside the padded input.
  std::array<std::vector<std::int64_t>, 3> inside, padded;
  for (std::size_t a = 0; a < 3; ++a) {
    for (std::int64_t o = 0; o < w.out[a]; ++o) {
      std::int64_t n_in = 0, n_pad = 0;
      for (std::int64_t k = 0; k < w.kernel[a]; ++k) {
        const std::int64_t i = o * w.stride[a] + k * w.dilation[a] - w.pad_begin[a];
        n_in += i >= 0 && i < w.in[a];
        n_pad += i >= -w.pad_begin[a] && i < w.in[a] + w.pad_end[a];
      }
      inside[a].push_back(n_in);
      padded[a].push_back(n_pad);
    }
  }
  const auto& cnt = include_pad ? padded : inside;
  for (std::size_t p = 0; p < planes; ++p) {
    const float* xp = x.f.data() + p * I;
    float* yp = y.f.data() + p * O;
    std::size_t o = 0;
    for (std::int64_t od = 0; od < w.out[0]; ++od) {
      for (std::int64_t oh = 0; oh < w.out[1]; ++oh) {
        for (std::int64_t ow = 0; ow < w.out[2]; ++ow, ++o) {
          double sum = 0;
          for (std::int64_t kd = 0; kd < w.kernel[0]; ++kd) {
            const std::int64_t id = od * w.stride[0] + kd * w.dilation[0] - w.pad_begin[0];
            if (id < 0 || id >= w.in[0]) continue;
            for (std::int64_t kh = 0; kh < w.kernel[1]; ++kh) {
              const std::int64_t ih = oh * w.stride[1] + kh * w.dilation[1] - w.pad_begin[1];
              if (ih < 0 || ih >= w.in[1]) continue;
              const float* row = xp + (id * w.in[1] + ih) * w.in[2];
              for (std::int64_t kw = 0; kw < w.kernel[2]; ++kw) {
                const std::int64_t iw = ow * w.stride[2] + kw * w.dilation[2] - w.pad_begin[2];
                if (iw >= 0 && iw < w.in[2]) sum += row[iw];
              }
            }
          }
          const std::int64_t count = cnt[0][static_cast<std::size_t>(od)] *
                                     cnt[1][static_cast<std::size_t>(oh)] *
                                     cnt[2][static_cast<std::size_t>(ow)];
          yp[o] = count > 0 ? static_cast<float>(sum / double(count)) : 0.0f;
        }
      }
    }
  }
  out.push_back(std::move(y));
}

/// GlobalAveragePool / GlobalMaxPool: [N, C, ...] -> [N, C, 1, ...], mean or max per plane.
void global_pool(const node_context& c, const inputs_t& in, std::vector<value>& out, bool max) {
  const value& x = need_float(c, in, 0, "X");
  if (x.shape.size() < 2) c.fail("X must have rank >= 2 ([N, C, ...])");
  const std::size_t planes = span_of(x.shape, 0, 2), len = span_of(x.shape, 2, x.shape.size());
  shape_t shape(x.shape.size(), 1);
  shape[0] = x.shape[0];
  shape[1] = x.shape[1];
  value y = value::floats(shape, std::vector<float>(planes));
  for (std::size_t p = 0; p < planes; ++p) {
    const float* xp = x.f.data() + p * len;
    if (max) {
      float m = -std::numeric_limits<float>::infinity();
      for (std::size_t e = 0; e < len; ++e) m = std::max(m, xp[e]);
      y.f[p] = m;
    } else {
      double s = 0;
      for (std::size_t e = 0; e < len; ++e) s += xp[e];
      y.f[p] = static_cast<float>(s / double(len));
    }
  }
  out.push_back(std::move(y));
}

}  // namespace

void add_nn_conv_ops(std::unordered_map<std::string, op_fn>& ops) {
  ops["Conv"] = op_conv;
  ops["ConvTranspose"] = op_conv_transpose;
  ops["MaxPool"] = op_max_pool;
  ops["AveragePool"] = op_average_pool;
  ops["GlobalAveragePool"] = [](const node_context& c, const model&, const inputs_t& in,
                                std::vector<value>& out) { global_pool(c, in, out, false); };
  ops["GlobalMaxPool"] = [](const node_context& c, const model&, const inputs_t& in,
                            std::vector<value>& out) { global_pool(c, in, out, true); };
}

}  // namespace exec
}  // namespace onnx
}  // namespace int4q

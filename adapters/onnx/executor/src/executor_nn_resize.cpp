// Resize (and the older Upsample) as one separable 1-D resampling pass per axis, and Pad.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "executor_nn.hpp"

namespace int4q {
namespace onnx {
namespace exec {

namespace {

// ---- Pad ----------------------------------------------------------------------------------------

/// For each output position along an axis of `n` inputs padded by `begin` (negative crops) to
/// `len`: the input position it reads, or -1 for the constant. Modes: constant, reflect (mirror
/// without repeating the edge), edge (clamp), wrap (periodic).
std::vector<std::int64_t> pad_map(const node_context& c, const std::string& mode, std::int64_t n,
                                  std::int64_t begin, std::int64_t len) {
  std::vector<std::int64_t> map(static_cast<std::size_t>(std::max<std::int64_t>(len, 0)));
  for (std::int64_t o = 0; o < len; ++o) {
    std::int64_t i = o - begin;
    if (i < 0 || i >= n) {
      if (mode == "constant") {
        i = -1;
      } else if (n == 0) {
        c.fail("cannot pad an empty axis in mode '" + mode + "'");
      } else if (mode == "edge") {
        i = std::clamp<std::int64_t>(i, 0, n - 1);
      } else if (mode == "wrap") {
        i = ((i % n) + n) % n;
      } else {  // reflect: period 2 (n - 1)
        const std::int64_t period = 2 * (n - 1);
        if (period == 0) {
          i = 0;
        } else {
          i = ((i % period) + period) % period;
          if (i >= n) i = period - i;
        }
      }
    }
    map[static_cast<std::size_t>(o)] = i;
  }
  return map;
}

template <class T>
void pad_values(const std::vector<T>& src, const shape_t& in_shape, const shape_t& out_shape,
                const std::vector<std::vector<std::int64_t>>& maps, T fill, std::vector<T>& dst) {
  const std::size_t rank = in_shape.size(), n = numel(out_shape);
  dst.assign(n, fill);
  if (n == 0) return;
  if (rank == 0) {
    dst[0] = src[0];
    return;
  }
  const shape_t st = strides_of(in_shape);
  const auto row = static_cast<std::size_t>(out_shape.back());
  const std::vector<std::int64_t>& last = maps.back();
  shape_t j(rank, 0);  // the output row's coordinates (last one 0)
  for (std::size_t r = 0; r < n / row; ++r) {
    std::int64_t base = 0;
    bool inside = true;
    for (std::size_t k = 0; k + 1 < rank; ++k) {
      const std::int64_t i = maps[k][static_cast<std::size_t>(j[k])];
      inside = inside && i >= 0;
      base += i * st[k];
    }
    if (inside) {
      T* d = dst.data() + r * row;
      for (std::size_t o = 0; o < row; ++o)
        if (last[o] >= 0) d[o] = src[static_cast<std::size_t>(base + last[o])];
    }
    for (std::size_t k = rank - 1; k-- > 0;) {
      if (++j[k] < out_shape[k]) break;
      j[k] = 0;
    }
  }
}

/// Pad: pads [x1_begin, x2_begin, ..., x1_end, x2_end, ...] over all axes or `axes` (opset 18);
/// from the attributes before opset 11.
void op_pad(const node_context& c, const model& m, const inputs_t& in, std::vector<value>& out) {
  const value& x = need(c, in, 0);
  const std::size_t rank = x.shape.size();
  const AttributeProto* ma = find_attr(c.node, "mode");
  const std::string mode = ma ? ma->s() : "constant";
  if (mode != "constant" && mode != "reflect" && mode != "edge" && mode != "wrap")
    c.fail("mode '" + mode + "' is not one of constant, reflect, edge, wrap");
  shape_t pads;
  double fill = 0;
  shape_t axes;
  if (default_opset(m) < 11) {
    pads = attr_ints(c.node, find_attr(c.node, "pads") ? "pads" : "paddings");
    fill = attr_float(c.node, "value", 0.0f);
  } else {
    pads = int_list(c, need(c, in, 1), "pads");
    if (const value* v = optional_input(in, 2))
      if (v->size() > 0) fill = scalar_of(c, *v, "constant_value");
    if (const value* v = optional_input(in, 3)) axes = int_list(c, *v, "axes");
  }
  if (axes.empty())
    for (std::size_t k = 0; k < rank; ++k) axes.push_back(static_cast<std::int64_t>(k));
  if (pads.size() != 2 * axes.size())
    c.fail("pads has " + std::to_string(pads.size()) + " values for " +
           std::to_string(axes.size()) + " axes (want twice as many)");
  shape_t begin(rank, 0), end(rank, 0);
  for (std::size_t q = 0; q < axes.size(); ++q) {
    const auto k = static_cast<std::size_t>(normalize_axis(c, axes[q], rank));
    begin[k] = pads[q];
    end[k] = pads[axes.size() + q];
  }
  value r;
  r.type = x.type;
  std::vector<std::vector<std::int64_t>> maps;
  for (std::size_t k = 0; k < rank; ++k) {
    const std::int64_t len = x.shape[k] + begin[k] + end[k];
    if (len < 0)
      c.fail("pads " + dims_string(pads) + " crop more than axis " + std::to_string(k) + " holds");
    r.shape.push_back(len);
    maps.push_back(pad_map(c, mode, x.shape[k], begin[k], len));
  }
  if (x.type == value_type::float32) {
    pad_values(x.f, x.shape, r.shape, maps, static_cast<float>(fill), r.f);
  } else {
    pad_values(x.i, x.shape, r.shape, maps, static_cast<std::int64_t>(fill), r.i);
  }
  out.push_back(std::move(r));
}

// ---- Resize -------------------------------------------------------------------------------------

enum class interp { nearest, linear, cubic };

struct resize_options {
  interp mode = interp::nearest;
  std::string transform = "half_pixel";        ///< coordinate_transformation_mode
  std::string nearest = "round_prefer_floor";  ///< nearest_mode
  double cubic_a = -0.75;
  bool exclude_outside = false;
  double extrapolation = 0;
  bool antialias = false;
};

/// One axis's resampling: output o = sum over t of weight[o * taps + t] * input[index[...]], or
/// the extrapolation value where outside[o].
struct axis_table {
  std::size_t taps = 1;
  std::vector<std::int64_t> index;
  std::vector<double> weight;
  std::vector<bool> outside;
  /// True when the table copies the input unchanged.
  bool identity(std::int64_t in_len) const {
    if (static_cast<std::int64_t>(outside.size()) != in_len) return false;
    for (std::size_t o = 0; o < outside.size(); ++o) {
      if (outside[o]) return false;
      for (std::size_t t = 0; t < taps; ++t) {
        const double w = weight[o * taps + t];
        if (w != 0 && (w != 1 || index[o * taps + t] != static_cast<std::int64_t>(o))) return false;
      }
    }
    return true;
  }
};

/// The input coordinate of output position o (coordinate_transformation_mode). align_corners and
/// pytorch_half_pixel use the unrounded output length in_len * scale, as ONNX's reference does
/// (downsampling 4 by 0.6: x = o * 3 / 1.4).
double source_coordinate(const node_context& c, const resize_options& opt, double o, double in_len,
                         double out_len, double scale, double roi_start, double roi_end) {
  const std::string& t = opt.transform;
  if (t == "half_pixel") return (o + 0.5) / scale - 0.5;
  if (t == "asymmetric") return o / scale;
  const double scaled_len = in_len * scale;
  if (t == "pytorch_half_pixel") return scaled_len > 1 ? (o + 0.5) / scale - 0.5 : 0.0;
  if (t == "tf_half_pixel_for_nn") return (o + 0.5) / scale;
  if (t == "align_corners") return scaled_len == 1 ? 0.0 : o * (in_len - 1) / (scaled_len - 1);
  if (t == "half_pixel_symmetric") {
    const double adjustment = out_len / (scale * in_len);
    const double offset = in_len / 2 * (1 - adjustment);
    return offset + (o + 0.5) / scale - 0.5;
  }
  if (t == "tf_crop_and_resize") {
    return out_len > 1
               ? roi_start * (in_len - 1) + o * (roi_end - roi_start) * (in_len - 1) / (out_len - 1)
               : 0.5 * (roi_start + roi_end) * (in_len - 1);
  }
  c.fail("coordinate_transformation_mode '" + t + "' is not supported");
}

/// Cubic convolution weight of distance x (coefficient a): (a+2)|x|^3 - (a+3)|x|^2 + 1 for
/// |x| <= 1, a|x|^3 - 5a|x|^2 + 8a|x| - 4a for 1 < |x| < 2, else 0.
double cubic_weight(double x, double a) {
  x = std::fabs(x);
  if (x <= 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0;
}

axis_table make_table(const node_context& c, const resize_options& opt, std::int64_t in_len,
                      std::int64_t out_len, double scale, double roi_start, double roi_end) {
  axis_table tab;
  const auto n_out = static_cast<std::size_t>(out_len);
  // Antialiasing (linear and cubic, downsampling): the kernel stretched by 1 / scale.
  const double k_scale = opt.antialias && scale < 1 ? scale : 1.0;
  const double support = opt.mode == interp::cubic ? 2.0 : 1.0;
  std::int64_t first = 0;  // taps at floor(x) + first ... floor(x) + first + taps - 1
  if (opt.mode == interp::nearest) {
    tab.taps = 1;
  } else {
    first = static_cast<std::int64_t>(std::floor(-support / k_scale)) + 1;
    tab.taps = static_cast<std::size_t>(2 - 2 * first);
  }
  tab.index.resize(n_out * tab.taps);
  tab.weight.assign(n_out * tab.taps, 0.0);
  tab.outside.assign(n_out, false);
  for (std::size_t o = 0; o < n_out; ++o) {
    const double x = source_coordinate(c, opt, double(o), double(in_len), double(out_len), scale,
                                       roi_start, roi_end);
    if (opt.transform == "tf_crop_and_resize" && (x < 0 || x > double(in_len - 1))) {
      tab.outside[o] = true;
      continue;
    }
    std::int64_t* idx = tab.index.data() + o * tab.taps;
    double* w = tab.weight.data() + o * tab.taps;
    if (opt.mode == interp::nearest) {
      const double f = std::floor(x);
      double r;
      if (opt.nearest == "floor") {
        r = f;
      } else if (opt.nearest == "ceil") {
        r = std::ceil(x);
      } else if (x - f == 0.5) {
        r = opt.nearest == "round_prefer_ceil" ? f + 1 : f;
      } else {
        r = std::round(x);
      }
      idx[0] = std::clamp<std::int64_t>(static_cast<std::int64_t>(r), 0, in_len - 1);
      w[0] = 1;
      continue;
    }
    const double f = std::floor(x), ratio = x - f;
    const auto x0 = static_cast<std::int64_t>(f);
    double sum = 0;
    for (std::size_t t = 0; t < tab.taps; ++t) {
      const std::int64_t i = x0 + first + static_cast<std::int64_t>(t);
      const double d = (double(first + static_cast<std::int64_t>(t)) - ratio) * k_scale;
      double wt = opt.mode == interp::linear ? std::max(0.0, 1 - std::fabs(d))
                                             : cubic_weight(d, opt.cubic_a);
      if (opt.exclude_outside && (i < 0 || i >= in_len)) wt = 0;
      idx[t] = std::clamp<std::int64_t>(i, 0, in_len - 1);  // edge padding
      w[t] = wt;
      sum += wt;
    }
    // Plain linear and cubic weights sum to 1; antialiased or excluded ones are renormalized.
    if ((k_scale != 1 || opt.exclude_outside) && sum != 0)
      for (std::size_t t = 0; t < tab.taps; ++t) w[t] /= sum;
  }
  return tab;
}

/// Resamples `x` along `axis` to `out_len` positions with a table.
value resample_axis(const value& x, std::size_t axis, std::int64_t out_len, const axis_table& tab,
                    double extrapolation) {
  const std::size_t outer = span_of(x.shape, 0, axis),
                    inner = span_of(x.shape, axis + 1, x.shape.size());
  const auto in_len = static_cast<std::size_t>(x.shape[axis]),
             n_out = static_cast<std::size_t>(out_len);
  value y;
  y.type = value_type::float32;
  y.shape = x.shape;
  y.shape[axis] = out_len;
  y.f.assign(outer * n_out * inner, 0.0f);
  std::vector<double> acc(inner);
  for (std::size_t p = 0; p < outer; ++p) {
    const float* xp = x.f.data() + p * in_len * inner;
    for (std::size_t o = 0; o < n_out; ++o) {
      float* yp = y.f.data() + (p * n_out + o) * inner;
      if (tab.outside[o]) {
        std::fill(yp, yp + inner, static_cast<float>(extrapolation));
        continue;
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      for (std::size_t t = 0; t < tab.taps; ++t) {
        const double w = tab.weight[o * tab.taps + t];
        if (w == 0) continue;
        const float* src = xp + static_cast<std::size_t>(tab.index[o * tab.taps + t]) * inner;
        for (std::size_t e = 0; e < inner; ++e) acc[e] += w * src[e];
      }
      for (std::size_t e = 0; e < inner; ++e) yp[e] = static_cast<float>(acc[e]);
    }
  }
  return y;
}

/// Resizes x to `sizes` with per-axis `scales` (and roi for tf_crop_and_resize).
value resize(const node_context& c, const resize_options& opt, const value& x, const shape_t& sizes,
             const std::vector<double>& scales, const std::vector<double>& roi) {
  value cur = x;
  const std::size_t rank = x.shape.size();
  if (cur.type != value_type::float32) {  // integers: computed in float, rounded back below
    cur.f.assign(x.i.begin(), x.i.end());
    cur.i.clear();
    cur.type = value_type::float32;
  }
  for (std::size_t k = 0; k < rank; ++k) {
    const double rs = roi.empty() ? 0.0 : roi[k], re = roi.empty() ? 1.0 : roi[rank + k];
    const axis_table tab = make_table(c, opt, x.shape[k], sizes[k], scales[k], rs, re);
    if (sizes[k] == x.shape[k] && tab.identity(x.shape[k])) continue;
    if (x.shape[k] == 0) c.fail("cannot resize an empty axis");
    cur = resample_axis(cur, k, sizes[k], tab, opt.extrapolation);
  }
  if (x.type != value_type::float32) {
    cur.i.resize(cur.f.size());
    for (std::size_t e = 0; e < cur.f.size(); ++e)
      cur.i[e] = static_cast<std::int64_t>(std::nearbyint(cur.f[e]));
    cur.f.clear();
    cur.type = x.type;
  }
  return cur;
}

interp interp_of(const node_context& c) {
  const AttributeProto* a = find_attr(c.node, "mode");
  const std::string mode = a ? a->s() : "nearest";
  if (mode == "nearest") return interp::nearest;
  if (mode == "linear" || mode == "bilinear") return interp::linear;
  if (mode == "cubic") return interp::cubic;
  c.fail("mode '" + mode + "' is not one of nearest, linear, cubic");
}

std::string string_attr(const NodeProto& n, const char* name, const char* fallback) {
  const AttributeProto* a = find_attr(n, name);
  return a ? a->s() : fallback;
}

/// Output sizes floor(in * scale) for every axis.
shape_t sizes_from_scales(const node_context& c, const value& x,
                          const std::vector<double>& scales) {
  shape_t sizes;
  for (std::size_t k = 0; k < x.shape.size(); ++k) {
    if (!(scales[k] > 0)) c.fail("scales must be positive");
    sizes.push_back(static_cast<std::int64_t>(std::floor(double(x.shape[k]) * scales[k])));
  }
  return sizes;
}

std::vector<double> float_list(const node_context& c, const value& v, const char* what) {
  if (v.type != value_type::float32) c.fail(std::string(what) + " must be a float tensor");
  return std::vector<double>(v.f.begin(), v.f.end());
}

/// Resize's roi input (starts then ends, one pair per axis of `axes`) as 2 * rank values: the
/// full range [0, 1] on the other axes.
std::vector<double> roi_of(const node_context& c, const value& roi_in, const shape_t& axes,
                           std::size_t rank) {
  const std::vector<double> r = float_list(c, roi_in, "roi");
  if (r.size() != 2 * axes.size())
    c.fail("roi has " + std::to_string(r.size()) + " values for " + std::to_string(axes.size()) +
           " axes (want twice as many)");
  std::vector<double> roi(2 * rank, 0.0);
  for (std::size_t k = 0; k < rank; ++k) roi[rank + k] = 1.0;
  for (std::size_t q = 0; q < axes.size(); ++q) {
    roi[static_cast<std::size_t>(axes[q])] = r[q];
    roi[rank + static_cast<std::size_t>(axes[q])] = r[axes.size() + q];
  }
  return roi;
}

/// Resize's sizes input for `axes`: sets `sizes` and `scales` of those axes by the
/// keep_aspect_ratio_policy: stretch (each as given), not_larger / not_smaller (one scale for all,
/// the smallest / largest of size / input, sizes rounded).
void apply_sizes(const node_context& c, const value& x, const value& sizes_in, const shape_t& axes,
                 std::vector<double>& scales, shape_t& sizes) {
  const shape_t s = int_list(c, sizes_in, "sizes");
  if (s.size() != axes.size())
    c.fail("sizes has " + std::to_string(s.size()) + " values for " + std::to_string(axes.size()) +
           " axes");
  const std::string policy = string_attr(c.node, "keep_aspect_ratio_policy", "stretch");
  if (policy == "stretch") {
    for (std::size_t q = 0; q < axes.size(); ++q) {
      const auto k = static_cast<std::size_t>(axes[q]);
      sizes[k] = s[q];
      scales[k] = double(s[q]) / double(x.shape[k]);
    }
  } else if (policy == "not_larger" || policy == "not_smaller") {
    // One scale for all the axes: the smallest (not_larger) or largest of sizes / input.
    double common = policy == "not_larger" ? INFINITY : 0.0;
    for (std::size_t q = 0; q < axes.size(); ++q) {
      const double r = double(s[q]) / double(x.shape[static_cast<std::size_t>(axes[q])]);
      common = policy == "not_larger" ? std::min(common, r) : std::max(common, r);
    }
    for (const std::int64_t a : axes) {
      const auto k = static_cast<std::size_t>(a);
      scales[k] = common;
      sizes[k] = static_cast<std::int64_t>(std::floor(double(x.shape[k]) * common + 0.5));
    }
  } else {
    c.fail("keep_aspect_ratio_policy '" + policy +
           "' is not one of stretch, not_larger, not_smaller");
  }
}

/// Resize: opset 10 (X, scales; asymmetric, nearest rounds down), 11+ (X, roi, scales, sizes)
/// with the coordinate_transformation_mode, nearest_mode, cubic_coeff_a, exclude_outside,
/// extrapolation_value attributes, and from 18 axes, keep_aspect_ratio_policy, antialias.
void op_resize(const node_context& c, const model& m, const inputs_t& in, std::vector<value>& out) {
  const value& x = need(c, in, 0);
  const std::size_t rank = x.shape.size();
  resize_options opt;
  opt.mode = interp_of(c);
  const value* scales_in = nullptr;
  const value* sizes_in = nullptr;
  const value* roi_in = nullptr;
  if (default_opset(m) < 11) {
    opt.transform = "asymmetric";
    opt.nearest = "floor";
    scales_in = &need(c, in, 1);
  } else {
    opt.transform = string_attr(c.node, "coordinate_transformation_mode", "half_pixel");
    opt.nearest = string_attr(c.node, "nearest_mode", "round_prefer_floor");
    opt.cubic_a = attr_float(c.node, "cubic_coeff_a", -0.75f);
    opt.exclude_outside = attr_int(c.node, "exclude_outside", 0) != 0;
    opt.extrapolation = attr_float(c.node, "extrapolation_value", 0.0f);
    opt.antialias = attr_int(c.node, "antialias", 0) != 0;
    roi_in = optional_input(in, 1);
    scales_in = optional_input(in, 2);
    sizes_in = optional_input(in, 3);
  }
  if (opt.nearest != "round_prefer_floor" && opt.nearest != "round_prefer_ceil" &&
      opt.nearest != "floor" && opt.nearest != "ceil")
    c.fail("nearest_mode '" + opt.nearest + "' is not supported");
  if (scales_in && scales_in->size() == 0) scales_in = nullptr;
  if (sizes_in && sizes_in->size() == 0) sizes_in = nullptr;
  if (roi_in && roi_in->size() == 0) roi_in = nullptr;
  if ((scales_in == nullptr) == (sizes_in == nullptr))
    c.fail("exactly one of scales and sizes must be given");
  shape_t axes = attr_ints(c.node, "axes");
  if (axes.empty())
    for (std::size_t k = 0; k < rank; ++k) axes.push_back(static_cast<std::int64_t>(k));
  for (std::int64_t& a : axes) a = normalize_axis(c, a, rank);
  // Per axis of x: scale, size, roi.
  std::vector<double> scales(rank, 1.0), roi;
  shape_t sizes = x.shape;
  if (roi_in) roi = roi_of(c, *roi_in, axes, rank);
  if (scales_in) {
    const std::vector<double> s = float_list(c, *scales_in, "scales");
    if (s.size() != axes.size())
      c.fail("scales has " + std::to_string(s.size()) + " values for " +
             std::to_string(axes.size()) + " axes");
    for (std::size_t q = 0; q < axes.size(); ++q) scales[static_cast<std::size_t>(axes[q])] = s[q];
    sizes = sizes_from_scales(c, x, scales);
    if (opt.transform == "tf_crop_and_resize" && !roi.empty()) {
      for (std::size_t k = 0; k < rank; ++k)
        sizes[k] = static_cast<std::int64_t>(
            std::floor(double(x.shape[k]) * (roi[rank + k] - roi[k]) * scales[k]));
    }
  } else {
    apply_sizes(c, x, *sizes_in, axes, scales, sizes);
  }
  for (const std::int64_t s : sizes)
    if (s < 0) c.fail("output size " + dims_string(sizes) + " is negative");
  out.push_back(resize(c, opt, x, sizes, scales, roi));
}

/// Upsample (opsets 7-9): scales attribute (7) or input (9); nearest rounds down, asymmetric.
void op_upsample(const node_context& c, const model&, const inputs_t& in, std::vector<value>& out) {
  const value& x = need(c, in, 0);
  resize_options opt;
  opt.mode = interp_of(c);
  opt.transform = "asymmetric";
  opt.nearest = "floor";
  std::vector<double> scales;
  if (const value* s = optional_input(in, 1)) {
    scales = float_list(c, *s, "scales");
  } else if (const AttributeProto* a = find_attr(c.node, "scales")) {
    scales.assign(a->floats().begin(), a->floats().end());
  }
  if (scales.size() != x.shape.size())
    c.fail("scales has " + std::to_string(scales.size()) + " values for rank " +
           std::to_string(x.shape.size()));
  out.push_back(resize(c, opt, x, sizes_from_scales(c, x, scales), scales, {}));
}

}  // namespace

void add_nn_resize_ops(std::unordered_map<std::string, op_fn>& ops) {
  ops["Pad"] = op_pad;
  ops["Resize"] = op_resize;
  ops["Upsample"] = op_upsample;
}

}  // namespace exec
}  // namespace onnx
}  // namespace int4q

// Option checks and the per-weight decision: include/exclude, overrides, lm_head policy,
// the ORT preset and the scale type of the model.
#include <filesystem>
#include <optional>
#include <regex>
#include <string>
#include <system_error>
#include <vector>

#include <int4q/config.hpp>
#include <int4q/onnx/option_error.hpp>
#include <int4q/presets.hpp>

#include "writers.hpp"

namespace int4q {
namespace onnx {
namespace detail {

namespace {

/// Where a check is: the base options, or override #i (its index and label).
struct place {
  std::optional<std::size_t> index;
  std::string label;  ///< "" or "override #i ('match'): "
};

[[noreturn]] void unsupported(const std::string& field, const std::string& message,
                              const place& at = {}) {
  throw option_error(model_error::kind::unsupported, field, message, at.index, at.label);
}

bool is_power_of_two(std::size_t v) noexcept { return v != 0 && (v & (v - 1)) == 0; }

std::regex compile(const std::string& pattern, const std::string& field, const std::string& name,
                   const place& at = {}) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw option_error(
        model_error::kind::invalid, field,
        name + " '" + pattern + "' is not a valid regular expression (" + e.what() + ")", at.index,
        at.label);
  }
}

std::string override_label(std::size_t i, const node_override& o) {
  return "override #" + std::to_string(i) + " ('" + o.match + "')";
}

place override_place(std::size_t i, const node_override& o) {
  return {i, override_label(i, o) + ": "};
}

/// The grid parameters a weight gets before the preset and the scale type: the base config
/// with an override's bits, group size and scheme.
quant_config with_override(quant_config c, const node_override* o) {
  if (!o) return c;
  if (o->bits) c.bits = *o->bits;
  if (o->group_size) {
    if (*o->group_size == 0) {
      c.granularity = grouping::per_channel;
    } else {
      c.granularity = grouping::group;
      c.group_size = *o->group_size;
    }
  }
  if (o->scheme) c.scheme = *o->scheme;
  return c;
}

/// ONNX Runtime's grid for the format, keeping bits, grouping and symmetric/asymmetric.
quant_config apply_preset(const quant_config& c, const quantize_options& options) {
  if (!options.ort_preset) return c;
  const bool sym = c.scheme != scheme::asymmetric;
  quant_config p = options.format == output_format::qdq
                       ? presets::ort_qdq(c.bits, c.group_size, sym)
                       : presets::ort_matmulnbits(c.bits, c.group_size, sym);
  p.granularity = c.granularity;
  p.scale_type = c.scale_type;
  return p;
}

/// `config.bits = B`.
std::string bits_is(int bits) { return "`config.bits = " + std::to_string(bits) + "`"; }

/// Throws option_error(unsupported) when MatMulNBits cannot store the grid `c`.
void check_matmulnbits_grid(const quant_config& c, const place& at) {
  if (c.bits != 2 && c.bits != 4 && c.bits != 8) {
    unsupported("config.bits",
                bits_is(c.bits) +
                    " cannot be stored by MatMulNBits (2, 4 or 8 bits): use `config.bits = 4`, "
                    "or `format = fake`",
                at);
  }
  if (c.granularity == grouping::per_channel) {
    unsupported("config.granularity",
                "`config.granularity = per_channel` cannot be stored by MatMulNBits (its "
                "block_size is a power of two 16..256): use `format = qdq`, or "
                "`config.group_size` 32, 64 or 128",
                at);
  }
  if (!is_power_of_two(c.group_size) || c.group_size < 16 || c.group_size > 256) {
    unsupported("config.group_size",
                "`config.group_size = " + std::to_string(c.group_size) +
                    "` cannot be stored by MatMulNBits (power of two 16..256): use `format = "
                    "qdq` or a group size of 32/64/128",
                at);
  }
}

/// Throws option_error(unsupported) when DequantizeLinear-21 cannot store the grid `c`.
void check_qdq_grid(const quant_config& c, const quantize_options& options, const place& at) {
  if (c.bits != 4 && c.bits != 8) {
    unsupported("config.bits",
                bits_is(c.bits) +
                    " cannot be stored by DequantizeLinear-21 (INT4/UINT4 or INT8/UINT8): use "
                    "`config.bits` 4 or 8, or `format = " +
                    (c.bits == 2 ? "matmulnbits" : "fake") + "`",
                at);
  }
  if (c.scheme == scheme::symmetric_full_range && !options.ort_preset) {
    unsupported("config.scheme",
                "`config.scheme = symmetric_full_range` gives negative scales, which "
                "DequantizeLinear consumers such as TensorRT reject: use `config.scheme` "
                "symmetric or asymmetric with `format = qdq` (or `ort_preset = true`, which "
                "reproduces ONNX Runtime's negative scales)",
                at);
  }
}

/// Throws option_error(unsupported) when `c` (before the preset) cannot be written in the
/// options' format.
void check_grid(const quant_config& c, const quantize_options& options, const place& at) {
  if (options.ort_preset && c.scheme == scheme::symmetric_offset) {
    unsupported("config.scheme",
                "`ort_preset = true` with `config.scheme = symmetric_offset`: ONNX Runtime's "
                "quantizer is asymmetric or (full-range) symmetric; use `config.scheme` "
                "asymmetric or symmetric",
                at);
  }
  const quant_config p = apply_preset(c, options);
  try {
    int4q::validate(p);
  } catch (const int4q::config_error& e) {
    unsupported("config", e.what(), at);
  }
  const output_format f = options.format;
  if (f == output_format::fake) return;
  if (p.data_type != data_type::integer) {
    unsupported("config.data_type",
                std::string(to_string(p.data_type)) +
                    " grids can only be written with `format = fake` (MatMulNBits and "
                    "DequantizeLinear store integer codes)",
                at);
  }
  if (f == output_format::matmulnbits) {
    check_matmulnbits_grid(p, at);
  } else {
    check_qdq_grid(p, options, at);
  }
}

/// GPTQ's act-order reorders rows, so groups must be computed up front (static groups) to stay
/// contiguous in K, as the ONNX formats store them (no g_idx).
void check_act_order(const quantize_options& options) {
  if (!options.gptq.act_order || options.gptq.static_groups) return;
  const std::string fix =
      "the ONNX formats store groups contiguous in K and have no g_idx (`gptq.static_groups = "
      "true`, or `gptq.act_order = false`, or `config.granularity = per_channel`)";
  if (options.config.granularity == grouping::group) {
    unsupported("gptq.static_groups", "`gptq.act_order` with `config.group_size = " +
                                          std::to_string(options.config.group_size) +
                                          "` needs `gptq.static_groups`: " + fix);
  }
  for (std::size_t i = 0; i < options.overrides.size(); ++i) {
    const node_override& o = options.overrides[i];
    if (o.skip.value_or(false) || !o.group_size || *o.group_size == 0) continue;
    unsupported("gptq.static_groups",
                "group_size " + std::to_string(*o.group_size) +
                    " with `gptq.act_order` needs `gptq.static_groups`: " + fix,
                override_place(i, o));
  }
}

void check_accuracy_level(const quantize_options& options) {
  if (!options.accuracy_level) return;
  const int level = *options.accuracy_level;
  if (options.format != output_format::matmulnbits) {
    unsupported("accuracy_level", std::string("`accuracy_level` is an attribute of MatMulNBits; "
                                              "`format = ") +
                                      to_string(options.format) +
                                      "` has none: drop it or use `format = matmulnbits`");
  }
  if (level < 0 || level > 4) {
    unsupported("accuracy_level",
                "`accuracy_level = " + std::to_string(level) +
                    "` is not one of 0..4 (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8): use one of "
                    "them");
  }
}

bool matches_any(const std::regex& re, const weight_info& w) {
  if (std::regex_search(w.name, re)) return true;
  // A weight on a constant path also answers to its stored tensor's name.
  if (!w.source.empty() && w.source != w.name && std::regex_search(w.source, re)) return true;
  for (const auto& u : w.uses)
    if (std::regex_search(display_name(u), re)) return true;
  return false;
}

}  // namespace

std::size_t int8_lm_head_block(std::size_t k) noexcept {
  std::size_t b = 256;
  while (b > 16 && b > k) b /= 2;
  return b;
}

compiled_selection compile_selection(const quantize_options& options) {
  compiled_selection sel;
  for (const auto& p : options.include) sel.include.push_back(compile(p, "include", "`include`"));
  for (const auto& p : options.exclude) sel.exclude.push_back(compile(p, "exclude", "`exclude`"));
  for (std::size_t i = 0; i < options.overrides.size(); ++i) {
    const node_override& o = options.overrides[i];
    sel.overrides.push_back(compile(o.match, "overrides[" + std::to_string(i) + "].match", "match",
                                    override_place(i, o)));
  }
  return sel;
}

namespace {

/// The sequential calibration's scratch directory, when given, must be an existing directory.
void check_scratch_dir(const quantize_options& options) {
  const std::filesystem::path& dir = options.calibration.scratch_dir;
  std::error_code ec;
  if (dir.empty() || std::filesystem::is_directory(dir, ec)) return;
  throw option_error(model_error::kind::invalid, "calibration.scratch_dir",
                     "`calibration.scratch_dir` '" + dir.string() +
                         "' is not a directory (the scratch file of activations goes there)");
}

}  // namespace

compiled_selection validate_options(const quantize_options& options) {
  compiled_selection sel = compile_selection(options);
  check_accuracy_level(options);
  check_grid(options.config, options, {});
  for (std::size_t i = 0; i < options.overrides.size(); ++i) {
    const node_override& o = options.overrides[i];
    if (o.skip.value_or(false)) continue;
    check_grid(with_override(options.config, &o), options, override_place(i, o));
  }
  check_act_order(options);
  check_scratch_dir(options);
  return sel;
}

}  // namespace detail

void check_quantize_options(const quantize_options& options) { detail::validate_options(options); }

void check_format_grid(const quant_config& c, const quantize_options& options) {
  detail::check_grid(c, options, {});
}

namespace detail {

weight_choice choose(const weight_info& w, const quantize_options& options,
                     const compiled_selection& sel) {
  weight_choice ch;
  if (!w.quantizable) {
    ch.reason = w.reason;
    return ch;
  }
  if (!sel.include.empty()) {
    bool included = false;
    for (const auto& re : sel.include) included = included || matches_any(re, w);
    if (!included) {
      ch.reason = "not selected by `include`";
      return ch;
    }
  }
  for (std::size_t i = 0; i < sel.exclude.size(); ++i) {
    if (matches_any(sel.exclude[i], w)) {
      ch.reason = "excluded by `exclude` '" + options.exclude[i] + "'";
      return ch;
    }
  }
  if (w.is_lm_head && options.lm_head == lm_head_policy::keep) {
    ch.reason = "lm_head kept in float (`lm_head = quantize` to change)";
    return ch;
  }
  const node_override* o = nullptr;
  for (std::size_t i = 0; i < sel.overrides.size() && !o; ++i) {
    if (matches_any(sel.overrides[i], w)) {
      o = &options.overrides[i];
      if (o->skip.value_or(false)) {
        ch.reason = "skipped by " + override_label(i, *o);
        return ch;
      }
    }
  }
  quant_config c = with_override(options.config, o);
  if (w.is_lm_head && options.lm_head == lm_head_policy::int8) {
    ch.grid_fixed = true;
    c.bits = 8;
    if (options.format == output_format::matmulnbits) {
      c.granularity = grouping::group;
      c.group_size = int8_lm_head_block(w.k);
    } else {
      c.granularity = grouping::per_channel;
    }
  }
  c = apply_preset(c, options);
  // Scales are stored in the weight's float type; codes are computed against that value.
  if (w.type == elem_type::float16) c.scale_type = scale_type::float16;
  if (w.type == elem_type::bfloat16) c.scale_type = scale_type::bfloat16;
  ch.quantize = true;
  ch.config = c;
  ch.algo = o && o->algo ? *o->algo : options.algo;
  return ch;
}

}  // namespace detail
}  // namespace onnx
}  // namespace int4q

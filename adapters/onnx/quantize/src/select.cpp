// Option checks and the per-weight decision: --include/--exclude, overrides, lm_head policy,
// the ORT preset and the scale type of the model.
#include <regex>
#include <string>
#include <vector>

#include <int4q/config.hpp>
#include <int4q/presets.hpp>

#include "writers.hpp"

namespace int4q {
namespace onnx {
namespace detail {

namespace {

[[noreturn]] void unsupported(const std::string& message) {
  throw model_error(model_error::kind::unsupported, message);
}

bool is_power_of_two(std::size_t v) noexcept { return v != 0 && (v & (v - 1)) == 0; }

std::regex compile(const std::string& pattern, const std::string& what) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw model_error(
        model_error::kind::invalid,
        what + " '" + pattern + "' is not a valid regular expression (" + e.what() + ")");
  }
}

std::string override_label(std::size_t i, const node_override& o) {
  return "override #" + std::to_string(i) + " ('" + o.match + "')";
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

/// Throws model_error(unsupported) when `c` cannot be written in `format`; `where` prefixes
/// the message ("" for the command line options).
void check_grid(const quant_config& c, const quantize_options& options, const std::string& where) {
  try {
    int4q::validate(c);
  } catch (const int4q::config_error& e) {
    unsupported(where + e.what());
  }
  const output_format f = options.format;
  if (f == output_format::fake) return;
  if (c.data_type != data_type::integer) {
    unsupported(where + to_string(c.data_type) +
                " grids can only be written with --format fake (MatMulNBits and "
                "DequantizeLinear store integer codes)");
  }
  if (f == output_format::matmulnbits) {
    if (c.bits != 2 && c.bits != 4 && c.bits != 8) {
      unsupported(where + "--bits " + std::to_string(c.bits) +
                  " cannot be stored by MatMulNBits (2, 4 or 8 bits): use --bits 4, or --format "
                  "fake");
    }
    if (c.granularity == grouping::per_channel) {
      unsupported(where +
                  "per-channel scales cannot be stored by MatMulNBits (its block_size is a power "
                  "of two 16..256): use --format qdq or a group size of 32/64/128");
    }
    if (!is_power_of_two(c.group_size) || c.group_size < 16 || c.group_size > 256) {
      unsupported(where + "--group-size " + std::to_string(c.group_size) +
                  " cannot be stored by MatMulNBits (power of two 16..256): use --format qdq or "
                  "a group size of 32/64/128");
    }
    return;
  }
  // qdq
  if (c.bits != 4 && c.bits != 8) {
    unsupported(where + "--bits " + std::to_string(c.bits) +
                " cannot be stored by DequantizeLinear (INT4/UINT4 or INT8/UINT8): use --bits 4 "
                "or 8" +
                (c.bits == 2 ? ", or --format matmulnbits" : ", or --format fake"));
  }
  if (c.scheme == scheme::symmetric_full_range && !options.ort_preset) {
    unsupported(where +
                "--scheme symmetric_full_range gives negative scales, which DequantizeLinear "
                "consumers such as TensorRT reject: use --scheme symmetric or asymmetric with "
                "--format qdq (or the ort preset, which reproduces ONNX Runtime's negative "
                "scales)");
  }
}

bool matches_any(const std::regex& re, const weight_info& w) {
  if (std::regex_search(w.name, re)) return true;
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
  for (const auto& p : options.include) sel.include.push_back(compile(p, "--include"));
  for (const auto& p : options.exclude) sel.exclude.push_back(compile(p, "--exclude"));
  for (std::size_t i = 0; i < options.overrides.size(); ++i) {
    const node_override& o = options.overrides[i];
    sel.overrides.push_back(compile(o.match, override_label(i, o) + ": match"));
  }
  return sel;
}

compiled_selection validate_options(const quantize_options& options) {
  compiled_selection sel = compile_selection(options);
  if (options.accuracy_level) {
    const int level = *options.accuracy_level;
    if (options.format != output_format::matmulnbits) {
      unsupported(std::string("--accuracy-level is an attribute of MatMulNBits; --format ") +
                  to_string(options.format) + " has none: drop it or use --format matmulnbits");
    }
    if (level < 0 || level > 4) {
      unsupported("--accuracy-level " + std::to_string(level) +
                  " is not one of 0..4 (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8): use one of "
                  "them");
    }
  }
  check_grid(apply_preset(options.config, options), options, "");
  for (std::size_t i = 0; i < options.overrides.size(); ++i) {
    const node_override& o = options.overrides[i];
    if (o.skip.value_or(false)) continue;
    check_grid(apply_preset(with_override(options.config, &o), options), options,
               override_label(i, o) + ": ");
  }
  return sel;
}

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
      ch.reason = "not selected by --include";
      return ch;
    }
  }
  for (std::size_t i = 0; i < sel.exclude.size(); ++i) {
    if (matches_any(sel.exclude[i], w)) {
      ch.reason = "excluded by --exclude '" + options.exclude[i] + "'";
      return ch;
    }
  }
  if (w.is_lm_head && options.lm_head == lm_head_policy::keep) {
    ch.reason = "lm_head kept in float (--lm-head quantize to change)";
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

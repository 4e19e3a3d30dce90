// The report as JSON, the options echo, and --config files (base settings and overrides).
#include <cmath>
#include <string>
#include <vector>

#include <int4q/config.hpp>

#include "writers.hpp"

namespace int4q {
namespace onnx {

using nlohmann::json;

const char* to_string(output_format f) noexcept {
  switch (f) {
    case output_format::matmulnbits: return "matmulnbits";
    case output_format::qdq: return "qdq";
    case output_format::fake: return "fake";
  }
  return "?";
}

const char* to_string(method m) noexcept {
  switch (m) {
    case method::rtn: return "rtn";
    case method::gptq: return "gptq";
    case method::awq_lite: return "awq_lite";
    case method::awq_clip: return "awq_clip";
    case method::awq_full: return "awq_full";
    case method::awq_gptq: return "awq_gptq";
    case method::block: return "block";
  }
  return "?";
}

const char* to_string(calibration_mode m) noexcept {
  switch (m) {
    case calibration_mode::sequential: return "sequential";
    case calibration_mode::parallel: return "parallel";
  }
  return "?";
}

namespace {

const char* to_string(lm_head_policy p) noexcept {
  switch (p) {
    case lm_head_policy::keep: return "keep";
    case lm_head_policy::quantize: return "quantize";
    case lm_head_policy::int8: return "int8";
  }
  return "?";
}

const char* to_string(scale_type s) noexcept {
  switch (s) {
    case scale_type::native: return "native";
    case scale_type::float16: return "float16";
    case scale_type::bfloat16: return "bfloat16";
  }
  return "?";
}

json number_or_null(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

json override_json(const node_override& o) {
  json j = {{"match", o.match}};
  if (o.bits) j["bits"] = *o.bits;
  if (o.group_size) {
    j["group_size"] = *o.group_size == 0 ? json("per_channel") : json(*o.group_size);
  }
  if (o.scheme) j["scheme"] = int4q::to_string(*o.scheme);
  if (o.skip) j["skip"] = *o.skip;
  if (o.algo) j["method"] = to_string(*o.algo);
  return j;
}

// ---- Config files
// --------------------------------------------------------------------------------

[[noreturn]] void bad(const std::string& key, const std::string& expected, const json& got) {
  // The words of the command line's range checks: "\"bits\" 9: must be an integer from 2 to 8".
  throw model_error(model_error::kind::invalid,
                    "config: \"" + key + "\" " + got.dump() + ": must be " + expected);
}

int get_bits(const json& v, const std::string& key) {
  if (!v.is_number_integer() || v.get<long long>() < 2 || v.get<long long>() > 8)
    bad(key, "an integer from 2 to 8", v);
  return v.get<int>();
}

/// Group size: a positive integer, or "per_channel" (returned as 0).
std::size_t get_group_size(const json& v, const std::string& key) {
  if (v.is_string() && v.get<std::string>() == "per_channel") return 0;
  if (!v.is_number_integer() || v.get<long long>() < 1)
    bad(key, "an integer >= 1 or \"per_channel\"", v);
  return v.get<std::size_t>();
}

int4q::scheme get_scheme(const json& v, const std::string& key) {
  static const int4q::scheme all[] = {scheme::asymmetric, scheme::symmetric,
                                      scheme::symmetric_full_range, scheme::symmetric_offset};
  if (v.is_string()) {
    for (auto s : all)
      if (v.get<std::string>() == int4q::to_string(s)) return s;
  }
  bad(key, "one of \"asymmetric\", \"symmetric\", \"symmetric_full_range\", \"symmetric_offset\"",
      v);
}

method get_method(const json& v, const std::string& key) {
  const std::string s = v.is_string() ? v.get<std::string>() : "";
  if (s == "rtn") return method::rtn;
  for (const method m : {method::rtn, method::gptq, method::awq_lite, method::awq_clip,
                         method::awq_full, method::awq_gptq, method::block})
    if (s == to_string(m)) return m;
  bad(key,
      "one of \"rtn\", \"gptq\", \"awq_lite\", \"awq_clip\", \"awq_full\", \"awq_gptq\", "
      "\"block\"",
      v);
}

std::string get_string(const json& v, const std::string& key) {
  if (!v.is_string()) bad(key, "a string", v);
  return v.get<std::string>();
}

std::vector<std::string> get_strings(const json& v, const std::string& key) {
  if (v.is_string()) return {v.get<std::string>()};
  if (!v.is_array()) bad(key, "a string or an array of strings", v);
  std::vector<std::string> out;
  for (std::size_t i = 0; i < v.size(); ++i)
    out.push_back(get_string(v[i], key + "[" + std::to_string(i) + "]"));
  return out;
}

node_override get_override(const json& e, std::size_t index) {
  const std::string at = "overrides[" + std::to_string(index) + "]";
  if (!e.is_object()) bad(at, "an object", e);
  node_override o;
  bool has_match = false;
  for (auto it = e.begin(); it != e.end(); ++it) {
    const std::string key = at + "." + it.key();
    const json& v = it.value();
    if (it.key() == "match") {
      o.match = get_string(v, key);
      has_match = true;
    } else if (it.key() == "bits") {
      o.bits = get_bits(v, key);
    } else if (it.key() == "group_size") {
      o.group_size = get_group_size(v, key);
    } else if (it.key() == "scheme") {
      o.scheme = get_scheme(v, key);
    } else if (it.key() == "skip") {
      if (!v.is_boolean()) bad(key, "true or false", v);
      o.skip = v.get<bool>();
    } else if (it.key() == "method") {
      o.algo = get_method(v, key);
    } else {
      throw model_error(model_error::kind::invalid,
                        "config: " + at + " has an unknown key \"" + it.key() +
                            "\" (known: match, bits, group_size, scheme, skip, method)");
    }
  }
  if (!has_match) {
    throw model_error(model_error::kind::invalid,
                      "config: " + at + " has no \"match\" (a regular expression on node names)");
  }
  return o;
}

}  // namespace

namespace detail {

json options_json(const quantize_options& options) {
  const quant_config& c = options.config;
  json j;
  j["format"] = to_string(options.format);
  j["method"] = to_string(options.algo);
  j["calibration"] = {{"mode", to_string(options.calibration.mode)},
                      {"data", options.calibration.description}};
  j["gptq"] = {{"block_size", options.gptq.block_size},
               {"damp", options.gptq.damp},
               {"act_order", options.gptq.act_order},
               {"static_groups", options.gptq.static_groups}};
  j["awq"] = {{"alpha_step", options.awq.scales.alpha_step},
              {"alpha_max", options.awq.scales.alpha_max},
              {"form", options.awq.scales.form == int4q::awq_scale_form::activation_weight
                           ? "activation_weight"
                           : "activation"},
              {"clip_step", options.awq.clip.clip_step},
              {"clip_min", options.awq.clip.clip_min},
              {"per_subgraph", options.awq.per_subgraph},
              {"samples", options.awq.samples}};
  if (options.algo == method::block)
    j["block"] = {{"iterations", options.block.iterations},
                  {"learning_rate", options.block.learning_rate},
                  {"offset_limit", options.block.limits.offset_limit},
                  {"range_min", options.block.limits.range_min},
                  {"seed", options.block.seed}};
  j["preset"] = options.ort_preset ? "ort" : "none";
  j["bits"] = c.bits;
  j["group_size"] =
      c.granularity == grouping::per_channel ? json("per_channel") : json(c.group_size);
  j["scheme"] = int4q::to_string(c.scheme);
  j["rounding"] = int4q::to_string(c.rounding);
  j["data_type"] = int4q::to_string(c.data_type);
  j["scale_type"] = to_string(c.scale_type);
  j["accuracy_level"] = options.accuracy_level ? json(*options.accuracy_level) : json(nullptr);
  j["include"] = options.include;
  j["exclude"] = options.exclude;
  j["overrides"] = json::array();
  for (const auto& o : options.overrides) j["overrides"].push_back(override_json(o));
  j["lm_head"] = to_string(options.lm_head);
  j["embeddings"] = to_string(options.embeddings);
  j["threads"] = options.threads;
  return j;
}

}  // namespace detail

json to_json(const quantize_report& report) {
  json tensors = json::array();
  for (const tensor_report& t : report.tensors) {
    json e;
    e["weight"] = t.weight;
    e["nodes"] = t.nodes;
    if (!t.constant_path.empty()) e["constant_path"] = t.constant_path;
    e["k"] = t.k;
    e["n"] = t.n;
    e["quantized"] = t.quantized;
    if (t.quantized) {
      e["bits"] = t.bits;
      e["group_size"] = t.group_size;
      e["scheme"] = t.scheme;
      e["method"] = t.method;
      if (t.method != "rtn") {
        e["calibration_rows"] = t.calibration_rows;
        e["hessian_loss"] = number_or_null(t.hessian_loss);
        e["rtn_hessian_loss"] = number_or_null(t.rtn_hessian_loss);
        e["damp_retries"] = t.damp_retries;
      }
      if (t.method.rfind("awq", 0) == 0) {
        e["awq_alpha"] = number_or_null(t.awq_alpha);
        e["awq_loss"] = number_or_null(t.awq_loss);
        e["awq_rtn_loss"] = number_or_null(t.awq_rtn_loss);
        e["awq_fold"] = t.awq_fold;
        e["clip_loss"] = number_or_null(t.clip_loss);
        e["clip_rtn_loss"] = number_or_null(t.clip_rtn_loss);
      }
      if (t.method == "block") {
        e["block_loss_start"] = number_or_null(t.block_loss_start);
        e["block_loss"] = number_or_null(t.block_loss);
      }
      e["error"] = {{"rmse", t.rmse},
                    {"max_abs", t.max_abs},
                    {"relative_l2", t.relative_l2},
                    {"sqnr_db", number_or_null(t.sqnr_db)}};
    } else {
      e["reason"] = t.reason;
    }
    e["bytes_before"] = t.bytes_before;
    e["bytes_after"] = t.bytes_after;
    e["seconds"] = t.seconds;
    tensors.push_back(std::move(e));
  }
  // --embeddings quantize: one entry per Gather table (tied lm_heads listed in "tied").
  json embeddings = json::array();
  for (const embedding_report& er : report.embeddings) {
    const tensor_report& t = er.tensor;
    json e = {{"table", t.weight}, {"gathers", t.nodes}, {"tied", er.tied},
              {"vocabulary", t.n}, {"hidden", t.k},      {"quantized", t.quantized}};
    if (!t.constant_path.empty()) e["constant_path"] = t.constant_path;
    if (t.quantized) {
      e["bits"] = t.bits;
      e["group_size"] = t.group_size;
      e["scheme"] = t.scheme;
      e["error"] = {{"rmse", t.rmse},
                    {"max_abs", t.max_abs},
                    {"relative_l2", t.relative_l2},
                    {"sqnr_db", number_or_null(t.sqnr_db)}};
      e["shared"] = er.shared;
      e["bytes_saved_by_sharing"] = er.bytes_saved_by_sharing;
    } else {
      e["reason"] = t.reason;
    }
    e["bytes_before"] = t.bytes_before;
    e["bytes_after"] = t.bytes_after;
    e["seconds"] = t.seconds;
    embeddings.push_back(std::move(e));
  }
  json totals;
  totals["weights"] = report.tensors.size();
  totals["weights_quantized"] = report.weights_quantized;
  totals["weights_resumed"] = report.weights_resumed;
  totals["bytes_before"] = report.bytes_before;
  totals["bytes_after"] = report.bytes_after;
  totals["compression"] =
      report.bytes_after
          ? json(static_cast<double>(report.bytes_before) / static_cast<double>(report.bytes_after))
          : json(nullptr);
  totals["seconds"] = report.seconds;
  json out{{"config", report.config}, {"tensors", tensors}, {"totals", totals}};
  if (!report.embeddings.empty()) out["embeddings"] = std::move(embeddings);
  return out;
}

void apply_config(const json& config, quantize_options& options) {
  if (!config.is_object()) {
    throw model_error(model_error::kind::invalid, "config: the file must hold a JSON object, got " +
                                                      std::string(config.type_name()));
  }
  quantize_options o = options;
  for (auto it = config.begin(); it != config.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    if (key == "format") {
      const std::string f = v.is_string() ? v.get<std::string>() : "";
      if (f == "matmulnbits") {
        o.format = output_format::matmulnbits;
      } else if (f == "qdq") {
        o.format = output_format::qdq;
      } else if (f == "fake") {
        o.format = output_format::fake;
      } else {
        bad(key, "one of \"matmulnbits\", \"qdq\", \"fake\"", v);
      }
    } else if (key == "bits") {
      o.config.bits = get_bits(v, key);
    } else if (key == "group_size") {
      const std::size_t g = get_group_size(v, key);
      o.config.granularity = g == 0 ? grouping::per_channel : grouping::group;
      if (g) o.config.group_size = g;
    } else if (key == "scheme") {
      o.config.scheme = get_scheme(v, key);
    } else if (key == "rounding") {
      const std::string r = v.is_string() ? v.get<std::string>() : "";
      if (r == "half_to_even") {
        o.config.rounding = rounding::half_to_even;
      } else if (r == "half_away_from_zero") {
        o.config.rounding = rounding::half_away_from_zero;
      } else {
        bad(key, "\"half_to_even\" or \"half_away_from_zero\"", v);
      }
    } else if (key == "method") {
      o.algo = get_method(v, key);
    } else if (key == "preset") {
      const std::string p = v.is_string() ? v.get<std::string>() : "";
      if (p != "ort" && p != "none") bad(key, "\"ort\" or \"none\"", v);
      o.ort_preset = p == "ort";
    } else if (key == "include") {
      o.include = get_strings(v, key);
    } else if (key == "exclude") {
      o.exclude = get_strings(v, key);
    } else if (key == "lm_head") {
      const std::string p = v.is_string() ? v.get<std::string>() : "";
      if (p == "keep") {
        o.lm_head = lm_head_policy::keep;
      } else if (p == "quantize") {
        o.lm_head = lm_head_policy::quantize;
      } else if (p == "int8") {
        o.lm_head = lm_head_policy::int8;
      } else {
        bad(key, "one of \"keep\", \"quantize\", \"int8\"", v);
      }
    } else if (key == "embeddings") {
      const std::string p = v.is_string() ? v.get<std::string>() : "";
      if (p != "keep" && p != "quantize") bad(key, "\"keep\" or \"quantize\"", v);
      o.embeddings = p == "keep" ? embedding_policy::keep : embedding_policy::quantize;
    } else if (key == "accuracy_level") {
      if (!v.is_number_integer() || v.get<long long>() < 0 || v.get<long long>() > 4)
        bad(key, "an integer from 0 to 4", v);
      o.accuracy_level = v.get<int>();
    } else if (key == "overrides") {
      if (!v.is_array()) bad(key, "an array of objects", v);
      for (std::size_t i = 0; i < v.size(); ++i) o.overrides.push_back(get_override(v[i], i));
    } else {
      throw model_error(
          model_error::kind::invalid,
          "config: unknown key \"" + key +
              "\" (known: format, bits, group_size, scheme, rounding, method, "
              "preset, include, exclude, lm_head, embeddings, accuracy_level, overrides)");
    }
  }
  options = std::move(o);
}

std::vector<node_override> parse_overrides(const json& config) {
  quantize_options scratch;
  apply_config(config, scratch);
  return scratch.overrides;
}

}  // namespace onnx
}  // namespace int4q

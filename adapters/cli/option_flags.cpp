#include "option_flags.hpp"

namespace int4q {
namespace cli {

namespace {

/// The fields both commands share (calibration data: calib_options).
flag_names data_flags(const std::string& data_flag) {
  return {
      {"path", data_flag},
      {"token_dtype", "--token-dtype"},
      {"seq_len", data_flag + "-seq-len"},
  };
}

/// Values whose flag spelling is not "flag value".
std::string enum_value(const std::string& field, std::string value) {
  if (field == "config.scheme" || field == "config.granularity") {
    for (char& c : value) c = c == '_' ? '-' : c;
  }
  return value;
}

std::string flag_of(const std::string& phrase, const flag_names& flags) {
  const auto whole = flags.find(phrase);
  if (whole != flags.end()) return whole->second;
  const std::size_t eq = phrase.find(" = ");
  const std::string field = phrase.substr(0, eq);
  const auto f = flags.find(field);
  if (eq == std::string::npos) return f != flags.end() ? f->second : field;
  const std::string value = phrase.substr(eq + 3);
  if (f == flags.end()) return field + " " + value;
  return f->second + " " + enum_value(field, value);
}

}  // namespace

const flag_names& quantize_flags() {
  static const flag_names flags = [] {
    flag_names f = {
        {"format", "--format"},
        {"config.bits", "--bits"},
        {"config.group_size", "--group-size"},
        {"config.granularity", "--group-size"},
        {"config.granularity = per_channel", "--group-size per-channel"},
        {"config.scheme", "--scheme"},
        {"config.rounding", "--rounding"},
        {"ort_preset", "--preset ort"},
        {"ort_preset = true", "--preset ort"},
        {"accuracy_level", "--accuracy-level"},
        {"include", "--include"},
        {"exclude", "--exclude"},
        {"lm_head", "--lm-head"},
        {"lm_head = quantize", "--lm-head quantize"},
        {"embeddings", "--embeddings"},
        {"embeddings = quantize", "--embeddings quantize"},
        {"gptq.act_order", "--act-order"},
        {"gptq.act_order = false", "--no-act-order"},
        {"gptq.static_groups", "--static-groups"},
        {"gptq.static_groups = true", "--static-groups"},
        {"awq.samples", "--awq-samples"},
        {"awq.scales.alpha_step", "--awq-alpha-step"},
        {"awq.clip.clip_step", "--awq-clip-step"},
        {"awq.clip.clip_min", "--awq-clip-min"},
        {"calibration.data", "--calib FILE|DIR"},
        {"calibration.activation_budget_bytes", "--calib-memory"},
        {"calibration.scratch_dir", "-o (its directory)"},
        {"effective_bits", "--effective-bits"},
        {"candidates", "--auto-candidates"},
        {"auto_plan", "--auto --plan-out"},
        // --resume (quantize_options::resume)
        {"resume.journal", "--resume"},
    };
    for (auto& d : data_flags("--calib")) f.insert(d);
    return f;
  }();
  return flags;
}

const flag_names& eval_flags() {
  static const flag_names flags = [] {
    flag_names f = data_flags("--data");
    f["seq_len"] = "--seq-len";
    return f;
  }();
  return flags;
}

std::string with_flags(const std::string& message, const flag_names& flags) {
  std::string out;
  std::size_t at = 0;
  while (true) {
    const std::size_t open = message.find('`', at);
    const std::size_t close = open == std::string::npos ? open : message.find('`', open + 1);
    if (close == std::string::npos) break;
    out +=
        message.substr(at, open - at) + flag_of(message.substr(open + 1, close - open - 1), flags);
    at = close + 1;
  }
  return out + message.substr(at);
}

}  // namespace cli
}  // namespace int4q

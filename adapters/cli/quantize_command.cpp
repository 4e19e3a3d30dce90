#include "quantize_command.hpp"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include <int4q/onnx/apply_plan.hpp>
#include <int4q/onnx/auto_quantize.hpp>
#include <int4q/onnx/model.hpp>
#include <int4q/onnx/option_error.hpp>
#include <int4q/onnx/saved_files.hpp>
#include <int4q/version.hpp>

#include "cli_common.hpp"
#include "mpi_ranks.hpp"
#include "option_checks.hpp"
#include "option_flags.hpp"
#include "signal_cleanup.hpp"
#include "validate_args.hpp"

namespace int4q {
namespace cli {

namespace fs = std::filesystem;
namespace ox = int4q::onnx;
using clock_type = std::chrono::steady_clock;

namespace {

// ---- Option values ------------------------------------------------------------------------------

/// (0, 1]: AWQ's grid steps and smallest clip ratio.
const real_range unit_interval{0.0, true, 1.0, false};
/// --effective-bits: stored bits per weight; no format stores more than 64 (a float64 weight).
const real_range effective_bits_range{0.0, true, 64.0, false};

/// Lower case, '_' read as '-': `--scheme symmetric_full_range` is `symmetric-full-range`.
std::string normalized(std::string s) {
  for (char& c : s) {
    c = c == '_' ? '-' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return s;
}

template <class E>
struct choice {
  const char* name;
  E value;
};

template <class E>
std::string choice_names(const std::vector<choice<E>>& choices) {
  std::string names;
  for (const auto& c : choices) names += (names.empty() ? "" : "|") + std::string(c.name);
  return names;
}

/// An option taking one of `choices` (case-insensitive, '_' = '-'), stored into `target`.
template <class T, class E>
CLI::Option* add_choice(CLI::App& app, const std::string& flag, T& target,
                        std::vector<choice<E>> choices, const std::string& help,
                        const std::string& default_name = "") {
  const std::string names = choice_names(choices);
  const std::string option =
      flag.substr(flag.rfind(',') == std::string::npos ? 0 : flag.rfind(',') + 1);
  CLI::Option* opt = app.add_option_function<std::string>(
      flag,
      [&target, choices, names, option](const std::string& value) {
        const std::string key = normalized(value);
        for (const auto& c : choices) {
          if (key == c.name) {
            target = c.value;
            return;
          }
        }
        throw CLI::ValidationError(option, "'" + value + "' is not one of " + names);
      },
      help);
  opt->type_name(names);
  if (!default_name.empty()) opt->default_str(default_name);
  return opt;
}

const std::vector<choice<ox::output_format>> format_choices = {
    {"matmulnbits", ox::output_format::matmulnbits},
    {"qdq", ox::output_format::qdq},
    {"fake", ox::output_format::fake},
};
const std::vector<choice<int4q::scheme>> scheme_choices = {
    {"asymmetric", int4q::scheme::asymmetric},
    {"symmetric", int4q::scheme::symmetric},
    {"symmetric-full-range", int4q::scheme::symmetric_full_range},
    {"symmetric-offset", int4q::scheme::symmetric_offset},
};
const std::vector<choice<int4q::rounding>> rounding_choices = {
    {"half-even", int4q::rounding::half_to_even},
    {"half-away", int4q::rounding::half_away_from_zero},
};
const std::vector<choice<ox::lm_head_policy>> lm_head_choices = {
    {"keep", ox::lm_head_policy::keep},
    {"quantize", ox::lm_head_policy::quantize},
    {"int8", ox::lm_head_policy::int8},
};
const std::vector<choice<ox::embedding_policy>> embedding_choices = {
    {"keep", ox::embedding_policy::keep},
    {"quantize", ox::embedding_policy::quantize},
};
const std::vector<choice<ox::external_data>> external_choices = {
    {"auto", ox::external_data::automatic},
    {"always", ox::external_data::always},
    {"never", ox::external_data::never},
};
const std::vector<choice<quantize_command_options::spill_mode>> spill_choices = {
    {"auto", quantize_command_options::spill_mode::automatic},
    {"always", quantize_command_options::spill_mode::always},
    {"never", quantize_command_options::spill_mode::never},
};
const std::vector<choice<bool>> preset_choices = {{"ort", true}};
const std::vector<choice<ox::calibration_mode>> calib_mode_choices = {
    {"sequential", ox::calibration_mode::sequential},
    {"parallel", ox::calibration_mode::parallel},
};

template <class E>
const char* name_of(const std::vector<choice<E>>& choices, E value) {
  for (const auto& c : choices) {
    if (c.value == value) return c.name;
  }
  return "?";
}

/// Rows per group (a --config file's "group_size" too).
const int_range group_size_range(1);

/// --group-size: a positive number of rows, or per-channel.
void parse_group_size(const std::string& value, quantize_command_options& o) {
  const std::string key = normalized(value);
  if (key == "per-channel" || key == "channel") {
    o.granularity = int4q::grouping::per_channel;
    return;
  }
  const auto size = parse_int(key, group_size_range);
  if (!size) {
    throw CLI::ValidationError("--group-size " + value,
                               "must be " + group_size_range.text() + " or per-channel");
  }
  o.granularity = int4q::grouping::group;
  o.group_size = static_cast<std::size_t>(*size);
}

std::string group_text(int4q::grouping g, std::size_t size) {
  return g == int4q::grouping::per_channel ? std::string("per-channel")
                                           : "group " + std::to_string(size);
}

/// Where each of q.overrides comes from, for messages: "--config file 'c.json': override #0
/// ('mm0')", "--plan file 'p.json': weights[2] ('w')", "--auto plan: weight 'w'".
using override_sources = std::vector<std::string>;

override_sources config_sources(const ox::quantize_options& q, const std::string& config_file) {
  override_sources where;
  for (std::size_t i = 0; i < q.overrides.size(); ++i) {
    where.push_back("--config file '" + config_file + "': override #" + std::to_string(i) + " ('" +
                    q.overrides[i].match + "')");
  }
  return where;
}

/// The library's option_error in the command line's words (exit code 2): flags for the fields,
/// and for an override the file it comes from.
usage_error as_usage_error(const ox::option_error& e, const override_sources& sources) {
  const auto& i = e.override_index();
  const std::string where = i && *i < sources.size() ? sources[*i] + ": " : e.where();
  return usage_error(where + with_flags(e.message(), quantize_flags()));
}

/// What the output format can hold, checked by the library before any work so that a wrong
/// combination of options is a usage error (exit code 2) naming them.
void check_with_library(const ox::quantize_options& q, const override_sources& sources) {
  try {
    ox::check_quantize_options(q);
  } catch (const ox::option_error& e) {
    throw as_usage_error(e, sources);
  }
}

// ---- --config FILE ------------------------------------------------------------------------------

/// A JSON file named by option `what` ("--config file", "--plan file").
nlohmann::json read_json_file(const fs::path& path, const std::string& what = "--config file") {
  require_readable_file(path, what);
  std::ifstream in(path, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) {
    throw ox::model_error(ox::model_error::kind::io,
                          "cannot read " + what + " '" + path.string() + "'");
  }
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    // Line and column of the byte where parsing stopped (e.byte counts from 1).
    const std::size_t end = std::min<std::size_t>(e.byte == 0 ? 0 : e.byte - 1, text.size());
    const auto line = 1 + std::count(text.begin(), text.begin() + static_cast<long>(end), '\n');
    const std::size_t line_start = end == 0 ? std::string::npos : text.rfind('\n', end - 1);
    const std::size_t column = end - (line_start == std::string::npos ? 0 : line_start + 1) + 1;
    std::string why = e.what();
    const std::size_t colon = why.find(": ");
    if (colon != std::string::npos) why = why.substr(colon + 2);
    throw usage_error(what + " '" + path.string() + "' is not valid JSON (line " +
                      std::to_string(line) + ", column " + std::to_string(column) + "): " + why);
  }
}

/// A --plan file: JSON written by --plan-out. Errors name the file and the field (exit 2, as
/// for a --config file).
ox::quant_plan read_plan_file(const fs::path& path) {
  const nlohmann::json j = read_json_file(path, "--plan file");
  try {
    return ox::plan_from_json(j);
  } catch (const ox::model_error& e) {
    std::string why = e.what();
    if (why.rfind("plan: ", 0) == 0) why = why.substr(6);
    throw usage_error("--plan file '" + path.string() + "': " + why);
  }
}

// ---- Paths --------------------------------------------------------------------------------------

/// `p` absolute, with symbolic links and "." / ".." resolved as far as it exists.
fs::path resolved(const fs::path& p) {
  std::error_code ec;
  const fs::path r = fs::weakly_canonical(fs::absolute(p, ec), ec);
  return ec ? fs::absolute(p).lexically_normal() : r;
}

void check_paths_before_loading(const quantize_command_options& o) {
  require_readable_file(o.input, "input model");
  for (const auto& [path, option] :
       {std::pair<fs::path, std::string>{o.output, "-o"}, {o.plan_out, "--plan-out"}}) {
    if (path == "-") {
      throw usage_error(option +
                        " -: int4q writes this to a file (a model with its external data, a "
                        "plan), not to stdout; name a file");
    }
  }
  require_writable_path(o.output, "-o");
  if (!o.plan_out.empty()) require_writable_path(o.plan_out, "--plan-out");
  if (same_file(o.input, o.output) || same_file(o.input, ox::default_data_file(o.output))) {
    throw usage_error("-o '" + o.output.string() + "' would overwrite the input model '" +
                      o.input.string() + "'; write the quantized model to another file");
  }
  if (!o.report.empty() && o.report != "-") {
    const fs::path report(o.report);
    require_writable_path(report, "--report");
    const fs::path where = resolved(report);
    if (same_file(report, o.input) || where == resolved(o.output) ||
        where == resolved(ox::default_data_file(o.output))) {
      throw usage_error("--report '" + o.report +
                        "' names the input or the output model; write the report to another file");
    }
  }
}

/// The activations calibration holds, estimated before any work: one run (`per_run` samples,
/// both modes advance one run at a time) must fit in the machine's physical memory, and
/// --calib-mode sequential's paused runs (every sample) in --calib-memory plus the free disk
/// space for the scratch file next to the output (ox::sequential_calibration). Refused
/// otherwise, naming the way out. The estimate is a lower bound: per sample, the bytes of its
/// inputs, plus its rows times the widest input or output of a quantizable weight (K or N) times
/// 4 bytes.
void check_calibration_memory(const ox::model& m, const ox::calib_data& data,
                              const quantize_command_options& o, bool sequential,
                              std::size_t per_run, std::uint64_t budget) {
  const std::uint64_t memory = physical_memory_bytes();
  if (memory == 0 || data.samples() == 0) return;
  std::uint64_t width = 0;
  for (const auto& w : ox::find_weights(m)) {
    if (w.quantizable) width = std::max<std::uint64_t>(width, std::max(w.k, w.n));
  }
  long double input_bytes = 0;
  std::uint64_t rows = 1;
  for (const auto& [name, v] : data.batch(0, 1)) {
    const bool is_float = v.type == ox::value_type::float32;
    input_bytes += static_cast<long double>(v.size()) * (is_float ? 4 : 8);
    // Token ids [1, L]: L rows; floats [.., D]: size / D rows of D values.
    const std::uint64_t r = is_float && !v.shape.empty() && v.shape.back() > 0
                                ? v.size() / static_cast<std::uint64_t>(v.shape.back())
                                : v.size();
    rows = std::max(rows, r);
  }
  const long double per_sample = input_bytes + static_cast<long double>(rows) * width * 4;
  auto bytes = [](long double b) {
    return format_bytes(b >= 1.8e19L ? std::numeric_limits<std::uint64_t>::max()
                                     : static_cast<std::uint64_t>(b));
  };
  const std::string estimate = "(" + std::to_string(rows) + " rows x " + std::to_string(width) +
                               " values x 4 bytes per sample, and its inputs)";
  const std::string beyond_memory =
      estimate + ", more than this machine's " + format_bytes(memory) + " of memory";
  const std::size_t held = std::min(per_run, data.samples());
  const long double run_bytes = per_sample * static_cast<long double>(held);
  if (run_bytes > static_cast<long double>(memory)) {
    const auto most = static_cast<std::uint64_t>(static_cast<long double>(memory) / per_sample);
    if (most == 0) {
      const bool windows =
          data.format() == ox::data_format::tokens || data.format() == ox::data_format::random;
      throw usage_error(
          (windows ? "--calib-seq-len " + std::to_string(o.calib.seq_len) + ": one"
                   : std::string("One")) +
          " calibration sample needs at least " + bytes(per_sample) + " of activations here " +
          beyond_memory + "; " +
          (windows ? "use a shorter --calib-seq-len" : "give data with shorter samples"));
    }
    throw usage_error("--calib-batch " + std::to_string(held) + ": a batch holds at least " +
                      bytes(run_bytes) + " of activations here " + beyond_memory +
                      "; use --calib-batch " + std::to_string(most) + " or less");
  }
  if (!sequential) return;
  std::error_code ec;
  const fs::path dir = o.output.parent_path().empty() ? fs::path(".") : o.output.parent_path();
  const fs::space_info space = fs::space(dir, ec);
  const long double disk = ec ? 0.0L : static_cast<long double>(space.available);
  const long double room = static_cast<long double>(std::min(budget, memory)) + disk;
  const long double total = per_sample * static_cast<long double>(data.samples());
  if (total <= room) return;
  throw usage_error(o.calib.samples_flag + " " + std::to_string(data.samples()) +
                    ": --calib-mode sequential holds the activations of every sample, at least " +
                    bytes(total) + " here " + estimate + ", more than --calib-memory " +
                    bytes(static_cast<long double>(std::min(budget, memory))) + " plus the " +
                    bytes(disk) + " free on disk for its scratch file; use " +
                    o.calib.samples_flag + " " +
                    std::to_string(static_cast<std::uint64_t>(room / per_sample)) +
                    " or less, or --calib-mode parallel");
}

void check_paths_after_loading(const quantize_command_options& o, const ox::model& m) {
  for (const fs::path& data : external_data_files(m)) {
    if (same_file(data, o.output) || same_file(data, ox::default_data_file(o.output))) {
      throw usage_error("-o '" + o.output.string() + "' would overwrite '" + data.string() +
                        "', the external data of the input model; write the quantized model "
                        "to another directory or file name");
    }
  }
}

// ---- Report and summary -------------------------------------------------------------------------

struct run_facts {
  std::uint64_t input_bytes = 0;
  std::vector<std::pair<fs::path, std::uint64_t>> output_files;
  std::uint64_t output_bytes = 0;
  std::optional<std::uint64_t> peak_rss;
  /// auto_s: --auto's calibration and scoring of the candidates (0 without --auto).
  double load_s = 0, auto_s = 0, quantize_s = 0, save_s = 0, total_s = 0;
};

nlohmann::json make_report(const quantize_command_options& o, const ox::quantize_report& r,
                           const run_facts& f) {
  nlohmann::json j = ox::to_json(r);
  j["int4q_version"] = INT4Q_VERSION_STRING;
  j["input"] = o.input.string();
  j["output"] = o.output.string();
  j["input_bytes"] = f.input_bytes;
  nlohmann::json files = nlohmann::json::array();
  for (const auto& file : f.output_files) {
    files.push_back({{"path", file.first.string()}, {"bytes", file.second}});
  }
  j["output_files"] = files;
  j["output_bytes"] = f.output_bytes;
  j["peak_rss_bytes"] = f.peak_rss ? nlohmann::json(*f.peak_rss) : nlohmann::json(nullptr);
  j["timing"] = {{"load_seconds", f.load_s},
                 {"auto_plan_seconds", f.auto_s},
                 {"quantize_seconds", f.quantize_s},
                 {"save_seconds", f.save_s},
                 {"total_seconds", f.total_s}};
  // mpirun: the ranks and what rank 0 sent and received (tests/mpi, bench_onnx_calibrated).
  const ox::communicator* comm = current_communicator();
  j["ranks"] = comm ? comm->size() : 1;
  j["communication_bytes"] = comm ? comm->bytes_moved() : 0;
  return j;
}

std::string fixed(double v, int digits) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.*f", digits, v);
  return buffer;
}

void print_summary(std::ostream& out, const quantize_command_options& o,
                   const ox::quantize_options& q, const ox::quantize_report& r,
                   const run_facts& f) {
  const auto row = [&out](const std::string& label, const std::string& value) {
    out << "  " << label << std::string(label.size() < 20 ? 20 - label.size() : 1, ' ') << value
        << "\n";
  };
  out << "int4q quantize: " << o.input.string() << " -> " << o.output.string() << "\n";
  row("format", std::string(ox::to_string(q.format)) + ", " + std::to_string(q.config.bits) +
                    " bits, " + group_text(q.config.granularity, q.config.group_size) + ", " +
                    int4q::to_string(q.config.scheme) + (q.ort_preset ? ", preset ort" : "") +
                    ", " + ox::to_string(q.algo) +
                    (q.algo == ox::method::rtn
                         ? ""
                         : std::string(" (") + ox::to_string(q.calibration.mode) + ")"));
  if (q.algo != ox::method::rtn) row("calibration", q.calibration.description);
  // Weights not quantized by choice (selection, lm_head policy, overrides) are listed; nodes whose
  // B operand is no constant weight (activation x activation) are only counted.
  std::vector<const ox::tensor_report*> kept;
  std::size_t no_weight = 0;
  for (const auto& t : r.tensors) {
    if (t.quantized) continue;
    if (t.bytes_before > 0) {
      kept.push_back(&t);
    } else {
      no_weight += t.nodes.empty() ? 1 : t.nodes.size();
    }
  }
  row("weights", std::to_string(r.weights_quantized) + " of " +
                     std::to_string(r.weights_quantized + kept.size()) + " quantized" +
                     (no_weight ? " (" + std::to_string(no_weight) +
                                      " MatMul/Gemm without a quantizable weight: see int4q "
                                      "inspect)"
                                : ""));
  const std::size_t shown = std::min<std::size_t>(kept.size(), 5);
  for (std::size_t i = 0; i < shown; ++i) {
    const auto& t = *kept[i];
    row("", (t.nodes.empty() ? t.weight : t.nodes.front()) + " not quantized" +
                (t.reason.empty() ? "" : ": " + t.reason));
  }
  if (kept.size() > shown) {
    row("", "... and " + std::to_string(kept.size() - shown) + " more (see --report)");
  }
  if (r.bytes_before > 0) {
    row("weight bytes", format_bytes(r.bytes_before) + " -> " + format_bytes(r.bytes_after) + " (" +
                            fixed(static_cast<double>(r.bytes_before) /
                                      static_cast<double>(std::max<std::size_t>(r.bytes_after, 1)),
                                  2) +
                            "x smaller)");
  }
  row("model size", format_bytes(f.input_bytes) + " -> " + format_bytes(f.output_bytes));
  const ox::tensor_report* worst = nullptr;
  double rel_sum = 0, sqnr_min = std::numeric_limits<double>::infinity();
  std::size_t quantized = 0;
  for (const auto& t : r.tensors) {
    if (!t.quantized) continue;
    ++quantized;
    rel_sum += t.relative_l2;
    sqnr_min = std::min(sqnr_min, t.sqnr_db);
    if (worst == nullptr || t.relative_l2 > worst->relative_l2) worst = &t;
  }
  if (worst != nullptr) {
    row("relative L2 error", "mean " + fixed(rel_sum / static_cast<double>(quantized), 4) +
                                 ", worst " + fixed(worst->relative_l2, 4) + " (" +
                                 (worst->nodes.empty() ? worst->weight : worst->nodes.front()) +
                                 ")");
    row("SQNR", "min " + fixed(sqnr_min, 1) + " dB");
  }
  row("time", format_seconds(f.total_s) + " (load " + format_seconds(f.load_s) +
                  (f.auto_s > 0 ? ", auto plan " + format_seconds(f.auto_s) : std::string()) +
                  ", quantize " + format_seconds(f.quantize_s) + ", save " +
                  format_seconds(f.save_s) + ")");
  if (f.peak_rss) row("peak memory", format_bytes(*f.peak_rss));
}

}  // namespace

// ---- The subcommand -----------------------------------------------------------------------------

namespace {

/// IN and -o.
void add_io_options(CLI::App& sub, quantize_command_options& o) {
  sub.add_option("IN", o.input, "ONNX model to quantize")->required()->type_name("");
  sub.add_option("-o,--output", o.output,
                 "Where to write the quantized model (an existing file is replaced atomically; "
                 "never the input)")
      ->required()
      ->type_name("OUT");
}

/// The format and its grid: --format, --bits, --group-size, --scheme, --rounding.
void add_grid_options(CLI::App& sub, quantize_command_options& o) {
  add_choice(sub, "--format", o.format, format_choices,
             "What quantized weights become: com.microsoft MatMulNBits, DequantizeLinear-21 + "
             "the original node (QDQ), or fake-quant float weights (for evaluation)",
             "matmulnbits");
  add_int_option(
      sub, "--bits", {2, 8}, [&o](std::int64_t v) { o.bits = static_cast<int>(v); },
      "Bits per weight (matmulnbits: 2, 4 or 8; qdq: 4 or 8)", "4");
  sub.add_option_function<std::string>(
         "--group-size", [&o](const std::string& v) { parse_group_size(v, o); },
         "Rows of K that share a scale, or per-channel (matmulnbits: a power of two 16..256)")
      ->type_name("N|per-channel")
      ->default_str("128");
  add_choice(sub, "--scheme", o.scheme, scheme_choices,
             "How a group's range maps to codes (underscores accepted)", "asymmetric");
  add_choice(sub, "--rounding", o.rounding, rounding_choices,
             "Rounding of w/scale: half to even, or half away from zero", "half-even");
}

/// --method and its calibration data.
void add_method_options(CLI::App& sub, quantize_command_options& o) {
  sub.add_option_function<std::string>(
         "--method", [&o](const std::string& v) { o.method = v; },
         "Quantization method: rtn (round to nearest, no data), gptq (GPTQ on calibration "
         "activations run by int4q's executor: see --calib), awq_lite (AWQ per-channel scales, "
         "1/s folded into the graph), awq_clip (AWQ clip ratios), awq_full (awq_lite then "
         "awq_clip), awq_gptq (awq_lite scales then GPTQ), block (block-wise output-aware "
         "tuning: each residual block's rounding offsets and group ranges tuned by signed "
         "gradients against the float model's block output; see --block-iters)")
      ->type_name("rtn|gptq|awq_lite|awq_clip|awq_full|awq_gptq|block")
      ->default_str("rtn");
  add_data_options(
      sub, o.calib, "--calib",
      "Calibration data for --method gptq, awq_* and block (model inputs; without it, random "
      "inputs with a warning)");
  o.calib.samples_flag = "--calib-samples";
  o.calib.seq_len_flag = "--calib-seq-len";
  add_count_options(sub, o.calib,
                    "Calibration samples: windows of a token file (at most its distinct windows), "
                    "random samples, or at most this many samples of a .npy/.npz/.pb data; a "
                    "count given is checked against the data",
                    "Tokens per calibration window (token files; symbolic dimensions of random "
                    "inputs)");
  add_int_option(sub, "--calib-batch", o.calib_batch, {1}, "Calibration samples per executor run");
  add_choice(sub, "--calib-mode", o.calib_mode, calib_mode_choices,
             "sequential: each weight sees the activations of the already quantized earlier "
             "weights (GPTQ's recipe); parallel: every weight sees the float model's (ONNX "
             "Runtime's and INC's GPTQ)",
             "sequential");
  sub.add_option_function<std::string>(
         "--calib-memory",
         [&o](const std::string& v) {
           const auto bytes = parse_size(v);
           if (!bytes)
             throw CLI::ValidationError("--calib-memory " + v,
                                        "must be a size in bytes, such as 1000, 512M or 4G");
           o.calib_memory = *bytes;
         },
         "--calib-mode sequential: memory for the activations of the paused calibration runs; "
         "the runs beyond it wait in a scratch file next to OUT (removed at the end); 0 keeps "
         "only the run being advanced in memory. The output does not depend on it")
      ->type_name("SIZE")
      ->default_str("half the physical memory");
}

/// GPTQ's settings.
void add_gptq_options(CLI::App& sub, quantize_command_options& o) {
  add_int_option(sub, "--gptq-block", o.gptq_block, {1},
                 "GPTQ: rows per lazy block (one GEMM each)");
  add_real_option(sub, "--damp", o.damp, {0, true},
                  "GPTQ: damping added to diag(H), a fraction of its mean");
  add_switch(sub, "act-order", o.act_order,
             "GPTQ: quantize rows in order of decreasing diag(H) (with groups it needs "
             "--static-groups: the ONNX formats have no g_idx)");
  add_switch(sub, "static-groups", o.static_groups,
             "GPTQ: compute every group's scale up front from the original weights");
}

/// AWQ's settings (and --compare-rtn).
void add_awq_options(CLI::App& sub, quantize_command_options& o) {
  add_real_option(sub, "--awq-alpha-step", o.awq_alpha_step, unit_interval,
                  "AWQ: spacing of the alpha grid 0, step, ..., 1 of the scale search");
  add_real_option(sub, "--awq-clip-step", o.awq_clip_step, unit_interval,
                  "AWQ clip: spacing of the clip ratios 1, 1 - step, ... >= --awq-clip-min");
  add_real_option(sub, "--awq-clip-min", o.awq_clip_min, unit_interval,
                  "AWQ clip: the smallest clip ratio");
  add_switch(sub, "awq-per-subgraph", o.awq_per_subgraph,
             "AWQ: weights sharing an input (q/k/v, gate/up) get one joint scale, so 1/s can "
             "be folded into the input's producer");
  add_int_option(sub, "--awq-samples", o.awq_samples, {1},
                 "AWQ: calibration rows sampled (uniformly) for the scale and clip losses");
  add_int_option(sub, "--block-iters", o.block_iters, {1},
                 "--method block: signed-gradient steps per block, each on one calibration "
                 "batch (--calib-batch samples)");
  add_real_option(sub, "--block-lr", o.block_lr, real_range{0.0, false},
                  "--method block: the first step's size, decaying linearly to 0 (0: 1 / "
                  "--block-iters)");
  sub.add_flag("--compare-rtn", o.compare_rtn,
               "GPTQ: also report RTN's Hessian-weighted loss for each weight (one more K x K x N "
               "product per weight)");
}

/// --auto, its budget and candidates; --plan-out, --plan.
void add_plan_options(CLI::App& sub, quantize_command_options& o) {
  sub.add_flag("--auto", o.auto_plan,
               "Choose a format per weight (from --auto-candidates) for the least "
               "Hessian-weighted error on --calib data within --effective-bits");
  add_real_option(
      sub, "--effective-bits", effective_bits_range, [&o](double v) { o.effective_bits = v; },
      "--auto: the budget, stored bits (codes, scales, zero points) per weight over the "
      "weights quantized",
      "")
      ->type_name("B");
  sub.add_option("--auto-candidates", o.auto_candidates,
                 "--auto: the formats to choose from (default int4-g32 int4-g128 int8-g128 "
                 "none; int8-channel instead of int8-g128 for qdq and fake)")
      ->type_name("int<B>-g<N>|int<B>-channel|none");
  sub.add_option("--plan-out", o.plan_out, "--auto: write the chosen plan (JSON) to FILE")
      ->type_name("FILE");
  sub.add_option("--plan", o.plan_in, "Apply a plan written by --plan-out (no calibration)")
      ->type_name("FILE");
}

/// --preset, which weights are quantized and how: --include, --exclude, --config, --embeddings,
/// --lm-head, --accuracy-level.
void add_selection_options(CLI::App& sub, quantize_command_options& o) {
  add_choice(sub, "--preset", o.ort_preset, preset_choices,
             "Reproduce a tool's quantizer bit for bit: ort = ONNX Runtime's MatMulNBits/QDQ "
             "quantizer (--scheme asymmetric, or symmetric = ONNX Runtime's full-range "
             "symmetric)");
  sub.add_option("--include", o.include,
                 "Quantize only nodes whose name (or weight name) matches this regex; "
                 "repeatable")
      ->allow_extra_args(false)
      ->type_name("REGEX");
  sub.add_option("--exclude", o.exclude,
                 "Leave nodes whose name (or weight name) matches this regex in float; "
                 "repeatable")
      ->allow_extra_args(false)
      ->type_name("REGEX");
  sub.add_option("--config", o.config_file,
                 "JSON file with base settings and per-node overrides "
                 "({\"bits\": 4, \"overrides\": [{\"match\": REGEX, \"bits\": 8}]}); "
                 "command line flags win")
      ->type_name("FILE");
  add_choice(sub, "--embeddings", o.embeddings, embedding_choices,
             "Gather tables (token embeddings): keep them in float, or quantize them "
             "(GatherBlockQuantized with matmulnbits, DequantizeLinear + Gather with qdq); a "
             "tied lm_head shares the quantized table",
             "keep");
  add_choice(sub, "--lm-head", o.lm_head, lm_head_choices,
             "The final projection to the logits: keep it in float, quantize it like the "
             "others, or quantize it to 8 bits",
             "keep");
  add_int_option(
      sub, "--accuracy-level", {0, 4},
      [&o](std::int64_t v) { o.accuracy_level = static_cast<int>(v); },
      "MatMulNBits accuracy_level attribute (absent unless given)", "");
}

/// How the output is written and the run reported.
void add_run_options(CLI::App& sub, quantize_command_options& o) {
  add_choice(sub, "--external-data", o.external, external_choices,
             "Write weights to OUT.data: when the model would pass 2 GB, always, or never", "auto");
  add_choice(sub, "--spill", o.spill, spill_choices,
             "Move quantized tensors to a scratch file next to OUT as they are made, so memory "
             "holds one weight at a time: for inputs of 512 MiB or more, always, or never",
             "auto");
  sub.add_option("--report", o.report,
                 "Write a JSON report (per-weight error, sizes, timings, peak memory) to FILE, "
                 "or to stdout with - (instead of the summary)")
      ->type_name("FILE|-");
  add_int_option(sub, "--threads", o.threads, threads_range(),
                 "Threads (the output does not depend on it)");
  sub.add_flag("-q,--quiet", o.quiet, "Print nothing but errors (and the report with --report -)");
  sub.add_flag("--resume", o.resume,
               "Keep a journal of the finished weights next to OUT (.OUT.resume and "
               ".OUT.resume.json) and continue from it when it exists: a run that dies is "
               "rerun with the same command and --resume, and writes the same bytes. The "
               "journal is removed once OUT is written");
  sub.add_option("--test-stop-after", o.test_stop_after)->group("");  // tests: see docs
}

}  // namespace

void setup_quantize(CLI::App& app) {
  auto opt = std::make_shared<quantize_command_options>();
  CLI::App* sub = app.add_subcommand(
      "quantize",
      "Quantize the MatMul/Gemm weights of an ONNX model and write the rewritten model");
  for (auto add : {add_io_options, add_grid_options, add_method_options, add_gptq_options,
                   add_awq_options, add_plan_options, add_selection_options, add_run_options}) {
    add(*sub, *opt);
  }
  sub->footer(exit_codes_text());
  sub->callback([opt]() { run_quantize(*opt); });
}

namespace {

/// --method NAME: rtn, gptq or an awq_* method ('_' or '-', any case).
ox::method parse_method(const std::string& name) {
  const std::string method = normalized(name);
  if (method == "hqq") {
    throw usage_error("--method " + name +
                      " arrives in a later version of int4q; use --method rtn, gptq or awq_*");
  }
  for (const ox::method m :
       {ox::method::rtn, ox::method::gptq, ox::method::awq_lite, ox::method::awq_clip,
        ox::method::awq_full, ox::method::awq_gptq, ox::method::block}) {
    if (method == normalized(ox::to_string(m))) return m;
  }
  throw usage_error("--method '" + name +
                    "' is unknown: use rtn, gptq, awq_lite, awq_clip, awq_full, awq_gptq or "
                    "block");
}

/// --calib-memory, by default half the physical memory (the rest for the model, the statistics
/// and the run being advanced); no limit when the memory is unknown.
std::uint64_t calib_memory_budget(const quantize_command_options& o) {
  if (o.calib_memory) return *o.calib_memory;
  const std::uint64_t memory = physical_memory_bytes();
  return memory > 0 ? memory / 2 : std::numeric_limits<std::uint64_t>::max();
}

/// The method, calibration, GPTQ and AWQ settings of the command line.
void set_method_options(const quantize_command_options& o, ox::quantize_options& q) {
  if (o.method) q.algo = parse_method(*o.method);
  q.calibration.mode = o.calib_mode;
  q.calibration.activation_budget_bytes = calib_memory_budget(o);
  q.gptq.block_size = o.gptq_block;
  q.gptq.damp = o.damp;
  q.gptq.act_order = o.act_order;
  q.gptq.static_groups = o.static_groups;
  q.gptq.rtn_loss = o.compare_rtn;
  q.awq.scales.alpha_step = o.awq_alpha_step;
  q.awq.clip.clip_step = o.awq_clip_step;
  q.awq.clip.clip_min = o.awq_clip_min;
  q.awq.per_subgraph = o.awq_per_subgraph;
  q.awq.samples = o.awq_samples;
  q.block.iterations = o.block_iters;
  q.block.learning_rate = o.block_lr;
}

/// The format, grid and selection flags given, over the config file's.
void set_format_options(const quantize_command_options& o, ox::quantize_options& q) {
  if (o.format) q.format = *o.format;
  if (o.bits) q.config.bits = *o.bits;
  if (o.granularity) {
    q.config.granularity = *o.granularity;
    q.config.group_size = o.group_size;
  }
  if (o.scheme) q.config.scheme = *o.scheme;
  if (o.rounding) q.config.rounding = *o.rounding;
  if (o.ort_preset) q.ort_preset = true;
  if (!o.include.empty()) q.include = o.include;
  if (!o.exclude.empty()) q.exclude = o.exclude;
  if (o.lm_head) q.lm_head = *o.lm_head;
  if (o.embeddings) q.embeddings = *o.embeddings;
  if (o.accuracy_level) q.accuracy_level = o.accuracy_level;
  q.threads = o.threads;
}

}  // namespace

ox::quantize_options to_quantize_options(const quantize_command_options& o,
                                         const nlohmann::json& config) {
  ox::quantize_options q;
  if (!config.is_null()) {
    try {
      ox::apply_config(config, q);
    } catch (const ox::model_error& e) {
      std::string why = e.what();  // "config: \"bits\" 9: must be ..." names the field
      if (why.rfind("config: ", 0) == 0) why = why.substr(8);
      throw usage_error("--config file '" + o.config_file.string() + "': " + why);
    }
  }
  // Command line flags win over the config file.
  set_method_options(o, q);
  set_format_options(o, q);
  if (q.ort_preset && o.rounding) {
    throw usage_error(
        "--rounding cannot be combined with --preset ort: the preset rounds half away from "
        "zero, as ONNX Runtime does");
  }
  check_with_library(q, config_sources(q, o.config_file.string()));
  return q;
}

namespace {

/// One run of `int4q quantize`: the options, where their overrides come from, the plan.
struct quantize_run {
  explicit quantize_run(const quantize_command_options& options) : o(options) {}
  const quantize_command_options& o;
  ox::quantize_options q;
  override_sources sources;  ///< per q.overrides
  ox::auto_options auto_options;
  std::optional<ox::quant_plan> plan;  ///< --plan's file (read before loading), or --auto's
  run_facts facts;
  // Calibration data, read batch by batch (next_sample: the next sample a batch starts at).
  std::optional<ox::calib_data> calib;
  std::size_t next_sample = 0;
};

/// --auto, --effective-bits, --auto-candidates, --plan-out and --plan together.
void check_plan_flags(const quantize_command_options& o) {
  if (o.auto_plan && !o.effective_bits) {
    throw usage_error("--auto needs --effective-bits B (stored bits per weight, e.g. 4.5)");
  }
  if (!o.auto_plan && (o.effective_bits || !o.auto_candidates.empty() || !o.plan_out.empty())) {
    throw usage_error("--effective-bits, --auto-candidates and --plan-out go with --auto");
  }
  if (o.auto_plan && !o.plan_in.empty()) {
    throw usage_error("--auto computes a plan and --plan applies one: use one of them");
  }
}

/// Everything checked before the model is loaded: options, --auto's candidates, a --plan file.
void prepare(quantize_run& run) {
  const quantize_command_options& o = run.o;
  const nlohmann::json config =
      o.config_file.empty() ? nlohmann::json(nullptr) : read_json_file(o.config_file);
  run.q = to_quantize_options(o, config);
  run.sources = config_sources(run.q, o.config_file.string());
  check_plan_flags(o);
  try {
    for (const auto& c : o.auto_candidates)
      run.auto_options.candidates.push_back(ox::parse_candidate(c));
  } catch (const int4q::config_error& e) {
    throw usage_error(std::string("--auto-candidates: ") + e.what());
  }
  if (o.auto_plan) {
    run.auto_options.effective_bits = *o.effective_bits;
    ox::check_auto_options(run.q, run.auto_options);
  }
  // A --plan file, read and checked before any work (its weights against the model once loaded).
  if (!o.plan_in.empty()) run.plan = read_plan_file(o.plan_in);
  check_paths_before_loading(o);
}

bool uses_calibration(const ox::quantize_options& q) {
  bool calibrated = q.algo != ox::method::rtn;
  for (const auto& ov : q.overrides)
    calibrated = calibrated || (ov.algo && *ov.algo != ox::method::rtn);
  return calibrated;
}

/// Loads the input and checks the whole model before any work: NaN/Inf is an error in the
/// weights this run quantizes (the selection of the options and of a --plan file: a weight the
/// plan keeps in float is not refused), a warning elsewhere; the executor of calibrated methods
/// converts each tensor it reads to float32.
ox::model load_checked(quantize_run& run) {
  const auto t = clock_type::now();
  ox::model m = ox::load_model(run.o.input);
  run.facts.input_bytes = model_bytes_on_disk(m);
  check_paths_after_loading(run.o, m);
  const ox::quantize_options selection = run.plan ? ox::plan_selection(run.q, *run.plan) : run.q;
  ox::validate_options v;
  v.quantize = &selection;
  v.available_memory_bytes = physical_memory_bytes();
  v.materializes_all = uses_calibration(run.q) || run.o.auto_plan;
  print_validation_warnings(ox::validate_model(m, v), run.o.quiet);
  run.facts.load_s = seconds_since(t);  // loading and validation
  return m;
}

/// Calibration data for the methods that need activations (and --auto), read batch by batch.
void open_calibration(quantize_run& run, const ox::model& m) {
  const quantize_command_options& o = run.o;
  const bool method_calibrated = uses_calibration(run.q);
  if (!method_calibrated && !o.auto_plan) return;
  run.calib.emplace(open_data(m, o.calib, /*quiet=*/true));
  const std::size_t per_run =
      std::max<std::size_t>(1, std::min(o.calib_batch, run.calib->max_batch()));
  if (method_calibrated) {
    check_calibration_memory(m, *run.calib, o,
                             run.q.calibration.mode == ox::calibration_mode::sequential, per_run,
                             run.q.calibration.activation_budget_bytes);
  }
  print_data_warnings(*run.calib, o.quiet);
  run.q.calibration.description = run.calib->description();
  run.q.calibration.data = [&run, per_run](std::map<std::string, ox::value>& in) {
    if (run.next_sample >= run.calib->samples()) return false;
    const std::size_t count = std::min(per_run, run.calib->samples() - run.next_sample);
    in = run.calib->batch(run.next_sample, count);
    run.next_sample += count;
    return true;
  };
  run.q.calibration.rewind = [&run] { run.next_sample = 0; };
}

/// --auto / --plan: a format per weight, as overrides ahead of the config file's, checked.
void apply_plan(quantize_run& run, const ox::model& m) {
  const quantize_command_options& o = run.o;
  if (o.auto_plan) {
    if (!o.quiet) std::cerr << "int4q: --auto: scoring the candidates on calibration data\n";
    const auto t = clock_type::now();
    run.plan = ox::auto_plan(m, run.q, run.auto_options);
    run.facts.auto_s = seconds_since(t);
    run.next_sample = 0;  // the method reads the data again from its start
    if (!o.plan_out.empty() && job_rank() == 0) {
      write_file_atomically(o.plan_out, ox::to_json(*run.plan).dump(2) + "\n");
    }
  } else if (run.plan) {
    try {
      ox::check_plan(m, *run.plan);
    } catch (const ox::model_error& e) {
      std::string why = with_flags(e.what(), quantize_flags());
      if (why.rfind("plan: ", 0) == 0) why = why.substr(6);
      throw usage_error("--plan file '" + o.plan_in.string() + "': " + why);
    }
  }
  if (!run.plan) return;
  override_sources sources;
  for (std::size_t i = 0; i < run.plan->weights.size(); ++i) {
    const std::string& w = run.plan->weights[i].weight;
    sources.push_back(o.auto_plan ? "--auto plan: weight '" + w + "'"
                                  : "--plan file '" + o.plan_in.string() + "': weights[" +
                                        std::to_string(i) + "] ('" + w + "')");
  }
  sources.insert(sources.end(), run.sources.begin(), run.sources.end());
  run.sources = std::move(sources);
  run.q = ox::with_plan(std::move(run.q), *run.plan);
  check_with_library(run.q, run.sources);
}

ox::quantize_report quantize(quantize_run& run, ox::model& m) {
  progress_line progress(!run.o.quiet && stderr_is_terminal());
  run.q.on_progress = [&progress](const ox::quantize_progress& p) {
    progress.update(p.done, p.total, progress_text(p), ox::eta_seconds(p));
  };
  const auto t = clock_type::now();
  ox::quantize_report report = ox::quantize_model(m, run.q);
  run.facts.quantize_s = seconds_since(t);
  for (auto& tr : report.tensors) tr.reason = with_flags(tr.reason, quantize_flags());
  return report;
}

void save(quantize_run& run, const ox::model& m) {
  ox::save_options save;
  save.mode = run.o.external;
  const auto t = clock_type::now();
  for (const auto& file : ox::save_model_files(m, run.o.output, save)) {
    run.facts.output_files.emplace_back(file.path, file.bytes);
    run.facts.output_bytes += file.bytes;
  }
  run.facts.save_s = seconds_since(t);
}

/// The plan's lines of the summary: its mix of choices and the effective bits achieved.
void print_plan_summary(const quantize_run& run, const std::optional<double>& achieved_bits) {
  std::map<std::string, int> counts;
  for (const auto& w : run.plan->weights) ++counts[w.choice.name];
  std::string mix;
  for (const auto& c : counts)
    mix += (mix.empty() ? "" : ", ") + c.first + " x" + std::to_string(c.second);
  const quantize_command_options& o = run.o;
  std::cout << "  plan                " << (o.auto_plan ? "auto" : o.plan_in.string()) << ": "
            << mix << "\n";
  if (achieved_bits) {
    std::cout << "  effective bits      " << fixed(*achieved_bits, 4)
              << (o.auto_plan ? " (budget " + fixed(*o.effective_bits, 4) + ")" : std::string())
              << "\n";
  }
}

// ---- --resume -----------------------------------------------------------------------------------

/// What the journal must match beyond the options and the graph: the input model's files and
/// the calibration data (names, sizes, modification times) and how the data is read.
nlohmann::json resume_fingerprint(const quantize_run& run, const ox::model& m) {
  const quantize_command_options& o = run.o;
  nlohmann::json model = nlohmann::json::array({file_fingerprint(o.input)});
  for (const fs::path& data : external_data_files(m)) model.push_back(file_fingerprint(data));
  nlohmann::json j = {{"model", model}};
  if (run.calib) {
    j["calibration"] = {
        {"data", o.calib.path.empty() ? nlohmann::json(nullptr) : file_fingerprint(o.calib.path)},
        {"description", run.calib->description()},
        {"samples", run.calib->samples()},
        {"seq_len", o.calib.seq_len},
        {"token_dtype", o.calib.token_dtype},
        {"seed", o.calib.seed},
        {"batch", o.calib_batch}};
  }
  return j;
}

/// --resume: the journal next to OUT, continued when it exists (said on stderr either way).
void start_journal(quantize_run& run, const ox::model& m) {
  const quantize_command_options& o = run.o;
  const fs::path journal = resume_journal_path(o.output);
  run.q.resume.journal = journal;
  run.q.resume.fingerprint = resume_fingerprint(run, m);
  run.q.resume.stop_after = o.test_stop_after;
  note_resume_journal_for_signals(journal);
  if (o.quiet) return;
  std::error_code ec;
  if (fs::exists(ox::resume_manifest_path(journal), ec)) {
    std::cerr << "int4q: --resume: continuing the run journaled in '" << journal.string() << "'\n";
  } else {
    std::cerr << "int4q: --resume: no journal '" << journal.string()
              << "' yet: starting from the first weight\n";
  }
}

/// The quantize steps after prepare(); option_error from the library becomes a usage error.
void run_steps(quantize_run& run, const clock_type::time_point start) {
  const quantize_command_options& o = run.o;
  note_output_for_signals(o.output);
  ox::model m = load_checked(run);
  // Low memory: quantized tensors go to a scratch file next to the output as they are made;
  // save_model copies them into OUT (or OUT.data) and the scratch file is removed whatever
  // happens.
  const bool spill = o.spill == quantize_command_options::spill_mode::always ||
                     (o.spill == quantize_command_options::spill_mode::automatic &&
                      run.facts.input_bytes >= ox::quantize_options::spill_input_bytes);
  const scratch_file scratch(spill ? o.output : fs::path());
  run.q.spill_file = scratch.path();
  // Sequential calibration's runs beyond --calib-memory wait in a scratch file next to OUT too.
  run.q.calibration.scratch_dir =
      o.output.parent_path().empty() ? fs::path(".") : o.output.parent_path();
  open_calibration(run, m);
  run.q.comm = current_communicator();  // mpirun: the ranks of job_communicator()
  apply_plan(run, m);
  if (o.resume) {
    start_journal(run, m);
  } else if (!o.quiet && fs::exists(ox::resume_manifest_path(resume_journal_path(o.output)))) {
    std::cerr << "int4q: warning: '" << resume_journal_path(o.output).string()
              << "' holds the finished weights of an earlier --resume run, left as it is: add "
                 "--resume to continue it\n";
  }
  const ox::quantize_report report = quantize(run, m);
  if (job_rank() != 0) return;  // the model, the report and the summary: rank 0's
  const std::optional<double> achieved_bits =
      run.plan ? ox::achieved_effective_bits(*run.plan, report) : std::nullopt;
  save(run, m);
  if (o.resume) remove_journal(o.output);
  run.facts.peak_rss = peak_rss_bytes();
  run.facts.total_s = seconds_since(start);
  if (!o.report.empty()) {
    nlohmann::json rj = make_report(o, report, run.facts);
    if (run.plan) {
      rj["plan"] = ox::to_json(*run.plan);
      rj["effective_bits"] = achieved_bits ? nlohmann::json(*achieved_bits) : nlohmann::json();
    }
    const std::string json = rj.dump(2) + "\n";
    if (o.report == "-") {
      std::cout << json << std::flush;
      return;
    }
    write_file_atomically(o.report, json);
  }
  if (!o.quiet) print_summary(std::cout, o, run.q, report, run.facts);
  if (!o.quiet && run.plan) print_plan_summary(run, achieved_bits);
}

/// --resume, after a failure: the journal stays to be continued, said on stderr (one without
/// a finished weight is removed).
void note_journal_kept(const quantize_command_options& o) {
  if (!o.resume) return;
  std::error_code ec;
  const fs::path journal = resume_journal_path(o.output);
  if (!fs::exists(ox::resume_manifest_path(journal), ec)) {
    remove_journal(o.output);
    return;
  }
  std::cerr << "int4q: the finished weights are kept in '" << journal.string()
            << "': run the same command with --resume to continue\n";
}

}  // namespace

void run_quantize(const quantize_command_options& options) {
  const auto start = clock_type::now();
  // Under mpirun: every rank runs the same steps; rank 0 alone prints and writes.
  ox::communicator* comm = job_communicator();
  quantize_command_options rank_options = options;
  if (comm && comm->rank() != 0) rank_options.quiet = true;
  const quantize_command_options& o = rank_options;
  quantize_run run(o);
  try {
    prepare(run);
    try {
      run_steps(run, start);
    } catch (const ox::option_error& e) {
      if (e.field() != "resume.journal") note_journal_kept(o);
      throw;  // a journal of another run: as it was
    } catch (...) {
      note_journal_kept(o);
      throw;
    }
  } catch (const ox::option_error& e) {
    throw as_usage_error(e, run.sources);
  } catch (const int4q::config_error& e) {
    throw usage_error(with_flags(e.what(), quantize_flags()));
  }
}

}  // namespace cli
}  // namespace int4q

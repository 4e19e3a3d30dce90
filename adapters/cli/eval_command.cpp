#include "eval_command.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <int4q/onnx/calib_data.hpp>
#include <int4q/onnx/eval_metrics.hpp>
#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>

#include "cli_common.hpp"
#include "option_checks.hpp"
#include "validate_args.hpp"

namespace int4q {
namespace cli {

namespace fs = std::filesystem;
namespace ox = int4q::onnx;

namespace {

using ox::output_error;

/// The logits error of the language-model mode: max_rel is max_abs when the reference is all
/// zeros, cosine 1 when either is.
nlohmann::json logits_error_json(const output_error& e) {
  return {
      {"max_abs", e.max_abs},
      {"max_rel", e.ref_max_abs > 0 ? e.max_abs / e.ref_max_abs : e.max_abs},
      {"rel_l2", e.rel_l2()},
      {"cosine", e.ref_sq > 0 && e.cand_sq > 0 ? e.dot / std::sqrt(e.ref_sq * e.cand_sq) : 1.0}};
}

/// Adds the elements of a float or integer output.
void add_output(output_error& e, const ox::value& ref, const ox::value& cand) {
  if (ref.type == ox::value_type::float32)
    e.add(ref.f, cand.f);
  else
    e.add(ref.i, cand.i);
}

nlohmann::json finite_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

/// The model's inputs (not initializers).
std::vector<const ::onnx::ValueInfoProto*> graph_inputs(const ox::model& m) {
  std::set<std::string> inits;
  for (const auto& t : m.proto.graph().initializer()) inits.insert(t.name());
  std::vector<const ::onnx::ValueInfoProto*> inputs;
  for (const auto& in : m.proto.graph().input())
    if (!inits.count(in.name())) inputs.push_back(&in);
  return inputs;
}

/// Whether `m` is a language model for --tokens: one int64 input of token ids.
bool is_language_model(const ox::model& m) {
  const auto inputs = graph_inputs(m);
  return inputs.size() == 1 &&
         inputs[0]->type().tensor_type().elem_type() == ::onnx::TensorProto::INT64;
}

/// The model's token input: its only int64 input (others must be absent).
std::string token_input(const ox::model& m, const fs::path& path) {
  const auto inputs = graph_inputs(m);
  if (!is_language_model(m)) {
    throw ox::model_error(ox::model_error::kind::unsupported,
                          "'" + path.string() +
                              "': int4q eval --tokens needs a language model with one int64 "
                              "input of token ids [batch, sequence] (this one has " +
                              std::to_string(inputs.size()) +
                              " inputs); for other models give --data FILE|DIR");
  }
  return inputs[0]->name();
}

/// The logits output: [batch, sequence, vocabulary] float.
std::string logits_output(const ox::model& m) { return m.proto.graph().output(0).name(); }

std::string shape_text(const std::vector<std::int64_t>& s) {
  std::string r = "[";
  for (std::size_t k = 0; k < s.size(); ++k) r += (k ? ", " : "") + std::to_string(s[k]);
  return r + "]";
}

/// --tokens: mean next-token NLL of both models and the logits error.
nlohmann::json eval_tokens(const eval_command_options& o, const ox::model& ref,
                           const ox::model& cand, const ox::executor& run_ref,
                           const ox::executor& run_cand) {
  const std::size_t seq_len = o.data.seq_len;
  if (o.data.samples == 0) {
    throw usage_error(range_message("--samples", "0",
                                    "an integer >= 1 with --tokens (0 = all is "
                                    "for --data files)"));
  }
  const ox::token_file tokens(o.tokens, ox::parse_token_dtype(o.data.token_dtype));
  const std::size_t window = seq_len + 1;
  if (tokens.size() < window) {
    throw usage_error("--seq-len " + std::to_string(seq_len) + ": '" + o.tokens.string() +
                      "' holds " + std::to_string(tokens.size()) +
                      " tokens, fewer than --seq-len + 1 = " + std::to_string(window));
  }
  // Windows start at distinct tokens: at most size - window + 1 of them. A count given on the
  // command line must be there; the default is cut to it.
  const std::uint64_t available = tokens.size() - window + 1;
  if (o.data.samples_given && o.data.samples > available) {
    throw usage_error("--samples " + std::to_string(o.data.samples) + ": more windows than '" +
                      o.tokens.string() + "' gives: its " + std::to_string(tokens.size()) +
                      " tokens hold at most " + std::to_string(available) +
                      " distinct windows of --seq-len + 1 = " + std::to_string(window) +
                      " tokens; use --samples " + std::to_string(available) + " or less");
  }
  const auto samples = static_cast<std::size_t>(std::min<std::uint64_t>(o.data.samples, available));
  const std::string input = token_input(ref, o.reference);
  const std::string cand_input = token_input(cand, o.candidate);
  if (cand_input != input) {
    throw ox::model_error(ox::model_error::kind::unsupported,
                          "the candidate '" + o.candidate.string() + "' takes its token ids as '" +
                              cand_input + "', the reference '" + o.reference.string() + "' as '" +
                              input + "': the two models must take the same input");
  }
  // Token ids the models cannot look up: data that does not fit the model (exit 4), found
  // before the executor's Gather refuses them.
  const std::int64_t input_vocab = ox::vocabulary_of(ref, input);
  const std::string logits_ref = logits_output(ref), logits_cand = logits_output(cand);

  // Window i starts at floor(i * (L - window) / (samples - 1)); the target of position t is
  // token t + 1. NLL from the log-softmax of the logits, in double.
  double nll_ref = 0, nll_cand = 0;
  std::size_t predictions = 0;
  output_error err;
  for (std::size_t b0 = 0; b0 < samples; b0 += o.batch) {
    const std::size_t nb = std::min(o.batch, samples - b0);
    std::vector<std::int64_t> ids(nb * seq_len);
    std::vector<std::int64_t> targets(nb * seq_len);
    for (std::size_t w = 0; w < nb; ++w) {
      const std::uint64_t start = tokens.window_start(b0 + w, samples, window);
      const auto text = tokens.read(start, window);
      for (std::size_t t = 0; t < window; ++t) {
        if (text[t] < 0 || (input_vocab > 0 && text[t] >= input_vocab)) {
          throw ox::model_error(ox::model_error::kind::invalid,
                                "'" + o.tokens.string() + "': token " + std::to_string(text[t]) +
                                    " at position " + std::to_string(start + t) +
                                    " is outside the vocabulary of input '" + input + "' (" +
                                    std::to_string(input_vocab) + " entries); check --token-dtype");
        }
      }
      for (std::size_t t = 0; t < seq_len; ++t) {
        ids[w * seq_len + t] = text[t];
        targets[w * seq_len + t] = text[t + 1];
      }
    }
    const std::map<std::string, ox::value> feeds = {
        {input, ox::value::ints({std::int64_t(nb), std::int64_t(seq_len)}, ids)}};
    const ox::value a = run_ref.run(feeds).at(logits_ref);
    const ox::value b = run_cand.run(feeds).at(logits_cand);
    if (a.shape != b.shape || a.shape.size() != 3) {
      throw ox::model_error(ox::model_error::kind::unsupported,
                            "output '" + logits_ref + "' of the reference '" +
                                o.reference.string() + "' is " + shape_text(a.shape) +
                                ", output '" + logits_cand + "' of the candidate '" +
                                o.candidate.string() + "' is " + shape_text(b.shape) +
                                ": the first outputs must be logits [batch, sequence, "
                                "vocabulary] of the same shape");
    }
    const auto vocab = static_cast<std::size_t>(a.shape[2]);
    for (std::size_t r = 0; r < nb * seq_len; ++r) {
      if (targets[r] < 0 || static_cast<std::size_t>(targets[r]) >= vocab)
        throw usage_error("token " + std::to_string(targets[r]) + " is outside the vocabulary of " +
                          std::to_string(vocab));
    }
    auto nll = [&](const ox::value& logits) {
      return ox::sum_token_nll(logits.f.data(), nb * seq_len, vocab, targets.data());
    };
    nll_ref += nll(a);
    nll_cand += nll(b);
    predictions += nb * seq_len;
    err.add(a.f, b.f);
  }
  const double r = nll_ref / double(predictions), c = nll_cand / double(predictions);
  return {{"reference", o.reference.string()},
          {"candidate", o.candidate.string()},
          {"tokens", o.tokens.string()},
          {"windows", samples},
          {"seq_len", seq_len},
          {"predictions", predictions},
          {"nll_reference", r},
          {"nll_candidate", c},
          {"nll_delta", c - r},
          {"logits_error", logits_error_json(err)}};
}

void print_tokens(const eval_command_options& o, const nlohmann::json& j) {
  const double r = j["nll_reference"].get<double>(), c = j["nll_candidate"].get<double>();
  const nlohmann::json e = j["logits_error"];
  std::printf("int4q eval: %zu windows of %zu tokens from %s\n", j["windows"].get<std::size_t>(),
              o.data.seq_len, o.tokens.string().c_str());
  std::printf("  %-10s NLL %.6f nats/token (perplexity %.4f)  %s\n", "reference", r,
              ox::perplexity(r), o.reference.string().c_str());
  std::printf("  %-10s NLL %.6f nats/token (perplexity %.4f)  %s\n", "candidate", c,
              ox::perplexity(c), o.candidate.string().c_str());
  std::printf("  loss       %+.6f nats/token\n", c - r);
  std::printf("  logits     max abs %.4g, rel L2 %.4g, cosine %.6f\n", e["max_abs"].get<double>(),
              e["rel_l2"].get<double>(), e["cosine"].get<double>());
}

/// --data (or random inputs): every output of the reference against the candidate's.
nlohmann::json eval_data(const eval_command_options& o, const ox::calib_data& data,
                         const ox::model& ref, const ox::model& cand, const ox::executor& run_ref,
                         const ox::executor& run_cand) {
  std::set<std::string> cand_inputs;
  for (const auto* in : graph_inputs(cand)) cand_inputs.insert(in->name());
  std::vector<std::string> outputs;
  std::set<std::string> cand_outputs;
  for (const auto& out : cand.proto.graph().output()) cand_outputs.insert(out.name());
  for (const auto& out : ref.proto.graph().output()) {
    if (!cand_outputs.count(out.name())) {
      throw ox::model_error(ox::model_error::kind::unsupported,
                            "'" + o.candidate.string() + "' has no output '" + out.name() +
                                "', which the reference has: int4q eval compares outputs by name");
    }
    outputs.push_back(out.name());
  }
  std::map<std::string, output_error> errors;
  std::map<std::string, std::vector<std::int64_t>> shapes;
  std::map<std::string, bool> unknown;
  const std::size_t batch = std::max<std::size_t>(1, std::min(o.batch, data.max_batch()));
  for (std::size_t s = 0; s < data.samples(); s += batch) {
    const auto feeds = data.batch(s, std::min(batch, data.samples() - s));
    for (const auto& [name, v] : feeds) {
      if (!cand_inputs.count(name)) {
        throw ox::model_error(ox::model_error::kind::unsupported,
                              "'" + o.candidate.string() + "' has no input '" + name +
                                  "', which the reference has: the two models must take the same "
                                  "inputs");
      }
    }
    const auto a = run_ref.run(feeds);
    const auto b = run_cand.run(feeds);
    for (const auto& name : outputs) {
      const ox::value& x = a.at(name);
      const ox::value& y = b.at(name);
      if (x.shape != y.shape ||
          (x.type == ox::value_type::float32) != (y.type == ox::value_type::float32)) {
        throw ox::model_error(
            ox::model_error::kind::unsupported,
            "output '" + name + "' is " + shape_text(x.shape) + " in the reference and " +
                shape_text(y.shape) +
                " in the candidate (or of another type): they cannot be compared");
      }
      add_output(errors[name], x, y);
      // The whole output: the runs' outputs concatenated along axis 0 (null when they do not
      // share their other axes, or are scalars, so that no concatenation exists).
      const auto [it, first] = shapes.emplace(name, x.shape);
      std::vector<std::int64_t>& whole = it->second;
      if (first) continue;
      if (!whole.empty() && whole.size() == x.shape.size() &&
          std::equal(whole.begin() + 1, whole.end(), x.shape.begin() + 1)) {
        whole[0] += x.shape[0];
      } else {
        unknown[name] = true;
      }
    }
  }
  nlohmann::json list = nlohmann::json::array();
  for (const auto& name : outputs) {
    const output_error& e = errors[name];
    list.push_back(
        {{"name", name},
         {"shape", unknown[name] ? nlohmann::json(nullptr) : nlohmann::json(shapes[name])},
         {"elements", e.count},
         {"max_abs", e.max_abs},
         {"max_rel", finite_or_null(e.max_rel())},
         {"mean_abs", e.mean_abs()},
         {"cosine", e.cosine()},
         {"rel_l2", e.ref_sq > 0 ? std::sqrt(e.diff_sq / e.ref_sq) : std::sqrt(e.diff_sq)}});
  }
  return {{"reference", o.reference.string()},
          {"candidate", o.candidate.string()},
          {"data",
           o.data.path.empty() ? nlohmann::json(nullptr) : nlohmann::json(o.data.path.string())},
          {"data_format", ox::to_string(data.format())},
          {"data_description", data.description()},
          {"samples", data.samples()},
          {"warnings", data.warnings()},
          {"outputs", list}};
}

void print_data(const nlohmann::json& j) {
  std::printf("int4q eval: %s\n", j["data_description"].get<std::string>().c_str());
  std::size_t width = 6;
  for (const auto& e : j["outputs"]) width = std::max(width, e["name"].get<std::string>().size());
  std::printf("  %-*s  %-16s  %10s  %10s  %10s  %9s\n", int(width), "output", "shape", "max abs",
              "max rel", "mean abs", "cosine");
  for (const auto& e : j["outputs"]) {
    const std::string rel = e["max_rel"].is_null() ? std::string("inf") : [&] {
      char b[32];
      std::snprintf(b, sizeof(b), "%.4g", e["max_rel"].get<double>());
      return std::string(b);
    }();
    std::printf("  %-*s  %-16s  %10.4g  %10s  %10.4g  %9.6f\n", int(width),
                e["name"].get<std::string>().c_str(),
                e["shape"].is_null()
                    ? "(varies)"
                    : shape_text(e["shape"].get<std::vector<std::int64_t>>()).c_str(),
                e["max_abs"].get<double>(), rel.c_str(), e["mean_abs"].get<double>(),
                e["cosine"].get<double>());
  }
  std::printf("  (max rel = max |reference - candidate| / max |reference| over the output)\n");
}

}  // namespace

void setup_eval(CLI::App& app) {
  auto opt = std::make_shared<eval_command_options>();
  CLI::App* sub = app.add_subcommand(
      "eval",
      "Compare a quantized model with its reference, both run by int4q's executor: mean "
      "next-token NLL of each on windows of a token file (--tokens), and the error of each of "
      "the candidate's outputs on given inputs (--data)");
  sub->add_option("REFERENCE", opt->reference, "The original model")->required()->type_name("");
  sub->add_option("CANDIDATE", opt->candidate, "The quantized model")->required()->type_name("");
  sub->add_option("--tokens", opt->tokens,
                  "Token file for a language model's NLL: one byte per token (--token-dtype), "
                  "e.g. held-out text")
      ->type_name("FILE");
  add_data_options(*sub, opt->data, "--data",
                   "Inputs for both models (.npy, .npz, folder of ONNX .pb, token file): per "
                   "output max abs/relative error, mean abs error, cosine. Without --data and "
                   "--tokens, a model that is not a language model gets random inputs");
  add_count_options(*sub, opt->data,
                    "Windows, evenly spaced over a token file (at most its distinct windows); "
                    "random samples (>= 1); at most this many samples of a .npy/.npz/.pb data",
                    "Tokens per window (symbolic dimensions of random inputs)");
  sub->add_option("--json", opt->json, "Write the results as JSON to FILE, or to stdout with -")
      ->type_name("FILE|-");
  sub->footer(std::string(data_formats_text()) + "\n\n" + exit_codes_text());
  sub->callback([opt]() { run_eval(*opt); });
}

void run_eval(const eval_command_options& o) {
  require_readable_file(o.reference, "reference model");
  require_readable_file(o.candidate, "candidate model");
  if (!o.tokens.empty()) require_readable_file(o.tokens, "token file");
  if (!o.data.path.empty() && !fs::exists(o.data.path)) {
    throw ox::model_error(ox::model_error::kind::io,
                          "--data '" + o.data.path.string() + "': no such file or folder");
  }
  (void)ox::parse_token_dtype(o.data.token_dtype);  // a bad --token-dtype before any work
  if (!o.json.empty() && o.json != "-") {
    require_writable_path(o.json, "--json");
    for (const auto& [model, role] :
         {std::pair<fs::path, std::string>{o.reference, "reference"}, {o.candidate, "candidate"}}) {
      if (same_file(o.json, model)) {
        throw usage_error("--json '" + o.json + "' names the " + role + " model '" +
                          model.string() + "'; write the results to another file");
      }
    }
  }
  const auto start = std::chrono::steady_clock::now();
  const ox::model ref = ox::load_model(o.reference);
  const ox::model cand = ox::load_model(o.candidate);
  {
    // Both models, before any work; the executor converts each tensor it reads to float32.
    ox::validate_options v;
    v.available_memory_bytes = physical_memory_bytes();
    print_validation_warnings(ox::validate_model(ref, v), /*quiet=*/false);
    print_validation_warnings(ox::validate_model(cand, v), /*quiet=*/false);
  }
  const bool use_tokens = !o.tokens.empty();
  const bool use_data = !o.data.path.empty() || !use_tokens;
  if (o.tokens.empty() && o.data.path.empty() && is_language_model(ref)) {
    throw usage_error("'" + o.reference.string() +
                      "' is a language model: give --tokens FILE (held-out text) to measure its "
                      "NLL, or --data FILE|DIR");
  }
  // The data opened (and its sample count checked) before any model runs.
  std::optional<ox::calib_data> data;
  if (use_data) data.emplace(open_data(ref, o.data, /*quiet=*/false));
  const ox::executor run_ref(ref), run_cand(cand);
  nlohmann::json result = nlohmann::json::object();
  nlohmann::json tokens_part, data_part;
  if (use_tokens) {
    tokens_part = eval_tokens(o, ref, cand, run_ref, run_cand);
    result.update(tokens_part);
  }
  if (use_data) {
    data_part = eval_data(o, *data, ref, cand, run_ref, run_cand);
    result.update(data_part);
  }
  const double seconds = seconds_since(start);
  result["seconds"] = seconds;
  if (!o.json.empty() && o.json != "-") write_file_atomically(o.json, result.dump(2) + "\n");
  if (o.json == "-") {
    std::cout << result.dump(2) << "\n" << std::flush;
    return;
  }
  if (use_tokens) print_tokens(o, tokens_part);
  if (use_data) print_data(data_part);
  std::printf("  time       %.1f s\n", seconds);
  std::fflush(stdout);
}

}  // namespace cli
}  // namespace int4q

#include "eval_command.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>

#include "cli_common.hpp"

namespace int4q {
namespace cli {

namespace fs = std::filesystem;
namespace ox = int4q::onnx;

namespace {

/// Running error of a candidate output against the reference's.
struct output_error {
  double max_abs = 0, ref_max_abs = 0, dot = 0, ref_sq = 0, cand_sq = 0, diff_sq = 0;
  void add(const std::vector<float>& ref, const std::vector<float>& cand) {
    for (std::size_t e = 0; e < ref.size(); ++e) {
      const double a = ref[e], b = cand[e];
      max_abs = std::max(max_abs, std::fabs(a - b));
      ref_max_abs = std::max(ref_max_abs, std::fabs(a));
      dot += a * b;
      ref_sq += a * a;
      cand_sq += b * b;
      diff_sq += (a - b) * (a - b);
    }
  }
  nlohmann::json to_json() const {
    return {{"max_abs", max_abs},
            {"max_rel", ref_max_abs > 0 ? max_abs / ref_max_abs : max_abs},
            {"rel_l2", ref_sq > 0 ? std::sqrt(diff_sq / ref_sq) : std::sqrt(diff_sq)},
            {"cosine", ref_sq > 0 && cand_sq > 0 ? dot / std::sqrt(ref_sq * cand_sq) : 1.0}};
  }
};

/// The model's token input: its only int64 input (others must be absent).
std::string token_input(const ox::model& m, const fs::path& path) {
  std::vector<const ::onnx::ValueInfoProto*> inputs;
  for (const auto& in : m.proto.graph().input()) {
    bool is_initializer = false;
    for (const auto& t : m.proto.graph().initializer()) is_initializer |= t.name() == in.name();
    if (!is_initializer) inputs.push_back(&in);
  }
  if (inputs.size() != 1 ||
      inputs[0]->type().tensor_type().elem_type() != ::onnx::TensorProto::INT64) {
    throw ox::model_error(ox::model_error::kind::unsupported,
                          "'" + path.string() +
                              "': int4q eval --tokens needs a language model with one int64 "
                              "input of token ids [batch, sequence] (this one has " +
                              std::to_string(inputs.size()) + " inputs)");
  }
  return inputs[0]->name();
}

/// The logits output: [batch, sequence, vocabulary] float.
std::string logits_output(const ox::model& m) { return m.proto.graph().output(0).name(); }

}  // namespace

void setup_eval(CLI::App& app) {
  auto opt = std::make_shared<eval_command_options>();
  CLI::App* sub = app.add_subcommand(
      "eval",
      "Compare a quantized model with its reference, both run by int4q's executor: mean "
      "next-token NLL of each on windows of a token file, and the error of the candidate's "
      "outputs");
  sub->add_option("REFERENCE", opt->reference, "The original model")->required()->type_name("");
  sub->add_option("CANDIDATE", opt->candidate, "The quantized model")->required()->type_name("");
  sub->add_option("--tokens", opt->tokens,
                  "Token file: one byte per token (byte-level models), e.g. held-out text")
      ->required()
      ->type_name("FILE");
  sub->add_option("--seq-len", opt->seq_len, "Tokens per window")
      ->capture_default_str()
      ->type_name("N");
  sub->add_option("--samples", opt->samples, "Windows, evenly spaced over the file")
      ->capture_default_str()
      ->type_name("N");
  sub->add_option("--json", opt->json, "Write the results as JSON to FILE, or to stdout with -")
      ->type_name("FILE|-");
  sub->footer(exit_codes_text());
  sub->callback([opt]() { run_eval(*opt); });
}

void run_eval(const eval_command_options& o) {
  require_readable_file(o.reference, "reference model");
  require_readable_file(o.candidate, "candidate model");
  require_readable_file(o.tokens, "token file");
  if (o.seq_len == 0 || o.samples == 0) throw usage_error("--seq-len and --samples must be >= 1");
  const auto start = std::chrono::steady_clock::now();
  std::ifstream in(o.tokens, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::size_t window = o.seq_len + 1;
  if (text.size() < window) {
    throw usage_error("'" + o.tokens.string() + "' holds " + std::to_string(text.size()) +
                      " tokens, fewer than --seq-len + 1 = " + std::to_string(window));
  }
  const ox::model ref = ox::load_model(o.reference);
  const ox::model cand = ox::load_model(o.candidate);
  const std::string input = token_input(ref, o.reference);
  if (token_input(cand, o.candidate) != input) {
    throw ox::model_error(ox::model_error::kind::unsupported,
                          "the two models name their token input differently");
  }
  const ox::executor run_ref(ref), run_cand(cand);
  const std::string logits_ref = logits_output(ref), logits_cand = logits_output(cand);

  // Window i starts at floor(i * (L - window) / (samples - 1)); the target of position t is
  // token t + 1. NLL from the log-softmax of the logits, in double.
  double nll_ref = 0, nll_cand = 0;
  std::size_t predictions = 0;
  output_error err;
  for (std::size_t b0 = 0; b0 < o.samples; b0 += o.batch) {
    const std::size_t nb = std::min(o.batch, o.samples - b0);
    std::vector<std::int64_t> ids(nb * o.seq_len);
    std::vector<unsigned char> targets(nb * o.seq_len);
    for (std::size_t w = 0; w < nb; ++w) {
      const std::size_t i = b0 + w;
      const std::size_t off = o.samples == 1 ? 0 : i * (text.size() - window) / (o.samples - 1);
      for (std::size_t t = 0; t < o.seq_len; ++t) {
        ids[w * o.seq_len + t] = static_cast<unsigned char>(text[off + t]);
        targets[w * o.seq_len + t] = static_cast<unsigned char>(text[off + t + 1]);
      }
    }
    const std::map<std::string, ox::value> feeds = {
        {input, ox::value::ints({std::int64_t(nb), std::int64_t(o.seq_len)}, ids)}};
    const ox::value a = run_ref.run(feeds).at(logits_ref);
    const ox::value b = run_cand.run(feeds).at(logits_cand);
    if (a.shape != b.shape || a.shape.size() != 3) {
      throw ox::model_error(ox::model_error::kind::unsupported,
                            "the models' first outputs must be logits [batch, sequence, "
                            "vocabulary] of the same shape");
    }
    const auto vocab = static_cast<std::size_t>(a.shape[2]);
    auto nll = [&](const ox::value& logits) {
      double sum = 0;
      for (std::size_t r = 0; r < nb * o.seq_len; ++r) {
        const float* z = logits.f.data() + r * vocab;
        double mx = -INFINITY, s = 0;
        for (std::size_t v = 0; v < vocab; ++v) mx = std::max(mx, double(z[v]));
        for (std::size_t v = 0; v < vocab; ++v) s += std::exp(z[v] - mx);
        if (targets[r] >= vocab)
          throw usage_error("token " + std::to_string(targets[r]) +
                            " is outside the vocabulary of " + std::to_string(vocab));
        sum += mx + std::log(s) - z[targets[r]];
      }
      return sum;
    };
    nll_ref += nll(a);
    nll_cand += nll(b);
    predictions += nb * o.seq_len;
    err.add(a.f, b.f);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double r = nll_ref / double(predictions), c = nll_cand / double(predictions);
  nlohmann::json result = {{"reference", o.reference.string()},
                           {"candidate", o.candidate.string()},
                           {"tokens", o.tokens.string()},
                           {"windows", o.samples},
                           {"seq_len", o.seq_len},
                           {"predictions", predictions},
                           {"nll_reference", r},
                           {"nll_candidate", c},
                           {"nll_delta", c - r},
                           {"logits_error", err.to_json()},
                           {"seconds", seconds}};
  if (!o.json.empty() && o.json != "-") write_file_atomically(o.json, result.dump(2) + "\n");
  if (o.json == "-") {
    std::cout << result.dump(2) << "\n" << std::flush;
    return;
  }
  const nlohmann::json e = result["logits_error"];
  std::printf("int4q eval: %zu windows of %zu tokens from %s\n", o.samples, o.seq_len,
              o.tokens.string().c_str());
  std::printf("  %-10s NLL %.6f nats/token (perplexity %.4f)  %s\n", "reference", r, std::exp(r),
              o.reference.string().c_str());
  std::printf("  %-10s NLL %.6f nats/token (perplexity %.4f)  %s\n", "candidate", c, std::exp(c),
              o.candidate.string().c_str());
  std::printf("  loss       %+.6f nats/token\n", c - r);
  std::printf("  logits     max abs %.4g, rel L2 %.4g, cosine %.6f\n", e["max_abs"].get<double>(),
              e["rel_l2"].get<double>(), e["cosine"].get<double>());
  std::printf("  time       %.1f s\n", seconds);
  std::fflush(stdout);
}

}  // namespace cli
}  // namespace int4q

// auto_quantize: candidate costs, Hessian-weighted scores, the exact budget solver, plans.
#include <int4q/onnx/auto_quantize.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <map>
#include <sstream>
#include <utility>

#include <int4q/activation_stats.hpp>
#include <int4q/dequant.hpp>
#include <int4q/error.hpp>
#include <int4q/hessian_loss.hpp>
#include <int4q/onnx/calibrate.hpp>
#include <int4q/onnx/option_error.hpp>
#include <int4q/pack.hpp>
#include <int4q/quantize.hpp>

#include "calibration_passes.hpp"
#include "weight_tensor.hpp"
#include "writers.hpp"

namespace int4q {
namespace onnx {

namespace {

using ::onnx::GraphProto;
using ::onnx::NodeProto;
using ::onnx::TensorProto;

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

/// Digits only, at least one, no overflow for the sizes used here.
bool parse_count(const std::string& s, std::size_t& out) {
  if (s.empty() || s.size() > 9) return false;
  out = 0;
  for (char c : s) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
    out = out * 10 + static_cast<std::size_t>(c - '0');
  }
  return true;
}

std::string candidate_name(const auto_candidate& c) {
  if (!c.quantize) return "none";
  return "int" + std::to_string(c.bits) + "-" +
         (c.group_size == 0 ? std::string("channel") : "g" + std::to_string(c.group_size));
}

/// The grid of candidate `c` on top of the base grid, with scales in the weight's float type.
int4q::quant_config grid_of(const weight_info& w, const auto_candidate& c,
                            const int4q::quant_config& base) {
  int4q::quant_config g = base;
  g.bits = c.bits;
  g.granularity = c.group_size == 0 ? grouping::per_channel : grouping::group;
  if (c.group_size != 0) g.group_size = c.group_size;
  if (w.type == elem_type::float16) g.scale_type = scale_type::float16;
  if (w.type == elem_type::bfloat16) g.scale_type = scale_type::bfloat16;
  return g;
}

/// The input tensor a weight's first node multiplies with it ("<scope>/<name>" in subgraphs).
std::string input_of(const model& m, const weight_info& w) {
  const weight_use& u = w.uses.front();
  const NodeProto& n = graph_at(m.proto.graph(), u.path).node(u.node_index);
  return (u.scope.empty() ? "" : u.scope + "/") + (n.input_size() > 0 ? n.input(0) : "");
}

std::string regex_escaped(const std::string& s) {
  static const std::string special = R"(\^$.|?*+()[]{}/)";
  std::string out;
  for (char c : s) {
    if (special.find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

nlohmann::json candidate_json(const auto_candidate& c) {
  nlohmann::json j = {{"name", c.name}, {"quantize", c.quantize}};
  if (c.quantize) {
    j["bits"] = c.bits;
    j["group_size"] = c.group_size;
  }
  return j;
}

[[noreturn]] void bad_plan(const std::string& what) {
  throw model_error(model_error::kind::invalid, "plan: " + what);
}

}  // namespace

auto_candidate parse_candidate(const std::string& text) {
  const std::string t = lower(text);
  auto_candidate c;
  c.name = t;
  if (t == "none" || t == "float" || t == "fp") {
    c.quantize = false;
    c.bits = 0;
    c.name = "none";
    return c;
  }
  const std::size_t dash = t.find('-');
  std::size_t bits = 0;
  if (t.rfind("int", 0) == 0 && dash != std::string::npos &&
      parse_count(t.substr(3, dash - 3), bits) && bits >= 2 && bits <= 8) {
    c.bits = static_cast<int>(bits);
    const std::string g = t.substr(dash + 1);
    std::size_t size = 0;
    if (g == "channel" || g == "per-channel") {
      c.group_size = 0;
      c.name = candidate_name(c);
      return c;
    }
    if (g.size() > 1 && g[0] == 'g' && parse_count(g.substr(1), size) && size > 0) {
      c.group_size = size;
      c.name = candidate_name(c);
      return c;
    }
  }
  throw config_error("candidate '" + text +
                     "' is not one of none, int<2-8>-g<N> (e.g. int4-g128) or "
                     "int<2-8>-channel");
}

std::vector<auto_candidate> default_candidates(output_format format) {
  std::vector<auto_candidate> c = {
      parse_candidate("int4-g32"), parse_candidate("int4-g128"),
      parse_candidate(format == output_format::matmulnbits ? "int8-g128" : "int8-channel"),
      parse_candidate("none")};
  return c;
}

std::uint64_t candidate_bits(const weight_info& w, const auto_candidate& c,
                             const int4q::quant_config& base, output_format format) {
  const std::uint64_t K = w.k, N = w.n, es = elem_size(w.type);
  if (!c.quantize) return K * N * es * 8;
  const int4q::quant_config g = grid_of(w, c, base);
  const std::uint64_t gs = g.effective_group_size(w.k), G = g.num_groups(w.k);
  std::uint64_t bytes = N * G * es;  // scales, in the weight's float type
  if (format == output_format::matmulnbits) {
    // B [N, G, group * bits / 8] (the last group padded), zero points [N, ceil(G * bits / 8)].
    bytes += N * G * (gs * static_cast<std::uint64_t>(c.bits) / 8);
    if (g.has_zero_points()) bytes += N * ((G * static_cast<std::uint64_t>(c.bits) + 7) / 8);
  } else {
    // DequantizeLinear: codes packed flat, zero points packed flat beside the scales. (fake
    // stores floats; its cost is the qdq form it stands for.)
    bytes += int4q::packed_bytes(K * N, c.bits);
    if (g.has_zero_points()) bytes += int4q::packed_bytes(N * G, c.bits);
  }
  return bytes * 8;
}

std::vector<std::size_t> solve_choice(const std::vector<std::vector<choice_item>>& groups,
                                      std::uint64_t capacity) {
  // One state per Pareto-optimal (cost, score) of the groups so far, with its way back.
  struct state {
    std::uint64_t cost;
    double score;
    std::size_t prev;  ///< index in the previous layer
    std::size_t item;  ///< item taken in this group
  };
  std::uint64_t cheapest = 0;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    if (groups[g].empty())
      throw config_error("solve_choice: group " + std::to_string(g) + " is empty");
    std::uint64_t c = std::numeric_limits<std::uint64_t>::max();
    for (const auto& it : groups[g]) c = std::min(c, it.cost);
    cheapest += c;
  }
  if (cheapest > capacity) {
    throw config_error("no choice fits: the cheapest costs " + std::to_string(cheapest) +
                       ", the capacity is " + std::to_string(capacity));
  }
  std::vector<std::vector<state>> layers;
  layers.push_back({{0, 0.0, 0, 0}});
  for (const auto& items : groups) {
    const auto& prev = layers.back();
    std::vector<state> next;
    next.reserve(prev.size() * items.size());
    for (std::size_t p = 0; p < prev.size(); ++p) {
      for (std::size_t i = 0; i < items.size(); ++i) {
        const std::uint64_t c = prev[p].cost + items[i].cost;
        if (c > capacity) continue;
        next.push_back({c, prev[p].score + items[i].score, p, i});
      }
    }
    // Keep a state only when its score is below that of every state at most as costly (stable
    // order: equal cost and score keep the earlier item).
    std::stable_sort(next.begin(), next.end(), [](const state& a, const state& b) {
      return a.cost != b.cost ? a.cost < b.cost : a.score < b.score;
    });
    std::vector<state> frontier;
    for (const state& s : next) {
      if (frontier.empty() || s.score < frontier.back().score) frontier.push_back(s);
    }
    layers.push_back(std::move(frontier));
  }
  // The last frontier's scores decrease with cost: its last state is the best.
  std::vector<std::size_t> choice(groups.size());
  std::size_t at = layers.back().size() - 1;
  for (std::size_t g = groups.size(); g > 0; --g) {
    const state& s = layers[g][at];
    choice[g - 1] = s.item;
    at = s.prev;
  }
  return choice;
}

std::vector<const weight_info*> plan_candidates(const std::vector<weight_info>& weights,
                                                const quantize_options& options) {
  // quantize_model's own selection; a grid the lm_head policy fixes (int8) is not the plan's.
  const detail::compiled_selection sel = detail::compile_selection(options);
  std::vector<const weight_info*> out;
  for (const weight_info& w : weights) {
    const detail::weight_choice ch = detail::choose(w, options, sel);
    if (ch.quantize && !ch.grid_fixed) out.push_back(&w);
  }
  return out;
}

void check_auto_options(const quantize_options& options, const auto_options& a) {
  if (!(a.effective_bits > 0) || !std::isfinite(a.effective_bits)) {
    throw config_error("effective bits must be a positive number");
  }
  for (const auto& c : a.candidates) {
    if (!c.quantize) continue;
    int4q::quant_config grid = options.config;
    grid.bits = c.bits;
    grid.granularity = c.group_size == 0 ? grouping::per_channel : grouping::group;
    if (c.group_size != 0) grid.group_size = c.group_size;
    try {
      check_format_grid(grid, options);
    } catch (const option_error& e) {
      throw option_error(e.what_kind(), "candidates",
                         "`candidates` '" + c.name + "': " + e.message());
    }
  }
}

namespace {

/// One weight's plan entry: the stored bits and the score trace(dW^T H dW) of every candidate
/// (dW = W - qdq(W) on the candidate's grid), H the upper triangle of h [K, K] (row-major).
/// The products H dW run on options.threads over fixed chunks of columns and the terms are
/// summed as hessian_loss sums them: the same scores for any thread count.
plan_weight score_weight(const model& m, const weight_info& w, const double* h,
                         const std::vector<auto_candidate>& cands, const quantize_options& options,
                         bool mine = true) {
  int4q::quant_options qo;
  qo.threads = options.threads;
  // Another rank scores it (distributed): no need to read the weight.
  const xt::xtensor<float, 2> lw =
      mine ? detail::logical_weight(m, w, w.uses.front().alpha) : xt::xtensor<float, 2>();
  plan_weight pw;
  pw.weight = w.name;
  for (const auto& u : w.uses) pw.nodes.push_back(display_name(u));
  pw.input = input_of(m, w);
  pw.k = w.k;
  pw.n = w.n;
  for (const auto& c : cands) {
    pw.costs.push_back(candidate_bits(w, c, options.config, options.format));
    if (!c.quantize || !mine) {  // not scored here: another rank sends the score
      pw.scores.push_back(0.0);
      continue;
    }
    const xt::xtensor<float, 2> dq = int4q::qdq(lw, grid_of(w, c, options.config), qo);
    auto d = xt::xtensor<double, 2>::from_shape({w.k, w.n});
    for (std::size_t i = 0; i < d.size(); ++i)
      d.data()[i] = double(lw.data()[i]) - double(dq.data()[i]);
    double score = 0;  // trace(D^T H D), the terms in row-major order of D
    int4q::detail::hessian_loss_rows(
        h, w.k, d.data(), w.n,
        [&](std::size_t, const double* terms) {
          for (std::size_t n = 0; n < w.n; ++n) score += terms[n];
        },
        options.threads);
    pw.scores.push_back(score);
  }
  return pw;
}

/// Every weight scored on its Hessian, gathered in passes over the calibration data whose
/// statistics fit parallel_stats_bytes (one pass without rewind); in the order of `ws`.
/// Weights with one use each that multiply the same input (q/k/v, gate/up) have the same H:
/// it is accumulated once, for the first of them, and scores each.
std::vector<plan_weight> score_weights(const model& m, const std::vector<const weight_info*>& ws,
                                       const std::vector<auto_candidate>& cands,
                                       const quantize_options& options, const auto_options& a) {
  collect_options co;
  co.threads = options.threads;
  co.stats.threads = options.threads;
  co.stats.sample_rows = 0;
  co.on_progress = a.on_progress;
  // Distributed: data-parallel statistics; each weight scored on one rank (round robin), the
  // scores sent to all once the pass's weights are done.
  co.comm = options.comm;
  communicator* comm = distributed(options.comm) ? options.comm : nullptr;
  const auto owner = [&](std::size_t i) {
    return comm ? static_cast<int>(i % static_cast<std::size_t>(comm->size())) : 0;
  };
  std::vector<std::size_t> source(ws.size());  // index in ws of the weight whose H it takes
  std::vector<const weight_info*> accumulated;
  std::map<std::string, std::size_t> first_of;
  for (std::size_t i = 0; i < ws.size(); ++i) {
    source[i] = i;
    if (ws[i]->uses.size() == 1)
      source[i] =
          first_of.emplace(input_of(m, *ws[i]) + "\n" + std::to_string(ws[i]->k), i).first->second;
    if (source[i] == i) accumulated.push_back(ws[i]);
  }
  std::map<std::string, std::size_t> last_reader;  // source weight name -> last index using it
  for (std::size_t i = 0; i < ws.size(); ++i) last_reader[ws[source[i]]->name] = i;
  const auto passes =
      detail::split_into_passes(accumulated, co.stats, options.calibration.parallel_stats_bytes,
                                static_cast<bool>(options.calibration.rewind));
  std::vector<plan_weight> out(ws.size());
  for (std::size_t p = 0; p < passes.size(); ++p) {
    if (p > 0) options.calibration.rewind();
    auto got = collect_activation_stats(m, passes[p], options.calibration.data, co);
    std::vector<std::size_t> scored;  // this pass's weights
    for (std::size_t i = 0; i < ws.size(); ++i) {
      const auto it = got.find(ws[source[i]]->name);
      if (it == got.end()) continue;  // another pass's
      const bool mine = !comm || owner(i) == comm->rank();
      out[i] = score_weight(m, *ws[i], it->second.hessian_upper().data(), cands, options, mine);
      scored.push_back(i);
      if (last_reader.at(it->first) == i) got.erase(it);  // memory: freed once scored
    }
    for (const std::size_t i : scored)
      if (comm) broadcast_vector(*comm, out[i].scores, owner(i));
  }
  return out;
}

/// The plan's weights by shared input (in order of first appearance): a group takes one
/// candidate, its items' cost and score the sums over its members.
struct input_groups {
  std::vector<std::vector<std::size_t>> members;  ///< indices into plan.weights
  std::vector<std::vector<choice_item>> items;    ///< per group, per candidate
};

input_groups group_by_input(const quant_plan& plan) {
  input_groups g;
  std::map<std::string, std::size_t> group_of;
  for (std::size_t i = 0; i < plan.weights.size(); ++i) {
    const auto found = group_of.emplace(plan.weights[i].input, g.members.size());
    if (found.second) g.members.emplace_back();
    g.members[found.first->second].push_back(i);
  }
  for (const auto& members : g.members) {
    std::vector<choice_item> items(plan.candidates.size());
    for (std::size_t c = 0; c < items.size(); ++c) {
      for (const std::size_t i : members) {
        items[c].cost += plan.weights[i].costs[c];
        items[c].score += plan.weights[i].scores[c];
      }
    }
    g.items.push_back(std::move(items));
  }
  return g;
}

/// Throws config_error naming the smallest feasible budget when even the cheapest candidates
/// of every group exceed `capacity`.
void check_budget(const input_groups& g, std::uint64_t capacity, double effective_bits,
                  std::uint64_t total_weights) {
  std::uint64_t cheapest = 0;
  for (const auto& items : g.items) {
    std::uint64_t c = std::numeric_limits<std::uint64_t>::max();
    for (const auto& it : items) c = std::min(c, it.cost);
    cheapest += c;
  }
  if (cheapest <= capacity) return;
  std::ostringstream s;
  s.precision(6);
  s << "`effective_bits = " << effective_bits << "`"
    << " is below the cheapest plan of these candidates: the smallest feasible budget is "
    << std::ceil(1e4 * double(cheapest) / double(total_weights)) / 1e4 << " bits per weight";
  throw config_error(s.str());
}

/// Solves for the budget and records each weight's choice and the totals.
void choose_within_budget(quant_plan& plan, double effective_bits) {
  const input_groups g = group_by_input(plan);
  for (const auto& pw : plan.weights) plan.total_weights += std::uint64_t(pw.k) * pw.n;
  const long double cap = static_cast<long double>(effective_bits) * plan.total_weights;
  const std::uint64_t capacity = static_cast<std::uint64_t>(std::floor(cap + 1e-9L));
  check_budget(g, capacity, effective_bits, plan.total_weights);
  const std::vector<std::size_t> pick = solve_choice(g.items, capacity);
  for (std::size_t gi = 0; gi < g.members.size(); ++gi) {
    for (const std::size_t i : g.members[gi]) {
      plan_weight& pw = plan.weights[i];
      pw.choice = plan.candidates[pick[gi]];
      pw.score = pw.scores[pick[gi]];
      pw.bits = pw.costs[pick[gi]];
      plan.total_bits += pw.bits;
      plan.total_score += pw.score;
    }
  }
  plan.effective_bits = double(plan.total_bits) / double(plan.total_weights);
}

}  // namespace

quant_plan auto_plan(const model& m, const quantize_options& options, const auto_options& a) {
  check_auto_options(options, a);
  quant_plan plan;
  plan.candidates = a.candidates.empty() ? default_candidates(options.format) : a.candidates;
  plan.budget = a.effective_bits;
  plan.format = to_string(options.format);
  if (!options.calibration.data) {
    throw model_error(model_error::kind::invalid,
                      "auto_quantize needs calibration data (quantize_options::calibration.data)");
  }
  const std::vector<weight_info> all = find_weights(m);
  const std::vector<const weight_info*> ws = plan_candidates(all, options);
  if (ws.empty()) {
    throw model_error(model_error::kind::unsupported, "auto_quantize: no weight to quantize");
  }
  // Scored in pass order, which is the model order of `ws`.
  plan.weights = score_weights(m, ws, plan.candidates, options, a);
  choose_within_budget(plan, a.effective_bits);
  return plan;
}
std::vector<node_override> plan_overrides(const quant_plan& plan) {
  std::vector<node_override> out;
  for (const auto& pw : plan.weights) {
    node_override o;
    o.match = "^" + regex_escaped(pw.weight) + "$";
    if (!pw.choice.quantize) {
      o.skip = true;
    } else {
      o.bits = pw.choice.bits;
      o.group_size = pw.choice.group_size;
    }
    out.push_back(std::move(o));
  }
  return out;
}

nlohmann::json to_json(const quant_plan& plan) {
  nlohmann::json j;
  j["int4q_plan"] = 1;
  j["format"] = plan.format;
  j["budget_effective_bits"] = plan.budget;
  j["effective_bits"] = plan.effective_bits;
  j["total_bits"] = plan.total_bits;
  j["total_weights"] = plan.total_weights;
  j["total_score"] = plan.total_score;
  j["score"] = "trace(dW^T H dW), H = X^T X of calibration activations (float model)";
  j["candidates"] = nlohmann::json::array();
  for (const auto& c : plan.candidates) j["candidates"].push_back(candidate_json(c));
  j["weights"] = nlohmann::json::array();
  for (const auto& pw : plan.weights) {
    nlohmann::json w = {{"weight", pw.weight}, {"nodes", pw.nodes}, {"input", pw.input},
                        {"k", pw.k},           {"n", pw.n},         {"choice", pw.choice.name},
                        {"bits", pw.bits},     {"score", pw.score}};
    if (!pw.scores.empty()) {
      nlohmann::json per = nlohmann::json::object();
      for (std::size_t c = 0; c < plan.candidates.size(); ++c)
        per[plan.candidates[c].name] = {{"score", pw.scores[c]}, {"bits", pw.costs[c]}};
      w["candidates"] = per;
    }
    j["weights"].push_back(std::move(w));
  }
  return j;
}

quant_plan plan_from_json(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("weights") || !j["weights"].is_array()) {
    bad_plan("expected an object with a \"weights\" array (written by to_json(quant_plan))");
  }
  quant_plan plan;
  if (j.contains("format")) {
    if (!j["format"].is_string())
      bad_plan("\"format\" " + j["format"].dump() + ": must be a string");
    plan.format = j["format"].get<std::string>();
  }
  if (j.contains("budget_effective_bits")) {
    const auto& b = j["budget_effective_bits"];
    // The same range as auto_options::effective_bits takes from the command line.
    if (!b.is_number() || !(b.get<double>() > 0 && b.get<double>() <= 64))
      bad_plan("\"budget_effective_bits\" " + b.dump() + ": must be a number in (0, 64]");
    plan.budget = b.get<double>();
  }
  // Sizes and bits of a weight: unsigned integers whose products and sums fit 64 bits.
  constexpr std::uint64_t max_dim = std::uint64_t(1) << 31, max_bits = std::uint64_t(1) << 40;
  auto count = [](const nlohmann::json& w, const char* key, std::uint64_t max,
                  const std::string& where) -> std::uint64_t {
    if (!w.contains(key)) return 0;
    const auto& v = w[key];
    if (!v.is_number_unsigned() || v.get<std::uint64_t>() > max) {
      bad_plan(where + ": \"" + key + "\" " + v.dump() + ": must be an integer from 0 to " +
               std::to_string(max));
    }
    return v.get<std::uint64_t>();
  };
  for (std::size_t i = 0; i < j["weights"].size(); ++i) {
    const auto& w = j["weights"][i];
    const std::string where = "weights[" + std::to_string(i) + "]";
    if (!w.is_object() || !w.contains("weight") || !w["weight"].is_string() ||
        !w.contains("choice") || !w["choice"].is_string()) {
      bad_plan(where + " needs \"weight\" and \"choice\" strings");
    }
    plan_weight pw;
    pw.weight = w["weight"].get<std::string>();
    try {
      pw.choice = parse_candidate(w["choice"].get<std::string>());
    } catch (const config_error& e) {
      bad_plan(where + ": " + e.what());
    }
    pw.k = static_cast<std::size_t>(count(w, "k", max_dim, where));
    pw.n = static_cast<std::size_t>(count(w, "n", max_dim, where));
    pw.bits = count(w, "bits", max_bits, where);
    pw.score =
        w.contains("score") && w["score"].is_number() ? w["score"].get<double>() : std::nan("");
    const std::uint64_t weights = std::uint64_t(pw.k) * pw.n;  // < 2^62: both <= 2^31
    constexpr std::uint64_t most = std::numeric_limits<std::uint64_t>::max();
    if (plan.total_bits > most - pw.bits || plan.total_weights > most - weights)
      bad_plan(where + ": the sizes and bits of the weights add up to more than 64 bits hold");
    plan.total_bits += pw.bits;
    plan.total_weights += weights;
    plan.weights.push_back(std::move(pw));
  }
  plan.effective_bits =
      plan.total_weights ? double(plan.total_bits) / double(plan.total_weights) : 0.0;
  return plan;
}

}  // namespace onnx
}  // namespace int4q

#include "inspect_command.hpp"

#include <algorithm>
#include <cstdint>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <int4q/onnx/weights.hpp>

#include "cli_common.hpp"
#include "option_flags.hpp"
#include "validate_args.hpp"

namespace int4q {
namespace cli {

namespace ox = int4q::onnx;

namespace {

nlohmann::json shape_json(const ::onnx::TensorShapeProto& shape) {
  nlohmann::json dims = nlohmann::json::array();
  for (const auto& d : shape.dim()) {
    if (d.has_dim_value()) {
      dims.push_back(d.dim_value());
    } else if (d.has_dim_param() && !d.dim_param().empty()) {
      dims.push_back(d.dim_param());
    } else {
      dims.push_back(nullptr);
    }
  }
  return dims;
}

nlohmann::json value_json(const ::onnx::ValueInfoProto& v) {
  nlohmann::json j = {{"name", v.name()}};
  const auto& type = v.type();
  if (type.has_tensor_type()) {
    j["dtype"] = onnx_type_name(type.tensor_type().elem_type());
    j["shape"] = type.tensor_type().has_shape() ? shape_json(type.tensor_type().shape())
                                                : nlohmann::json(nullptr);
  } else if (type.has_sequence_type()) {
    j["dtype"] = "sequence";
    j["shape"] = nullptr;
  } else if (type.has_map_type()) {
    j["dtype"] = "map";
    j["shape"] = nullptr;
  } else if (type.has_optional_type()) {
    j["dtype"] = "optional";
    j["shape"] = nullptr;
  } else {
    j["dtype"] = "unknown";
    j["shape"] = nullptr;
  }
  return j;
}

std::string shape_text(const nlohmann::json& shape) {
  if (shape.is_null()) return "(unknown shape)";
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    const auto& d = shape[i];
    s += d.is_number()   ? std::to_string(d.get<std::int64_t>())
         : d.is_string() ? d.get<std::string>()
                         : std::string("?");
  }
  return s + "]";
}

/// Prints rows as left-aligned columns separated by two spaces.
void print_table(std::ostream& out, const std::vector<std::vector<std::string>>& rows,
                 const std::string& indent) {
  std::vector<std::size_t> width;
  for (const auto& row : rows) {
    width.resize(std::max(width.size(), row.size()), 0);
    for (std::size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  for (const auto& row : rows) {
    std::string line = indent;
    for (std::size_t c = 0; c < row.size(); ++c) {
      line += row[c];
      if (c + 1 < row.size()) line += std::string(width[c] - row[c].size() + 2, ' ');
    }
    out << line << "\n";
  }
}

void print_text(std::ostream& out, const nlohmann::json& d) {
  std::vector<std::vector<std::string>> head;
  head.push_back({"model", d["path"].get<std::string>()});
  head.push_back({"ir_version", std::to_string(d["ir_version"].get<std::int64_t>())});
  std::string producer = d["producer_name"].get<std::string>();
  if (!d["producer_version"].get<std::string>().empty()) {
    producer += " " + d["producer_version"].get<std::string>();
  }
  head.push_back({"producer", producer.empty() ? "(none)" : producer});
  std::string opsets;
  for (const auto& o : d["opsets"]) {
    opsets += (opsets.empty() ? "" : ", ") + o["domain"].get<std::string>() + " " +
              std::to_string(o["version"].get<std::int64_t>());
  }
  head.push_back({"opsets", opsets});
  const auto ext = d["external_data_bytes"].get<std::uint64_t>();
  head.push_back(
      {"size", format_bytes(d["total_bytes"].get<std::uint64_t>()) + " (model file " +
                   format_bytes(d["file_bytes"].get<std::uint64_t>()) +
                   (ext ? ", external data " + format_bytes(ext) + " in " +
                              std::to_string(d["external_data_files"].size()) + " file(s))"
                        : ", no external data)")});
  print_table(out, head, "");

  for (const char* key : {"inputs", "outputs"}) {
    out << key << "\n";
    std::vector<std::vector<std::string>> rows;
    for (const auto& v : d[key]) {
      rows.push_back(
          {v["name"].get<std::string>(), v["dtype"].get<std::string>(), shape_text(v["shape"])});
    }
    print_table(out, rows, "  ");
  }

  const auto& s = d["summary"];
  out << "MatMul/Gemm nodes: " << s["matmul_gemm_nodes"].get<std::size_t>() << ", "
      << s["quantizable_nodes"].get<std::size_t>() << " with a quantizable weight ("
      << s["quantizable_weights"].get<std::size_t>() << " weights, "
      << s["quantizable_parameters"].get<std::uint64_t>() << " parameters, "
      << format_bytes(s["quantizable_bytes"].get<std::uint64_t>()) << ")\n";
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"node", "op", "weight", "[K, N]", "dtype", "quantizable"});
  for (const auto& n : d["nodes"]) {
    std::string status;
    if (n["quantizable"].get<bool>()) {
      status = "yes";
      if (n["lm_head"].get<bool>()) status += ", lm_head";
      if (n["shared"].get<bool>()) status += ", shared";
    } else {
      status = "no: " + n["reason"].get<std::string>();
    }
    const bool known = n["k"].get<std::size_t>() > 0;
    rows.push_back({n["node"].get<std::string>(), n["op_type"].get<std::string>(),
                    n["weight"].get<std::string>(),
                    known ? "[" + std::to_string(n["k"].get<std::size_t>()) + ", " +
                                std::to_string(n["n"].get<std::size_t>()) + "]"
                          : "-",
                    n["dtype"].get<std::string>(), status});
  }
  print_table(out, rows, "  ");
}

}  // namespace

nlohmann::json describe_model(const ox::model& m) {
  const auto& p = m.proto;
  nlohmann::json d;
  d["path"] = m.path.string();
  d["ir_version"] = p.ir_version();
  d["producer_name"] = p.producer_name();
  d["producer_version"] = p.producer_version();
  nlohmann::json opsets = nlohmann::json::array();
  for (const auto& o : p.opset_import()) {
    opsets.push_back({{"domain", o.domain().empty() ? std::string("ai.onnx") : o.domain()},
                      {"version", o.version()}});
  }
  d["opsets"] = opsets;

  // Graph inputs that are initializers (old exporters list weights as inputs) are not inputs.
  std::set<std::string> initializers;
  for (const auto& t : p.graph().initializer()) initializers.insert(t.name());
  d["inputs"] = nlohmann::json::array();
  for (const auto& v : p.graph().input()) {
    if (!initializers.count(v.name())) d["inputs"].push_back(value_json(v));
  }
  d["outputs"] = nlohmann::json::array();
  for (const auto& v : p.graph().output()) d["outputs"].push_back(value_json(v));

  const std::uint64_t file = m.path.empty() ? 0 : file_bytes(m.path);
  std::uint64_t external = 0;
  nlohmann::json files = nlohmann::json::array();
  for (const auto& f : external_data_files(m)) {
    external += file_bytes(f);
    files.push_back(f.string());
  }
  d["file_bytes"] = file;
  d["external_data_bytes"] = external;
  d["external_data_files"] = files;
  d["total_bytes"] = file + external;

  nlohmann::json nodes = nlohmann::json::array();
  std::size_t node_count = 0, quantizable_nodes = 0, quantizable_weights = 0;
  std::uint64_t parameters = 0, bytes = 0;
  for (const ox::weight_info& w : ox::find_weights(m)) {
    if (w.quantizable) {
      ++quantizable_weights;
      parameters += static_cast<std::uint64_t>(w.k) * w.n;
      bytes += static_cast<std::uint64_t>(w.k) * w.n * ox::elem_size(w.type);
    }
    for (const ox::weight_use& u : w.uses) {
      ++node_count;
      if (w.quantizable) ++quantizable_nodes;
      nodes.push_back({{"node", ox::display_name(u)},
                       {"node_index", u.node_index},
                       {"op_type", u.op_type},
                       {"weight", w.name},
                       {"weight_from_constant_node", w.from_constant_node},
                       {"k", w.k},
                       {"n", w.n},
                       {"stored_dims", w.dims},
                       {"dtype", w.type == ox::elem_type::other && !w.quantizable
                                     ? std::string("-")
                                     : std::string(ox::to_string(w.type))},
                       {"trans_b", u.trans_b},
                       {"shared", w.uses.size() > 1},
                       {"quantizable", w.quantizable},
                       {"reason", with_flags(w.reason, quantize_flags())},
                       {"lm_head", w.is_lm_head}});
    }
  }
  // In graph order.
  std::stable_sort(nodes.begin(), nodes.end(),
                   [](const nlohmann::json& a, const nlohmann::json& b) {
                     return a["node_index"].get<int>() < b["node_index"].get<int>();
                   });
  d["nodes"] = nodes;
  d["summary"] = {{"matmul_gemm_nodes", node_count},
                  {"quantizable_nodes", quantizable_nodes},
                  {"quantizable_weights", quantizable_weights},
                  {"quantizable_parameters", parameters},
                  {"quantizable_bytes", bytes}};
  return d;
}

void setup_inspect(CLI::App& app) {
  auto opt = std::make_shared<inspect_command_options>();
  CLI::App* sub = app.add_subcommand(
      "inspect",
      "Describe an ONNX model: opsets, inputs, outputs, size, and every MatMul/Gemm "
      "with its weight and whether int4q can quantize it");
  sub->add_option("IN", opt->input, "ONNX model to describe")->required()->type_name("");
  sub->add_flag("--json", opt->json, "Print the description as JSON");
  sub->footer(exit_codes_text());
  sub->callback([opt]() { run_inspect(*opt); });
}

void run_inspect(const inspect_command_options& options) {
  require_readable_file(options.input, "input model");
  const ox::model m = ox::load_model(options.input);
  // Structure, tensors, shapes and NaN/Inf (warnings: inspect changes nothing); no memory
  // check, as inspect holds no tensor in float.
  print_validation_warnings(ox::validate_model(m), /*quiet=*/false);
  const nlohmann::json d = describe_model(m);
  if (options.json) {
    std::cout << d.dump(2) << "\n";
  } else {
    print_text(std::cout, d);
  }
  std::cout << std::flush;
}

}  // namespace cli
}  // namespace int4q

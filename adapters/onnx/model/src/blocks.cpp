// find_blocks: residual Adds, their longest chain, and the node ranges between its points.
#include <int4q/onnx/blocks.hpp>

#include <algorithm>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

namespace int4q {
namespace onnx {

namespace {

/// Whether the value `a` (produced by node pa, or a graph input: pa = -1) is an ancestor of node
/// `from`'s input `b`: a depth-first walk up from b's producer, over nodes after pa only (the
/// graph is sorted, so an ancestor of a comes before it).
bool reaches(const ::onnx::GraphProto& g, const std::unordered_map<std::string, int>& producer,
             const std::string& a, int pa, const std::string& b) {
  if (a == b) return true;
  std::vector<int> stack;
  std::set<int> seen;
  const auto push = [&](const std::string& name) {
    const auto it = producer.find(name);
    if (it != producer.end() && it->second > pa && seen.insert(it->second).second)
      stack.push_back(it->second);
  };
  push(b);
  while (!stack.empty()) {
    const ::onnx::NodeProto& n = g.node(stack.back());
    stack.pop_back();
    for (const std::string& in : n.input()) {
      if (in == a) return true;
      if (!in.empty()) push(in);
    }
  }
  return false;
}

struct residual_add {
  int node = 0;
  std::string stream, output;
  int prev = -1;  ///< index (into the list) of the residual Add computing `stream`
  int length = 1;
};

}  // namespace

std::vector<graph_block> find_blocks(const model& m) {
  const ::onnx::GraphProto& g = m.proto.graph();
  const int count = g.node_size();
  std::unordered_map<std::string, int> producer;
  for (int i = 0; i < count; ++i)
    for (const std::string& o : g.node(i).output())
      if (!o.empty()) producer[o] = i;
  std::set<std::string> constants;
  for (const auto& t : g.initializer()) constants.insert(t.name());

  std::vector<residual_add> adds;
  std::unordered_map<std::string, int> add_of_output;
  for (int i = 0; i < count; ++i) {
    const ::onnx::NodeProto& n = g.node(i);
    if (n.op_type() != "Add" || !(n.domain().empty() || n.domain() == "ai.onnx") ||
        n.input_size() != 2 || n.output_size() != 1)
      continue;
    const std::string& x = n.input(0);
    const std::string& y = n.input(1);
    if (x.empty() || y.empty() || constants.count(x) || constants.count(y) || x == y) continue;
    const auto at = [&](const std::string& name) {
      const auto it = producer.find(name);
      return it == producer.end() ? -1 : it->second;
    };
    std::string stream;
    if (reaches(g, producer, x, at(x), y))
      stream = x;
    else if (reaches(g, producer, y, at(y), x))
      stream = y;
    else
      continue;
    // Constant-only producers (a shape computation) are no stream.
    if (producer.count(stream) == 0) {
      bool graph_input = false;
      for (const auto& in : g.input()) graph_input = graph_input || in.name() == stream;
      if (!graph_input) continue;
    }
    residual_add r;
    r.node = i;
    r.stream = stream;
    r.output = n.output(0);
    const auto prev = add_of_output.find(stream);
    if (prev != add_of_output.end()) {
      r.prev = prev->second;
      r.length = adds[static_cast<std::size_t>(prev->second)].length + 1;
    }
    add_of_output[r.output] = static_cast<int>(adds.size());
    adds.push_back(std::move(r));
  }

  std::vector<graph_block> blocks;
  // The longest chain (the first one reaching the greatest length); a chain of one Add is no
  // stream (a lone x + f(x) inside an activation).
  int last = -1;
  for (std::size_t i = 0; i < adds.size(); ++i)
    if (last < 0 || adds[i].length > adds[static_cast<std::size_t>(last)].length)
      last = static_cast<int>(i);
  if (last < 0 || adds[static_cast<std::size_t>(last)].length < 2) {
    graph_block all;
    all.end_node = count;
    blocks.push_back(all);
    return blocks;
  }
  std::vector<const residual_add*> chain;
  for (int i = last; i >= 0; i = adds[static_cast<std::size_t>(i)].prev)
    chain.push_back(&adds[static_cast<std::size_t>(i)]);
  std::reverse(chain.begin(), chain.end());
  int first = 0;  // the nodes before the stream's first point (embeddings) open block 0
  for (const residual_add* r : chain) {
    graph_block b;
    b.first_node = first;
    b.end_node = r->node + 1;
    b.input = r->stream;
    b.output = r->output;
    blocks.push_back(b);
    first = b.end_node;
  }
  if (first < count) {
    graph_block tail;
    tail.first_node = first;
    tail.end_node = count;
    tail.input = chain.back()->output;
    blocks.push_back(tail);
  }
  return blocks;
}

}  // namespace onnx
}  // namespace int4q

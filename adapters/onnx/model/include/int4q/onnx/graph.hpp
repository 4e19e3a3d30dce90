// Graph helpers shared by every layer above model I/O: subgraph paths, constant lookup, fresh
// names, reference counts, attribute access, float tensors built and read, shapes as text.
#ifndef INT4Q_ONNX_GRAPH_HPP
#define INT4Q_ONNX_GRAPH_HPP

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include <int4q/onnx/model.hpp>

namespace int4q {
namespace onnx {

/// One step from a graph into one of its subgraphs: the node holding it, the attribute
/// (`then_branch`, `else_branch`, `body`, ...) and, for a GRAPHS attribute, the index in it.
struct graph_step {
  int node_index = -1;    ///< index in the enclosing graph's node()
  std::string attribute;  ///< attribute name
  int graph_index = -1;   ///< index in attribute.graphs() for GRAPHS; -1 for a GRAPH attribute
  bool operator==(const graph_step& o) const {
    return node_index == o.node_index && attribute == o.attribute && graph_index == o.graph_index;
  }
};

/// The (sub)graph reached from the main graph `main` by `path` (empty: `main` itself). Throws
/// model_error(invalid) when the path does not exist.
const ::onnx::GraphProto& graph_at(const ::onnx::GraphProto& main,
                                   const std::vector<graph_step>& path);
::onnx::GraphProto& graph_at(::onnx::GraphProto& main, const std::vector<graph_step>& path);

namespace detail {

/// Every name in a model (tensors, nodes, graph inputs/outputs, value_info, subgraphs included);
/// hands out fresh names deterministically: `base`, else `base_1`, `base_2`, ...
class name_set {
 public:
  explicit name_set(const ::onnx::ModelProto& m);
  std::string unique(const std::string& base);

 private:
  void add_graph(const ::onnx::GraphProto& g);
  std::set<std::string> used_;
};

/// How many times each tensor name is read: node inputs (subgraphs included: they may read
/// outer-scope names) and graph outputs.
std::map<std::string, int> count_references(const ::onnx::GraphProto& g);

/// The value of a constant tensor `name` of `g`: an initializer that is not also a graph input
/// (those can be overridden at run time), or the `value` of a Constant node. nullptr otherwise.
const ::onnx::TensorProto* constant_tensor(const ::onnx::GraphProto& g, const std::string& name);

/// The constant tensor `name` as seen from the graph at `path` (ONNX scoping: the innermost graph
/// defining the name decides; see constant_tensor). Sets `defined_in` to that graph's path when
/// found. nullptr when the name is not a constant there.
const ::onnx::TensorProto* constant_tensor_in_scope(const ::onnx::GraphProto& main,
                                                    const std::vector<graph_step>& path,
                                                    const std::string& name,
                                                    std::vector<graph_step>* defined_in);

/// Removes the initializer, the producing Constant node, the graph input and the value_info
/// named `name`.
void remove_tensor(::onnx::GraphProto& g, const std::string& name);

const ::onnx::AttributeProto* find_attr(const ::onnx::NodeProto& n, const std::string& name);
std::int64_t attr_int(const ::onnx::NodeProto& n, const std::string& name, std::int64_t dflt);
float attr_float(const ::onnx::NodeProto& n, const std::string& name, float dflt);
void set_attr_int(::onnx::NodeProto& n, const std::string& name, std::int64_t v);
void set_attr_float(::onnx::NodeProto& n, const std::string& name, float v);
void set_attr_string(::onnx::NodeProto& n, const std::string& name, const std::string& v);
void remove_attr(::onnx::NodeProto& n, const std::string& name);

/// ONNX data_type of a float elem_type (FLOAT, FLOAT16, BFLOAT16, DOUBLE).
int onnx_type_of(elem_type t) noexcept;
/// A tensor's values as float (FLOAT, FLOAT16, BFLOAT16, DOUBLE; any rank).
std::vector<float> read_floats(const model& m, const ::onnx::TensorProto& t);
/// A TensorProto of float type `type` holding `values` (converted, round to nearest even).
::onnx::TensorProto float_tensor(const std::string& name, elem_type type,
                                 const std::vector<std::int64_t>& dims,
                                 const std::vector<float>& values);
/// An INT64 tensor.
::onnx::TensorProto int64_tensor(const std::string& name, const std::vector<std::int64_t>& dims,
                                 const std::vector<std::int64_t>& values);
/// A (sub)graph path as text, unique per graph: "<node>.<attribute>.<index>/..." ("" for main).
std::string path_key(const std::vector<graph_step>& path);
/// Shape as "[a, b]".
std::string dims_string(const std::vector<std::int64_t>& dims);

}  // namespace detail
}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_GRAPH_HPP

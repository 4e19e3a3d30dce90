// An ONNX node test folder made by the tests themselves, laid out like ONNX's backend test data
// (onnx/backend/test/data/node/test_add): model.onnx (sum = Add(x, y), float32 [3, 4, 5]) and
// test_data_set_0/{input_0,input_1,output_0}.pb, unnamed TensorProtos with raw_data, the
// expected sum computed here. Tests use it instead of a system copy of ONNX's test data, so they
// do not depend on what is installed.
#ifndef INT4Q_TESTS_ONNX_ADD_TEST_DATA_HPP
#define INT4Q_TESTS_ONNX_ADD_TEST_DATA_HPP

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include "onnx/graph_builder.hpp"

namespace int4q {
namespace test {

/// Writes the folder at `dir` (created) and returns it.
inline std::filesystem::path write_add_test(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  const std::vector<std::int64_t> dims = {3, 4, 5};
  graph_builder g;
  g.input("x", onnx_float, dims);
  g.input("y", onnx_float, dims);
  g.node("Add", {"x", "y"}, {"sum"}, "add");
  g.output("sum", onnx_float, dims);
  fs::create_directories(dir / "test_data_set_0");
  {
    std::ofstream out(dir / "model.onnx", std::ios::binary);
    g.build().SerializeToOstream(&out);
  }
  const std::vector<float> x = random_values(60, 11), y = random_values(60, 12);
  std::vector<float> sum(60);
  for (std::size_t k = 0; k < sum.size(); ++k) sum[k] = x[k] + y[k];
  auto write = [&](const std::string& name, const std::vector<float>& v) {
    ::onnx::TensorProto t;
    t.set_data_type(onnx_float);
    for (const auto d : dims) t.add_dims(d);
    t.set_raw_data(v.data(), v.size() * sizeof(float));
    std::ofstream out(dir / "test_data_set_0" / name, std::ios::binary);
    t.SerializeToOstream(&out);
  };
  write("input_0.pb", x);
  write("input_1.pb", y);
  write("output_0.pb", sum);
  return dir;
}

}  // namespace test
}  // namespace int4q

#endif  // INT4Q_TESTS_ONNX_ADD_TEST_DATA_HPP

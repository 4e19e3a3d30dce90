// ONNX tensor data type names.
#include <int4q/onnx/tensor_types.hpp>

#include <cctype>

#include <onnx/onnx_pb.h>

namespace int4q {
namespace onnx {

std::string onnx_type_name(int data_type) {
  switch (data_type) {
    case onnx_float8e4m3fn: return "FLOAT8E4M3FN";
    case onnx_float8e4m3fnuz: return "FLOAT8E4M3FNUZ";
    case onnx_float8e5m2: return "FLOAT8E5M2";
    case onnx_float8e5m2fnuz: return "FLOAT8E5M2FNUZ";
    case onnx_uint4: return "UINT4";
    case onnx_int4: return "INT4";
    case onnx_float4e2m1: return "FLOAT4E2M1";
    default: break;
  }
  if (::onnx::TensorProto_DataType_IsValid(data_type)) {
    return ::onnx::TensorProto_DataType_Name(static_cast<::onnx::TensorProto_DataType>(data_type));
  }
  return "type " + std::to_string(data_type);
}

std::string onnx_type_word(int data_type) {
  if (data_type <= 0) return "type " + std::to_string(data_type);
  std::string s = onnx_type_name(data_type);
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s == "float" ? "float32" : s == "double" ? "float64" : s;
}

}  // namespace onnx
}  // namespace int4q

// ONNX tensor data types by name: the TensorProto.DataType codes newer than the enum of the ONNX
// release int4q builds against (Debian's libonnx stops at BFLOAT16 = 16), and the one function
// that names any code (with its lowercase form for messages).
#ifndef INT4Q_ONNX_TENSOR_TYPES_HPP
#define INT4Q_ONNX_TENSOR_TYPES_HPP

#include <string>

namespace int4q {
namespace onnx {

/// TensorProto.DataType codes the older enum lacks: 8-bit floats (IR 9), 4-bit integers and
/// floats (IR 10). Payloads: one byte per 8-bit element, two 4-bit elements per byte.
inline constexpr int onnx_float8e4m3fn = 17;
inline constexpr int onnx_float8e4m3fnuz = 18;
inline constexpr int onnx_float8e5m2 = 19;
inline constexpr int onnx_float8e5m2fnuz = 20;
inline constexpr int onnx_uint4 = 21;
inline constexpr int onnx_int4 = 22;
inline constexpr int onnx_float4e2m1 = 23;
/// The highest data type code int4q knows.
inline constexpr int onnx_last_data_type = onnx_float4e2m1;

/// Whether `data_type` is UINT4, INT4 or FLOAT4E2M1 (two elements per byte).
constexpr bool is_4bit_type(int data_type) noexcept {
  return data_type == onnx_uint4 || data_type == onnx_int4 || data_type == onnx_float4e2m1;
}

/// The TensorProto.DataType enum name of `data_type` ("FLOAT", "FLOAT16", "UINT4",
/// "FLOAT8E4M3FN"; "UNDEFINED" for 0), codes 17-23 included; "type N" for a code it does not
/// know.
std::string onnx_type_name(int data_type);
/// The same as int4q's messages write a type: lowercase, FLOAT and DOUBLE as "float32" and
/// "float64" ("float16", "int64", "uint4"); "type N" for 0 and codes it does not know.
std::string onnx_type_word(int data_type);

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_TENSOR_TYPES_HPP

// Loading and saving ONNX models with external data; reading and making tensor payloads.
#include <int4q/onnx/model.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <system_error>
#include <unordered_map>
#include <utility>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl.h>
#include <google/protobuf/wire_format_lite.h>

#include <int4q/float16.hpp>
#include <int4q/onnx/graph.hpp>
#include <int4q/onnx/temp_files.hpp>
#include <int4q/onnx/tensor_types.hpp>

namespace int4q {
namespace onnx {

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error \
    "int4q::onnx reads ONNX tensors (little-endian) with memcpy: big-endian hosts are unsupported"
#endif

namespace {

using ::onnx::TensorProto;
using kind = model_error::kind;

std::string quoted(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

std::string tensor_label(const TensorProto& t) {
  return "tensor '" + (t.name().empty() ? std::string("<unnamed>") : t.name()) + "'";
}

std::string dims_string(const TensorProto& t) {
  return detail::dims_string(std::vector<std::int64_t>(t.dims().begin(), t.dims().end()));
}

// Bytes per element for the ONNX data types with a fixed size; 0 for STRING and unknown types.
// 4-bit types (is_4bit_type) are handled by the caller (two per byte).
std::size_t onnx_type_size(int data_type) noexcept {
  switch (data_type) {
    case TensorProto::UINT8:
    case TensorProto::INT8:
    case TensorProto::BOOL:
    case onnx_float8e4m3fn:
    case onnx_float8e4m3fnuz:
    case onnx_float8e5m2:
    case onnx_float8e5m2fnuz: return 1;
    case TensorProto::UINT16:
    case TensorProto::INT16:
    case TensorProto::FLOAT16:
    case TensorProto::BFLOAT16: return 2;
    case TensorProto::FLOAT:
    case TensorProto::INT32:
    case TensorProto::UINT32: return 4;
    case TensorProto::INT64:
    case TensorProto::UINT64:
    case TensorProto::DOUBLE:
    case TensorProto::COMPLEX64: return 8;
    case TensorProto::COMPLEX128: return 16;
    default: return 0;
  }
}

// Throws model_error(invalid) naming `t` (after `prefix`, e.g. "'model.onnx': ") when a dim is
// negative, the element count overflows 64 bits, or, for a type with a fixed size, the byte
// size does: nothing computed from such dims (buffer sizes, strides) can be trusted.
void check_dims(const TensorProto& t, const std::string& prefix) {
  for (const std::int64_t d : t.dims()) {
    if (d < 0) {
      throw model_error(kind::invalid, prefix + tensor_label(t) + " has a negative dimension " +
                                           std::to_string(d) + " in dims " + dims_string(t) +
                                           ": fix the model (re-export it)");
    }
  }
  const bool sized = is_4bit_type(t.data_type()) || onnx_type_size(t.data_type()) != 0;
  if (!tensor_element_count(t) || (sized && !tensor_payload_bytes(t))) {
    throw model_error(kind::invalid, prefix + tensor_label(t) + " has dims " + dims_string(t) +
                                         " whose " + (sized ? "byte size" : "element count") +
                                         " overflows 64 bits: fix the model (re-export it)");
  }
}

// Element count of a float tensor about to be materialized as `float` values, checked to fit
// in memory arithmetic (size_t sizes and the signed strides of xtensor).
std::size_t float_count(const TensorProto& t) {
  check_dims(t, "");
  const std::uint64_t n = *tensor_element_count(t);
  if (n > static_cast<std::uint64_t>(std::numeric_limits<std::ptrdiff_t>::max()) / sizeof(float)) {
    throw model_error(kind::invalid, tensor_label(t) + " has dims " + dims_string(t) + " (" +
                                         std::to_string(n) +
                                         " elements), too many to hold as float32 in memory: "
                                         "fix the model");
  }
  return static_cast<std::size_t>(n);
}

// Appends `count` elements of `size` bytes from typed values (each narrowed to `size` bytes,
// little-endian) to `out`.
template <class T>
void append_narrowed(std::vector<std::uint8_t>& out, const google::protobuf::RepeatedField<T>& v,
                     std::size_t size) {
  const std::size_t start = out.size();
  out.resize(start + static_cast<std::size_t>(v.size()) * size);
  std::uint8_t* dst = out.data() + start;
  for (const T& x : v) {
    std::memcpy(dst, &x, size);  // little-endian: the low `size` bytes come first
    dst += size;
  }
}

}  // namespace

// ---- Element types ------------------------------------------------------------------------------

elem_type elem_type_of(int onnx_data_type) noexcept {
  switch (onnx_data_type) {
    case TensorProto::FLOAT: return elem_type::float32;
    case TensorProto::FLOAT16: return elem_type::float16;
    case TensorProto::BFLOAT16: return elem_type::bfloat16;
    case TensorProto::DOUBLE: return elem_type::float64;
    default: return elem_type::other;
  }
}

const char* to_string(elem_type t) noexcept {
  switch (t) {
    case elem_type::float32: return "float32";
    case elem_type::float16: return "float16";
    case elem_type::bfloat16: return "bfloat16";
    case elem_type::float64: return "float64";
    case elem_type::other: return "other";
  }
  return "other";
}

std::size_t elem_size(elem_type t) noexcept {
  switch (t) {
    case elem_type::float32: return 4;
    case elem_type::float16:
    case elem_type::bfloat16: return 2;
    case elem_type::float64: return 8;
    case elem_type::other: return 0;
  }
  return 0;
}

std::optional<std::uint64_t> tensor_element_count(const TensorProto& t) noexcept {
  std::uint64_t n = 1;
  for (const std::int64_t d : t.dims()) {
    if (d < 0) return std::nullopt;
    const auto ud = static_cast<std::uint64_t>(d);
    if (ud != 0 && n > std::numeric_limits<std::uint64_t>::max() / ud) return std::nullopt;
    n *= ud;
  }
  return n;
}

std::optional<std::uint64_t> tensor_payload_bytes(const TensorProto& t) noexcept {
  const auto count = tensor_element_count(t);
  if (!count) return std::nullopt;
  if (is_4bit_type(t.data_type()))
    return *count / 2 + (*count & 1);  // (count + 1) / 2 without overflow
  const std::size_t size = onnx_type_size(t.data_type());
  if (size == 0) return std::nullopt;
  if (*count > std::numeric_limits<std::uint64_t>::max() / size) return std::nullopt;
  return *count * size;
}

bool is_external(const TensorProto& t) noexcept {
  return t.has_data_location() && t.data_location() == TensorProto::EXTERNAL;
}

// ---- Tensor payloads ----------------------------------------------------------------------------

namespace detail {

external_ref parse_external_ref(const TensorProto& t) {
  external_ref ref;
  bool has_location = false;
  for (const auto& e : t.external_data()) {
    const std::string& key = e.key();
    if (key == "location") {
      ref.location = e.value();
      has_location = true;
    } else if (key == "offset" || key == "length") {
      const std::string& v = e.value();
      std::uint64_t x = 0;
      bool ok = !v.empty() && v.size() <= 19;
      for (const char c : v) ok = ok && c >= '0' && c <= '9';
      if (ok) {
        for (const char c : v) x = x * 10 + static_cast<std::uint64_t>(c - '0');
      } else {
        throw model_error(kind::invalid, tensor_label(t) + ": external data " + key + " '" + v +
                                             "' is not a non-negative integer: fix the model");
      }
      if (key == "offset") {
        ref.offset = x;
      } else {
        ref.length = x;
      }
    }
  }
  if (!has_location || ref.location.empty()) {
    throw model_error(kind::invalid, tensor_label(t) +
                                         " is stored externally but names no data file "
                                         "(external_data 'location'): fix the model");
  }
  const std::filesystem::path loc(ref.location);
  bool escapes = loc.is_absolute() || loc.has_root_name() || loc.has_root_directory();
  for (const auto& part : loc) escapes = escapes || part == "..";
  if (escapes) {
    throw model_error(kind::invalid,
                      tensor_label(t) + ": external data location '" + ref.location +
                          "' must be a relative path inside the model's directory (ONNX allows "
                          "no absolute paths or '..'): move the data file next to the model");
  }
  return ref;
}

}  // namespace detail

namespace {

std::filesystem::path external_file(const model& m, const detail::external_ref& ref) {
  if (!m.spill_location.empty() && ref.location == m.spill_location) return m.spill_path;
  return m.base_dir.empty() ? std::filesystem::path(ref.location) : m.base_dir / ref.location;
}

/// Where a tensor's external data lies, checked against the file: [offset, offset + length).
struct external_span {
  std::filesystem::path file;
  std::uint64_t offset = 0, length = 0;
};

external_span locate_external(const model& m, const TensorProto& t) {
  const detail::external_ref ref = detail::parse_external_ref(t);
  const std::filesystem::path file = external_file(m, ref);
  const auto expected = tensor_payload_bytes(t);
  std::error_code ec;
  const auto file_size = std::filesystem::file_size(file, ec);
  if (ec) {
    throw model_error(kind::io, tensor_label(t) + ": cannot open its external data file " +
                                    quoted(file) + " (" + ec.message() +
                                    "): keep the data file next to the model");
  }
  if (ref.offset > file_size) {
    throw model_error(kind::invalid, tensor_label(t) + ": external data offset " +
                                         std::to_string(ref.offset) + " is past the end of " +
                                         quoted(file) + " (" + std::to_string(file_size) +
                                         " bytes): the data file does not match the model");
  }
  const std::uint64_t length = ref.length ? *ref.length
                               : expected ? *expected
                                          : file_size - ref.offset;
  if (length > file_size - ref.offset) {
    throw model_error(kind::invalid, tensor_label(t) + ": external data [" +
                                         std::to_string(ref.offset) + ", +" +
                                         std::to_string(length) + ") goes past the end of " +
                                         quoted(file) + " (" + std::to_string(file_size) +
                                         " bytes): the data file is truncated or does not match");
  }
  if (expected && length != *expected) {
    throw model_error(kind::invalid, tensor_label(t) + ": external data length " +
                                         std::to_string(length) + " but dims " + dims_string(t) +
                                         " need " + std::to_string(*expected) +
                                         " bytes: fix the model");
  }
  return external_span{file, ref.offset, length};
}

/// Reads the span into `dst` (span.length bytes).
void read_span(const TensorProto& t, const external_span& span, void* dst) {
  std::ifstream in(span.file, std::ios::binary);
  if (in) in.seekg(static_cast<std::streamoff>(span.offset));
  if (in && span.length > 0)
    in.read(static_cast<char*>(dst), static_cast<std::streamsize>(span.length));
  if (!in) {
    throw model_error(kind::io, tensor_label(t) + ": cannot read " + std::to_string(span.length) +
                                    " bytes at offset " + std::to_string(span.offset) + " of " +
                                    quoted(span.file));
  }
}

std::vector<std::uint8_t> read_external(const model& m, const TensorProto& t) {
  const external_span span = locate_external(m, t);
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(span.length));
  read_span(t, span, bytes.data());
  return bytes;
}

}  // namespace

std::vector<std::uint8_t> read_tensor_bytes(const model& m, const TensorProto& t) {
  check_dims(t, "");
  if (is_external(t)) return read_external(m, t);
  const int type = t.data_type();
  const auto expected = tensor_payload_bytes(t);
  if (type == TensorProto::STRING || type == TensorProto::UNDEFINED) {
    throw model_error(kind::unsupported, tensor_label(t) + " has data type " +
                                             std::to_string(type) +
                                             ": int4q reads numeric tensors only");
  }
  std::vector<std::uint8_t> out;
  if (t.has_raw_data()) {
    const std::string& raw = t.raw_data();
    out.assign(raw.begin(), raw.end());
  } else {
    switch (type) {
      case TensorProto::FLOAT:
      case TensorProto::COMPLEX64: append_narrowed(out, t.float_data(), 4); break;
      case TensorProto::DOUBLE:
      case TensorProto::COMPLEX128: append_narrowed(out, t.double_data(), 8); break;
      case TensorProto::INT64: append_narrowed(out, t.int64_data(), 8); break;
      case TensorProto::UINT64: append_narrowed(out, t.uint64_data(), 8); break;
      case TensorProto::UINT32: append_narrowed(out, t.uint64_data(), 4); break;
      default: {
        // INT32, INT16, UINT16, INT8, UINT8, BOOL, FLOAT16/BFLOAT16 (bits as uint16), FLOAT8*
        // and 4-bit types (one packed byte per element) live in int32_data.
        const std::size_t size = is_4bit_type(type) ? 1 : onnx_type_size(type);
        if (size == 0) {
          throw model_error(kind::unsupported, tensor_label(t) + " has data type " +
                                                   std::to_string(type) +
                                                   " which int4q does not know");
        }
        append_narrowed(out, t.int32_data(), size);
      }
    }
  }
  if (expected && out.size() != *expected) {
    throw model_error(kind::invalid, tensor_label(t) + " holds " + std::to_string(out.size()) +
                                         " bytes of data but dims " + dims_string(t) + " need " +
                                         std::to_string(*expected) + ": fix the model");
  }
  return out;
}

namespace {

// Converts `count` values of float type `type` from little-endian `bytes` to float.
void to_float(const std::uint8_t* bytes, elem_type type, std::size_t count, float* out) {
  if (count == 0) return;  // an empty tensor: both pointers may be null (memcpy must not see them)
  switch (type) {
    case elem_type::float32: std::memcpy(out, bytes, count * 4); break;
    case elem_type::float16:
      for (std::size_t i = 0; i < count; ++i) {
        std::uint16_t h;
        std::memcpy(&h, bytes + 2 * i, 2);
        out[i] = int4q::half_bits_to_float(h);
      }
      break;
    case elem_type::bfloat16:
      for (std::size_t i = 0; i < count; ++i) {
        std::uint16_t h;
        std::memcpy(&h, bytes + 2 * i, 2);
        out[i] = int4q::bfloat16_bits_to_float(h);
      }
      break;
    case elem_type::float64:
      for (std::size_t i = 0; i < count; ++i) {
        double d;
        std::memcpy(&d, bytes + 8 * i, 8);
        out[i] = static_cast<float>(d);
      }
      break;
    case elem_type::other: break;
  }
}

elem_type require_float_tensor(const TensorProto& t, int rank) {
  const elem_type type = elem_type_of(t.data_type());
  if (type == elem_type::other) {
    throw model_error(kind::unsupported, tensor_label(t) + " has data type " +
                                             std::to_string(t.data_type()) +
                                             ": expected float32, float16, bfloat16 or float64");
  }
  if (t.dims_size() != rank) {
    throw model_error(kind::unsupported, tensor_label(t) + " has dims " + dims_string(t) +
                                             ": expected a " + std::to_string(rank) + "-D tensor");
  }
  return type;
}

}  // namespace

xt::xtensor<float, 2> read_matrix(const model& m, const TensorProto& t) {
  require_float_tensor(t, 2);
  float_count(t);  // dims non-negative, rows * cols * 4 fits
  const auto rows = static_cast<std::size_t>(t.dims(0));
  const auto cols = static_cast<std::size_t>(t.dims(1));
  xt::xtensor<float, 2> out = xt::empty<float>({rows, cols});
  // Converted piece by piece into `out`: no second copy of the largest weight in memory.
  tensor_reader(m).read_floats(t, out.data(), out.size());
  return out;
}

xt::xtensor<float, 1> read_vector(const model& m, const TensorProto& t) {
  require_float_tensor(t, 1);
  xt::xtensor<float, 1> out = xt::empty<float>({float_count(t)});
  tensor_reader(m).read_floats(t, out.data(), out.size());
  return out;
}

TensorProto make_tensor(const std::string& name, int onnx_data_type,
                        const std::vector<std::int64_t>& dims, const void* bytes,
                        std::size_t size) {
  TensorProto t;
  t.set_name(name);
  t.set_data_type(onnx_data_type);
  for (const std::int64_t d : dims) t.add_dims(d);
  const auto expected = tensor_payload_bytes(t);
  if (expected && *expected != size) {
    throw int4q::shape_error("make_tensor '" + name + "': dims " + dims_string(t) + " need " +
                             std::to_string(*expected) + " bytes, got " + std::to_string(size));
  }
  t.set_raw_data(static_cast<const char*>(bytes), size);
  return t;
}

TensorProto make_float_tensor(const std::string& name, elem_type type,
                              const std::vector<std::int64_t>& dims, const float* values,
                              std::size_t count) {
  std::vector<std::uint8_t> bytes(count * elem_size(type));
  int onnx_type = TensorProto::UNDEFINED;
  switch (type) {
    case elem_type::float32:
      onnx_type = TensorProto::FLOAT;
      if (count) std::memcpy(bytes.data(), values, count * 4);
      break;
    case elem_type::float16:
      onnx_type = TensorProto::FLOAT16;
      for (std::size_t i = 0; i < count; ++i) {
        const std::uint16_t h = int4q::float_to_half_bits(values[i]);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
      }
      break;
    case elem_type::bfloat16:
      onnx_type = TensorProto::BFLOAT16;
      for (std::size_t i = 0; i < count; ++i) {
        const std::uint16_t h = int4q::float_to_bfloat16_bits(values[i]);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
      }
      break;
    case elem_type::float64:
      onnx_type = TensorProto::DOUBLE;
      for (std::size_t i = 0; i < count; ++i) {
        const double d = values[i];
        std::memcpy(bytes.data() + 8 * i, &d, 8);
      }
      break;
    case elem_type::other:
      throw int4q::config_error("make_float_tensor '" + name +
                                "': the type must be float32, float16, bfloat16 or float64");
  }
  return make_tensor(name, onnx_type, dims, bytes.data(), bytes.size());
}

// ---- Walking every tensor of a model ------------------------------------------------------------
//
// Tensors sit in graph initializers, in node attributes (Constant's `value`, ...), in subgraphs
// (If/Loop/Scan) and in functions and training info. Protobuf reflection reaches all of them
// without listing those places by hand.

namespace {

namespace pb = google::protobuf;

const pb::FieldDescriptor* initializer_field() {
  return ::onnx::GraphProto::descriptor()->FindFieldByNumber(
      ::onnx::GraphProto::kInitializerFieldNumber);
}

// Calls fn(tensor, is_initializer) for every TensorProto inside `msg`.
template <class F>
void visit_tensors(const pb::Message& msg, F& fn, bool is_initializer = false) {
  if (msg.GetDescriptor() == TensorProto::descriptor()) {
    fn(static_cast<const TensorProto&>(msg), is_initializer);
    return;
  }
  const pb::Reflection* r = msg.GetReflection();
  std::vector<const pb::FieldDescriptor*> fields;
  r->ListFields(msg, &fields);
  for (const pb::FieldDescriptor* f : fields) {
    if (f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    const bool init = f == initializer_field();
    if (f->is_repeated()) {
      for (int i = 0, n = r->FieldSize(msg, f); i < n; ++i) {
        visit_tensors(r->GetRepeatedMessage(msg, f, i), fn, init);
      }
    } else {
      visit_tensors(r->GetMessage(msg, f), fn, init);
    }
  }
}

// Copies the non-message fields `f` of `src` to `dst` (same type).
void copy_scalar_field(const pb::Message& src, pb::Message* dst, const pb::FieldDescriptor* f) {
  const pb::Reflection* r = src.GetReflection();
  using FD = pb::FieldDescriptor;
  if (f->is_repeated()) {
    const int n = r->FieldSize(src, f);
    for (int i = 0; i < n; ++i) {
      switch (f->cpp_type()) {
        case FD::CPPTYPE_INT32: r->AddInt32(dst, f, r->GetRepeatedInt32(src, f, i)); break;
        case FD::CPPTYPE_INT64: r->AddInt64(dst, f, r->GetRepeatedInt64(src, f, i)); break;
        case FD::CPPTYPE_UINT32: r->AddUInt32(dst, f, r->GetRepeatedUInt32(src, f, i)); break;
        case FD::CPPTYPE_UINT64: r->AddUInt64(dst, f, r->GetRepeatedUInt64(src, f, i)); break;
        case FD::CPPTYPE_DOUBLE: r->AddDouble(dst, f, r->GetRepeatedDouble(src, f, i)); break;
        case FD::CPPTYPE_FLOAT: r->AddFloat(dst, f, r->GetRepeatedFloat(src, f, i)); break;
        case FD::CPPTYPE_BOOL: r->AddBool(dst, f, r->GetRepeatedBool(src, f, i)); break;
        case FD::CPPTYPE_ENUM: r->AddEnumValue(dst, f, r->GetRepeatedEnumValue(src, f, i)); break;
        case FD::CPPTYPE_STRING: r->AddString(dst, f, r->GetRepeatedString(src, f, i)); break;
        case FD::CPPTYPE_MESSAGE: break;
      }
    }
    return;
  }
  switch (f->cpp_type()) {
    case FD::CPPTYPE_INT32: r->SetInt32(dst, f, r->GetInt32(src, f)); break;
    case FD::CPPTYPE_INT64: r->SetInt64(dst, f, r->GetInt64(src, f)); break;
    case FD::CPPTYPE_UINT32: r->SetUInt32(dst, f, r->GetUInt32(src, f)); break;
    case FD::CPPTYPE_UINT64: r->SetUInt64(dst, f, r->GetUInt64(src, f)); break;
    case FD::CPPTYPE_DOUBLE: r->SetDouble(dst, f, r->GetDouble(src, f)); break;
    case FD::CPPTYPE_FLOAT: r->SetFloat(dst, f, r->GetFloat(src, f)); break;
    case FD::CPPTYPE_BOOL: r->SetBool(dst, f, r->GetBool(src, f)); break;
    case FD::CPPTYPE_ENUM: r->SetEnumValue(dst, f, r->GetEnumValue(src, f)); break;
    case FD::CPPTYPE_STRING: r->SetString(dst, f, r->GetString(src, f)); break;
    case FD::CPPTYPE_MESSAGE: break;
  }
}

// One tensor of the model being saved: where its payload comes from and where it goes.
struct tensor_slot {
  const TensorProto* src = nullptr;  // in the input model (payload: raw_data, typed or external)
  TensorProto* dst = nullptr;        // in the output skeleton (never holds raw_data)
  bool is_initializer = false;
};

// Deep-copies `src` into `dst` except every TensorProto's raw_data, recording each tensor pair
// in `slots`. The payloads are what makes a model big: the copy is the graph only.
void copy_skeleton(const pb::Message& src, pb::Message* dst, std::vector<tensor_slot>& slots,
                   bool is_initializer = false) {
  const pb::Reflection* r = src.GetReflection();
  const bool is_tensor = src.GetDescriptor() == TensorProto::descriptor();
  std::vector<const pb::FieldDescriptor*> fields;
  r->ListFields(src, &fields);
  for (const pb::FieldDescriptor* f : fields) {
    if (is_tensor && f->number() == TensorProto::kRawDataFieldNumber) continue;
    if (f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      copy_scalar_field(src, dst, f);
      continue;
    }
    const bool init = f == initializer_field();
    if (f->is_repeated()) {
      for (int i = 0, n = r->FieldSize(src, f); i < n; ++i) {
        copy_skeleton(r->GetRepeatedMessage(src, f, i), r->AddMessage(dst, f), slots, init);
      }
    } else {
      copy_skeleton(r->GetMessage(src, f), r->MutableMessage(dst, f), slots, init);
    }
  }
  dst->GetReflection()->MutableUnknownFields(dst)->MergeFrom(r->GetUnknownFields(src));
  if (is_tensor) {
    slots.push_back(
        {static_cast<const TensorProto*>(&src), static_cast<TensorProto*>(dst), is_initializer});
  }
}

// ---- Files --------------------------------------------------------------------------------------

std::string errno_text(int e) { return std::error_code(e, std::generic_category()).message(); }

// Whether `a` and `b` name the same file (by identity when both exist, else by path).
bool same_file(const std::filesystem::path& a, const std::filesystem::path& b) {
  std::error_code ec;
  if (std::filesystem::exists(a, ec) && std::filesystem::exists(b, ec)) {
    const bool eq = std::filesystem::equivalent(a, b, ec);
    if (!ec) return eq;
  }
  const auto ca = std::filesystem::weakly_canonical(a, ec);
  const auto cb = std::filesystem::weakly_canonical(b, ec);
  return ca == cb;
}

// A file descriptor closed on destruction.
class fd_guard {
 public:
  explicit fd_guard(int fd = -1) noexcept : fd_(fd) {}
  fd_guard(const fd_guard&) = delete;
  fd_guard& operator=(const fd_guard&) = delete;
  ~fd_guard() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const noexcept { return fd_; }
  // Closes now, reporting the error close() may return (delayed write errors on some systems).
  int close_checked() noexcept {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc == 0 ? 0 : errno;
  }

 private:
  int fd_;
};

// A new file next to `final_path` ("<name>.tmp-XXXXXXXX"), removed unless committed by rename;
// registered for signal handlers meanwhile (temp_files.hpp).
class temp_file {
 public:
  explicit temp_file(const std::filesystem::path& final_path)
      : final_(final_path), file_(final_path.string() + ".tmp-", final_path) {}
  int fd() const noexcept { return file_.fd(); }
  // Closes the file; throws on a delayed write error.
  void close() {
    if (const int e = file_.close()) fail(e);
  }
  [[noreturn]] void fail(int e) const {
    throw model_error(kind::io, "cannot write " + quoted(final_) + " (" + errno_text(e) +
                                    "): check free disk space and permissions");
  }
  // Renames the temporary file onto the final path.
  void commit() {
    if (const int e = file_.commit(final_)) {
      throw model_error(kind::io, "cannot write " + quoted(final_) + " (" + errno_text(e) +
                                      "): choose a writable output path");
    }
  }

 private:
  std::filesystem::path final_;
  registered_temp_file file_;
};

void write_all(temp_file& out, const void* data, std::size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(out.fd(), p, std::min<std::size_t>(size, std::size_t{1} << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      out.fail(errno);
    }
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

// Input external data files, opened once each, read by range.
class input_files {
 public:
  explicit input_files(const model& m) : m_(m) {}

  // Calls sink(bytes, size) for consecutive chunks of the tensor's external range; sets
  // `length` to the range's size.
  template <class Sink>
  void read_range(const TensorProto& t, std::uint64_t& length, Sink&& sink) {
    const range r = open(t);
    length = r.length;
    buffer_.resize(std::size_t{16} << 20);
    std::uint64_t done = 0;
    while (done < r.length) {
      const auto want =
          static_cast<std::size_t>(std::min<std::uint64_t>(buffer_.size(), r.length - done));
      const ssize_t n = ::pread(r.fd, buffer_.data(), want, static_cast<off_t>(r.offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) read_failed(t, r, n < 0 ? errno : 0);
      sink(buffer_.data(), static_cast<std::size_t>(n));
      done += static_cast<std::uint64_t>(n);
    }
  }

  // Appends the tensor's external range to `out`, in the kernel where it can (copy_file_range:
  // no copy through user space, a reflink on file systems that share extents).
  void copy_range(const TensorProto& t, std::uint64_t& length, temp_file& out) {
    const range r = open(t);
    length = r.length;
    std::uint64_t done = 0;
#ifdef __linux__
    while (kernel_copy_ && done < r.length) {
      loff_t in_offset = static_cast<loff_t>(r.offset + done);
      const std::size_t want =
          static_cast<std::size_t>(std::min<std::uint64_t>(r.length - done, std::size_t{1} << 30));
      const ssize_t n = ::copy_file_range(r.fd, &in_offset, out.fd(), nullptr, want, 0);
      if (n > 0) {
        done += static_cast<std::uint64_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n == 0) read_failed(t, r, 0);
      if (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP ||
          errno == EBADF || errno == EPERM) {
        kernel_copy_ = false;  // not between these files: copy through a buffer
        break;
      }
      out.fail(errno);
    }
#endif
    if (done == r.length) return;
    buffer_.resize(std::size_t{16} << 20);
    while (done < r.length) {
      const auto want =
          static_cast<std::size_t>(std::min<std::uint64_t>(buffer_.size(), r.length - done));
      const ssize_t n = ::pread(r.fd, buffer_.data(), want, static_cast<off_t>(r.offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) read_failed(t, r, n < 0 ? errno : 0);
      write_all(out, buffer_.data(), static_cast<std::size_t>(n));
      done += static_cast<std::uint64_t>(n);
    }
  }

 private:
  struct range {
    int fd;
    std::uint64_t offset, length;
    std::filesystem::path file;
  };

  range open(const TensorProto& t) {
    const detail::external_ref ref = detail::parse_external_ref(t);
    range r{-1, ref.offset, 0, external_file(m_, ref)};
    auto it = fds_.find(r.file.string());
    if (it == fds_.end()) {
      const int fd = ::open(r.file.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        const int e = errno;
        throw model_error(kind::io, tensor_label(t) + ": cannot open its external data file " +
                                        quoted(r.file) + " (" + errno_text(e) +
                                        "): keep the data file next to the input model");
      }
      it = fds_.emplace(r.file.string(), std::make_unique<fd_guard>(fd)).first;
    }
    r.fd = it->second->get();
    const auto expected = tensor_payload_bytes(t);
    r.length = ref.length ? *ref.length : expected.value_or(0);
    if (!ref.length && !expected) {  // unknown type, no length: to the end of the file
      struct stat st {};
      if (::fstat(r.fd, &st) == 0 && static_cast<std::uint64_t>(st.st_size) > ref.offset) {
        r.length = static_cast<std::uint64_t>(st.st_size) - ref.offset;
      }
    }
    return r;
  }

  [[noreturn]] static void read_failed(const TensorProto& t, const range& r, int e) {
    throw model_error(kind::io, tensor_label(t) + ": cannot read " + std::to_string(r.length) +
                                    " bytes at offset " + std::to_string(r.offset) + " of " +
                                    quoted(r.file) + " (" +
                                    (e ? errno_text(e) : std::string("end of file")) +
                                    "): the data file changed since the model was loaded");
  }

  const model& m_;
  std::map<std::string, std::unique_ptr<fd_guard>> fds_;
  std::vector<char> buffer_;
  bool kernel_copy_ = true;
};

}  // namespace

// ---- tensor_reader ------------------------------------------------------------------------------

// The data files a reader has opened, by path; a file stays open while the reader lives.
struct tensor_reader::files {
  std::mutex mutex;
  std::map<std::string, std::unique_ptr<fd_guard>> open;

  int fd(const TensorProto& t, const std::filesystem::path& file) {
    const std::lock_guard<std::mutex> lock(mutex);
    auto it = open.find(file.string());
    if (it == open.end()) {
      const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        const int e = errno;
        throw model_error(kind::io, tensor_label(t) + ": cannot open its external data file " +
                                        quoted(file) + " (" + errno_text(e) +
                                        "): keep the data file next to the model");
      }
      it = open.emplace(file.string(), std::make_unique<fd_guard>(fd)).first;
    }
    return it->second->get();
  }
};

tensor_reader::tensor_reader(const model& m, std::size_t chunk_bytes)
    : m_(m),
      chunk_(std::max<std::size_t>(8, chunk_bytes / 8 * 8)),
      files_(std::make_unique<files>()) {}

tensor_reader::~tensor_reader() = default;

void tensor_reader::read(const TensorProto& t, const payload_sink& sink) const {
  check_dims(t, "");
  if (!is_external(t)) {
    const int type = t.data_type();
    const auto expected = tensor_payload_bytes(t);
    if (t.has_raw_data() && type != TensorProto::STRING && type != TensorProto::UNDEFINED) {
      const std::string& raw = t.raw_data();
      if (expected && raw.size() != *expected) {
        throw model_error(kind::invalid, tensor_label(t) + " holds " + std::to_string(raw.size()) +
                                             " bytes of data but dims " + dims_string(t) +
                                             " need " + std::to_string(*expected) +
                                             ": fix the model");
      }
      if (!raw.empty()) sink(reinterpret_cast<const std::uint8_t*>(raw.data()), raw.size());
      return;
    }
    const std::vector<std::uint8_t> bytes = read_tensor_bytes(m_, t);  // typed fields: checked
    if (!bytes.empty()) sink(bytes.data(), bytes.size());
    return;
  }
  const external_span span = locate_external(m_, t);
  const int fd = files_->fd(t, span.file);
  std::vector<std::uint8_t> buffer(
      static_cast<std::size_t>(std::min<std::uint64_t>(chunk_, span.length)));
  std::uint64_t done = 0;
  while (done < span.length) {
    // Fill the whole piece (pread may return less) so that pieces stay multiples of 8 bytes.
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(chunk_, span.length - done));
    std::size_t got = 0;
    while (got < want) {
      const ssize_t n = ::pread(fd, buffer.data() + got, want - got,
                                static_cast<off_t>(span.offset + done + got));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int e = n < 0 ? errno : 0;
        throw model_error(kind::io, tensor_label(t) + ": cannot read " +
                                        std::to_string(span.length) + " bytes at offset " +
                                        std::to_string(span.offset) + " of " + quoted(span.file) +
                                        " (" + (e ? errno_text(e) : std::string("end of file")) +
                                        "): the data file changed since the model was loaded");
      }
      got += static_cast<std::size_t>(n);
    }
    sink(buffer.data(), want);
    done += want;
  }
}

namespace {

/// t's float element type; throws model_error(unsupported) for any other type.
elem_type float_type_of(const TensorProto& t) {
  const elem_type type = elem_type_of(t.data_type());
  if (type == elem_type::other) {
    throw model_error(kind::unsupported, tensor_label(t) + " has data type " +
                                             std::to_string(t.data_type()) +
                                             ": expected float32, float16, bfloat16 or float64");
  }
  return type;
}

}  // namespace

void tensor_reader::read_floats(const TensorProto& t, float* out, std::size_t count) const {
  const elem_type type = float_type_of(t);
  const std::size_t size = elem_size(type);
  std::size_t done = 0;  // elements converted so far
  read(t, [&](const std::uint8_t* bytes, std::size_t n) {
    if (n % size != 0 || n / size > count - done) {
      throw model_error(kind::invalid, tensor_label(t) + " holds more than the " +
                                           std::to_string(count) + " elements expected");
    }
    to_float(bytes, type, n / size, out + done);
    done += n / size;
  });
  if (done != count) {
    throw model_error(kind::invalid, tensor_label(t) + " holds " + std::to_string(done) +
                                         " elements, not the " + std::to_string(count) +
                                         " expected");
  }
}

void tensor_reader::read_floats_at(const TensorProto& t, std::size_t first, std::size_t count,
                                   float* out) const {
  const elem_type type = float_type_of(t);
  const std::size_t size = elem_size(type);
  check_dims(t, "");
  const std::uint64_t elements = tensor_element_count(t).value_or(0);
  if (first > elements || count > elements - first) {
    throw model_error(kind::invalid, tensor_label(t) + ": elements [" + std::to_string(first) +
                                         ", +" + std::to_string(count) + ") are past its " +
                                         std::to_string(elements) + " elements");
  }
  if (count == 0) return;
  const std::uint64_t at = std::uint64_t(first) * size, bytes = std::uint64_t(count) * size;
  if (!is_external(t) && t.has_raw_data()) {
    if (t.raw_data().size() != elements * size) {
      throw model_error(kind::invalid, tensor_label(t) + " holds " +
                                           std::to_string(t.raw_data().size()) +
                                           " bytes of data but dims " + dims_string(t) + " need " +
                                           std::to_string(elements * size) + ": fix the model");
    }
    to_float(reinterpret_cast<const std::uint8_t*>(t.raw_data().data()) + at, type, count, out);
    return;
  }
  if (!is_external(t)) {  // typed fields: the whole payload, then the range
    const std::vector<std::uint8_t> all = read_tensor_bytes(m_, t);
    to_float(all.data() + at, type, count, out);
    return;
  }
  const external_span span = locate_external(m_, t);
  const int fd = files_->fd(t, span.file);
  std::vector<std::uint8_t> buffer(static_cast<std::size_t>(bytes));
  std::uint64_t got = 0;
  while (got < bytes) {
    const ssize_t n = ::pread(fd, buffer.data() + got, static_cast<std::size_t>(bytes - got),
                              static_cast<off_t>(span.offset + at + got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int e = n < 0 ? errno : 0;
      throw model_error(kind::io, tensor_label(t) + ": cannot read " + std::to_string(bytes) +
                                      " bytes at offset " + std::to_string(span.offset + at) +
                                      " of " + quoted(span.file) + " (" +
                                      (e ? errno_text(e) : std::string("end of file")) +
                                      "): the data file changed since the model was loaded");
    }
    got += static_cast<std::uint64_t>(n);
  }
  to_float(buffer.data(), type, count, out);
}

namespace {

// Payload size of a tensor as it would be saved (0 when it has none, e.g. strings).
std::uint64_t payload_size(const TensorProto& t) {
  if (is_external(t)) {
    const detail::external_ref ref = detail::parse_external_ref(t);
    if (ref.length) return *ref.length;
    return tensor_payload_bytes(t).value_or(0);
  }
  if (t.has_raw_data()) return t.raw_data().size();
  if (t.data_type() == TensorProto::STRING) return 0;
  return tensor_payload_bytes(t).value_or(0);
}

bool has_typed_data(const TensorProto& t) {
  return t.float_data_size() || t.int32_data_size() || t.int64_data_size() ||
         t.double_data_size() || t.uint64_data_size();
}

void clear_typed_data(TensorProto* t) {
  t->clear_float_data();
  t->clear_int32_data();
  t->clear_int64_data();
  t->clear_double_data();
  t->clear_uint64_data();
}

// Offsets in the data file: tensors of 1 MiB or more start on 64 KiB (what ONNX's own writer
// uses, so that ONNX Runtime can memory-map them on every OS), others on 64 bytes.
std::uint64_t align_offset(std::uint64_t offset, std::uint64_t size) {
  const std::uint64_t a = size >= (std::uint64_t{1} << 20) ? 65536 : 64;
  return (offset + a - 1) / a * a;
}

// Fields of `msg` numbered above `number`, moved into `tail` (so that msg, then a field
// `number`, then tail serialize in field order like protobuf itself does).
void move_fields_above(pb::Message* msg, int number, pb::Message* tail) {
  const pb::Reflection* r = msg->GetReflection();
  std::vector<const pb::FieldDescriptor*> fields, above;
  r->ListFields(*msg, &fields);
  for (const auto* f : fields) {
    if (f->number() > number) above.push_back(f);
  }
  r->SwapFields(msg, tail, above);
}

std::uint64_t length_delimited_size(int field_number, std::uint64_t size) {
  return pb::io::CodedOutputStream::VarintSize32(static_cast<std::uint32_t>(field_number) << 3) +
         pb::io::CodedOutputStream::VarintSize64(size) + size;
}

void write_length_delimited_header(pb::io::CodedOutputStream& out, int field_number,
                                   std::uint64_t size) {
  out.WriteTag(static_cast<std::uint32_t>(field_number) << 3 |
               pb::internal::WireFormatLite::WIRETYPE_LENGTH_DELIMITED);
  out.WriteVarint64(size);
}

// Throws unless `path` exists and is not a folder.
void check_model_path(const std::filesystem::path& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status)) {
    throw model_error(kind::io, quoted(path) + ": no such file: check the input path");
  }
  if (std::filesystem::is_directory(status)) {
    throw model_error(kind::io, quoted(path) + " is a directory: pass the .onnx model file");
  }
}

// Bytes of the model file open as `fd`: not empty, and within protobuf's 2 GiB.
std::size_t model_file_size(const std::filesystem::path& path, int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    throw model_error(kind::io, "cannot read " + quoted(path));
  }
  if (st.st_size == 0) {
    throw model_error(kind::invalid, quoted(path) + " is empty: not an ONNX model; re-export it");
  }
  if (static_cast<std::uint64_t>(st.st_size) > protobuf_max_bytes) {
    throw model_error(kind::invalid,
                      quoted(path) + " is " + std::to_string(st.st_size) +
                          " bytes, over protobuf's 2 GiB limit for one message: not a valid "
                          "ONNX file; large models keep their weights in external data");
  }
  return static_cast<std::size_t>(st.st_size);
}

// Parses the `size` bytes of `fd` into `proto`, from a read-only mapping: the payload bytes are
// copied once, from the page cache into the message (a FileInputStream is several times slower
// on large models). Then checks that it has a graph and, from IR 3, an opset_import.
void parse_model_file(const std::filesystem::path& path, int fd, std::size_t size,
                      ::onnx::ModelProto& proto) {
  void* mapped = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (mapped == MAP_FAILED) {
    const int e = errno;
    throw model_error(kind::io,
                      "cannot read " + quoted(path) + " (" + errno_text(e) + "): check the file");
  }
  ::madvise(mapped, size, MADV_SEQUENTIAL);
  pb::io::CodedInputStream in(static_cast<const std::uint8_t*>(mapped), static_cast<int>(size));
  in.SetTotalBytesLimit(std::numeric_limits<int>::max());  // models up to 2 GiB
  const bool ok = proto.ParseFromCodedStream(&in) && in.ConsumedEntireMessage();
  ::munmap(mapped, size);
  if (!ok) {
    throw model_error(kind::invalid, quoted(path) +
                                         " is not an ONNX model (protobuf parse failed: "
                                         "truncated, corrupt or another format): check that "
                                         "it is a complete .onnx file");
  }
  if (!proto.has_graph()) {
    throw model_error(kind::invalid, quoted(path) +
                                         " is not an ONNX model (it has no graph): check that it "
                                         "is a complete .onnx file");
  }
  if (proto.ir_version() >= 3 && proto.opset_import_size() == 0) {
    throw model_error(kind::invalid, quoted(path) +
                                         " has no opset_import: the file is truncated or not an "
                                         "ONNX model; re-export it");
  }
}

// load_model's check of each tensor's payload: inline sizes consistent with the dims; external
// data files present, inside the model's folder, and holding every range.
class payload_checker {
 public:
  payload_checker(const model& m, const std::filesystem::path& path) : m_(m), path_(path) {
    // Where external data may resolve to: the model's folder, or the folder of the model file
    // with its own links resolved (a Hugging Face cache links snapshots/<rev>/model.onnx and its
    // data to blobs/<hash> files side by side).
    std::error_code ec;
    real_base_ = std::filesystem::weakly_canonical(m.base_dir, ec);
    real_model_dir_ = std::filesystem::weakly_canonical(path, model_dir_error_).parent_path();
  }

  void operator()(const TensorProto& t, bool) {
    check_dims(t, quoted(path_) + ": ");
    const auto expected = tensor_payload_bytes(t);
    if (!is_external(t)) {
      if (t.has_raw_data() && expected && t.raw_data().size() != *expected) {
        throw model_error(kind::invalid, quoted(path_) + ": " + tensor_label(t) + " holds " +
                                             std::to_string(t.raw_data().size()) +
                                             " bytes but dims " + dims_string(t) + " need " +
                                             std::to_string(*expected) + ": fix the model");
      }
      return;
    }
    detail::external_ref ref;
    try {
      ref = detail::parse_external_ref(t);
    } catch (const model_error& e) {
      throw model_error(e.what_kind(), quoted(path_) + ": " + e.what());
    }
    const std::filesystem::path file = m_.base_dir / ref.location;
    const std::uint64_t file_size = data_file_size(t, file);
    const std::uint64_t length = ref.length ? *ref.length : expected.value_or(0);
    if (ref.length && expected && *ref.length != *expected) {
      throw model_error(kind::invalid,
                        quoted(path_) + ": " + tensor_label(t) + " has external data length " +
                            std::to_string(*ref.length) + " but dims " + dims_string(t) + " need " +
                            std::to_string(*expected) + " bytes: fix the model");
    }
    if (ref.offset > file_size || length > file_size - ref.offset) {
      throw model_error(kind::invalid,
                        quoted(path_) + ": " + tensor_label(t) + " is at offset " +
                            std::to_string(ref.offset) + " length " + std::to_string(length) +
                            " of " + quoted(file) + ", which has only " +
                            std::to_string(file_size) +
                            " bytes: the data file is truncated or belongs to another model");
    }
  }

 private:
  static bool inside(const std::filesystem::path& p, const std::filesystem::path& dir) {
    if (dir.empty()) return false;
    const auto rel = p.lexically_relative(dir);
    return !rel.empty() && *rel.begin() != "..";
  }

  // The size of data file `file` of tensor `t`, checked once per file: a regular file whose
  // real path (symbolic links resolved) stays inside the model's folder, as the location itself
  // must (parse_external_ref).
  std::uint64_t data_file_size(const TensorProto& t, const std::filesystem::path& file) {
    const auto it = file_sizes_.find(file.string());
    if (it != file_sizes_.end()) return it->second;
    std::error_code fec;
    const auto fst = std::filesystem::status(file, fec);
    if (!std::filesystem::is_regular_file(fst)) {
      throw model_error(kind::io, quoted(path_) + ": " + tensor_label(t) +
                                      " is stored in external data file " + quoted(file) +
                                      (std::filesystem::exists(fst) ? ", which is not a file"
                                                                    : ", which is missing") +
                                      ": keep the data file next to the model");
    }
    const std::filesystem::path real = std::filesystem::weakly_canonical(file, fec);
    if (fec) {
      throw model_error(kind::io, quoted(path_) + ": cannot resolve external data file " +
                                      quoted(file) + " (" + fec.message() + ")");
    }
    if (!inside(real, real_base_) && !(model_dir_error_ ? false : inside(real, real_model_dir_))) {
      throw model_error(kind::invalid,
                        quoted(path_) + ": " + tensor_label(t) + " is stored in " + quoted(file) +
                            ", which resolves (through a symbolic link) to " + quoted(real) +
                            ", outside the model's directory " + quoted(real_base_) +
                            ": copy the data file next to the model instead of linking it");
    }
    const auto size = std::filesystem::file_size(file, fec);
    if (fec) {
      throw model_error(kind::io, quoted(path_) + ": cannot read external data file " +
                                      quoted(file) + " (" + fec.message() + ")");
    }
    file_sizes_.emplace(file.string(), size);
    return size;
  }

  const model& m_;
  const std::filesystem::path& path_;
  std::map<std::string, std::uint64_t> file_sizes_;
  std::filesystem::path real_base_, real_model_dir_;
  std::error_code model_dir_error_;  // real_model_dir_ could not be resolved
};

}  // namespace

// ---- Load ---------------------------------------------------------------------------------------

model load_model(const std::filesystem::path& path) {
  check_model_path(path);
  const int raw_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (raw_fd < 0) {
    const int e = errno;
    throw model_error(kind::io, "cannot open " + quoted(path) + " (" + errno_text(e) +
                                    "): check the file's permissions");
  }
  const fd_guard fd(raw_fd);
  const std::size_t size = model_file_size(path, fd.get());
  model m;
  m.path = path;
  m.base_dir = path.parent_path();
  if (m.base_dir.empty()) m.base_dir = ".";
  parse_model_file(path, fd.get(), size, m.proto);
  // External data: every file present, every range inside its file; inline sizes consistent.
  payload_checker check(m, path);
  visit_tensors(m.proto, check);
  return m;
}

// ---- Save ---------------------------------------------------------------------------------------

bool stores_external_data(const save_options& options, std::uint64_t payload_bytes,
                          std::uint64_t inline_bytes) {
  switch (options.mode) {
    case external_data::always: return true;
    case external_data::never:
      if (inline_bytes > protobuf_max_bytes) {
        throw model_error(kind::unsupported,
                          "the model would be " + std::to_string(inline_bytes) +
                              " bytes with every tensor inline, over protobuf's 2 GiB limit: "
                              "save it with external data (mode automatic or always)");
      }
      return false;
    case external_data::automatic:
      return payload_bytes > automatic_external_bytes || inline_bytes > protobuf_max_bytes;
  }
  return false;
}

namespace {

namespace fs = std::filesystem;

// Where save_model writes: the output's folder, and its data file's name (relative, as the
// model stores it) and path.
struct output_paths {
  fs::path dir;
  std::string data_name;
  fs::path data_path;
};

// Checks that `path` names a file in an existing folder and that the data file's name is a
// relative file name there, other than the output itself.
output_paths check_output_paths(const fs::path& path, const save_options& options) {
  if (path.empty() || !path.has_filename()) {
    throw model_error(kind::io, "output path " + quoted(path) + " names no file: pass a file path");
  }
  output_paths o;
  o.dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  std::error_code ec;
  if (!fs::is_directory(o.dir, ec)) {
    throw model_error(kind::io, "cannot write " + quoted(path) + ": directory " + quoted(o.dir) +
                                    " does not exist; create it first");
  }
  if (fs::is_directory(path, ec)) {
    throw model_error(kind::io, "output " + quoted(path) + " is a directory: pass a file path");
  }
  o.data_name = options.data_file.empty() ? path.filename().string() + ".data" : options.data_file;
  const fs::path d(o.data_name);
  bool bad = d.is_absolute() || d.has_root_name() || d.has_root_directory() || !d.has_filename();
  for (const auto& part : d) bad = bad || part == "..";
  if (bad) {
    throw model_error(kind::unsupported, "data file '" + o.data_name +
                                             "' must be a relative file name inside the "
                                             "output's directory (ONNX allows no other)");
  }
  o.data_path = o.dir / o.data_name;
  if (same_file(o.data_path, path)) {
    throw model_error(kind::unsupported, "data file '" + o.data_name + "' is the output model " +
                                             quoted(path) + " itself: choose another name");
  }
  return o;
}

// The input's files (the model and its external data files), which are never overwritten:
// throws when `path` is one of them.
std::vector<fs::path> input_paths(const model& m, const fs::path& path) {
  std::vector<fs::path> inputs;
  if (!m.path.empty()) inputs.push_back(m.path);
  auto collect = [&](const TensorProto& t, bool) {
    if (!is_external(t)) return;
    const fs::path file = external_file(m, detail::parse_external_ref(t));
    if (std::find(inputs.begin(), inputs.end(), file) == inputs.end()) inputs.push_back(file);
  };
  visit_tensors(m.proto, collect);
  for (const fs::path& in : inputs) {
    if (same_file(path, in)) {
      throw model_error(kind::io, "output " + quoted(path) + " is the input model" +
                                      (in == m.path ? "" : " data file " + quoted(in)) +
                                      ": choose another output path");
    }
  }
  return inputs;
}

// The output's external data file, made (as a temporary file) when the first payload goes there.
struct data_file_writer {
  const output_paths& paths;
  const std::vector<fs::path>& inputs;
  std::unique_ptr<temp_file> file;
  std::uint64_t end = 0;  // bytes written so far

  // Appends `src`'s payload (payload_size: `size`) at the next aligned offset, zero-padded;
  // returns the offset and sets `length` to the bytes written.
  std::uint64_t append(const model& m, input_files& input, const TensorProto& src,
                       std::uint64_t size, std::uint64_t& length) {
    static const char zeros[65536] = {};
    if (!file) {
      for (const fs::path& in : inputs) {
        if (same_file(paths.data_path, in)) {
          throw model_error(kind::io, "output data file " + quoted(paths.data_path) +
                                          " is the input model's file " + quoted(in) +
                                          ": choose another data file name");
        }
      }
      file = std::make_unique<temp_file>(paths.data_path);
    }
    const std::uint64_t offset = align_offset(end, size);
    for (std::uint64_t pad = offset - end; pad > 0;) {
      const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(pad, sizeof zeros));
      write_all(*file, zeros, n);
      pad -= n;
    }
    length = size;
    if (is_external(src)) {
      input.copy_range(src, length, *file);
    } else if (src.has_raw_data()) {
      write_all(*file, src.raw_data().data(), src.raw_data().size());
    } else {
      const std::vector<std::uint8_t> bytes = read_tensor_bytes(m, src);
      write_all(*file, bytes.data(), bytes.size());
      length = bytes.size();
    }
    end = offset + length;
    return offset;
  }
};

// `dst`'s payload: [offset, offset + length) of the data file `data_name`.
void set_external_location(TensorProto& dst, const std::string& data_name, std::uint64_t offset,
                           std::uint64_t length) {
  clear_typed_data(&dst);
  dst.clear_external_data();
  dst.set_data_location(TensorProto::EXTERNAL);
  auto add = [&](const char* key, const std::string& value) {
    auto* e = dst.add_external_data();
    e->set_key(key);
    e->set_value(value);
  };
  add("location", data_name);
  add("offset", std::to_string(offset));
  add("length", std::to_string(length));
}

// Puts each payload of `slots` where it goes: the data file (initializers of at least
// external_min_bytes, when `external`), raw_data streamed at write time (main graph
// initializers: returned, by initializer index, null for the others), or raw_data set in the
// skeleton (tensors outside the main graph's initializers). Typed fields stay as copied.
std::vector<const TensorProto*> place_payloads(const model& m,
                                               const std::vector<tensor_slot>& slots, bool external,
                                               const save_options& options, input_files& input,
                                               data_file_writer& data) {
  // Main graph initializers by input address: their inline payloads are streamed at write time.
  std::unordered_map<const TensorProto*, int> main_initializer;
  for (int i = 0; i < m.proto.graph().initializer_size(); ++i) {
    main_initializer.emplace(&m.proto.graph().initializer(i), i);
  }
  std::vector<const TensorProto*> streamed(main_initializer.size(), nullptr);  // [initializer]
  for (const tensor_slot& s : slots) {
    const TensorProto& src = *s.src;
    TensorProto& dst = *s.dst;
    const bool has_payload = is_external(src) || src.has_raw_data() ||
                             (has_typed_data(src) && tensor_payload_bytes(src).has_value());
    const std::uint64_t size = payload_size(src);
    if (external && s.is_initializer && has_payload && size >= options.external_min_bytes) {
      std::uint64_t length = 0;
      const std::uint64_t offset = data.append(m, input, src, size, length);
      set_external_location(dst, data.paths.data_name, offset, length);
      continue;
    }
    if (!is_external(src) && !src.has_raw_data()) continue;  // typed fields or none: copied
    if (is_external(src)) {
      dst.clear_external_data();
      dst.clear_data_location();
    }
    const auto it = main_initializer.find(&src);
    if (it != main_initializer.end()) {
      streamed[static_cast<std::size_t>(it->second)] = &src;
    } else if (is_external(src)) {
      const std::vector<std::uint8_t> bytes = read_tensor_bytes(m, src);
      dst.set_raw_data(bytes.data(), bytes.size());
    } else {
      dst.set_raw_data(src.raw_data());
    }
  }
  return streamed;
}

// The output model cut for streaming in protobuf's field order: the model's fields before
// `graph` (7), the graph (its fields before `initializer` (5), the initializers with raw_data
// (9) streamed between their other fields, the graph's later fields), then the model's fields
// after `graph`. Sizes are computed up front: each length prefix precedes its bytes.
class streamed_model {
 public:
  // Takes `out`'s fields; `streamed` as place_payloads returns it.
  streamed_model(::onnx::ModelProto& out, const std::vector<const TensorProto*>& streamed)
      : streamed_(streamed) {
    head_.Swap(&out);
    move_fields_above(&head_, ::onnx::ModelProto::kGraphFieldNumber, &model_tail_);
    has_graph_ = head_.has_graph();
    graph_.Swap(head_.mutable_graph());
    head_.clear_graph();
    inits_.Swap(graph_.mutable_initializer());
    move_fields_above(&graph_, ::onnx::GraphProto::kInitializerFieldNumber, &graph_tail_);

    tensor_sizes_.resize(static_cast<std::size_t>(inits_.size()));
    graph_size_ = graph_.ByteSizeLong() + graph_tail_.ByteSizeLong();
    for (int i = 0; i < inits_.size(); ++i) {
      const TensorProto* src = streamed_[static_cast<std::size_t>(i)];
      std::uint64_t size = inits_.Get(i).ByteSizeLong();
      if (src) size += length_delimited_size(TensorProto::kRawDataFieldNumber, payload_size(*src));
      tensor_sizes_[static_cast<std::size_t>(i)] = size;
      graph_size_ += length_delimited_size(::onnx::GraphProto::kInitializerFieldNumber, size);
    }
  }

  // Bytes of the model file.
  std::uint64_t size() const {
    return head_.ByteSizeLong() + model_tail_.ByteSizeLong() +
           (has_graph_ ? length_delimited_size(::onnx::ModelProto::kGraphFieldNumber, graph_size_)
                       : 0);
  }

  // Writes the model file to `file`, the streamed payloads read from `input`.
  void write(temp_file& file, input_files& input) {
    pb::io::FileOutputStream stream(file.fd());
    {
      pb::io::CodedOutputStream cos(&stream);
      head_.SerializePartialToCodedStream(&cos);
      if (has_graph_) {
        write_length_delimited_header(cos, ::onnx::ModelProto::kGraphFieldNumber, graph_size_);
        graph_.SerializePartialToCodedStream(&cos);
        for (int i = 0; i < inits_.size(); ++i) write_initializer(cos, i, input);
        graph_tail_.SerializePartialToCodedStream(&cos);
      }
      model_tail_.SerializePartialToCodedStream(&cos);
      cos.Trim();
      if (cos.HadError()) file.fail(stream.GetErrno() ? stream.GetErrno() : EIO);
    }
    if (!stream.Flush()) file.fail(stream.GetErrno() ? stream.GetErrno() : EIO);
  }

 private:
  // Initializer `i`: its fields before raw_data, its streamed raw_data if any, the rest.
  void write_initializer(pb::io::CodedOutputStream& cos, int i, input_files& input) {
    TensorProto& head = *inits_.Mutable(i);
    TensorProto tail;
    move_fields_above(&head, TensorProto::kRawDataFieldNumber, &tail);
    write_length_delimited_header(cos, ::onnx::GraphProto::kInitializerFieldNumber,
                                  tensor_sizes_[static_cast<std::size_t>(i)]);
    head.SerializePartialToCodedStream(&cos);
    if (const TensorProto* src = streamed_[static_cast<std::size_t>(i)]) {
      const std::uint64_t size = payload_size(*src);
      write_length_delimited_header(cos, TensorProto::kRawDataFieldNumber, size);
      if (is_external(*src)) {
        std::uint64_t length = size;
        input.read_range(*src, length, [&](const char* p, std::size_t n) {
          cos.WriteRaw(p, static_cast<int>(n));
        });
      } else {
        cos.WriteRaw(src->raw_data().data(), static_cast<int>(src->raw_data().size()));
      }
    }
    tail.SerializePartialToCodedStream(&cos);
  }

  const std::vector<const TensorProto*>& streamed_;
  ::onnx::ModelProto head_, model_tail_;
  bool has_graph_ = false;
  ::onnx::GraphProto graph_, graph_tail_;
  pb::RepeatedPtrField<TensorProto> inits_;
  std::vector<std::uint64_t> tensor_sizes_;
  std::uint64_t graph_size_ = 0;
};

}  // namespace

void save_model(const model& m, const std::filesystem::path& path, const save_options& options) {
  const output_paths paths = check_output_paths(path, options);
  const std::vector<fs::path> inputs = input_paths(m, path);

  // The output's graph, without payloads; the payloads are streamed from `m` while writing.
  std::vector<tensor_slot> slots;
  ::onnx::ModelProto out;
  copy_skeleton(m.proto, &out, slots);

  std::uint64_t payload_bytes = 0, inline_bytes = out.ByteSizeLong();
  for (const tensor_slot& s : slots) {
    const std::uint64_t size = payload_size(*s.src);
    payload_bytes += size;
    inline_bytes += size + 16;  // raw_data tag and length, longer enclosing length prefixes
  }
  const bool external = stores_external_data(options, payload_bytes, inline_bytes);

  input_files input(m);
  data_file_writer data{paths, inputs, nullptr};
  const std::vector<const TensorProto*> streamed =
      place_payloads(m, slots, external, options, input, data);

  streamed_model model_file(out, streamed);
  const std::uint64_t model_size = model_file.size();
  if (model_size > protobuf_max_bytes) {
    throw model_error(kind::unsupported,
                      "cannot write " + quoted(path) + ": the model would be " +
                          std::to_string(model_size) +
                          " bytes, over protobuf's 2 GiB limit for one message: save with "
                          "external data (mode always, smaller external_min_bytes)");
  }

  temp_file file(path);
  model_file.write(file, input);
  file.close();
  if (data.file) data.file->close();
  // Both renames in one section: a signal handler sees both files committed or neither, so an
  // interrupted run never pairs a new data file with an old model (temp_files.hpp).
  const temp_file_section section;
  if (data.file) data.file->commit();
  try {
    file.commit();
  } catch (...) {
    std::error_code ec;
    if (data.file) fs::remove(paths.data_path, ec);  // no half-written pair
    throw;
  }
}

}  // namespace onnx
}  // namespace int4q

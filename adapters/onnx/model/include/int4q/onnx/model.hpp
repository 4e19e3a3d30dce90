// Loading and saving ONNX models, with external data, and reading/writing tensor payloads.
// The adapter's API is a value transform on onnx::ModelProto: load -> transform -> save.
#ifndef INT4Q_ONNX_MODEL_HPP
#define INT4Q_ONNX_MODEL_HPP

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>
#include <xtensor/xtensor.hpp>

#include <int4q/error.hpp>

namespace int4q {
namespace onnx {

/// A problem with a model file or its content; the message names the file, node or tensor and
/// says what to do. `exit_code()` is the CLI's documented exit code for it.
class model_error : public int4q::error {
 public:
  enum class kind {
    io = 3,           ///< missing, unreadable or unwritable file, missing external data
    invalid = 4,      ///< not an ONNX model, truncated, inconsistent tensors
    unsupported = 5,  ///< a graph form or option int4q cannot handle
  };
  model_error(kind k, const std::string& message) : int4q::error(message), kind_(k) {}
  kind what_kind() const noexcept { return kind_; }
  int exit_code() const noexcept { return static_cast<int>(kind_); }

 private:
  kind kind_;
};

/// A loaded model: the protobuf plus where its external data lives. Tensors stored externally
/// stay on disk (external_data entries) until read: memory holds the graph, not the weights.
struct model {
  ::onnx::ModelProto proto;
  std::filesystem::path path;      ///< the file it was loaded from ("" if built in memory)
  std::filesystem::path base_dir;  ///< directory external data locations are relative to
  /// Tensors that quantize_model spilled to a scratch file (quantize_options::spill_file) are
  /// external with location `spill_location` (the scratch file's name); they are read from
  /// `spill_path` instead of base_dir. Empty: no spill.
  std::string spill_location;
  std::filesystem::path spill_path;
};

/// Parses `path`. Checks that every external data file exists and every (offset, length) lies
/// inside it; reads no external data. Throws model_error (io / invalid).
model load_model(const std::filesystem::path& path);

/// Element type of an ONNX TensorProto data_type, as int4q names them.
enum class elem_type { float32, float16, bfloat16, float64, other };
elem_type elem_type_of(int onnx_data_type) noexcept;
const char* to_string(elem_type t) noexcept;
/// Bytes per element of the float types (0 for `other`).
std::size_t elem_size(elem_type t) noexcept;

/// Number of elements of `t` (product of its dims); nullopt for a negative dim or overflow.
std::optional<std::uint64_t> tensor_element_count(const ::onnx::TensorProto& t) noexcept;
/// Bytes of `t`'s payload from its dims and data type (4-bit types: two elements per byte,
/// rounded up); nullopt for STRING, unknown types or bad dims.
std::optional<std::uint64_t> tensor_payload_bytes(const ::onnx::TensorProto& t) noexcept;
/// Whether `t` is stored in an external data file (data_location EXTERNAL).
bool is_external(const ::onnx::TensorProto& t) noexcept;

/// Raw little-endian bytes of a tensor's payload, from raw_data, the typed repeated fields
/// (float_data, int32_data for fp16/bf16, double_data) or external data.
std::vector<std::uint8_t> read_tensor_bytes(const model& m, const ::onnx::TensorProto& t);

/// Receives consecutive pieces of a tensor's payload, in order: `size` bytes at `bytes`.
using payload_sink = std::function<void(const std::uint8_t* bytes, std::size_t size)>;

/// Reads tensor payloads piece by piece, never holding a whole payload a second time: external
/// data by positioned reads (pread) of at most `chunk_bytes` into a buffer of that size, from
/// data files opened once each and kept open while the reader lives; raw_data as one piece
/// straight from the proto; the typed fields (float_data, int32_data, ...) through
/// read_tensor_bytes (small tensors in practice). Every piece but the last holds a multiple of
/// 8 bytes, so no element of any type straddles two pieces. Thread-safe: threads may read through
/// one reader at once (each read has its own buffer; the file table has a mutex).
class tensor_reader {
 public:
  /// 4 MiB: large enough that a read costs far more than the call, small enough to be noise
  /// next to the converted floats it fills.
  static constexpr std::size_t default_chunk_bytes = std::size_t{4} << 20;
  explicit tensor_reader(const model& m, std::size_t chunk_bytes = default_chunk_bytes);
  ~tensor_reader();
  tensor_reader(const tensor_reader&) = delete;
  tensor_reader& operator=(const tensor_reader&) = delete;

  /// Calls `sink` for the pieces of t's payload, checked as read_tensor_bytes checks it (dims,
  /// sizes, external range inside its file). Throws model_error naming the tensor and file.
  void read(const ::onnx::TensorProto& t, const payload_sink& sink) const;
  /// A float tensor (fp32, fp16, bf16 or fp64) converted into `out` (`count` elements, the
  /// tensor's element count), piece by piece. Throws model_error.
  void read_floats(const ::onnx::TensorProto& t, float* out, std::size_t count) const;
  /// Elements [first, first + count) of a float tensor (fp32, fp16, bf16 or fp64; row-major)
  /// converted into `out`, reading only their bytes (external data: positioned reads of that
  /// range), as read_floats converts them. Throws model_error (type, range past the tensor).
  void read_floats_at(const ::onnx::TensorProto& t, std::size_t first, std::size_t count,
                      float* out) const;

 private:
  struct files;
  const model& m_;
  std::size_t chunk_;
  std::unique_ptr<files> files_;
};

/// A 2-D float tensor (fp32, fp16, bf16 or fp64 on disk) as float [dims0, dims1].
xt::xtensor<float, 2> read_matrix(const model& m, const ::onnx::TensorProto& t);
/// A 1-D float tensor (fp32, fp16, bf16 or fp64) as float.
xt::xtensor<float, 1> read_vector(const model& m, const ::onnx::TensorProto& t);

/// A TensorProto of `type` with `dims` holding `bytes` in raw_data.
::onnx::TensorProto make_tensor(const std::string& name, int onnx_data_type,
                                const std::vector<std::int64_t>& dims, const void* bytes,
                                std::size_t size);
/// A TensorProto of the float type `type` (fp32, fp16, bf16) from float values.
::onnx::TensorProto make_float_tensor(const std::string& name, elem_type type,
                                      const std::vector<std::int64_t>& dims, const float* values,
                                      std::size_t count);

/// When save_model writes tensors to an external data file.
enum class external_data { automatic, always, never };

struct save_options {
  /// automatic: external when the serialized model would pass 2 GiB (protobuf's limit),
  /// always: every tensor of at least `external_min_bytes`, never: inline (fails over 2 GiB).
  external_data mode = external_data::automatic;
  std::size_t external_min_bytes = 1024;
  /// File name of the data file, next to the output; default: "<output file name>.data".
  std::string data_file;
};

/// Writes `m` to `path` atomically (temporary files, then rename) so that a failure never
/// leaves a partial output. Refuses to overwrite the model's own input file or its external
/// data. Tensors still stored externally in the input are copied into the output's data file.
/// Never serializes a single protobuf message over 2 GiB. Throws model_error.
///
/// Only initializers (of the main graph and of subgraphs) go to the data file, as ONNX's own
/// writer does by default; attribute tensors (Constant nodes) are written inline, read from the
/// input's data file if they were external there. Data file offsets are aligned to 64 KiB for
/// tensors of 1 MiB or more (ONNX's alignment, lets ONNX Runtime memory-map them) and to 64
/// bytes otherwise. Memory: `m` is not modified and its payloads are not copied; the graph
/// without payloads is copied, then main-graph initializer payloads are streamed into the file
/// from `m` (inline) or into the data file (external) one tensor at a time, and tensors external
/// in the input are copied by range (copy_file_range, else 16 MiB chunks). Inline output is
/// byte-identical to protobuf's own serialization of the same model. No fsync: the rename makes
/// the output appear whole or not at all if the process fails, not after a power loss.
void save_model(const model& m, const std::filesystem::path& path,
                const save_options& options = {});

/// The most bytes protobuf parses or serializes as one message (INT_MAX, "2 GiB").
inline constexpr std::uint64_t protobuf_max_bytes = 2147483647u;
/// `automatic` stores initializers externally once their payloads pass 1.8 GiB: the 0.2 GiB
/// left below protobuf's limit is headroom for the graph itself (nodes, names, attribute
/// tensors) and for tools that re-serialize the model with additions (checkers, optimizers).
inline constexpr std::uint64_t automatic_external_bytes = 1932735283u;  // 1.8 * 2^30

/// save_model's decision: true when initializers of at least `options.external_min_bytes` go
/// to the data file. `payload_bytes`: all tensor payload bytes of the model; `inline_bytes`: the
/// model's size serialized with every tensor inline. automatic: external when payload_bytes >
/// automatic_external_bytes or inline_bytes > protobuf_max_bytes. Throws model_error
/// (unsupported) for `never` when inline_bytes > protobuf_max_bytes.
bool stores_external_data(const save_options& options, std::uint64_t payload_bytes,
                          std::uint64_t inline_bytes);

namespace detail {
/// A tensor's external_data entries, parsed and checked (relative location, integer fields).
struct external_ref {
  std::string location;  ///< relative to the model's base_dir
  std::uint64_t offset = 0;
  std::optional<std::uint64_t> length;  ///< absent: the tensor's payload size
};
/// Throws model_error (invalid) for a missing location, an absolute or escaping ('..') path or
/// a non-integer offset/length.
external_ref parse_external_ref(const ::onnx::TensorProto& t);
}  // namespace detail

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_MODEL_HPP

// Calibration and evaluation data for int4q's executor: samples of a model's inputs, read from
// NumPy files, ONNX test-data folders or raw token files, the inputs the data leaves out filled
// the way language-model exports expect, and random inputs (with a warning) when there is none.
//
//   int4q::onnx::calib_options o;
//   o.path = "inputs.npz";                       // .npy, .npz, a folder of .pb, or a token file
//   auto data = int4q::onnx::calib_data::open(m, o);
//   for (const auto& w : data.warnings()) log(w);
//   for (std::size_t s = 0; s < data.samples(); s += b)  // b <= data.max_batch()
//     executor.run(data.batch(s, std::min(b, data.samples() - s)));
//
// Formats (detected from the content; a folder is ONNX test data):
//   .npy    one array; feeds the input named like the file (input_ids.npy), else the model's only
//           input that the defaults below cannot fill. Versions 1.0/2.0/3.0, little endian,
//           C order; '<f2' '<f4' '<f8' '|i1' '<i2' '<i4' '<i8' '|u1' '<u2' '<u4' '<u8' '|b1'.
//   .npz    a ZIP of .npy files named <input name>.npy (numpy.savez: stored, savez_compressed:
//           deflate; ZIP64 read). Deflated arrays are inflated into memory once; stored arrays
//           and .npy files are read by rows on demand.
//   folder  ONNX test-data layout: input_0.pb, input_1.pb, ... (TensorProto; its name picks the
//           input, else its index among the model's inputs), one sample; or test_data_set_0/,
//           test_data_set_1/, ... one sample each. Read on demand. A sample holds the tensors as
//           they are: a [16, 128] input_ids is one sample of 16 rows, run as one batch.
//   tokens  any other file: raw token ids (token_dtype: u8 by default, one byte per token), cut
//           into `samples` windows of `seq_len` tokens evenly spaced over the file (at most
//           tokens - seq_len + 1: the distinct windows); feeds the
//           model's token input (input_ids, or its only integer input). Read by window.
// In .npy/.npz the first axis counts samples: a sample is `r` rows along axis 0, where r is the
// input's fixed first dimension when it has one (e.g. [1, 25, 96]), else 1; batch() concatenates
// samples along axis 0. The data's dtype must suit the input (float data for float inputs,
// integer data for integer inputs, bool for bool), and its rank and fixed dimensions must match.
//
// Defaults for inputs the data leaves out (language-model exports): attention_mask = ones
// [batch, past + sequence]; position_ids = 0..sequence-1 per row; token_type_ids = zeros;
// cache_position = 0..sequence-1; past key/value inputs (past_key_values.*, past_key*,
// past_value*, *cache*) = empty, their past-length dimension 0 (other dimensions from the
// graph, symbolic ones resolved from the given inputs); use_cache_branch = false;
// seqlens_k = sequence-1; total_sequence_length = sequence; (num_)logits_to_keep = 0.
//
// Errors are model_error: io (a file cannot be read), invalid (malformed data, or data that does
// not fit the model: the message names the file, the input and what to do), unsupported (a valid
// file in a form int4q does not read: Fortran order, big endian, a ZIP compression method other
// than stored/deflate). The library never prints: warnings() returns what the caller should show.
#ifndef INT4Q_ONNX_CALIB_DATA_HPP
#define INT4Q_ONNX_CALIB_DATA_HPP

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>

namespace int4q {
namespace onnx {

// ---- NumPy files -------------------------------------------------------------------------------

/// Element types of .npy arrays that int4q reads (NumPy's little-endian descr strings).
enum class npy_dtype { f2, f4, f8, i1, i2, i4, i8, u1, u2, u4, u8, b1 };

/// NumPy's descr string ("<f4", "|u1", ...).
const char* to_string(npy_dtype t) noexcept;
/// Bytes per element.
std::size_t npy_item_size(npy_dtype t) noexcept;

/// The header of a .npy file.
struct npy_header {
  npy_dtype dtype = npy_dtype::f4;
  std::vector<std::int64_t> shape;  ///< () for a scalar
  std::size_t data_offset = 0;      ///< bytes from the start of the file to the data
  std::uint64_t data_bytes() const noexcept;
};

/// Parses the header at the start of `bytes` (`size` bytes: the whole header, the data may
/// follow). `what` names the file in messages. Throws model_error (invalid: not .npy or a bad
/// header; unsupported: Fortran order, big endian, a dtype not listed above).
npy_header parse_npy_header(const std::uint8_t* bytes, std::size_t size, const std::string& what);

/// A whole .npy (bytes in memory) as a value: floats -> float32, integers -> int64 (u8 above
/// INT64_MAX refused), bool -> boolean.
value npy_to_value(const std::string& bytes, const std::string& what);
/// Reads a .npy file. Throws model_error (io, invalid, unsupported).
value read_npy(const std::filesystem::path& path);

/// .npy bytes (version 1.0, C order) of a value: '<f4', '<i8' or '|b1'.
std::string npy_bytes(const value& v);
/// Writes npy_bytes(v) to `path`. Throws model_error (io).
void write_npy(const std::filesystem::path& path, const value& v);

/// The arrays of a .npz file by name, ".npy" dropped from each entry name. Stored and deflated
/// entries, ZIP64; CRC-32 checked. Throws model_error (io, invalid, unsupported).
std::map<std::string, value> read_npz(const std::filesystem::path& path);

// ---- Token files
// ---------------------------------------------------------------------------------

/// Element type of a raw token file (little endian, no header).
enum class token_dtype { u8, u16, i32, i64 };
const char* to_string(token_dtype t) noexcept;
/// "u8", "u16", "i32", "i64" (also "uint8", "uint16", "int32", "int64"); throws config_error.
token_dtype parse_token_dtype(const std::string& name);

/// A raw token file read on demand: nothing is held but the path and its length.
class token_file {
 public:
  /// Throws model_error (io: unreadable; invalid: a length not a multiple of the token size).
  token_file(const std::filesystem::path& path, token_dtype dtype = token_dtype::u8);
  /// Tokens in the file.
  std::uint64_t size() const noexcept { return size_; }
  /// Tokens [first, first + count). Throws model_error (io) when they are not all there.
  std::vector<std::int64_t> read(std::uint64_t first, std::size_t count) const;
  /// Start of window `i` of `samples` windows of `length` tokens evenly spaced over the file:
  /// floor(i * (size - length) / (samples - 1)) (0 for one window). Needs size() >= length.
  std::uint64_t window_start(std::size_t i, std::size_t samples, std::size_t length) const noexcept;
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  std::filesystem::path path_;
  token_dtype dtype_;
  std::uint64_t size_ = 0;
};

// ---- Calibration data
// ----------------------------------------------------------------------------

/// The vocabulary size of a token input: rows of the initializer table of a Gather (axis 0)
/// whose indices are `input` (directly or through one Cast); 0 when none is found.
std::int64_t vocabulary_of(const model& m, const std::string& input);

/// How calib_data reads its file.
enum class data_format { automatic, npy, npz, onnx_pb, tokens, random };
const char* to_string(data_format f) noexcept;

struct calib_options {
  /// .npy, .npz, a folder of ONNX .pb files, or a raw token file; empty: random inputs.
  std::filesystem::path path;
  /// automatic: a folder is ONNX test data, a file starting with NumPy's magic is .npy, with a
  /// ZIP signature .npz, anything else a token file.
  data_format format = data_format::automatic;
  /// Tokens per window (token files), and every symbolic dimension after the first of random
  /// inputs.
  std::size_t seq_len = 128;
  /// Random inputs: this many samples (>= 1). Files: at most this many (the first ones of a
  /// .npy/.npz/.pb data, 0 = all; windows evenly spaced over a token file, >= 1, at most its
  /// distinct windows: tokens - seq_len + 1). See calib_data::available_samples().
  std::size_t samples = 64;
  token_dtype tokens = token_dtype::u8;
  /// Random inputs: the seed (the same seed gives the same inputs, whatever the batching).
  std::uint64_t seed = 0;
  /// Random inputs: the most bytes one sample's inputs may take (4 per float, 8 per integer or
  /// bool element of the shapes the generator gives), checked at open() before anything is made
  /// (config_error naming the input, its shape and its size); 0: no limit. The int4q command
  /// passes the machine's memory, so that a huge seq_len is refused instead of running out.
  std::uint64_t max_sample_bytes = 0;
};

/// Samples of a model's inputs (see the top of this file). Copies are cheap and share the data.
/// Holds the model's input descriptions, not a reference to the model.
class calib_data {
 public:
  /// Opens and checks the data against `m`'s graph inputs (names, dtypes, ranks, fixed
  /// dimensions). Throws model_error.
  static calib_data open(const model& m, const calib_options& options);

  /// Number of samples.
  std::size_t samples() const noexcept;
  /// The most samples this data gives (samples() is the smaller of this and the count asked
  /// for): a token file's distinct windows (tokens - seq_len + 1), the first axis of .npy/.npz
  /// arrays (in samples), the test-data sets of a .pb folder; no limit (UINT64_MAX) for random
  /// inputs. Callers that must get what was asked compare it with the request.
  std::uint64_t available_samples() const noexcept;
  /// The same in words, naming the file: "'t.u8' holds 4221 tokens: at most 4094 distinct
  /// windows of 128 tokens".
  const std::string& available_description() const noexcept;
  /// The most samples one batch() may concatenate: 1 when an input has a fixed first dimension
  /// or the samples differ in shape (ONNX test-data sets), else samples().
  std::size_t max_batch() const noexcept;
  /// Samples [first, first + count) concatenated along axis 0, every input of the model present
  /// (defaults filled), ready for executor::run. Throws shape_error for a range outside
  /// [0, samples()) or count > max_batch(), model_error for data that cannot be read.
  std::map<std::string, value> batch(std::size_t first, std::size_t count) const;

  /// What the caller should show the user (e.g. "random inputs: ...").
  const std::vector<std::string>& warnings() const noexcept;
  /// The format read.
  data_format format() const noexcept;
  /// One line: what the samples are ("12 samples from x.npz (input_ids, attention_mask)").
  const std::string& description() const noexcept;
  /// The model inputs the data gives; the others are filled by defaults.
  std::vector<std::string> given_inputs() const;

  struct impl;

 private:
  std::shared_ptr<const impl> impl_;
};

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_CALIB_DATA_HPP

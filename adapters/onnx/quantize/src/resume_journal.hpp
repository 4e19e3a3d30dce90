// Internal to quantize_model: the resume journal (quantize_options::resume). A data file of
// the finished weights' quantized codes (packed two per byte up to 4 bits), scales, zero points
// and AWQ scales, appended and synced weight by weight, and a JSON manifest next to it that
// says where each weight's arrays are and what its report said, replaced atomically (a
// temporary file renamed over it) after each weight's data is on disk. A run that dies leaves
// a manifest naming only complete weights; bytes after the last one are cut off on resume.
#ifndef INT4Q_ONNX_SRC_RESUME_JOURNAL_HPP
#define INT4Q_ONNX_SRC_RESUME_JOURNAL_HPP

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include <int4q/awq.hpp>
#include <int4q/onnx/quantize_model.hpp>

#include "writers.hpp"

namespace int4q {
namespace onnx {
namespace detail {

/// A finished weight read back from the journal.
struct journaled_weight {
  int4q::quantized<float> q;  ///< codes, scales and zero points (q.config: the caller's)
  /// The AWQ group's search as it was when this weight was quantized (scales empty: the search
  /// saw no rows); meaningful when `has_awq`.
  bool has_awq = false;
  int4q::awq_scales<float> awq;
};

/// The run's fingerprint as the journal records it: int4q's version, the options that change
/// the output (detail::options_json without threads), a hash of the graph without payloads
/// (nodes, initializer names, types and dims, inputs and outputs) and the caller's part.
nlohmann::json resume_fingerprint(const model& m, const quantize_options& options);

/// The fields of a tensor_report that calibration fills (method, rows, losses, AWQ alpha, ...), as
/// JSON, and back: the journal keeps them, and distributed runs send them to every rank.
nlohmann::json report_fields(const tensor_report& r);
void restore_report_fields(const nlohmann::json& j, tensor_report& r);

class resume_journal {
 public:
  /// Opens the journal of `options.resume`: when its manifest exists, checks its fingerprint
  /// against `fingerprint` (option_error(invalid, "resume.journal") listing the fields that
  /// differ) and its data file's length (model_error(invalid) naming the file when shorter than
  /// the manifest says), cutting off bytes after the last finished weight; else starts one.
  resume_journal(const std::filesystem::path& file, nlohmann::json fingerprint);
  ~resume_journal();
  resume_journal(const resume_journal&) = delete;
  resume_journal& operator=(const resume_journal&) = delete;

  /// Weights the journal held when opened.
  std::size_t finished() const noexcept { return finished_; }
  /// Reads back `job`'s weight when the journal has it, and the calibration fields of its
  /// report (method, rows, losses, AWQ alpha, ...) into `report`: false when it has not. Throws
  /// option_error(invalid, "resume.journal") when the entry is of another method, shape or grid.
  bool restore(const weight_job& job, journaled_weight& out, tensor_report& report) const;
  /// Records a finished weight: its arrays appended and synced, then the manifest replaced.
  /// `awq`: its AWQ group's search result (null: not in a group).
  void append(const weight_job& job, const tensor_report& report,
              const int4q::awq_scales<float>* awq);

 private:
  struct span {
    std::uint64_t offset = 0, bytes = 0;
  };
  span write(const void* data, std::size_t bytes);
  void read(span s, void* data, std::size_t bytes, const std::string& weight) const;
  void write_manifest() const;
  [[noreturn]] void fail(const std::string& what) const;

  std::filesystem::path file_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
  nlohmann::json manifest_;
  std::size_t finished_ = 0;
};

}  // namespace detail
}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_SRC_RESUME_JOURNAL_HPP

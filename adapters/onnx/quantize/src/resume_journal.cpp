// The resume journal of quantize_model (resume_journal.hpp).
#include "resume_journal.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <int4q/onnx/option_error.hpp>
#include <int4q/onnx/temp_files.hpp>
#include <int4q/version.hpp>

namespace int4q {
namespace onnx {

std::filesystem::path resume_manifest_path(const std::filesystem::path& journal) {
  std::filesystem::path p = journal;
  p += ".json";
  return p;
}

namespace detail {

namespace {

using json = nlohmann::json;

/// FNV-1a, 64 bits: a hash of the graph's structure (not a security measure: it tells an
/// edited model from the journaled one).
struct fnv1a {
  std::uint64_t h = 0xcbf29ce484222325ull;
  void add(const std::string& s) {
    for (const char c : s) {
      h ^= static_cast<unsigned char>(c);
      h *= 0x100000001b3ull;
    }
    add_separator();
  }
  void add_separator() {
    h ^= 0xff;
    h *= 0x100000001b3ull;
  }
};

std::string graph_hash(const ::onnx::GraphProto& g) {
  fnv1a f;
  for (const auto& node : g.node()) f.add(node.SerializeAsString());
  for (const auto& t : g.initializer()) {
    f.add(t.name());
    f.add(std::to_string(t.data_type()));
    for (const auto d : t.dims()) f.add(std::to_string(d));
  }
  for (const auto& v : g.input()) f.add(v.SerializeAsString());
  for (const auto& v : g.output()) f.add(v.SerializeAsString());
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(f.h));
  return text;
}

/// The grid of a weight, in words, to tell a journal entry of another grid.
std::string grid_text(const quant_config& c, std::size_t k) {
  return std::to_string(c.bits) + " bits, group " + std::to_string(c.effective_group_size(k)) +
         ", " + int4q::to_string(c.scheme) + ", " + int4q::to_string(c.rounding) + ", " +
         int4q::to_string(c.data_type);
}

json number(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }
double number_of(const json& j) {
  return j.is_number() ? j.get<double>() : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace

/// The fields of a tensor_report that calibration fills (the writers fill the rest again).
json report_fields(const tensor_report& r) {
  return {{"method", r.method},
          {"reason", r.reason},
          {"calibration_rows", r.calibration_rows},
          {"hessian_loss", number(r.hessian_loss)},
          {"rtn_hessian_loss", number(r.rtn_hessian_loss)},
          {"damp_retries", r.damp_retries},
          {"awq_alpha", number(r.awq_alpha)},
          {"awq_loss", number(r.awq_loss)},
          {"awq_rtn_loss", number(r.awq_rtn_loss)},
          {"awq_fold", r.awq_fold},
          {"clip_loss", number(r.clip_loss)},
          {"clip_rtn_loss", number(r.clip_rtn_loss)}};
}

namespace {

json span_json(std::uint64_t offset, std::uint64_t bytes) { return json::array({offset, bytes}); }

/// Codes of up to 4 bits two per byte (the first in the low nibble), else one per byte.
std::vector<std::uint8_t> packed_codes(const xt::xtensor<std::uint8_t, 2>& codes, bool pack) {
  const std::size_t n = codes.size();
  if (!pack) return std::vector<std::uint8_t>(codes.data(), codes.data() + n);
  std::vector<std::uint8_t> out((n + 1) / 2, 0);
  for (std::size_t i = 0; i < n; ++i)
    out[i / 2] |= static_cast<std::uint8_t>((codes.data()[i] & 0x0f) << (i % 2 ? 4 : 0));
  return out;
}

}  // namespace

/// The calibration fields of a report restored (the counterpart of report_fields).
void restore_report_fields(const json& j, tensor_report& r) {
  r.method = j.at("method").get<std::string>();
  r.reason = j.at("reason").get<std::string>();
  r.calibration_rows = j.at("calibration_rows").get<std::size_t>();
  r.hessian_loss = number_of(j.at("hessian_loss"));
  r.rtn_hessian_loss = number_of(j.at("rtn_hessian_loss"));
  r.damp_retries = j.at("damp_retries").get<std::size_t>();
  r.awq_alpha = number_of(j.at("awq_alpha"));
  r.awq_loss = number_of(j.at("awq_loss"));
  r.awq_rtn_loss = number_of(j.at("awq_rtn_loss"));
  r.awq_fold = j.at("awq_fold").get<std::string>();
  r.clip_loss = number_of(j.at("clip_loss"));
  r.clip_rtn_loss = number_of(j.at("clip_rtn_loss"));
}

json resume_fingerprint(const model& m, const quantize_options& options) {
  json o = options_json(options);
  o.erase("threads");  // the output does not depend on it
  return {{"int4q", INT4Q_VERSION_STRING},
          {"options", std::move(o)},
          {"graph", graph_hash(m.proto.graph())},
          {"caller", options.resume.fingerprint}};
}

resume_journal::resume_journal(const std::filesystem::path& file, json fingerprint) : file_(file) {
  const std::filesystem::path manifest = resume_manifest_path(file_);
  std::error_code ec;
  const bool resuming = std::filesystem::exists(manifest, ec);
  fd_ = ::open(file_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  if (fd_ < 0) fail("cannot open");
  std::uint64_t keep = 0;
  if (resuming) {
    std::ifstream in(manifest, std::ios::binary);
    try {
      manifest_ = json::parse(in);
      keep = manifest_.at("data_bytes").get<std::uint64_t>();
      finished_ = manifest_.at("weights").size();
    } catch (const json::exception& e) {
      throw model_error(model_error::kind::invalid, "the resume journal's manifest '" +
                                                        manifest.string() + "' cannot be read (" +
                                                        e.what() + "); remove it and '" +
                                                        file_.string() + "' to start over");
    }
    const json& was = manifest_["fingerprint"];
    if (was != fingerprint) {
      std::string diffs;
      int shown = 0;
      for (const json& op : json::diff(was, fingerprint)) {
        if (++shown > 6) {
          diffs += "; ...";
          break;
        }
        const json::json_pointer at(op.at("path").get<std::string>());
        const std::string before = was.contains(at) ? was.at(at).dump() : "absent";
        const std::string now = fingerprint.contains(at) ? fingerprint.at(at).dump() : "absent";
        diffs += std::string(shown > 1 ? "; " : "") + at.to_string() + ": " + before +
                 " in the journal, " + now + " now";
      }
      throw option_error(model_error::kind::invalid, "resume.journal",
                         "`resume.journal`: the journal '" + manifest.string() +
                             "' is of another run (" + diffs +
                             "); give the same model, data and options, or remove '" +
                             manifest.string() + "' and '" + file_.string() + "' to start over");
    }
    const off_t size = ::lseek(fd_, 0, SEEK_END);
    if (size < 0 || static_cast<std::uint64_t>(size) < keep) {
      throw model_error(model_error::kind::invalid,
                        "the resume journal '" + file_.string() +
                            "' is shorter than its manifest '" + manifest.string() + "' says (" +
                            std::to_string(keep) + " bytes); remove both to start over");
    }
  } else {
    manifest_ = {{"int4q_resume_journal", 1},
                 {"fingerprint", std::move(fingerprint)},
                 {"data_bytes", 0},
                 {"weights", json::array()}};
  }
  // Bytes after the last finished weight: a weight that was being written when the run died.
  if (::ftruncate(fd_, static_cast<off_t>(keep)) != 0) fail("cannot truncate");
  size_ = keep;
}

resume_journal::~resume_journal() {
  if (fd_ >= 0) ::close(fd_);
}

void resume_journal::fail(const std::string& what) const {
  throw model_error(model_error::kind::io,
                    what + " the resume journal '" + file_.string() + "': " + std::strerror(errno));
}

resume_journal::span resume_journal::write(const void* data, std::size_t bytes) {
  const span s{size_, bytes};
  const char* p = static_cast<const char*>(data);
  std::size_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pwrite(fd_, p + done, bytes - done, static_cast<off_t>(size_ + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("cannot write");
    done += static_cast<std::size_t>(n);
  }
  size_ += bytes;
  return s;
}

void resume_journal::read(span s, void* data, std::size_t bytes, const std::string& weight) const {
  if (s.bytes != bytes || s.offset + s.bytes > size_) {
    throw model_error(model_error::kind::invalid, "the resume journal '" + file_.string() +
                                                      "': weight '" + weight +
                                                      "' has an entry of the wrong size; remove "
                                                      "it and its manifest to start over");
  }
  char* p = static_cast<char*>(data);
  std::size_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pread(fd_, p + done, bytes - done, static_cast<off_t>(s.offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("cannot read");
    done += static_cast<std::size_t>(n);
  }
}

void resume_journal::append(const weight_job& job, const tensor_report& report,
                            const int4q::awq_scales<float>* awq) {
  const int4q::quantized<float>& q = job.q;
  const bool pack = q.config.bits <= 4;
  const std::vector<std::uint8_t> codes = packed_codes(q.codes, pack);
  const span c = write(codes.data(), codes.size());
  const span s = write(q.scales.data(), q.scales.size() * sizeof(float));
  const span z = write(q.zero_points.data(), q.zero_points.size());
  json entry = {{"weight", job.info->name},
                {"method", to_string(job.algo)},
                {"k", job.info->k},
                {"n", job.info->n},
                {"grid", grid_text(job.config, job.info->k)},
                {"scales_shape", {q.scales.shape()[0], q.scales.shape()[1]}},
                {"zero_points_shape", {q.zero_points.shape()[0], q.zero_points.shape()[1]}},
                {"codes", span_json(c.offset, c.bytes)},
                {"scales", span_json(s.offset, s.bytes)},
                {"zero_points", span_json(z.offset, z.bytes)},
                {"report", report_fields(report)}};
  if (awq) {
    const span a = write(awq->scales.data(), awq->scales.size() * sizeof(float));
    entry["awq"] = {{"scales", span_json(a.offset, a.bytes)},
                    {"alpha", awq->alpha},
                    {"identity", awq->identity},
                    {"loss", number(awq->loss)},
                    {"rtn_loss", number(awq->rtn_loss)}};
  }
  // The data on disk before the manifest names it.
  if (::fdatasync(fd_) != 0) fail("cannot sync");
  manifest_["weights"].push_back(std::move(entry));
  manifest_["data_bytes"] = size_;
  write_manifest();
}

void resume_journal::write_manifest() const {
  const std::filesystem::path manifest = resume_manifest_path(file_);
  std::filesystem::path prefix = manifest;
  prefix += ".tmp-";
  registered_temp_file temp(prefix, manifest);
  const std::string text = manifest_.dump(1) + "\n";
  std::size_t done = 0;
  int error = 0;
  while (error == 0 && done < text.size()) {
    const ssize_t n = ::write(temp.fd(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) error = n < 0 ? errno : EIO;
    if (n > 0) done += static_cast<std::size_t>(n);
  }
  if (error == 0 && ::fdatasync(temp.fd()) != 0) error = errno;
  if (error == 0) error = temp.close();
  if (error == 0) error = temp.commit(manifest);
  if (error != 0) {
    throw model_error(model_error::kind::io, "cannot write the resume journal's manifest '" +
                                                 manifest.string() + "': " + std::strerror(error));
  }
}

bool resume_journal::restore(const weight_job& job, journaled_weight& out,
                             tensor_report& report) const {
  const weight_info& w = *job.info;
  const json* entry = nullptr;
  for (const json& e : manifest_.at("weights"))
    if (e.at("weight") == w.name) entry = &e;
  if (!entry) return false;
  const json& e = *entry;
  try {
    const std::string grid = grid_text(job.config, w.k);
    if (e.at("method") != to_string(job.algo) || e.at("k") != w.k || e.at("n") != w.n ||
        e.at("grid") != grid) {
      throw option_error(model_error::kind::invalid, "resume.journal",
                         "`resume.journal`: the journal '" + file_.string() + "' has weight '" +
                             w.name + "' as " + e.at("method").get<std::string>() + " [" +
                             e.at("k").dump() + ", " + e.at("n").dump() + "] on " +
                             e.at("grid").get<std::string>() + ", this run quantizes it as " +
                             to_string(job.algo) + " [" + std::to_string(w.k) + ", " +
                             std::to_string(w.n) + "] on " + grid +
                             "; remove it and its manifest to start over");
    }
    auto span_of = [](const json& j) {
      return span{j.at(0).get<std::uint64_t>(), j.at(1).get<std::uint64_t>()};
    };
    const std::size_t K = w.k, N = w.n;
    const auto scales_shape = e.at("scales_shape").get<std::array<std::size_t, 2>>();
    const auto zeros_shape = e.at("zero_points_shape").get<std::array<std::size_t, 2>>();
    const bool pack = job.config.bits <= 4;
    std::vector<std::uint8_t> codes(pack ? (K * N + 1) / 2 : K * N);
    read(span_of(e.at("codes")), codes.data(), codes.size(), w.name);
    out.q.codes = xt::xtensor<std::uint8_t, 2>::from_shape({K, N});
    for (std::size_t i = 0; i < K * N; ++i)
      out.q.codes.data()[i] =
          pack ? static_cast<std::uint8_t>((codes[i / 2] >> (i % 2 ? 4 : 0)) & 0x0f) : codes[i];
    out.q.scales = xt::xtensor<float, 2>::from_shape(scales_shape);
    read(span_of(e.at("scales")), out.q.scales.data(), out.q.scales.size() * sizeof(float), w.name);
    out.q.zero_points = xt::xtensor<std::uint8_t, 2>::from_shape(zeros_shape);
    read(span_of(e.at("zero_points")), out.q.zero_points.data(), out.q.zero_points.size(), w.name);
    restore_report_fields(e.at("report"), report);
    out.has_awq = e.contains("awq");
    if (out.has_awq) {
      const json& a = e.at("awq");
      const span s = span_of(a.at("scales"));
      out.awq.scales = xt::xtensor<float, 1>::from_shape({s.bytes / sizeof(float)});
      read(s, out.awq.scales.data(), out.awq.scales.size() * sizeof(float), w.name);
      out.awq.alpha = a.at("alpha").get<double>();
      out.awq.identity = a.at("identity").get<bool>();
      out.awq.loss = number_of(a.at("loss"));
      out.awq.rtn_loss = number_of(a.at("rtn_loss"));
    }
  } catch (const json::exception& x) {
    throw model_error(model_error::kind::invalid, "the resume journal's manifest '" +
                                                      resume_manifest_path(file_).string() +
                                                      "': weight '" + w.name + "': " + x.what() +
                                                      "; remove it and its journal to start over");
  }
  return true;
}

}  // namespace detail
}  // namespace onnx
}  // namespace int4q

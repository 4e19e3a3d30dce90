// devgpt for the model-level tests: its files, its score (mean next-byte NLL on held-out text,
// int4q eval's and the ORT tests' protocol: <int4q/onnx/eval_metrics.hpp>) and its
// calibration windows, plus single-threaded BLAS as the CLI runs it.
#ifndef INT4Q_TESTS_ONNX_DEVGPT_EVAL_HPP
#define INT4Q_TESTS_ONNX_DEVGPT_EVAL_HPP

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <int4q/onnx/calib_data.hpp>
#include <int4q/onnx/calibrate.hpp>
#include <int4q/onnx/eval_metrics.hpp>
#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>

namespace int4q {
namespace test {

/// ../shared/models/devgpt: devgpt_fp32.onnx, devgpt_val.u8 (held out), devgpt_cal.u8.
inline std::filesystem::path devgpt_dir() {
  return std::filesystem::path(INT4Q_SOURCE_DIR) / ".." / "shared" / "models" / "devgpt";
}

/// Mean next-byte NLL (nats/byte) of `m` on devgpt_val.u8: 64 windows of 128 predictions,
/// evenly spaced, run by int4q's executor in batches of 16.
inline double devgpt_nats_per_byte(const int4q::onnx::model& m) {
  namespace ox = int4q::onnx;
  std::ifstream in(devgpt_dir() / "devgpt_val.u8", std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::size_t windows = 64, len = 129, seq = 128, batch = 16, vocab = 256;
  const ox::executor e(m);
  double nll = 0;
  for (std::size_t b0 = 0; b0 < windows; b0 += batch) {
    std::vector<std::int64_t> ids(batch * seq);
    std::vector<int> targets(batch * seq);
    for (std::size_t w = 0; w < batch; ++w) {
      const std::size_t off = ((b0 + w) * (text.size() - len)) / (windows - 1);
      for (std::size_t t = 0; t < seq; ++t) {
        ids[w * seq + t] = static_cast<unsigned char>(text[off + t]);
        targets[w * seq + t] = static_cast<unsigned char>(text[off + t + 1]);
      }
    }
    const auto out =
        e.run({{"input_ids", ox::value::ints({std::int64_t(batch), std::int64_t(seq)}, ids)}});
    const ox::value& logits = out.at("logits");
    if (logits.shape !=
        std::vector<std::int64_t>{std::int64_t(batch), std::int64_t(seq), std::int64_t(vocab)})
      return NAN;  // the callers' EXPECT_NEAR / EXPECT_LE fail on NaN
    nll += ox::sum_token_nll(logits.f.data(), batch * seq, vocab, targets.data());
  }
  return nll / double(windows * seq);
}

/// `samples` calibration windows of 128 bytes of devgpt_cal.u8 (a text the validation file does
/// not contain), in batches of 8; `next` is the position (reset it to read them again).
inline int4q::onnx::batch_source devgpt_calibration(
    const int4q::onnx::model& m, std::size_t samples,
    std::shared_ptr<std::size_t> next = std::make_shared<std::size_t>(0)) {
  namespace ox = int4q::onnx;
  ox::calib_options o;
  o.path = devgpt_dir() / "devgpt_cal.u8";
  o.seq_len = 128;
  o.samples = samples;
  const ox::calib_data data = ox::calib_data::open(m, o);
  return [data, next](std::map<std::string, ox::value>& in) {
    if (*next >= data.samples()) return false;
    const std::size_t count = std::min<std::size_t>(8, data.samples() - *next);
    in = data.batch(*next, count);
    *next += count;
    return true;
  };
}

/// BLAS on `n` threads; 1 as the int4q CLI runs it (byte-identical outputs for any thread count).
inline void set_blas_threads(int n) {
#if defined(OPENBLAS_VERSION)
  openblas_set_num_threads(n);
#else
  (void)n;
#endif
}

}  // namespace test
}  // namespace int4q

#endif  // INT4Q_TESTS_ONNX_DEVGPT_EVAL_HPP

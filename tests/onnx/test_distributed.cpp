// Distributed runs (quantize_options::comm): N ranks, here threads of this process joined by
// local_group (the same collectives as MPI's; tests/mpi/ runs the CLI under mpiexec), must give
// every rank the model one process makes alone, byte for byte, for every calibrated method, both
// calibration modes, any rank count (dividing the batches or not) and --auto's plan; ranks
// that disagree about the options are refused; the collectives and the exact join of H's shares
// checked against plain loops.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <xtensor/xtensor.hpp>

#include <int4q/activation_stats.hpp>
#include <int4q/onnx/auto_quantize.hpp>
#include <int4q/onnx/calib_data.hpp>
#include <int4q/onnx/communicator.hpp>
#include <int4q/onnx/model.hpp>
#include <int4q/onnx/option_error.hpp>
#include <int4q/onnx/quantize_model.hpp>

#include "llama_model.hpp"
#include "onnx/devgpt_eval.hpp"

namespace {

namespace fs = std::filesystem;
namespace ox = int4q::onnx;

std::string serialized(const ox::model& m) {
  std::string s;
  EXPECT_TRUE(m.proto.SerializeToString(&s));
  return s;
}

/// f(rank, comm) on `ranks` threads joined by local_group; the first exception is rethrown.
void on_ranks(int ranks, const std::function<void(int, ox::communicator&)>& f) {
  auto comms = ox::local_group(ranks);
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(ranks));
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      try {
        f(r, *comms[static_cast<std::size_t>(r)]);
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

// ---- the collectives and H's shares ----------------------------------------------------------

TEST(LocalGroup, BroadcastAndGatherReachEveryRank) {
  const int ranks = 3;
  std::vector<std::vector<std::uint64_t>> gathered(ranks);
  std::vector<std::vector<int>> received(ranks);
  on_ranks(ranks, [&](int r, ox::communicator& c) {
    EXPECT_EQ(c.rank(), r);
    EXPECT_EQ(c.size(), ranks);
    std::vector<int> v;
    if (r == 1) v = {7, 8, 9, 10};
    ox::broadcast_vector(c, v, 1);
    received[r] = v;
    gathered[r] = c.all_gather(100 + static_cast<std::uint64_t>(r));
  });
  for (int r = 0; r < ranks; ++r) {
    EXPECT_EQ(received[r], (std::vector<int>{7, 8, 9, 10}));
    EXPECT_EQ(gathered[r], (std::vector<std::uint64_t>{100, 101, 102}));
  }
}

TEST(LocalGroup, RanksThatDisagreeAreNamed) {
  std::vector<std::string> messages(2);
  on_ranks(2, [&](int r, ox::communicator& c) {
    try {
      ox::check_same_on_all_ranks(c, r == 0 ? 1 : 2, "the options");
    } catch (const ox::model_error& e) {
      messages[static_cast<std::size_t>(r)] = e.what();
    }
  });
  for (const std::string& m : messages) {
    EXPECT_NE(m.find("the 2 ranks disagree about the options"), std::string::npos) << m;
    EXPECT_NE(m.find("rank 1"), std::string::npos) << m;
  }
}

/// H of activation_stats split in `parts` shares (each accumulating its tiles, on its own
/// thread-rank), joined by join_hessian over broadcasts, equals the H of one object exactly on
/// every part; that H equals X^T X in double within the float blocks' rounding.
TEST(ActivationStatsShares, JoinedSharesEqualOneObjectExactly) {
  const std::size_t k = 600, rows = 1100;  // 3 tiles of 256 per side, 3 blocks of 512 rows
  std::mt19937 gen(5);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(rows * k);
  for (float& v : x) v = dist(gen);
  int4q::activation_stats whole(k);
  whole.add(x.data(), rows);
  const auto h = whole.hessian();
  for (const int parts : {2, 3, 4}) {
    std::vector<xt::xtensor<double, 2>> joined(static_cast<std::size_t>(parts));
    on_ranks(parts, [&](int r, ox::communicator& c) {
      int4q::activation_stats_options o;
      o.hessian_part = static_cast<std::size_t>(r);
      o.hessian_parts = static_cast<std::size_t>(parts);
      int4q::activation_stats share(k, o);
      share.add(x.data(), 700);  // in two calls: blocks count from the first row
      share.add(x.data() + 700 * k, rows - 700);
      share.join_hessian([&](double* d, std::size_t n, std::size_t owner) {
        c.broadcast(d, n * sizeof(double), static_cast<int>(owner));
      });
      joined[static_cast<std::size_t>(r)] = share.hessian();
    });
    for (int r = 0; r < parts; ++r) {
      const auto& hs = joined[static_cast<std::size_t>(r)];
      for (std::size_t i = 0; i < hs.size(); ++i)
        ASSERT_EQ(hs.data()[i], h.data()[i]) << parts << " parts, part " << r << ", element " << i;
    }
  }
  // Against the definition, in double: the float blocks' error bound (activation_stats.hpp).
  double worst = 0;
  for (std::size_t a = 0; a < k; a += 37) {
    for (std::size_t b = a; b < k; b += 41) {
      double ref = 0, mag = 0;
      for (std::size_t r = 0; r < rows; ++r) {
        ref += double(x[r * k + a]) * double(x[r * k + b]);
        mag += std::abs(double(x[r * k + a]) * double(x[r * k + b]));
      }
      worst = std::max(worst, std::abs(h(a, b) - ref) / mag);
    }
  }
  EXPECT_LT(worst, 513 * 0x1p-24);
}

TEST(ActivationStatsShares, ABadShareIsAConfigError) {
  int4q::activation_stats_options o;
  o.hessian_part = 2;
  o.hessian_parts = 2;
  EXPECT_THROW(int4q::activation_stats(8, o), int4q::config_error);
}

// ---- whole runs --------------------------------------------------------------------------------

/// A model and fresh calibration sources for it (every rank reads the same batches).
struct subject {
  std::shared_ptr<ox::model> model;
  std::function<ox::batch_source()> data;
};

/// The samples of `data` in batches of `per_batch` (the last one shorter), read once.
ox::batch_source in_batches(ox::calib_data data, std::size_t per_batch) {
  auto next = std::make_shared<std::size_t>(0);
  return [data, next, per_batch](std::map<std::string, ox::value>& in) {
    if (*next >= data.samples()) return false;
    const std::size_t count = std::min(per_batch, data.samples() - *next);
    in = data.batch(*next, count);
    *next += count;
    return true;
  };
}

subject devgpt() {
  subject s;
  s.model =
      std::make_shared<ox::model>(ox::load_model(int4q::test::devgpt_dir() / "devgpt_fp32.onnx"));
  const std::shared_ptr<ox::model> m = s.model;
  // 12 windows in batches of 8 would be 2 runs: batches of 2 give 6 runs, spread unevenly
  // over 4 ranks.
  s.data = [m] {
    ox::calib_options o;
    o.path = int4q::test::devgpt_dir() / "devgpt_cal.u8";
    o.seq_len = 128;
    o.samples = 12;
    return in_batches(ox::calib_data::open(*m, o), 2);
  };
  return s;
}

subject llama() {
  subject s;
  int4q::test::llama_options o;  // 2 layers, hidden 64, GQA, SwiGLU, RoPE
  o.fp16 = true;
  s.model = std::make_shared<ox::model>();
  s.model->proto = int4q::test::build_llama_model(o);
  const std::shared_ptr<ox::model> m = s.model;
  s.data = [m] {
    ox::calib_options c;  // random tokens: 7 samples of 32, one per batch
    c.seq_len = 32;
    c.samples = 7;
    return in_batches(ox::calib_data::open(*m, c), 1);
  };
  return s;
}

struct run_case {
  const char* name;
  ox::method method;
  ox::calibration_mode mode;
};

ox::quantize_options options_for(const run_case& c, const subject& s) {
  ox::quantize_options o;
  o.config.group_size = 32;
  o.lm_head = ox::lm_head_policy::quantize;
  o.algo = c.method;
  o.calibration.mode = c.mode;
  o.calibration.data = s.data();
  o.threads = 1;
  return o;
}

class Distributed : public ::testing::TestWithParam<run_case> {
 protected:
  void SetUp() override {
    if (!fs::exists(int4q::test::devgpt_dir() / "devgpt_fp32.onnx"))
      GTEST_SKIP() << "devgpt not found";
    int4q::test::set_blas_threads(1);
  }

  /// Every rank's model equals the single-process one, for 2, 3 and 4 ranks, and the ranks
  /// did share the data: each received at least the calibration rows of one weight's input.
  void expect_same_bytes(const subject& s) {
    ox::model alone = *s.model;
    const ox::quantize_report report = ox::quantize_model(alone, options_for(GetParam(), s));
    const std::string expected = serialized(alone);
    std::uint64_t input_bytes = 0;
    for (const ox::tensor_report& t : report.tensors)
      input_bytes = std::max<std::uint64_t>(input_bytes, t.calibration_rows * t.k * 4);
    ASSERT_GT(input_bytes, 0u);
    for (const int ranks : {2, 3, 4}) {
      std::vector<std::string> bytes(static_cast<std::size_t>(ranks));
      on_ranks(ranks, [&](int r, ox::communicator& c) {
        ox::model m = *s.model;
        ox::quantize_options o = options_for(GetParam(), s);
        o.comm = &c;
        ox::quantize_model(m, o);
        bytes[static_cast<std::size_t>(r)] = serialized(m);
        EXPECT_GE(c.bytes_moved(), input_bytes) << "rank " << r << ": no data-parallel rows";
      });
      for (int r = 0; r < ranks; ++r)
        EXPECT_TRUE(bytes[static_cast<std::size_t>(r)] == expected)
            << GetParam().name << ": rank " << r << " of " << ranks;
    }
  }
};

TEST_P(Distributed, DevgptSameBytesAsOneProcess) { expect_same_bytes(devgpt()); }
TEST_P(Distributed, LlamaSameBytesAsOneProcess) { expect_same_bytes(llama()); }

INSTANTIATE_TEST_SUITE_P(
    Methods, Distributed,
    ::testing::Values(run_case{"gptq_seq", ox::method::gptq, ox::calibration_mode::sequential},
                      run_case{"gptq_par", ox::method::gptq, ox::calibration_mode::parallel},
                      run_case{"awq_full", ox::method::awq_full, ox::calibration_mode::sequential},
                      run_case{"awq_gptq", ox::method::awq_gptq, ox::calibration_mode::sequential},
                      run_case{"awq_clip_par", ox::method::awq_clip,
                               ox::calibration_mode::parallel},
                      run_case{"awq_lite", ox::method::awq_lite, ox::calibration_mode::sequential}),
    [](const ::testing::TestParamInfo<run_case>& i) { return std::string(i.param.name); });

TEST(DistributedAuto, PlanIsTheOneProcessPlan) {
  if (!fs::exists(int4q::test::devgpt_dir() / "devgpt_fp32.onnx")) GTEST_SKIP();
  int4q::test::set_blas_threads(1);
  const subject s = devgpt();
  const run_case c{"auto", ox::method::rtn, ox::calibration_mode::parallel};
  ox::auto_options a;
  a.effective_bits = 4.6;
  const std::string expected = ox::to_json(ox::auto_plan(*s.model, options_for(c, s), a)).dump();
  std::vector<std::string> plans(3);
  on_ranks(3, [&](int r, ox::communicator& comm) {
    ox::quantize_options o = options_for(c, s);
    o.comm = &comm;
    plans[static_cast<std::size_t>(r)] = ox::to_json(ox::auto_plan(*s.model, o, a)).dump();
  });
  for (const std::string& p : plans) EXPECT_EQ(p, expected);
}

TEST(DistributedErrors, RanksWithOtherOptionsAreRefusedBeforeAnyWork) {
  if (!fs::exists(int4q::test::devgpt_dir() / "devgpt_fp32.onnx")) GTEST_SKIP();
  const subject s = devgpt();
  const run_case c{"gptq", ox::method::gptq, ox::calibration_mode::sequential};
  std::vector<std::string> messages(2);
  on_ranks(2, [&](int r, ox::communicator& comm) {
    ox::model m = *s.model;
    ox::quantize_options o = options_for(c, s);
    o.comm = &comm;
    if (r == 1) o.config.group_size = 64;
    try {
      ox::quantize_model(m, o);
    } catch (const ox::model_error& e) {
      messages[static_cast<std::size_t>(r)] = e.what();
    }
  });
  for (const std::string& m : messages)
    EXPECT_NE(m.find("ranks disagree about the model (its graph) or the options"),
              std::string::npos)
        << m;
}

TEST(DistributedErrors, ResumeIsForOneProcess) {
  if (!fs::exists(int4q::test::devgpt_dir() / "devgpt_fp32.onnx")) GTEST_SKIP();
  const subject s = devgpt();
  const run_case c{"gptq", ox::method::gptq, ox::calibration_mode::sequential};
  on_ranks(2, [&](int, ox::communicator& comm) {
    ox::model m = *s.model;
    ox::quantize_options o = options_for(c, s);
    o.comm = &comm;
    o.resume.journal = fs::temp_directory_path() / "int4q-never-written.journal";
    EXPECT_THROW(ox::quantize_model(m, o), ox::option_error);
  });
}

}  // namespace

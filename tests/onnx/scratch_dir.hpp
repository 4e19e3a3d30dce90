// A GoogleTest fixture with a fresh, empty directory per test (dir_), removed afterwards.
#ifndef INT4Q_TESTS_ONNX_SCRATCH_DIR_HPP
#define INT4Q_TESTS_ONNX_SCRATCH_DIR_HPP

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>
#include <system_error>

#include <gtest/gtest.h>

namespace int4q {
namespace test {

class scratch_dir_test : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir_ = std::filesystem::temp_directory_path() /
           ("int4q_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::filesystem::path dir_;
};

}  // namespace test
}  // namespace int4q

#endif  // INT4Q_TESTS_ONNX_SCRATCH_DIR_HPP

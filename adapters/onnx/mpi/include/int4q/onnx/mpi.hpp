// int4q::onnx_mpi (built when CMake finds MPI): the communicator of quantize_options::comm over
// MPI_COMM_WORLD, so that `mpirun -np N` spreads one quantization run over N processes.
#ifndef INT4Q_ONNX_MPI_HPP
#define INT4Q_ONNX_MPI_HPP

#include <cstddef>
#include <cstdint>
#include <vector>

#include <int4q/onnx/communicator.hpp>

namespace int4q {
namespace onnx {

/// MPI_COMM_WORLD. The first one made initializes MPI (MPI_Init_thread, MPI_THREAD_FUNNELED:
/// only the thread that made it calls MPI) unless the program has; the one that initialized
/// MPI finalizes it when destroyed. Payloads of any size (sent in pieces below 2^31 bytes).
class mpi_communicator final : public communicator {
 public:
  mpi_communicator();
  ~mpi_communicator() override;
  mpi_communicator(const mpi_communicator&) = delete;
  mpi_communicator& operator=(const mpi_communicator&) = delete;

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }
  void broadcast(void* data, std::size_t bytes, int root) override;
  std::vector<std::uint64_t> all_gather(std::uint64_t v) override;
  [[noreturn]] void abort(int code) override;

  std::uint64_t bytes_moved() const noexcept override { return bytes_; }

 private:
  int rank_ = 0, size_ = 1;
  bool finalize_ = false;
  std::uint64_t bytes_ = 0;
};

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_MPI_HPP

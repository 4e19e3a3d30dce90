// mpi_communicator: quantize_model's collectives over MPI_COMM_WORLD.
#include <int4q/onnx/mpi.hpp>

#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include <int4q/onnx/model.hpp>

namespace int4q {
namespace onnx {

namespace {

/// MPI counts are ints: payloads go in pieces of at most 1 GiB.
constexpr std::size_t piece_bytes = std::size_t(1) << 30;

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(rc, text, &length);
  throw model_error(model_error::kind::io,
                    std::string("MPI: ") + what + " failed: " + std::string(text, length));
}

}  // namespace

mpi_communicator::mpi_communicator() {
  int initialized = 0;
  check(MPI_Initialized(&initialized), "MPI_Initialized");
  if (!initialized) {
    int provided = 0;
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    finalize_ = true;
  }
  // Errors come back as codes (thrown as model_error) rather than ending the job at once.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
  check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
}

mpi_communicator::~mpi_communicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalize_ && !finalized) MPI_Finalize();
}

void mpi_communicator::broadcast(void* data, std::size_t bytes, int root) {
  char* p = static_cast<char*>(data);
  for (std::size_t done = 0; done < bytes;) {
    const std::size_t n = std::min(piece_bytes, bytes - done);
    check(MPI_Bcast(p + done, static_cast<int>(n), MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
    done += n;
  }
  bytes_ += bytes;
}

std::vector<std::uint64_t> mpi_communicator::all_gather(std::uint64_t v) {
  std::vector<std::uint64_t> all(static_cast<std::size_t>(size_));
  check(MPI_Allgather(&v, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD),
        "MPI_Allgather");
  bytes_ += all.size() * sizeof v;
  return all;
}

void mpi_communicator::abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; should it, end this rank
}

}  // namespace onnx
}  // namespace int4q

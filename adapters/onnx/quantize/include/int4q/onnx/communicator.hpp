// The processes of one quantization run (MPI ranks), as quantize_model sees them: the few
// collective operations that data- and work-parallel calibration needs. The quantize layer
// knows no MPI: int4q::onnx_mpi (<int4q/onnx/mpi.hpp>, built when CMake finds MPI) implements
// this with MPI, and local_group (below) with threads of one process, for tests.
//
// Every rank calls the same operations in the same order (each is a collective); a rank that
// throws inside quantize_model leaves the others waiting, so the CLI aborts the whole job then.
#ifndef INT4Q_ONNX_COMMUNICATOR_HPP
#define INT4Q_ONNX_COMMUNICATOR_HPP

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace int4q {
namespace onnx {

class communicator {
 public:
  virtual ~communicator() = default;
  virtual int rank() const noexcept = 0;
  virtual int size() const noexcept = 0;
  /// `bytes` bytes at `data` from rank `root` to every rank (the same count on all ranks).
  virtual void broadcast(void* data, std::size_t bytes, int root) = 0;
  /// Every rank's `v`, in rank order, on every rank.
  virtual std::vector<std::uint64_t> all_gather(std::uint64_t v) = 0;
  /// Payload bytes this rank has sent and received through it so far (a broadcast counts its
  /// payload once on each rank): the communication volume.
  virtual std::uint64_t bytes_moved() const noexcept = 0;
  /// Ends the whole job after an error on this rank (the others may wait in a collective).
  [[noreturn]] virtual void abort(int code) = 0;
};

/// Whether `comm` spreads the work (non-null and more than one rank).
inline bool distributed(const communicator* comm) { return comm && comm->size() > 1; }

/// Broadcasts a vector whose length only `root` knows (the others' is replaced).
template <class T>
void broadcast_vector(communicator& comm, std::vector<T>& v, int root) {
  std::uint64_t n = v.size();
  comm.broadcast(&n, sizeof n, root);
  v.resize(static_cast<std::size_t>(n));
  if (n > 0) comm.broadcast(v.data(), static_cast<std::size_t>(n) * sizeof(T), root);
}
void broadcast_string(communicator& comm, std::string& s, int root);

/// Throws model_error(invalid) naming `what` and the ranks' values when the ranks' `digest`
/// (e.g. a hash of the model and options) differ: ranks must agree on the input and options.
void check_same_on_all_ranks(communicator& comm, std::uint64_t digest, const std::string& what);

/// FNV-1a 64 of a string: a digest for check_same_on_all_ranks.
std::uint64_t digest_of(const std::string& text);

/// `ranks` communicators between threads of this process (rank i: element i), for tests and
/// for embedding int4q without MPI. Each rank's calls must come from its own thread.
std::vector<std::unique_ptr<communicator>> local_group(int ranks);

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_COMMUNICATOR_HPP

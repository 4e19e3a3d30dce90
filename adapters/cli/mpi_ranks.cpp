// job_communicator: MPI when int4q was built with it (INT4Q_CLI_HAVE_MPI).
#include "mpi_ranks.hpp"

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>

#include "cli_common.hpp"

#if defined(INT4Q_CLI_HAVE_MPI)
#include <int4q/onnx/mpi.hpp>
#endif

namespace int4q {
namespace cli {

namespace {
std::unique_ptr<onnx::communicator> the_communicator;
}  // namespace

int launched_ranks() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"}) {
    const char* v = std::getenv(name);
    if (v && *v) return std::max(1, std::atoi(v));
  }
  return 1;
}

onnx::communicator* job_communicator() {
  if (the_communicator) return the_communicator.get();
  const int ranks = launched_ranks();
  if (ranks <= 1) return nullptr;
#if defined(INT4Q_CLI_HAVE_MPI)
  the_communicator = std::make_unique<onnx::mpi_communicator>();
  return the_communicator.get();
#else
  throw usage_error("started as one of " + std::to_string(ranks) +
                    " MPI ranks, but this int4q was built without MPI: install it (Debian: "
                    "apt-get install libopenmpi-dev openmpi-bin, or scripts/install-deps) and "
                    "rebuild, or run int4q without mpirun");
#endif
}

onnx::communicator* current_communicator() { return the_communicator.get(); }

int job_rank() { return the_communicator ? the_communicator->rank() : 0; }

}  // namespace cli
}  // namespace int4q

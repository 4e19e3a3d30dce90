// The CLI's ranks: `mpirun -np N int4q quantize ...` spreads one run over N processes
// (quantize_options::comm). Rank 0 writes the output, the report and the progress; the others
// write nothing. An error on any rank ends the whole job with that rank's exit code.
#ifndef INT4Q_CLI_MPI_RANKS_HPP
#define INT4Q_CLI_MPI_RANKS_HPP

#include <int4q/onnx/communicator.hpp>

namespace int4q {
namespace cli {

/// The number of processes an MPI launcher started this one among, from its environment
/// (OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_SIZE, MPI_LOCALNRANKS); 1 when not launched so.
int launched_ranks();

/// This run's communicator: MPI's, set up on first call, when launched_ranks() > 1; null
/// otherwise. Throws usage_error (with how to get MPI) when int4q was built without it.
onnx::communicator* job_communicator();

/// The communicator when job_communicator() made one (null otherwise; never sets one up).
onnx::communicator* current_communicator();

/// This process's rank (0 alone).
int job_rank();

}  // namespace cli
}  // namespace int4q

#endif  // INT4Q_CLI_MPI_RANKS_HPP

// parallel::init and parallel::finalize: where a training program joins (and leaves) its job.
//
//   parallel::World world = parallel::init();          // under mpirun -np N, or alone
//   ... world.communicator->all_reduce(loss) ...
//   parallel::finalize();
//
// Under mpirun (Open MPI, or any launcher that sets PMI/PMIx variables) init starts MPI and
// the world communicator is an MPI one; started directly it is the single-process backend
// (world size 1) and MPI is never touched, so a build or a machine without MPI works. For
// GPU training, make_nccl_communicator (nccl_backend.h) builds an NCCL group on
// world.gpu(), bootstrapped over world.communicator.
//
// Threads: each rank's OpenMP (and so OpenBLAS) thread count is set to the node's cores
// divided by the ranks on the node, at most the cores this rank may run on, so that N ranks
// on one machine do not each start a thread per core. OMP_NUM_THREADS, when set, wins.
#pragma once

#include <chrono>
#include <memory>

#include "parallel/communicator.h"

namespace kiln::parallel {

class InitOptions {
 public:
  // How long any collective may take before the watchdog aborts the job (every group made
  // from the world inherits it).
  InitOptions& timeout(std::chrono::milliseconds value) { timeout_ = value; return *this; }
  // Whether init sets OpenMP's thread count per rank (see above).
  InitOptions& set_threads(bool value) { set_threads_ = value; return *this; }
  std::chrono::milliseconds timeout() const { return timeout_; }
  bool set_threads() const { return set_threads_; }

 private:
  std::chrono::milliseconds timeout_ = kDefaultTimeout;
  bool set_threads_ = true;
};

// This process's place in the job.
struct World {
  std::shared_ptr<Communicator> communicator;  // every rank: MPI, or single-process alone
  int rank = 0;
  int size = 1;
  int local_rank = 0;  // among the ranks on this node
  int local_size = 1;
  int threads = 1;     // OpenMP threads of this rank after init
  // The GPU this rank drives: one rank per GPU, numbered by local rank.
  int gpu() const { return local_rank; }
};

// Once per process. Throws kiln::Error if called twice, if a launcher started several ranks
// but kiln was built without MPI, or if MPI lacks MPI_THREAD_MULTIPLE.
World init(const InitOptions& options = InitOptions());
// Stops every communicator (their later use throws) and ends MPI; does nothing without init.
void finalize();

}  // namespace kiln::parallel

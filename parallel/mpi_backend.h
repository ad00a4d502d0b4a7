// The MPI backend's entry points for parallel::init and parallel::finalize (init.cpp).
//
// This header does not include <mpi.h>: MPI is a private dependency of libkiln, so nothing a
// user program includes may need MPI's headers. Compiled only when CMake finds MPI.
#pragma once

#include <chrono>
#include <memory>

#include "parallel/communicator.h"

namespace kiln::parallel::mpi {

// Where this process sits in the job that mpirun started.
struct Placement {
  int world_rank = 0;
  int world_size = 1;
  int local_rank = 0;  // among the ranks on this node (MPI_Comm_split_type shared memory)
  int local_size = 1;
};

// MPI_Init_thread with MPI_THREAD_MULTIPLE (each communicator has its own communication thread
// and the watchdog may abort from its own) and the reduction types for bf16 and f16.
Placement initialize();
// A communicator over all ranks, on a duplicate of MPI_COMM_WORLD so that kiln's messages
// never match a user's own MPI calls.
std::shared_ptr<Communicator> world_communicator(int world_rank, std::chrono::milliseconds timeout);
// Stops every MPI communicator still alive (their later use is an error), then MPI_Finalize.
void finalize();

}  // namespace kiln::parallel::mpi

// parallel::init / finalize: choose the world's backend from the environment, place threads.
//
// This file and the backends' own sources are the only places that know which backends were
// compiled in (KILN_HAVE_MPI, KILN_HAVE_NCCL, set by CMake).
#include "parallel/init.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

#include "parallel/local_communicator.h"
#include "parallel/nccl_backend.h"
#ifdef KILN_HAVE_MPI
#include "parallel/mpi_backend.h"
#endif

namespace kiln::parallel {
namespace {

std::mutex state_mutex;
bool initialized = false;
bool mpi_running = false;

// Whether a launcher started this process, and the world size it announced (1 when it names
// none). Open MPI's mpirun sets OMPI_*, MPICH's hydra PMI_*, PMIx launchers (srun) PMIX_*.
struct Launch {
  bool launched = false;
  int size = 1;
};

Launch launch_from_environment() {
  Launch launch;
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
    if (const char* value = std::getenv(name)) {
      launch.launched = true;
      launch.size = std::max(1, std::atoi(value));
      return launch;
    }
  }
  launch.launched = std::getenv("PMIX_RANK") != nullptr;
  return launch;
}

// Cores of the node shared among its ranks, at most the CPUs this process may run on (mpirun
// binds each of two ranks to one core, so more threads would only share that core).
int threads_per_rank(int local_size) {
  int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  int usable = std::max(1, omp_get_num_procs());
  return std::max(1, std::min(usable, cores / local_size));
}

}  // namespace

World init(const InitOptions& options) {
  std::lock_guard lock(state_mutex);
  KILN_CHECK(!initialized, "parallel::init: already initialized (call it once per process)");
  KILN_CHECK(options.timeout().count() > 0, "parallel::init: the timeout must be positive, got ",
             options.timeout().count(), " ms");
  World world;
  Launch launch = launch_from_environment();
#ifdef KILN_HAVE_MPI
  if (launch.launched) {
    mpi::Placement placement = mpi::initialize();
    mpi_running = true;
    world.communicator = mpi::world_communicator(placement.world_rank, options.timeout());
    world.rank = placement.world_rank;
    world.size = placement.world_size;
    world.local_rank = placement.local_rank;
    world.local_size = placement.local_size;
  }
#else
  KILN_CHECK(launch.size == 1, "parallel::init: a launcher started ", launch.size,
             " processes, but kiln was built without MPI; rebuild kiln with MPI (libopenmpi-dev) to run on "
             "several ranks");
#endif
  if (!world.communicator) world.communicator = make_local_communicator("world", options.timeout());
  if (options.set_threads() && std::getenv("OMP_NUM_THREADS") == nullptr) {
    omp_set_num_threads(threads_per_rank(world.local_size));
  }
  world.threads = omp_get_max_threads();
  initialized = true;
  return world;
}

void finalize() {
  std::lock_guard lock(state_mutex);
  if (!initialized) return;
#ifdef KILN_HAVE_MPI
  if (mpi_running) mpi::finalize();
#endif
  mpi_running = false;
  initialized = false;
}

#ifndef KILN_HAVE_NCCL
bool nccl_available() { return false; }

std::shared_ptr<Communicator> make_nccl_communicator(const std::shared_ptr<Communicator>&, int) {
  KILN_FAIL("make_nccl_communicator: kiln was built without NCCL (it needs CUDA and the NCCL library)");
}
#endif

}  // namespace kiln::parallel

// A job the watchdog must end: one rank skips a collective that the others wait in.
//
//   mpirun -np 2 watchdog_helper MODE TIMEOUT_MS
// MODE world: world rank 1 skips an all_reduce on the world group.
// MODE group: world rank 1 skips an async all_gather on a group named "pipeline" (all ranks,
//             ranked in reverse), which the others wait on.
// The waiting ranks' watchdog must print its report and abort the job within TIMEOUT_MS (plus
// a little); the skipping rank sleeps long enough to be still alive then. check_watchdog.cmake
// checks the exit status and the report.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "autograd/ops.h"
#include "parallel/init.h"

int main(int argc, char** argv) {
  using namespace kiln;
  using namespace kiln::parallel;
  if (argc != 3) {
    std::fprintf(stderr, "usage: watchdog_helper world|group TIMEOUT_MS\n");
    return 2;
  }
  const std::string mode = argv[1];
  World world = init(InitOptions().timeout(std::chrono::milliseconds(std::atoi(argv[2]))));
  const bool skips = world.rank == 1;
  if (mode == "world") {
    if (!skips) world.communicator->all_reduce(zeros({1024}));
  } else {
    std::shared_ptr<Communicator> pipeline = world.communicator->split(0, world.size - world.rank, "pipeline");
    if (!skips) pipeline->all_gather_async(zeros({256}), zeros({256 * world.size})).wait();
  }
  if (skips) std::this_thread::sleep_for(std::chrono::seconds(60));
  std::fprintf(stderr, "watchdog_helper: rank %d was not stopped by the watchdog\n", world.rank);
  finalize();
  return 0;
}

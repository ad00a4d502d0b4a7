// The main of the communication tests: joins the job, runs Catch2, leaves the job.
//
// A rank whose check fails keeps going, so the ranks stay in step; if they do fall out of step
// the watchdog (two minutes here) ends the job with a message instead of a hang.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <algorithm>

#include "kernels/backend.h"
#include "parallel_test.h"

namespace kiln::parallel::testing {
namespace {
World the_world;
}  // namespace

const World& world() { return the_world; }

bool cuda_usable() {
  try {
    kernels::backend_for(Device::cuda());
    return true;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace kiln::parallel::testing

int main(int argc, char** argv) {
  using namespace kiln::parallel;
  testing::the_world = init(InitOptions().timeout(std::chrono::minutes(2)));
  int failures = Catch::Session().run(argc, argv);
  testing::the_world = World();
  finalize();
  return std::min(failures, 255);
}

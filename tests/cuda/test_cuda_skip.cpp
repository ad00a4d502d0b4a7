// Skips the whole device parity suite where no GPU is usable: before Catch2's main runs (it comes
// from kiln_test_support), the executable prints why and exits with 77, which ctest reports as a
// skipped test (SKIP_RETURN_CODE) rather than a pass. libkiln registers its CUDA backend, or
// records why it could not, while it loads, which is before this executable's own initialisers.
#include <cstdio>
#include <cstdlib>

#include "kernels/backend.h"
#include "kernels/cuda/stream.h"

namespace {

const bool gpu_present = [] {
  if (!kiln::cuda::is_available()) {
    std::printf("test_cuda: skipped: %s\n", kiln::kernels::unavailable_reason(kiln::DeviceType::CUDA).c_str());
    std::fflush(stdout);
    std::exit(77);
  }
  return true;
}();

}  // namespace

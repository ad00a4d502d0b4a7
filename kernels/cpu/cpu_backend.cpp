// The process-wide CPU backend instance.
#include "kernels/cpu/cpu_backend.h"

namespace kiln::kernels {

Backend& cpu_backend() {
  static CpuBackend backend;
  return backend;
}

}  // namespace kiln::kernels

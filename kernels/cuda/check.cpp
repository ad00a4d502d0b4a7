// The throwing halves of KILN_CUDA_CHECK and KILN_CUBLAS_CHECK, kept out of line so the macros
// cost one compare at each call site.
#include "kernels/cuda/check.h"

namespace kiln::cuda::detail {

void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line) {
  // Clears the error if it is not sticky, so the next call does not report it again.
  cudaGetLastError();
  KILN_FAIL("CUDA error at ", file, ":", line, ": ", call, " failed: ", cudaGetErrorString(status), " (",
            cudaGetErrorName(status), ")");
}

void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line) {
  KILN_FAIL("cuBLAS error at ", file, ":", line, ": ", call, " failed: ", cublasGetStatusString(status), " (",
            cublasGetStatusName(status), ")");
}

}  // namespace kiln::cuda::detail

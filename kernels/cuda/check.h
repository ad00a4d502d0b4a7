// Error checking for CUDA runtime and cuBLAS calls.
//
// A failed call throws kiln::Error naming the call, the source file and line, and the library's
// own description of the failure, so a kernel fault surfaces as an exception at the next
// checked call instead of a silent wrong answer. Kernel launches are checked with
// KILN_CUDA_CHECK_LAUNCH() right after the launch (it reports bad launch configurations; faults
// inside a kernel are reported by the next synchronising call).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "kernels/error.h"

namespace kiln::cuda::detail {

[[noreturn]] void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line);

}  // namespace kiln::cuda::detail

#define KILN_CUDA_CHECK(call)                                                              \
  do {                                                                                     \
    cudaError_t kiln_cuda_status_ = (call);                                                \
    if (kiln_cuda_status_ != cudaSuccess) {                                                \
      ::kiln::cuda::detail::throw_cuda_error(kiln_cuda_status_, #call, __FILE__, __LINE__); \
    }                                                                                      \
  } while (0)

#define KILN_CUBLAS_CHECK(call)                                                              \
  do {                                                                                       \
    cublasStatus_t kiln_cublas_status_ = (call);                                             \
    if (kiln_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                                      \
      ::kiln::cuda::detail::throw_cublas_error(kiln_cublas_status_, #call, __FILE__, __LINE__); \
    }                                                                                        \
  } while (0)

#define KILN_CUDA_CHECK_LAUNCH() KILN_CUDA_CHECK(cudaGetLastError())

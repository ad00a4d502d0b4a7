// Registers the CUDA backend and allocator while libkiln loads, when a GPU is present.
//
// A machine without a GPU or driver must load kiln silently and keep working on the CPU; the
// reason CUDA is missing is kept for the error a user sees on asking for a CUDA tensor.
#include <cuda_runtime_api.h>

#include <string>

#include "kernels/cuda/caching_allocator.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/stream.h"

namespace kiln {
namespace {

bool register_cuda() {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count < 1) {
    std::string why = status != cudaSuccess ? cudaGetErrorString(status) : "the driver reports 0 devices";
    cudaGetLastError();
    kernels::set_unavailable_reason(DeviceType::CUDA, "no CUDA device found (" + why + ")");
    return false;
  }
  register_allocator(DeviceType::CUDA, &cuda::caching_allocator());
  // Never destroyed, like the allocator: kernels may still be queued when static destructors run.
  kernels::register_backend(DeviceType::CUDA, new kernels::CudaBackend());
  return true;
}

const bool registered = register_cuda();

}  // namespace

bool cuda::is_available() { return registered; }

}  // namespace kiln

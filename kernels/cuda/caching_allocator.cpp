// The caching allocator's pools: lookup by (device, stream, size class), refill from cudaMalloc.
#include "kernels/cuda/caching_allocator.h"

#include <bit>

#include "kernels/cuda/check.h"
#include "kernels/cuda/stream.h"
#include "kernels/error.h"

namespace kiln::cuda {
namespace {

constexpr size_t kSmallStep = 512;
constexpr size_t kSmallLimit = size_t{1} << 20;
constexpr int kClassesPerPowerOfTwo = 8;

uintptr_t key_of(cudaStream_t stream) { return reinterpret_cast<uintptr_t>(stream); }

}  // namespace

size_t CachingAllocator::round_size(size_t bytes) {
  if (bytes <= kSmallLimit) return bytes == 0 ? kSmallStep : (bytes + kSmallStep - 1) / kSmallStep * kSmallStep;
  size_t power = std::bit_floor(bytes);
  size_t step = power / kClassesPerPowerOfTwo;
  return (bytes + step - 1) / step * step;
}

void* CachingAllocator::allocate(size_t bytes) {
  // An empty tensor has no memory to point at; its kernels never dereference the pointer.
  if (bytes == 0) {
    record_allocate(0);
    return nullptr;
  }
  int device = current_device();
  cudaStream_t stream = current_stream(device).handle();
  size_t size = round_size(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  void* pointer = nullptr;
  auto pool = pools_.find(PoolKey{device, key_of(stream), size});
  if (pool != pools_.end() && !pool->second.empty()) {
    pointer = pool->second.back();
    pool->second.pop_back();
    cached_bytes_ -= static_cast<int64_t>(size);
  } else {
    pointer = allocate_from_driver(size, device);
  }
  live_.emplace(pointer, Block{size, device, stream});
  record_allocate(bytes);
  return pointer;
}

void* CachingAllocator::allocate_from_driver(size_t size, int device) {
  void* pointer = nullptr;
  cudaError_t status = cudaMalloc(&pointer, size);
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    release_cached(device);
    status = cudaMalloc(&pointer, size);
  }
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    cudaGetLastError();
    KILN_FAIL("cuda allocator: out of memory allocating ", size, " bytes on cuda:", device, " (", stats().current_bytes,
              " bytes in tensors, ", reserved_bytes_.load(), " reserved by kiln, ", free_bytes, " of ", total_bytes,
              " bytes free on the device)");
  }
  KILN_CUDA_CHECK(status);
  reserved_bytes_ += static_cast<int64_t>(size);
  return pointer;
}

void CachingAllocator::deallocate(void* pointer, size_t bytes) {
  record_deallocate(bytes);
  if (pointer == nullptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = live_.find(pointer);
  KILN_CHECK(found != live_.end(), "cuda allocator: deallocate of a pointer it did not allocate");
  Block block = found->second;
  live_.erase(found);
  pools_[PoolKey{block.device, key_of(block.stream), block.size}].push_back(pointer);
  cached_bytes_ += static_cast<int64_t>(block.size);
}

Device CachingAllocator::device() const { return Device::cuda(current_device()); }

void CachingAllocator::release_cached(int device) {
  for (auto pool = pools_.begin(); pool != pools_.end();) {
    auto [pool_device, stream, size] = pool->first;
    if (device >= 0 && pool_device != device) {
      ++pool;
      continue;
    }
    DeviceGuard guard(pool_device);
    // cudaFree waits for the device to go idle, so no queued kernel still uses the block.
    for (void* pointer : pool->second) KILN_CUDA_CHECK(cudaFree(pointer));
    auto released = static_cast<int64_t>(size * pool->second.size());
    cached_bytes_ -= released;
    reserved_bytes_ -= released;
    pool = pools_.erase(pool);
  }
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mutex_);
  release_cached(-1);
}

int64_t CachingAllocator::cached_bytes() const { return cached_bytes_.load(); }

int64_t CachingAllocator::reserved_bytes() const { return reserved_bytes_.load(); }

CachingAllocator& caching_allocator() {
  // Never destroyed: at exit the CUDA runtime may be torn down before static destructors run,
  // and the driver reclaims the process's memory anyway.
  static CachingAllocator* allocator = new CachingAllocator();
  return *allocator;
}

}  // namespace kiln::cuda

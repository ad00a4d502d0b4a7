// The CUDA caching allocator: device memory for tensors, kept and reused rather than handed
// back to the driver.
//
// cudaMalloc and cudaFree cost tens of microseconds and cudaFree synchronises the device, far
// too much for the thousands of tensors a training step creates and drops. Requests are rounded
// up to a size class (512-byte steps up to 1 MiB, then eight classes per power of two, so at
// most 1/8 is wasted), and a freed block waits in the pool of its (device, stream, class) for
// the next request of that class on that stream. Reusing a block only on the stream it was
// allocated on makes reuse safe without events: a stream runs its work in order, so the new
// owner's kernels start after the old owner's have finished. A tensor also used on another
// stream must have that work synchronised (an Event) before it dies.
//
// When cudaMalloc fails, the device's cached blocks are released and the request retried once.
// The byte counters count requested bytes, as the CPU allocator's do, so memory figures do not
// depend on the rounding; cached_bytes() and reserved_bytes() report what caching costs, and
// kiln::empty_cache(device) hands the cached blocks back, e.g. before another library needs them.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "kernels/allocator.h"

namespace kiln::cuda {

class CachingAllocator final : public Allocator {
 public:
  // Memory of the calling thread's current device, owned by its current stream.
  void* allocate(size_t bytes) override;
  void deallocate(void* pointer, size_t bytes) override;
  Device device() const override;

  // Returns every cached (free) block of every device to the driver.
  void empty_cache() override;
  // Bytes waiting in the pools, and all bytes obtained from cudaMalloc (in use or cached).
  int64_t cached_bytes() const override;
  int64_t reserved_bytes() const;
  // The size class a request of `bytes` is rounded up to.
  static size_t round_size(size_t bytes);

 private:
  struct Block {
    size_t size;
    int device;
    cudaStream_t stream;
  };
  using PoolKey = std::tuple<int, uintptr_t, size_t>;  // device, stream, size class

  void* allocate_from_driver(size_t size, int device);
  // Frees the cached blocks of `device` (of every device when -1); the caller holds mutex_.
  void release_cached(int device);

  mutable std::mutex mutex_;
  std::unordered_map<void*, Block> live_;
  std::map<PoolKey, std::vector<void*>> pools_;
  // Written under mutex_, read without it (stats() reads cached_bytes() while allocate holds it).
  std::atomic<int64_t> cached_bytes_{0};
  std::atomic<int64_t> reserved_bytes_{0};
};

// The process's CUDA allocator (the one registered for DeviceType::CUDA when a GPU is found).
CachingAllocator& caching_allocator();

// Temporary device memory (current device and stream) for the duration of a scope. Releasing it
// while kernels that use it are still queued is safe: the block is handed out again only on the
// same stream, behind them.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes), data_(bytes ? caching_allocator().allocate(bytes) : nullptr) {}
  ~DeviceBuffer() {
    if (data_) caching_allocator().deallocate(data_, bytes_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data() const { return data_; }
  template <typename T> T* as() const { return static_cast<T*>(data_); }

 private:
  size_t bytes_;
  void* data_;
};

}  // namespace kiln::cuda

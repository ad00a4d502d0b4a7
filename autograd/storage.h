// Storage: one allocation of device memory, shared by a tensor and all of its views.
//
// The version counter lives here rather than on each tensor so that an in-place write through
// any view is seen by every tensor saved for backward over the same memory.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "kernels/allocator.h"
#include "kernels/device.h"

namespace kiln {

class Storage {
 public:
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  uint64_t version() const { return version_.load(std::memory_order_relaxed); }
  void bump_version() { version_.fetch_add(1, std::memory_order_relaxed); }

  // ZeRO-3 drops a sharded parameter's memory after each use and refills it before the next,
  // while tensors saved for backward keep pointing at this Storage. Neither call bumps the
  // version: the refilled data are the same values the saved tensors were recorded with.
  // Frees the memory; data() is null until take_data().
  void release_data();
  bool has_data() const { return data_ != nullptr || bytes_ == 0; }
  // Adopts `other`'s allocation (same size and device), which is left without data.
  void take_data(Storage& other);

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
  Allocator* allocator_ = nullptr;
  std::atomic<uint64_t> version_{0};
};

}  // namespace kiln

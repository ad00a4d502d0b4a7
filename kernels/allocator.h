// Allocator: the one place device memory is obtained and returned, with byte counters.
//
// Each device has one allocator. It counts the bytes currently held by tensors and the peak
// since the last reset; ZeRO's memory savings and activation-memory benchmarks read these
// counters, so every tensor buffer must come from here.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "kernels/device.h"

namespace kiln {

struct MemoryStats {
  int64_t current_bytes = 0;  // bytes handed out and not yet returned
  int64_t peak_bytes = 0;     // maximum of current_bytes since the last reset_peak()
  int64_t allocations = 0;    // number of allocate() calls
  int64_t cached_bytes = 0;   // freed blocks the allocator keeps for reuse (not in current_bytes)
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* pointer, size_t bytes) = 0;
  virtual Device device() const = 0;
  // Returns cached free blocks to the system (or the driver).
  virtual void empty_cache() {}
  virtual int64_t cached_bytes() const { return 0; }

  MemoryStats stats() const;
  void reset_peak();

 protected:
  void record_allocate(size_t bytes);
  void record_deallocate(size_t bytes);

 private:
  std::atomic<int64_t> current_{0};
  std::atomic<int64_t> peak_{0};
  std::atomic<int64_t> allocations_{0};
};

// The allocator for a device; throws kiln::Error if the device is not available.
Allocator& allocator_for(Device device);
// Backends other than CPU install their allocator here when they load.
void register_allocator(DeviceType type, Allocator* allocator);

// Byte counters of a device's allocator, the usual way to read them.
inline MemoryStats memory_stats(Device device = Device::cpu()) { return allocator_for(device).stats(); }
inline void reset_peak_memory(Device device = Device::cpu()) { allocator_for(device).reset_peak(); }
inline void empty_cache(Device device = Device::cpu()) { allocator_for(device).empty_cache(); }

}  // namespace kiln

// Allocator counters and the per-device allocator registry.
#include "kernels/allocator.h"

#include "kernels/backend.h"
#include "kernels/error.h"

namespace kiln {

MemoryStats Allocator::stats() const {
  return MemoryStats{current_.load(), peak_.load(), allocations_.load(), cached_bytes()};
}

void Allocator::reset_peak() { peak_.store(current_.load()); }

void Allocator::record_allocate(size_t bytes) {
  int64_t now = current_.fetch_add(static_cast<int64_t>(bytes)) + static_cast<int64_t>(bytes);
  int64_t peak = peak_.load();
  while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
  }
  allocations_.fetch_add(1);
}

void Allocator::record_deallocate(size_t bytes) { current_.fetch_sub(static_cast<int64_t>(bytes)); }

namespace {
Allocator* registered_cuda_allocator = nullptr;
}  // namespace

Allocator& cpu_allocator();  // kernels/cpu/cpu_allocator.cpp

void register_allocator(DeviceType type, Allocator* allocator) {
  KILN_CHECK(type == DeviceType::CUDA, "register_allocator: only a CUDA allocator can be registered");
  registered_cuda_allocator = allocator;
}

Allocator& allocator_for(Device device) {
  if (device.is_cpu()) return cpu_allocator();
  KILN_CHECK(registered_cuda_allocator != nullptr, "device ", device.str(), " is not available: ",
             kernels::unavailable_reason(device.type));
  return *registered_cuda_allocator;
}

}  // namespace kiln

// The CPU allocator: 64-byte aligned buffers (one cache line, the widest AVX-512 vector),
// counted, with a cache of freed blocks.
//
// A training step allocates the same shapes every iteration. Returning large buffers to the
// system and taking them back costs a page fault per 4 KiB on first touch (a 32 MiB activation
// costs more to fault in than to compute on), so freed blocks are kept by size class and reused
// for requests of the same class. current_bytes counts what tensors hold; cached blocks are
// not counted there (memory_stats reports them separately) and empty_cache() releases them.
#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>

#include "kernels/allocator.h"
#include "kernels/error.h"

namespace kiln {
namespace {

class CpuAllocator final : public Allocator {
 public:
  static constexpr size_t kAlignment = 64;

  void* allocate(size_t bytes) override {
    size_t size = size_class(bytes);
    void* pointer = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto found = free_blocks_.find(size);
      if (found != free_blocks_.end()) {
        pointer = found->second;
        free_blocks_.erase(found);
        cached_bytes_ -= size;
      }
    }
    if (pointer == nullptr) {
      pointer = std::aligned_alloc(kAlignment, size);
      KILN_CHECK(pointer != nullptr, "cpu allocator: out of memory allocating ", bytes, " bytes");
    }
    record_allocate(bytes);
    return pointer;
  }

  void deallocate(void* pointer, size_t bytes) override {
    record_deallocate(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    size_t size = size_class(bytes);
    free_blocks_.emplace(size, pointer);
    cached_bytes_ += size;
  }

  void empty_cache() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [size, pointer] : free_blocks_) std::free(pointer);
    free_blocks_.clear();
    cached_bytes_ = 0;
  }

  int64_t cached_bytes() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(cached_bytes_);
  }

  Device device() const override { return Device::cpu(); }

 private:
  // Small buffers round to the alignment, large ones to 1/16 of their power of two, so a
  // reused block wastes at most ~6%.
  static size_t size_class(size_t bytes) {
    size_t size = (std::max<size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
    if (size <= (size_t{1} << 16)) return size;
    size_t power = size_t{1} << (63 - __builtin_clzll(size));
    size_t step = power / 16;
    return (size + step - 1) / step * step;
  }

  mutable std::mutex mutex_;
  std::multimap<size_t, void*> free_blocks_;
  size_t cached_bytes_ = 0;
};

}  // namespace

Allocator& cpu_allocator() {
  // Never destroyed: tensors with static lifetime may outlive any static allocator object.
  static CpuAllocator* allocator = new CpuAllocator();
  return *allocator;
}

}  // namespace kiln

// Groups of threads that each reduce one problem: a row, a line along a dim, one output.
//
// A block of kBlock threads is cut into groups of `size` threads (a power of two). When the
// problems' elements are adjacent in memory (a softmax over the last dim), a group's lanes are
// adjacent threads, so a warp reads one stretch of a row. When the problems are adjacent
// instead (a softmax over dim 0 of a row-major matrix, a bias gradient), the groups are
// adjacent threads and each lane holds one problem's k-th slice, so a warp reads one stretch
// across problems. Either way the lanes' partial results combine in shared memory along a fixed
// tree: the result does not depend on timing, and a rerun gives the same bits.
#pragma once

#include <cstdint>

#include "kernels/cuda/launch.cuh"

namespace kiln::kernels::gpu {

struct Groups {
  int size = 1;                // threads per group
  bool lanes_adjacent = true;  // a group's lanes are adjacent threads (else the groups are)

  __host__ __device__ __forceinline__ int count() const { return kBlock / size; }
  __device__ __forceinline__ int group() const {
    return lanes_adjacent ? static_cast<int>(threadIdx.x) / size : static_cast<int>(threadIdx.x) % count();
  }
  __device__ __forceinline__ int lane() const {
    return lanes_adjacent ? static_cast<int>(threadIdx.x) % size : static_cast<int>(threadIdx.x) / count();
  }
  __device__ __forceinline__ int slot(int group, int lane) const {
    return lanes_adjacent ? group * size + lane : lane * count() + group;
  }
};

// The group shape for problems of `length` elements: enough lanes to cover a short problem in
// one pass, a whole block for long ones. With adjacent problems a group is at most kBlock / 32
// lanes, so a warp still spans 32 problems.
inline Groups groups_for(int64_t length, bool lanes_adjacent) {
  int limit = lanes_adjacent ? kBlock : kBlock / 32;
  int size = 1;
  while (size < limit && size < length) size *= 2;
  return Groups{size, lanes_adjacent};
}

// Shared memory for one value per thread of a block, of any trivially copyable type.
template <typename V>
struct GroupScratch {
  alignas(V) unsigned char bytes[sizeof(V) * kBlock];
  __device__ __forceinline__ V* values() { return reinterpret_cast<V*>(bytes); }
};

// Combines the lanes' values of every group and returns the group's total to all its lanes.
// Every thread of the block must call it (it synchronises the block).
template <typename V, typename Combine>
__device__ V group_reduce(V value, V* shared, const Groups& groups, Combine combine) {
  int group = groups.group(), lane = groups.lane();
  shared[groups.slot(group, lane)] = value;
  __syncthreads();
  for (int half = groups.size / 2; half > 0; half /= 2) {
    if (lane < half) {
      shared[groups.slot(group, lane)] = combine(shared[groups.slot(group, lane)], shared[groups.slot(group, lane + half)]);
    }
    __syncthreads();
  }
  V total = shared[groups.slot(group, 0)];
  __syncthreads();
  return total;
}

template <typename V>
struct Sum {
  __device__ __forceinline__ V operator()(V a, V b) const { return a + b; }
};

// The larger of two values, ignoring a NaN on the right as std::max(a, b) does on the CPU.
template <typename V>
struct Max {
  __device__ __forceinline__ V operator()(V a, V b) const { return a < b ? b : a; }
};

}  // namespace kiln::kernels::gpu

// Loop skeletons shared by the CPU kernels: OpenMP parallel ranges, strided elementwise
// iteration over several operands, and iteration over the lines of a view along one dim.
//
// The skeletons hand the kernel a run of `count` elements with one byte stride per operand;
// kernels branch once per run on "all strides are the element size" to a tight loop the
// compiler vectorises, so strided inputs cost nothing when they are in fact contiguous.
// Bodies run inside OpenMP regions and must not throw: kernels validate data (indices) first.
#pragma once

#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>

#include "kernels/view.h"

namespace kiln::kernels::cpu {

// Work below this many elements runs on one thread: forking costs more than it saves.
constexpr int64_t kParallelGrain = 32768;

// Calls body(begin, end) over [0, n) split into at most one contiguous chunk per thread.
template <typename Body>
void parallel_for(int64_t n, int64_t grain, Body&& body) {
  if (n <= 0) return;
  int64_t max_chunks = grain > 0 ? (n + grain - 1) / grain : n;
  int threads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), max_chunks));
  if (threads <= 1 || omp_in_parallel()) {
    body(int64_t{0}, n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    int64_t team = omp_get_num_threads();
    int64_t thread = omp_get_thread_num();
    int64_t chunk = (n + team - 1) / team;
    int64_t begin = thread * chunk;
    int64_t end = std::min(n, begin + chunk);
    if (begin < end) body(begin, end);
  }
}

// Sizes shared by N operands and each operand's byte strides, with size-1 dims dropped and
// adjacent dims merged wherever every operand allows it.
template <size_t N>
struct StridedLayout {
  int ndim = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[N][kMaxDims] = {};

  explicit StridedLayout(const std::array<const View*, N>& views) {
    const View& first = *views[0];
    for (int d = 0; d < first.ndim; ++d) {
      if (first.sizes[d] == 1) continue;
      bool merge = ndim > 0;
      for (size_t k = 0; k < N && merge; ++k) {
        int64_t element = static_cast<int64_t>(dtype_size(views[k]->dtype));
        merge = strides[k][ndim - 1] == views[k]->strides[d] * element * first.sizes[d];
      }
      if (merge) {
        sizes[ndim - 1] *= first.sizes[d];
        for (size_t k = 0; k < N; ++k) {
          strides[k][ndim - 1] = views[k]->strides[d] * static_cast<int64_t>(dtype_size(views[k]->dtype));
        }
      } else {
        sizes[ndim] = first.sizes[d];
        for (size_t k = 0; k < N; ++k) {
          strides[k][ndim] = views[k]->strides[d] * static_cast<int64_t>(dtype_size(views[k]->dtype));
        }
        ++ndim;
      }
    }
  }

  int64_t numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= sizes[d];
    return n;
  }
};

using BytePointers = std::array<char*, 8>;

// Calls run(pointers, strides, count) over runs along the innermost merged dim of operands that
// share views[0]'s sizes; pointers[k] and strides[k] (bytes) belong to views[k].
template <size_t N, typename Run>
void for_each_strided(const std::array<const View*, N>& views, Run&& run,
                      int64_t grain = kParallelGrain) {
  StridedLayout<N> layout(views);
  int64_t total = layout.numel();
  if (total == 0) return;
  std::array<int64_t, N> inner_strides{};
  for (size_t k = 0; k < N; ++k) inner_strides[k] = layout.ndim ? layout.strides[k][layout.ndim - 1] : 0;
  int last = layout.ndim - 1;
  parallel_for(total, grain, [&](int64_t begin, int64_t end) {
    int64_t index[kMaxDims] = {};
    int64_t remaining = begin;
    for (int d = last; d >= 0; --d) {
      index[d] = remaining % layout.sizes[d];
      remaining /= layout.sizes[d];
    }
    int64_t position = begin;
    while (position < end) {
      std::array<char*, N> pointers;
      for (size_t k = 0; k < N; ++k) {
        int64_t offset = 0;
        for (int d = 0; d <= last; ++d) offset += index[d] * layout.strides[k][d];
        pointers[k] = static_cast<char*>(views[k]->data) + offset;
      }
      int64_t count = last >= 0 ? std::min(layout.sizes[last] - index[last], end - position) : 1;
      run(pointers, inner_strides, count);
      position += count;
      if (last < 0) break;
      index[last] += count;
      for (int d = last; d > 0 && index[d] == layout.sizes[d]; --d) {
        index[d] = 0;
        ++index[d - 1];
      }
    }
  });
}

// Calls line(pointers, strides, lengths) once per line of the views along `dim`: every view
// has the same sizes on the other dims, and its own length along dim. Lines run in parallel.
template <size_t N, typename Line>
void for_each_line(const std::array<const View*, N>& views, int dim, Line&& line) {
  const View& first = *views[0];
  int64_t lines = 1;
  for (int d = 0; d < first.ndim; ++d) {
    if (d != dim) lines *= first.sizes[d];
  }
  if (lines == 0) return;
  std::array<int64_t, N> strides{};
  std::array<int64_t, N> lengths{};
  for (size_t k = 0; k < N; ++k) {
    int64_t element = static_cast<int64_t>(dtype_size(views[k]->dtype));
    strides[k] = views[k]->strides[dim] * element;
    lengths[k] = views[k]->sizes[dim];
  }
  int64_t work_per_line = std::max<int64_t>(1, lengths[0]);
  int64_t grain = std::max<int64_t>(1, kParallelGrain / work_per_line);
  parallel_for(lines, grain, [&](int64_t begin, int64_t end) {
    for (int64_t line_index = begin; line_index < end; ++line_index) {
      std::array<char*, N> pointers;
      for (size_t k = 0; k < N; ++k) pointers[k] = static_cast<char*>(views[k]->data);
      int64_t remaining = line_index;
      for (int d = first.ndim - 1; d >= 0; --d) {
        if (d == dim) continue;
        int64_t i = remaining % first.sizes[d];
        remaining /= first.sizes[d];
        for (size_t k = 0; k < N; ++k) {
          pointers[k] += i * views[k]->strides[d] * static_cast<int64_t>(dtype_size(views[k]->dtype));
        }
      }
      line(pointers, strides, lengths);
    }
  });
}

// Reads and writes of one element at a byte address, converting through the compute type.
template <typename T>
inline compute_t<T> load(const char* address) {
  return static_cast<compute_t<T>>(*reinterpret_cast<const T*>(address));
}
template <typename T, typename Value>
inline void store(char* address, Value value) {
  *reinterpret_cast<T*>(address) = static_cast<T>(value);
}

}  // namespace kiln::kernels::cpu

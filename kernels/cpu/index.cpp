// CPU indexing kernels: index_select, index_add, gather and scatter_add.
//
// The four ops are two kernels. Reading ops (gather, index_select) compute, for every position
// p of out, out[p] = in[p with its coordinate along dim replaced by index[p]]; index_select is
// gather with its 1-D index broadcast over the other dims (stride 0), so one strided loop
// serves both and a row of the common embedding lookup becomes one memcpy. Writing ops
// (scatter_add, index_add) are the mirror image with +=, and index_add is scatter_add with the
// broadcast index. Duplicate indices make their writes collide, so threads own disjoint
// positions orthogonal to dim and walk dim serially: no atomics, and every output element sums
// its contributions in index order whatever the thread count.
//
// Index values are data, so they are checked before any parallel loop (bodies must not throw).
// Negative indices are errors, as in PyTorch's versions of these ops.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/loops.h"
#include "kernels/error.h"

namespace kiln::kernels {
namespace {

using cpu::for_each_strided;

// Positions orthogonal to dim handed to a thread at a time in the writing ops: 16 f32 are one
// cache line, so neighbouring threads rarely write the same line of a contiguous output.
constexpr int64_t kScatterBlock = 16;

// A 0-d view as a 1-d view of one element, so dim 0 of a scalar means what it does in PyTorch.
View at_least_1d(const View& view) {
  View result = view;
  if (result.ndim == 0) {
    result.ndim = 1;
    result.sizes[0] = 1;
    result.strides[0] = 0;
  }
  return result;
}

void check_dim(const char* op, int dim, const View& view) {
  KILN_CHECK(dim >= 0 && dim < view.ndim, op, ": dim ", dim, " is out of range for a ", view.ndim,
             "-d tensor");
}

template <typename I>
int64_t load_index(const char* address) {
  return static_cast<int64_t>(*reinterpret_cast<const I*>(address));
}

// Throws for the first index outside [0, size). A parallel pass only flags that one exists (the
// flag is the sole shared write), then a serial pass finds the first to name in the message.
template <typename I>
void check_indices(const char* op, const View& index, int dim, int64_t size) {
  std::atomic<bool> any_bad{false};
  for_each_strided<1>({&index}, [&](auto p, auto s, int64_t n) {
    bool bad = false;
    for (int64_t i = 0; i < n; ++i) {
      bad |= static_cast<uint64_t>(load_index<I>(p[0] + i * s[0])) >= static_cast<uint64_t>(size);
    }
    if (bad) any_bad.store(true, std::memory_order_relaxed);
  });
  if (!any_bad.load()) return;
  bool found = false;
  int64_t first_bad = 0;
  int64_t one_chunk = std::max<int64_t>(1, index.numel());
  for_each_strided<1>(
      {&index},
      [&](auto p, auto s, int64_t n) {
        for (int64_t i = 0; i < n && !found; ++i) {
          int64_t value = load_index<I>(p[0] + i * s[0]);
          if (value < 0 || value >= size) {
            found = true;
            first_bad = value;
          }
        }
      },
      one_chunk);
  KILN_FAIL(op, ": index ", first_bad, " is out of range for dim ", dim, " with size ", size);
}

// The 1-D index of index_select/index_add as a view with like's sizes: its own stride along dim
// and stride 0 on every other dim.
View broadcast_index(const View& index, const View& like, int dim) {
  View result = index;
  result.ndim = like.ndim;
  for (int d = 0; d < like.ndim; ++d) {
    result.sizes[d] = like.sizes[d];
    result.strides[d] = 0;
  }
  result.strides[dim] = index.strides[0];
  return result;
}

// in (..., V, ...), index (..., N, ...) -> out (..., N, ...) along dim: out[p] = in[p with
// coordinate dim := index[p]]. index has out's sizes; in's other dims are at least out's.
template <typename T, typename I>
void gather_along(const View& in, int dim, const View& index, const View& out) {
  // in's element at each output position with its coordinate along dim set to 0.
  View base = in;
  for (int d = 0; d < out.ndim; ++d) base.sizes[d] = out.sizes[d];
  base.strides[dim] = 0;
  int64_t step = in.strides[dim] * static_cast<int64_t>(sizeof(T));
  constexpr int64_t element = sizeof(T);
  for_each_strided<3>({&out, &base, &index}, [&](auto p, auto s, int64_t n) {
    if (s[2] == 0) {
      // One index for the whole run (dim is not the innermost dim): a row copy.
      const char* from = p[1] + load_index<I>(p[2]) * step;
      if (s[0] == element && s[1] == element) {
        std::memcpy(p[0], from, static_cast<size_t>(n) * sizeof(T));
      } else {
        for (int64_t i = 0; i < n; ++i) {
          *reinterpret_cast<T*>(p[0] + i * s[0]) = *reinterpret_cast<const T*>(from + i * s[1]);
        }
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        const char* from = p[1] + i * s[1] + load_index<I>(p[2] + i * s[2]) * step;
        *reinterpret_cast<T*>(p[0] + i * s[0]) = *reinterpret_cast<const T*>(from);
      }
    }
  });
}

// Calls run(pointers, count) for the runs of flat positions [begin, end) of `layout` (last dim
// fastest), pointers[k] at the run's first element of operand k measured from bases[k]. The
// serial counterpart of for_each_strided, for loops that own a range of positions.
template <size_t N, typename Run>
void for_each_run(const cpu::StridedLayout<N>& layout, const std::array<char*, N>& bases,
                  int64_t begin, int64_t end, Run&& run) {
  int last = layout.ndim - 1;
  if (last < 0) {
    if (begin < end) run(bases, int64_t{1});
    return;
  }
  int64_t index[kMaxDims] = {};
  int64_t remaining = begin;
  for (int d = last; d >= 0; --d) {
    index[d] = remaining % layout.sizes[d];
    remaining /= layout.sizes[d];
  }
  for (int64_t position = begin; position < end;) {
    std::array<char*, N> pointers = bases;
    for (size_t k = 0; k < N; ++k) {
      for (int d = 0; d <= last; ++d) pointers[k] += index[d] * layout.strides[k][d];
    }
    int64_t count = std::min(layout.sizes[last] - index[last], end - position);
    run(pointers, count);
    position += count;
    index[last] += count;
    for (int d = last; d > 0 && index[d] == layout.sizes[d]; --d) {
      index[d] = 0;
      ++index[d - 1];
    }
  }
}

// out (..., V, ...) [index (..., N, ...) along dim] += alpha * src (..., N, ...): for every
// position p of index, out[p with coordinate dim := index[p]] += alpha * src[p]. src's and
// out's other dims are at least index's.
template <typename T, typename I>
void scatter_add_along(const View& out, int dim, const View& index, const View& src, double alpha) {
  using C = compute_t<T>;
  C scale = static_cast<C>(alpha);
  constexpr int64_t element = sizeof(T);
  int64_t length = index.sizes[dim];
  int64_t index_step = index.strides[dim] * static_cast<int64_t>(sizeof(I));
  int64_t src_step = src.strides[dim] * element;
  int64_t out_step = out.strides[dim] * element;

  // The positions orthogonal to dim: each view with its dim dropped, index's sizes throughout.
  View index_rest = index, src_rest = src, out_rest = out;
  for (int d = 0; d < index.ndim; ++d) {
    int64_t size = d == dim ? 1 : index.sizes[d];
    index_rest.sizes[d] = src_rest.sizes[d] = out_rest.sizes[d] = size;
  }
  cpu::StridedLayout<3> rest({&index_rest, &src_rest, &out_rest});
  int64_t positions = rest.numel();
  std::array<char*, 3> bases = {static_cast<char*>(index.data), static_cast<char*>(src.data),
                                static_cast<char*>(out.data)};
  // Walk dim innermost when src's lines along dim are denser than its rows across them.
  bool along_dim_inner =
      rest.ndim == 0 || std::abs(src_step) < std::abs(rest.strides[1][rest.ndim - 1]);

  int64_t blocks = (positions + kScatterBlock - 1) / kScatterBlock;
  int64_t grain = std::max<int64_t>(1, cpu::kParallelGrain / (kScatterBlock * std::max<int64_t>(1, length)));
  cpu::parallel_for(blocks, grain, [&](int64_t first_block, int64_t end_block) {
    int64_t begin = first_block * kScatterBlock;
    int64_t end = std::min(positions, end_block * kScatterBlock);
    if (along_dim_inner) {
      int64_t index_inner = rest.ndim ? rest.strides[0][rest.ndim - 1] : 0;
      int64_t src_inner = rest.ndim ? rest.strides[1][rest.ndim - 1] : 0;
      int64_t out_inner = rest.ndim ? rest.strides[2][rest.ndim - 1] : 0;
      for_each_run(rest, bases, begin, end, [&](const std::array<char*, 3>& p, int64_t n) {
        for (int64_t i = 0; i < n; ++i) {
          const char* index_line = p[0] + i * index_inner;
          const char* src_line = p[1] + i * src_inner;
          char* out_line = p[2] + i * out_inner;
          for (int64_t j = 0; j < length; ++j) {
            char* target = out_line + load_index<I>(index_line + j * index_step) * out_step;
            cpu::store<T>(target, cpu::load<T>(target) + scale * cpu::load<T>(src_line + j * src_step));
          }
        }
      });
      return;
    }
    int64_t index_inner = rest.strides[0][rest.ndim - 1];
    int64_t src_inner = rest.strides[1][rest.ndim - 1];
    int64_t out_inner = rest.strides[2][rest.ndim - 1];
    for (int64_t j = 0; j < length; ++j) {
      std::array<char*, 3> bases_j = {bases[0] + j * index_step, bases[1] + j * src_step, bases[2]};
      for_each_run(rest, bases_j, begin, end, [&](const std::array<char*, 3>& p, int64_t n) {
        if (index_inner == 0) {
          // index_add's case: one index for the run, so it adds one contiguous row into another.
          char* target = p[2] + load_index<I>(p[0]) * out_step;
          if (src_inner == element && out_inner == element) {
            T* to = reinterpret_cast<T*>(target);
            const T* from = reinterpret_cast<const T*>(p[1]);
            for (int64_t i = 0; i < n; ++i) {
              to[i] = static_cast<T>(static_cast<C>(to[i]) + scale * static_cast<C>(from[i]));
            }
          } else {
            for (int64_t i = 0; i < n; ++i) {
              char* to = target + i * out_inner;
              cpu::store<T>(to, cpu::load<T>(to) + scale * cpu::load<T>(p[1] + i * src_inner));
            }
          }
        } else {
          for (int64_t i = 0; i < n; ++i) {
            char* to = p[2] + i * out_inner + load_index<I>(p[0] + i * index_inner) * out_step;
            cpu::store<T>(to, cpu::load<T>(to) + scale * cpu::load<T>(p[1] + i * src_inner));
          }
        }
      });
    }
  });
}

}  // namespace

// in (..., V, ...), index (N) -> out (..., N, ...) along dim.
void CpuBackend::index_select(const View& in_view, int dim, const View& index_view,
                              const View& out_view) {
  View in = at_least_1d(in_view), index = at_least_1d(index_view), out = at_least_1d(out_view);
  check_dim("index_select", dim, in);
  dispatch_index(index.dtype, "index_select", [&]<typename I>() {
    check_indices<I>("index_select", index, dim, in.sizes[dim]);
    View index_everywhere = broadcast_index(index, out, dim);
    dispatch_all(out.dtype, "index_select", [&]<typename T>() {
      gather_along<T, I>(in, dim, index_everywhere, out);
    });
  });
}

// out (..., V, ...) += alpha * src (..., N, ...) scattered along dim by index (N).
void CpuBackend::index_add(const View& out_view, int dim, const View& index_view,
                           const View& src_view, double alpha) {
  View out = at_least_1d(out_view), index = at_least_1d(index_view), src = at_least_1d(src_view);
  check_dim("index_add", dim, out);
  dispatch_index(index.dtype, "index_add", [&]<typename I>() {
    check_indices<I>("index_add", index, dim, out.sizes[dim]);
    View index_everywhere = broadcast_index(index, src, dim);
    dispatch_numeric(out.dtype, "index_add", [&]<typename T>() {
      scatter_add_along<T, I>(out, dim, index_everywhere, src, alpha);
    });
  });
}

// in (..., V, ...), index (..., N, ...) -> out (..., N, ...), out and index the same sizes.
void CpuBackend::gather(const View& in_view, int dim, const View& index_view, const View& out_view) {
  View in = at_least_1d(in_view), index = at_least_1d(index_view), out = at_least_1d(out_view);
  check_dim("gather", dim, in);
  dispatch_index(index.dtype, "gather", [&]<typename I>() {
    check_indices<I>("gather", index, dim, in.sizes[dim]);
    dispatch_all(out.dtype, "gather", [&]<typename T>() { gather_along<T, I>(in, dim, index, out); });
  });
}

// out (..., V, ...) += src (..., N, ...) scattered along dim by index (..., N, ...); src may be
// larger than index on every dim and out on every dim but dim (only index's extent is used).
void CpuBackend::scatter_add(const View& out_view, int dim, const View& index_view,
                             const View& src_view) {
  View out = at_least_1d(out_view), index = at_least_1d(index_view), src = at_least_1d(src_view);
  check_dim("scatter_add", dim, out);
  dispatch_index(index.dtype, "scatter_add", [&]<typename I>() {
    check_indices<I>("scatter_add", index, dim, out.sizes[dim]);
    dispatch_numeric(out.dtype, "scatter_add", [&]<typename T>() {
      scatter_add_along<T, I>(out, dim, index, src, 1.0);
    });
  });
}

}  // namespace kiln::kernels

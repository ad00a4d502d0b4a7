// CUDA reductions: sum, mean, prod, max/min (with indices), argmax/argmin, logsumexp, variance.
//
// Each reduction is an accumulator (add one element, merge two partial results), the CPU's
// accumulators with the same arithmetic: floating sums and products in double, integer ones in
// int64, Welford for the variance, an online log-sum-exp. One kernel drives them all:
//  - a group of threads (group_reduce.cuh) reduces one output; its lanes take every size-th
//    reduced element, and the lanes are adjacent threads when the reduced elements are adjacent
//    in memory, the groups when the outputs are (a bias gradient), so warps read whole lines;
//  - when the outputs are too few to fill the GPU (a full sum, a bias gradient over many rows)
//    the reduced range is cut into chunks along grid.y; each writes a partial accumulator and a
//    second kernel merges the chunks of an output in chunk order.
// The plan depends only on the shapes and the device, so a rerun gives the same bits. Extrema
// merge by (value, index) with NaN above everything and the lower index winning ties, which is
// the CPU's first-occurrence rule in any merge order.
#include <cmath>
#include <limits>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/group_reduce.cuh"

namespace kiln::kernels {
namespace gpu {
namespace {

template <typename T>
using accumulate_t = std::conditional_t<std::is_floating_point_v<compute_t<T>>, double, int64_t>;

template <typename C>
__device__ __forceinline__ bool is_nan(C x) {
  if constexpr (std::is_floating_point_v<C>) return x != x;
  return false;
}

// sum, mean and prod: a running total (sum or product) in double or int64.
template <typename T>
struct TotalAccumulator {
  accumulate_t<T> total = 0;
  bool product = false;
  bool mean = false;
  __device__ void add(compute_t<T> x, int64_t) {
    if (product) {
      total *= x;
    } else {
      total += x;
    }
  }
  __device__ void merge(const TotalAccumulator& other) {
    if (product) {
      total *= other.total;
    } else {
      total += other.total;
    }
  }
  __device__ double value(int64_t count) const {
    return mean ? static_cast<double>(total) / static_cast<double>(count) : static_cast<double>(total);
  }
};

template <typename T>
struct ExtremumAccumulator {
  using C = compute_t<T>;
  C best;
  int64_t index = -1;
  bool maximum = true;
  // Whether (x, i) beats the current best: NaN beats numbers, then the larger (or smaller)
  // value, then the lower index.
  __device__ bool better(C x, int64_t i) const {
    if (index < 0) return true;
    if (is_nan(best)) return is_nan(x) && i < index;
    if (is_nan(x)) return true;
    if (x == best) return i < index;
    return maximum ? x > best : x < best;
  }
  __device__ void add(C x, int64_t i) {
    if (better(x, i)) {
      best = x;
      index = i;
    }
  }
  __device__ void merge(const ExtremumAccumulator& other) {
    if (other.index >= 0) add(other.best, other.index);
  }
  __device__ double value(int64_t) const { return static_cast<double>(best); }
};

template <typename T>
struct LogSumExpAccumulator {
  double maximum = -INFINITY;
  double scaled_sum = 0.0;
  bool saw_nan = false;
  __device__ void add(compute_t<T> value, int64_t) {
    double x = static_cast<double>(value);
    if (x != x) {
      saw_nan = true;
    } else if (x > maximum) {
      scaled_sum = (maximum == -INFINITY ? 0.0 : scaled_sum * exp(maximum - x)) + 1.0;
      maximum = x;
    } else if (x != -INFINITY) {
      scaled_sum += exp(x - maximum);
    }
  }
  __device__ void merge(const LogSumExpAccumulator& other) {
    saw_nan = saw_nan || other.saw_nan;
    if (other.maximum == -INFINITY) return;
    if (maximum == -INFINITY) {
      maximum = other.maximum;
      scaled_sum = other.scaled_sum;
    } else if (other.maximum > maximum) {
      scaled_sum = scaled_sum * exp(maximum - other.maximum) + other.scaled_sum;
      maximum = other.maximum;
    } else {
      scaled_sum += other.scaled_sum * exp(other.maximum - maximum);
    }
  }
  __device__ double value(int64_t) const {
    if (saw_nan) return NAN;
    if (isinf(maximum)) return maximum;
    return maximum + log(scaled_sum);
  }
};

// Welford's running mean and squared deviation, merged with Chan et al.'s formula.
template <typename T>
struct VarianceAccumulator {
  double count = 0, mean = 0, squared_deviation = 0;
  double correction = 1;
  __device__ void add(compute_t<T> value, int64_t) {
    double x = static_cast<double>(value);
    count += 1;
    double delta = x - mean;
    mean += delta / count;
    squared_deviation += delta * (x - mean);
  }
  __device__ void merge(const VarianceAccumulator& other) {
    if (other.count == 0) return;
    double total = count + other.count;
    double delta = other.mean - mean;
    squared_deviation += other.squared_deviation + delta * delta * count * other.count / total;
    mean += delta * other.count / total;
    count = total;
  }
  __device__ double value(int64_t) const {
    double divisor = count - correction;
    return divisor > 0 ? squared_deviation / divisor : NAN;
  }
};

struct ReducePlan {
  Layout<3> outputs;               // over out's sizes: in (each output's first element), out, indices
  int reduced_ndim = 0;            // the reduced dims of in, coalesced, and their strides
  int64_t reduced_sizes[kMaxDims] = {};
  int64_t reduced_strides[kMaxDims] = {};
  int64_t count = 1;               // reduced elements per output
  int64_t output_count = 0;
  Groups groups;
  int64_t chunk = 1;               // reduced elements per grid.y chunk
  bool has_values = true, has_indices = false;
};

// Offset in `in` of the r-th reduced element (row-major over the reduced dims).
__device__ __forceinline__ int64_t reduced_offset(const ReducePlan& plan, int64_t r) {
  if (plan.reduced_ndim == 1) return r * plan.reduced_strides[0];
  int64_t offset = 0;
#pragma unroll
  for (int d = kMaxDims - 1; d >= 0; --d) {
    if (d < plan.reduced_ndim) offset += divide(r, plan.reduced_sizes[d]) * plan.reduced_strides[d];
  }
  return offset;
}

template <typename T, typename Acc>
__device__ __forceinline__ void write_result(const ReducePlan& plan, const Acc& acc, T* out, int64_t* indices) {
  if (plan.has_values) *out = static_cast<T>(static_cast<compute_t<T>>(acc.value(plan.count)));
  if constexpr (requires { acc.index; }) {
    if (plan.has_indices) *indices = acc.index < 0 ? 0 : acc.index;
  }
}

// in -> out (outputs) and indices; chunk blockIdx.y of each output's reduced range, written to
// `partials` (chunks, outputs) when there is more than one chunk.
template <typename T, typename Acc>
__global__ void reduce_kernel(ReducePlan plan, const T* in, T* out, int64_t* indices, Acc initial, Acc* partials) {
  __shared__ GroupScratch<Acc> scratch;
  int64_t o = static_cast<int64_t>(blockIdx.x) * plan.groups.count() + plan.groups.group();
  int64_t begin = static_cast<int64_t>(blockIdx.y) * plan.chunk;
  int64_t end = min(plan.count, begin + plan.chunk);
  Acc acc = initial;
  int64_t offset[3] = {0, 0, 0};
  if (o < plan.output_count) {
    plan.outputs.offsets(o, offset);
    const T* base = in + offset[0];
    for (int64_t r = begin + plan.groups.lane(); r < end; r += plan.groups.size) {
      acc.add(load(base + reduced_offset(plan, r)), r);
    }
  }
  acc = group_reduce(acc, scratch.values(), plan.groups, [](Acc a, const Acc& b) {
    a.merge(b);
    return a;
  });
  if (o >= plan.output_count || plan.groups.lane() != 0) return;
  if (gridDim.y == 1) {
    write_result(plan, acc, out + offset[1], indices + offset[2]);
  } else {
    partials[blockIdx.y * plan.output_count + o] = acc;
  }
}

// Merges the chunks of each output in chunk order.
template <typename T, typename Acc>
__global__ void reduce_chunks_kernel(ReducePlan plan, int64_t chunks, const Acc* partials, T* out, int64_t* indices) {
  for (int64_t o = thread_index(); o < plan.output_count; o += thread_count()) {
    Acc acc = partials[o];
    for (int64_t c = 1; c < chunks; ++c) acc.merge(partials[c * plan.output_count + o]);
    int64_t offset[3];
    plan.outputs.offsets(o, offset);
    write_result(plan, acc, out + offset[1], indices + offset[2]);
  }
}

// Drives one accumulator over every output of `in` reduced to `values`' (or `indices`') shape.
template <typename T, typename Acc>
void reduce_with(const char* op, const View& in, const View* values, const View* indices, const Acc& initial) {
  const View& shape_of_out = values ? *values : *indices;
  cudaStream_t stream = stream_for(op, in);
  ReducePlan plan;
  plan.output_count = shape_of_out.numel();
  if (plan.output_count == 0) return;
  plan.has_values = values != nullptr;
  plan.has_indices = indices != nullptr;
  // The reduced dims (out has size 1 where in does not), coalesced, as the CPU's ReducedLayout.
  for (int d = 0; d < in.ndim; ++d) {
    if (shape_of_out.sizes[d] != 1 || in.sizes[d] == 1) continue;
    plan.count *= in.sizes[d];
    int last = plan.reduced_ndim - 1;
    if (last >= 0 && plan.reduced_strides[last] == in.strides[d] * in.sizes[d]) {
      plan.reduced_sizes[last] *= in.sizes[d];
      plan.reduced_strides[last] = in.strides[d];
    } else {
      plan.reduced_sizes[plan.reduced_ndim] = in.sizes[d];
      plan.reduced_strides[plan.reduced_ndim] = in.strides[d];
      ++plan.reduced_ndim;
    }
  }
  View kept = in;
  for (int d = 0; d < in.ndim; ++d) {
    if (shape_of_out.sizes[d] == 1) kept.sizes[d] = 1;
  }
  plan.outputs = make_layout<3>({&kept, values ? values : indices, indices ? indices : values});

  bool reduced_adjacent = plan.reduced_ndim == 0 || plan.reduced_strides[plan.reduced_ndim - 1] == 1;
  bool outputs_adjacent = plan.outputs.ndim > 0 && plan.outputs.strides[0][plan.outputs.ndim - 1] == 1;
  bool lanes_adjacent = reduced_adjacent || !outputs_adjacent || plan.output_count == 1;
  plan.groups = groups_for(plan.count, lanes_adjacent);
  int64_t blocks = (plan.output_count + plan.groups.count() - 1) / plan.groups.count();
  // Chunks until the grid covers the GPU a few times over, keeping >= 32 elements per lane.
  constexpr int64_t kMinPerLane = 32;
  int64_t wanted = (4 * multiprocessors() + blocks - 1) / blocks;
  int64_t useful = plan.count / (plan.groups.size * kMinPerLane);
  int64_t chunks = std::clamp<int64_t>(std::min(wanted, useful), 1, 65535);
  plan.chunk = std::max<int64_t>(1, (plan.count + chunks - 1) / chunks);
  chunks = plan.count == 0 ? 1 : (plan.count + plan.chunk - 1) / plan.chunk;
  KILN_CHECK(blocks <= std::numeric_limits<int>::max(), op, ": ", plan.output_count, " outputs are too many for one launch");

  T* out = values ? values->as<T>() : nullptr;
  int64_t* index_out = indices ? indices->as<int64_t>() : nullptr;
  kiln::cuda::DeviceBuffer partials(chunks > 1 ? static_cast<size_t>(chunks * plan.output_count) * sizeof(Acc) : 0);
  dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(chunks));
  reduce_kernel<T, Acc><<<grid, kBlock, 0, stream>>>(plan, in.as<T>(), out, index_out, initial, partials.as<Acc>());
  KILN_CUDA_CHECK_LAUNCH();
  if (chunks > 1) {
    reduce_chunks_kernel<T, Acc><<<grid_for(plan.output_count), kBlock, 0, stream>>>(plan, chunks, partials.as<Acc>(),
                                                                                     out, index_out);
    KILN_CUDA_CHECK_LAUNCH();
  }
}

template <typename T>
ExtremumAccumulator<T> extremum(bool maximum) {
  using C = compute_t<T>;
  ExtremumAccumulator<T> acc;
  acc.best = maximum ? std::numeric_limits<C>::lowest() : std::numeric_limits<C>::max();
  acc.maximum = maximum;
  return acc;
}

}  // namespace
}  // namespace gpu

void CudaBackend::reduce(ReduceOp op, const View& in, const View& out, const View* indices) {
  const char* name = reduce_op_name(op);
  auto run = [&]<typename T>() {
    switch (op) {
      case ReduceOp::sum:
      case ReduceOp::mean:
      case ReduceOp::prod: {
        gpu::TotalAccumulator<T> initial;
        initial.product = op == ReduceOp::prod;
        initial.mean = op == ReduceOp::mean;
        if (initial.product) initial.total = 1;
        return gpu::reduce_with<T>(name, in, &out, nullptr, initial);
      }
      case ReduceOp::max:
      case ReduceOp::min: return gpu::reduce_with<T>(name, in, &out, indices, gpu::extremum<T>(op == ReduceOp::max));
      case ReduceOp::argmax:
      case ReduceOp::argmin:
        return gpu::reduce_with<T>(name, in, nullptr, indices, gpu::extremum<T>(op == ReduceOp::argmax));
      case ReduceOp::logsumexp:
        if constexpr (std::is_floating_point_v<compute_t<T>>) {
          return gpu::reduce_with<T>(name, in, &out, nullptr, gpu::LogSumExpAccumulator<T>{});
        }
        return;
    }
  };
  if (op == ReduceOp::mean || op == ReduceOp::logsumexp) {
    dispatch_floating(in.dtype, name, run);
  } else {
    dispatch_numeric(in.dtype, name, run);
  }
}

void CudaBackend::variance(const View& in, const View& out, double correction) {
  dispatch_floating(in.dtype, "var", [&]<typename T>() {
    gpu::VarianceAccumulator<T> initial;
    initial.correction = correction;
    gpu::reduce_with<T>("var", in, &out, nullptr, initial);
  });
}

}  // namespace kiln::kernels

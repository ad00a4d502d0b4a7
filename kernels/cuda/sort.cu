// CUDA sort and topk along one dim of a strided view.
//
// Both are one segmented radix sort (CUB), whose sort is stable. Each line along dim becomes a
// segment of (key, position) pairs, the key an unsigned integer whose order is the value order
// the CPU uses: NaN above +inf (all NaNs equal), -0 equal to +0, and for a descending sort the
// key's bits inverted, so ascending key order is descending value order. Stability then breaks
// ties by position, as the CPU's (value, position) order does, in both directions. sort writes
// every position of a line, topk the first k; an unsorted topk is returned sorted, which is one
// of the orders it allows. Values are copied from the input element itself, bit for bit.
// 8-, 16- and 32-bit dtypes share the 32-bit key sort (16-bit keys sort only their 16 bits), so
// the build instantiates CUB twice.
#include <cub/device/device_segmented_radix_sort.cuh>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/launch.cuh"

namespace kiln::kernels {
namespace gpu {
namespace {

template <typename T>
using key_t = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;

// The order-preserving unsigned key of a value.
template <typename T>
__device__ __forceinline__ key_t<T> key_of(T value, bool descending) {
  using Key = key_t<T>;
  constexpr int kBits = sizeof(T) * 8;
  constexpr Key kSign = Key{1} << (kBits - 1);
  constexpr Key kAll = static_cast<Key>(~Key{0} >> (sizeof(Key) * 8 - kBits));
  Key key;
  if constexpr (std::is_integral_v<T>) {
    // Two's complement with the sign bit flipped orders as unsigned.
    key = static_cast<Key>(static_cast<std::make_unsigned_t<T>>(value)) ^ kSign;
  } else {
    Key bits;
    if constexpr (std::is_same_v<T, float>) {
      bits = __float_as_uint(value);
    } else if constexpr (std::is_same_v<T, double>) {
      bits = static_cast<Key>(__double_as_longlong(value));
    } else {
      bits = value.bits;
    }
    compute_t<T> number = static_cast<compute_t<T>>(value);
    if (number != number) {
      key = kAll;
    } else {
      if (bits == kSign) bits = 0;  // -0 sorts with +0
      // Sign and magnitude to unsigned order: negatives inverted, positives above them.
      key = (bits & kSign) ? (~bits & kAll) : (bits | kSign);
    }
  }
  return descending ? (~key & kAll) : key;
}

// The lines of in, values and indices (equal sizes off dim).
struct SortLines {
  Layout<3> starts;  // in, values, indices: each line's first element
  int64_t in_stride = 0, values_stride = 0, indices_stride = 0;
  int64_t length = 0, count = 0;
};

// keys, positions (lines, length) from in.
template <typename T>
__global__ void make_keys_kernel(SortLines lines, const T* in, bool descending, key_t<T>* keys, int* positions) {
  int64_t n = lines.count * lines.length;
  for (int64_t i = thread_index(); i < n; i += thread_count()) {
    int64_t line = i / lines.length, j = i - line * lines.length;
    int64_t offset[3];
    lines.starts.offsets(line, offset);
    keys[i] = key_of(in[offset[0] + j * lines.in_stride], descending);
    positions[i] = static_cast<int>(j);
  }
}

// values, indices (lines, k) = the first k sorted positions of each line, values copied.
template <typename Bits>
__global__ void write_selected_kernel(SortLines lines, int64_t k, const int* sorted, const Bits* in, Bits* values,
                                      int64_t* indices) {
  int64_t n = lines.count * k;
  for (int64_t i = thread_index(); i < n; i += thread_count()) {
    int64_t line = i / k, j = i - line * k;
    int64_t offset[3];
    lines.starts.offsets(line, offset);
    int64_t position = sorted[line * lines.length + j];
    values[offset[1] + j * lines.values_stride] = in[offset[0] + position * lines.in_stride];
    indices[offset[2] + j * lines.indices_stride] = position;
  }
}

__global__ void segment_offsets_kernel(int64_t segments, int64_t length, int* offsets) {
  for (int64_t i = thread_index(); i <= segments; i += thread_count()) offsets[i] = static_cast<int>(i * length);
}

template <typename Key>
void sort_segments(const Key* keys_in, Key* keys_out, const int* positions_in, int* positions_out, int64_t lines,
                   int64_t length, int end_bit, cudaStream_t stream) {
  // CUB counts items in int: lines are sorted in batches of at most 2^31 - 1 items.
  int64_t per_batch = std::max<int64_t>(1, INT32_MAX / std::max<int64_t>(1, length));
  int64_t batch_lines = std::min(lines, per_batch);
  kiln::cuda::DeviceBuffer offsets(static_cast<size_t>(batch_lines + 1) * sizeof(int));
  segment_offsets_kernel<<<grid_for(batch_lines + 1), kBlock, 0, stream>>>(batch_lines, length, offsets.as<int>());
  KILN_CUDA_CHECK_LAUNCH();
  size_t temp_bytes = 0;
  KILN_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairs(
      nullptr, temp_bytes, keys_in, keys_out, positions_in, positions_out, static_cast<int>(batch_lines * length),
      static_cast<int>(batch_lines), offsets.as<int>(), offsets.as<int>() + 1, 0, end_bit, stream));
  kiln::cuda::DeviceBuffer temp(temp_bytes);
  for (int64_t first = 0; first < lines; first += batch_lines) {
    int64_t count = std::min(batch_lines, lines - first);
    int64_t skip = first * length;
    KILN_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairs(
        temp.data(), temp_bytes, keys_in + skip, keys_out + skip, positions_in + skip, positions_out + skip,
        static_cast<int>(count * length), static_cast<int>(count), offsets.as<int>(), offsets.as<int>() + 1, 0,
        end_bit, stream));
  }
}

// The first k of every line of in along dim, in (descending or ascending) order.
template <typename T>
void select(const char* op, const View& in, int dim, int64_t k, bool descending, const View& values,
            const View& indices) {
  cudaStream_t stream = stream_for(op, in);
  SortLines lines;
  lines.length = in.sizes[dim];
  lines.count = lines.length == 0 ? 0 : in.numel() / lines.length;
  if (lines.count == 0 || k == 0) return;
  KILN_CHECK(lines.length <= INT32_MAX, op, ": a line of ", lines.length, " elements is too long to sort");
  View starts[3] = {in, values, indices};
  for (View& v : starts) v.sizes[dim] = 1;
  lines.starts = make_layout<3>({&starts[0], &starts[1], &starts[2]});
  lines.in_stride = in.strides[dim];
  lines.values_stride = values.strides[dim];
  lines.indices_stride = indices.strides[dim];

  using Key = key_t<T>;
  size_t items = static_cast<size_t>(lines.count * lines.length);
  kiln::cuda::DeviceBuffer keys(items * sizeof(Key) * 2), positions(items * sizeof(int) * 2);
  Key* keys_in = keys.as<Key>();
  int* positions_in = positions.as<int>();
  make_keys_kernel<T><<<grid_for(static_cast<int64_t>(items)), kBlock, 0, stream>>>(lines, in.as<T>(), descending,
                                                                                    keys_in, positions_in);
  KILN_CUDA_CHECK_LAUNCH();
  sort_segments(keys_in, keys_in + items, positions_in, positions_in + items, lines.count, lines.length,
                static_cast<int>(sizeof(T) * 8), stream);
  using Bits = bits_t<sizeof(T)>;
  write_selected_kernel<Bits><<<grid_for(lines.count * k), kBlock, 0, stream>>>(
      lines, k, positions_in + items, in.as<Bits>(), values.as<Bits>(), indices.as<int64_t>());
  KILN_CUDA_CHECK_LAUNCH();
}

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
  KILN_CHECK(dim >= 0 && dim < view.ndim, op, ": dim ", dim, " is out of range for a ", view.ndim, "-d tensor");
}

}  // namespace
}  // namespace gpu

// in (..., L, ...) -> values (..., k, ...) in's dtype, indices (..., k, ...) i64.
void CudaBackend::topk(const View& in_view, int64_t k, int dim, bool largest, bool sorted, const View& values_view,
                       const View& indices_view) {
  View in = gpu::at_least_1d(in_view), values = gpu::at_least_1d(values_view), indices = gpu::at_least_1d(indices_view);
  gpu::check_dim("topk", dim, in);
  int64_t length = in.sizes[dim];
  KILN_CHECK(k >= 0 && k <= length, "topk: k ", k, " is out of range for dim ", dim, " with size ", length);
  if (k == 0) return;
  dispatch_numeric(in.dtype, "topk", [&]<typename T>() { gpu::select<T>("topk", in, dim, k, largest, values, indices); });
}

// in (..., L, ...) -> values (..., L, ...) in's dtype, indices (..., L, ...) i64.
void CudaBackend::sort(const View& in_view, int dim, bool descending, const View& values_view,
                       const View& indices_view) {
  View in = gpu::at_least_1d(in_view), values = gpu::at_least_1d(values_view), indices = gpu::at_least_1d(indices_view);
  gpu::check_dim("sort", dim, in);
  dispatch_numeric(in.dtype, "sort", [&]<typename T>() {
    gpu::select<T>("sort", in, dim, in.sizes[dim], descending, values, indices);
  });
}

}  // namespace kiln::kernels

// CUDA layer norm and RMS norm over the last dim of a contiguous (N, C) view, forward and
// backward.
//
// Each row is one problem for a group of adjacent threads (group_reduce.cuh), with the CPU's
// formulas in the compute type: PyTorch's biased variance and rstd = 1 / sqrt(var + eps), the
// layer-norm mean taken of x - x[0] and the variance in a second pass over squared deviations,
// which stays accurate when |mean| >> std. mean and rstd are read and written in their own
// views' dtype, so 16-bit inputs may keep f32 statistics.
//
// The residual form normalises x + residual: each lane first writes its elements of the row's
// sum, rounded to the dtype as the add op rounds it, and the later passes read them back (each
// lane only its own, so no barrier is needed). The backward adds the sum's other gradient to
// the rounded grad_x, as autograd would. Both give the unfused ops' bits.
//
// The weight and bias gradients are sums over rows. Blocks of 32 columns x 8 row lanes walk
// chunks of rows (a warp reads 32 adjacent columns of one row), combine their lanes in a fixed
// order, and write one partial row per chunk; a second kernel adds the chunks in chunk order.
// The chunking depends only on N, so the result has the same bits on every run, without atomics.
#include <cmath>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/group_reduce.cuh"

namespace kiln::kernels {
namespace gpu {
namespace {

struct NormRows {
  int64_t count = 0, width = 0;
  DType mean_dtype = DType::f32, rstd_dtype = DType::f32;
  bool rms = false;  // RMS norm: no mean, no bias
  double eps = 0;
};

template <typename C>
struct Pair {
  C first, second;
};

template <typename C>
struct PairSum {
  __device__ Pair<C> operator()(Pair<C> a, Pair<C> b) const { return {a.first + b.first, a.second + b.second}; }
};

// x + residual rounded to T (the add op's result), in the compute type.
template <typename T>
__device__ __forceinline__ compute_t<T> rounded_sum(const T* x, const T* residual) {
  return static_cast<compute_t<T>>(static_cast<T>(load(x) + load(residual)));
}

// x, residual (N, C), weight, bias (C) -> sum, y (N, C), mean (layer norm only), rstd (N).
template <typename T>
__global__ void norm_kernel(NormRows rows, Groups groups, const T* x, const T* residual, const T* weight,
                            const T* bias, T* sum, T* y, void* mean, void* rstd) {
  using C = compute_t<T>;
  __shared__ GroupScratch<C> scratch;
  int64_t row = static_cast<int64_t>(blockIdx.x) * groups.count() + groups.group();
  bool valid = row < rows.count;
  int64_t n = valid ? rows.width : 0, offset = (valid ? row : 0) * rows.width;
  const T* in = x + offset;
  T* out = y + offset;
  int lane = groups.lane();
  if (residual) {
    for (int64_t c = lane; c < n; c += groups.size) store(sum + offset + c, rounded_sum(in + c, residual + offset + c));
    in = sum + offset;
  }

  C center = 0;
  if (!rows.rms) {
    // Summing x - x[0] keeps the sum near zero when |mean| >> std. (Element 0 of a sum row was
    // written by lane 0, so the other lanes form it themselves.)
    C first = n == 0 ? C(0) : residual ? rounded_sum(x + offset, residual + offset) : load(in);
    C shift = first, shifted_sum = 0;
    for (int64_t c = lane; c < n; c += groups.size) shifted_sum += load(in + c) - shift;
    shifted_sum = group_reduce(shifted_sum, scratch.values(), groups, Sum<C>{});
    center = shift + shifted_sum / static_cast<C>(rows.width);
  }
  C squares = 0;
  for (int64_t c = lane; c < n; c += groups.size) {
    C deviation = load(in + c) - center;
    squares += deviation * deviation;
  }
  squares = group_reduce(squares, scratch.values(), groups, Sum<C>{});
  C inverse = C(1) / std::sqrt(squares / static_cast<C>(rows.width) + static_cast<C>(rows.eps));
  for (int64_t c = lane; c < n; c += groups.size) {
    C value = (load(in + c) - center) * inverse;
    if (weight) value *= load(weight + c);
    if (bias) value += load(bias + c);
    store(out + c, value);
  }
  if (!valid || lane != 0) return;
  if (!rows.rms) store_scalar(mean, rows.mean_dtype, row, static_cast<double>(center));
  store_scalar(rstd, rows.rstd_dtype, row, static_cast<double>(inverse));
}

// grad_y, grad_sum, x (N, C), weight (C), mean, rstd (N) -> grad_x (N, C), with
// xhat = (x - mean) * rstd and g = grad_y * weight:
//   layer norm: grad_x = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   RMS norm:   grad_x = rstd * (g - xhat * mean(g * xhat))          (mean = 0)
// rounded to T, plus grad_sum when given.
template <typename T>
__global__ void norm_backward_kernel(NormRows rows, Groups groups, const T* grad_y, const T* grad_sum, const T* x,
                                     const T* weight, const void* mean, const void* rstd, T* grad_x) {
  using C = compute_t<T>;
  __shared__ GroupScratch<Pair<C>> scratch;
  int64_t row = static_cast<int64_t>(blockIdx.x) * groups.count() + groups.group();
  bool valid = row < rows.count;
  int64_t n = valid ? rows.width : 0, offset = (valid ? row : 0) * rows.width;
  int lane = groups.lane();
  C center = rows.rms || !valid ? C(0) : static_cast<C>(load_scalar(mean, rows.mean_dtype, row));
  C inverse = valid ? static_cast<C>(load_scalar(rstd, rows.rstd_dtype, row)) : C(0);

  Pair<C> sums{0, 0};  // sum(g), sum(g * xhat)
  for (int64_t c = lane; c < n; c += groups.size) {
    C dy = load(grad_y + offset + c);
    C xhat = (load(x + offset + c) - center) * inverse;
    C g = weight ? dy * load(weight + c) : dy;
    sums.first += g;
    sums.second += g * xhat;
  }
  sums = group_reduce(sums, scratch.values(), groups, PairSum<C>{});
  C mean_g = rows.rms ? C(0) : sums.first / static_cast<C>(rows.width);
  C mean_g_xhat = sums.second / static_cast<C>(rows.width);
  for (int64_t c = lane; c < n; c += groups.size) {
    C dy = load(grad_y + offset + c);
    C xhat = (load(x + offset + c) - center) * inverse;
    C g = weight ? dy * load(weight + c) : dy;
    if (grad_sum) {
      // The product rounded to T on its own, then the sum's gradient added, as autograd adds them.
      C value = multiply_rounded(inverse, g - mean_g - xhat * mean_g_xhat);
      store(grad_x + offset + c, static_cast<C>(static_cast<T>(value)) + load(grad_sum + offset + c));
    } else {
      store(grad_x + offset + c, inverse * (g - mean_g - xhat * mean_g_xhat));
    }
  }
}

constexpr int kColumns = 32;                 // columns per block of the parameter-gradient kernel
constexpr int kRowLanes = kBlock / kColumns;  // row lanes per block

// Partial sums over chunk blockIdx.y of rows of grad_y * xhat (weight) and grad_y (bias):
// partials (chunks, 2, C) in double.
template <typename T>
__global__ void parameter_partials_kernel(NormRows rows, int64_t rows_per_chunk, const T* grad_y, const T* x,
                                          const void* mean, const void* rstd, double* partials) {
  using C = compute_t<T>;
  __shared__ Pair<double> lanes[kRowLanes][kColumns];
  int column_lane = static_cast<int>(threadIdx.x) % kColumns, row_lane = static_cast<int>(threadIdx.x) / kColumns;
  int64_t c = static_cast<int64_t>(blockIdx.x) * kColumns + column_lane;
  int64_t begin = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  int64_t end = min(rows.count, begin + rows_per_chunk);
  Pair<double> sums{0, 0};
  if (c < rows.width) {
    for (int64_t r = begin + row_lane; r < end; r += kRowLanes) {
      C center = rows.rms ? C(0) : static_cast<C>(load_scalar(mean, rows.mean_dtype, r));
      C inverse = static_cast<C>(load_scalar(rstd, rows.rstd_dtype, r));
      C dy = load(grad_y + r * rows.width + c);
      C xhat = (load(x + r * rows.width + c) - center) * inverse;
      sums.first += dy * xhat;
      sums.second += dy;
    }
  }
  lanes[row_lane][column_lane] = sums;
  __syncthreads();
  if (row_lane != 0 || c >= rows.width) return;
  for (int lane = 1; lane < kRowLanes; ++lane) {
    sums.first += lanes[lane][column_lane].first;
    sums.second += lanes[lane][column_lane].second;
  }
  partials[(blockIdx.y * 2) * rows.width + c] = sums.first;
  partials[(blockIdx.y * 2 + 1) * rows.width + c] = sums.second;
}

// grad_weight, grad_bias (C) = the chunks' partial rows added in chunk order.
template <typename T>
__global__ void parameter_total_kernel(int64_t width, int64_t chunks, const double* partials, T* grad_weight,
                                       T* grad_bias) {
  for (int64_t c = thread_index(); c < width; c += thread_count()) {
    double weight_total = 0, bias_total = 0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      weight_total += partials[(chunk * 2) * width + c];
      bias_total += partials[(chunk * 2 + 1) * width + c];
    }
    if (grad_weight) store(grad_weight + c, static_cast<compute_t<T>>(weight_total));
    if (grad_bias) store(grad_bias + c, static_cast<compute_t<T>>(bias_total));
  }
}

NormRows rows_of(const char* op, const View& x, std::initializer_list<const View*> operands) {
  for (const View* v : operands) {
    if (v) KILN_CHECK(v->is_contiguous(), op, ": every operand must be contiguous (rows of the last dim)");
  }
  NormRows rows;
  rows.width = x.ndim ? x.sizes[x.ndim - 1] : 1;
  rows.count = 1;
  for (int d = 0; d + 1 < x.ndim; ++d) rows.count *= x.sizes[d];
  return rows;
}

void check_floating(const View* v, const char* op) {
  if (v) dispatch_floating(v->dtype, op, []<typename S>() {});
}

template <typename T>
const T* data_or_null(const View* v) {
  return v ? v->as<T>() : nullptr;
}

template <typename T>
void launch_norm(const char* op, const NormRows& rows, const View& x, const View* residual, const View* weight,
                 const View* bias, const View* sum, const View& y, void* mean, const View& rstd) {
  cudaStream_t stream = stream_for(op, x);
  if (rows.count == 0) return;
  Groups groups = groups_for(rows.width, true);
  int64_t blocks = (rows.count + groups.count() - 1) / groups.count();
  norm_kernel<T><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(
      rows, groups, x.as<T>(), data_or_null<T>(residual), data_or_null<T>(weight), data_or_null<T>(bias),
      sum ? sum->as<T>() : nullptr, y.as<T>(), mean, rstd.data);
  KILN_CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_norm_backward(const char* op, const NormRows& rows, const View& grad_y, const View* grad_sum, const View& x,
                          const View* weight, const void* mean, const View& rstd, const View& grad_x,
                          const View* grad_weight, const View* grad_bias) {
  cudaStream_t stream = stream_for(op, x);
  if (rows.count > 0) {
    Groups groups = groups_for(rows.width, true);
    int64_t blocks = (rows.count + groups.count() - 1) / groups.count();
    norm_backward_kernel<T><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(
        rows, groups, grad_y.as<T>(), data_or_null<T>(grad_sum), x.as<T>(), data_or_null<T>(weight), mean, rstd.data,
        grad_x.as<T>());
    KILN_CUDA_CHECK_LAUNCH();
  }
  if ((!grad_weight && !grad_bias) || rows.width == 0) return;
  // At most 256 chunks of at least 32 rows: the count depends on N alone.
  int64_t rows_per_chunk = std::max<int64_t>(32, (rows.count + 255) / 256);
  int64_t chunks = std::max<int64_t>(1, (rows.count + rows_per_chunk - 1) / rows_per_chunk);
  kiln::cuda::DeviceBuffer partials(static_cast<size_t>(chunks * 2 * rows.width) * sizeof(double));
  dim3 grid(static_cast<unsigned>((rows.width + kColumns - 1) / kColumns), static_cast<unsigned>(chunks));
  parameter_partials_kernel<T><<<grid, kBlock, 0, stream>>>(rows, rows_per_chunk, grad_y.as<T>(), x.as<T>(), mean,
                                                             rstd.data, partials.as<double>());
  KILN_CUDA_CHECK_LAUNCH();
  parameter_total_kernel<T><<<grid_for(rows.width), kBlock, 0, stream>>>(
      rows.width, chunks, partials.as<double>(), grad_weight ? grad_weight->as<T>() : nullptr,
      grad_bias ? grad_bias->as<T>() : nullptr);
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace
}  // namespace gpu

// x, residual (N, C), weight (C), bias (C) -> sum, y (N, C), mean (N), rstd (N).
void CudaBackend::layer_norm(const View& x, const View* residual, const View* weight, const View* bias, double eps,
                             const View* sum, const View& y, const View& mean, const View& rstd) {
  const char* op = "layer_norm";
  gpu::NormRows rows = gpu::rows_of(op, x, {&x, residual, weight, bias, sum, &y, &mean, &rstd});
  KILN_CHECK((residual == nullptr) == (sum == nullptr), op, ": a residual needs a sum to write, and only then");
  gpu::check_floating(&mean, op);
  gpu::check_floating(&rstd, op);
  rows.mean_dtype = mean.dtype;
  rows.rstd_dtype = rstd.dtype;
  rows.eps = eps;
  dispatch_floating(x.dtype, op, [&]<typename T>() {
    gpu::launch_norm<T>(op, rows, x, residual, weight, bias, sum, y, mean.data, rstd);
  });
}

// grad_y, grad_sum, x (N, C), weight (C), mean, rstd (N) -> grad_x (N, C), grad_weight, grad_bias (C).
void CudaBackend::layer_norm_backward(const View& grad_y, const View* grad_sum, const View& x, const View* weight,
                                      const View& mean, const View& rstd, const View& grad_x, const View* grad_weight,
                                      const View* grad_bias) {
  const char* op = "layer_norm_backward";
  gpu::NormRows rows =
      gpu::rows_of(op, x, {&grad_y, grad_sum, &x, weight, &mean, &rstd, &grad_x, grad_weight, grad_bias});
  gpu::check_floating(&mean, op);
  gpu::check_floating(&rstd, op);
  rows.mean_dtype = mean.dtype;
  rows.rstd_dtype = rstd.dtype;
  dispatch_floating(x.dtype, op, [&]<typename T>() {
    gpu::launch_norm_backward<T>(op, rows, grad_y, grad_sum, x, weight, mean.data, rstd, grad_x, grad_weight,
                                 grad_bias);
  });
}

// x, residual (N, C), weight (C) -> sum, y (N, C), rstd (N).
void CudaBackend::rms_norm(const View& x, const View* residual, const View* weight, double eps, const View* sum,
                           const View& y, const View& rstd) {
  const char* op = "rms_norm";
  gpu::NormRows rows = gpu::rows_of(op, x, {&x, residual, weight, sum, &y, &rstd});
  KILN_CHECK((residual == nullptr) == (sum == nullptr), op, ": a residual needs a sum to write, and only then");
  gpu::check_floating(&rstd, op);
  rows.rstd_dtype = rstd.dtype;
  rows.rms = true;
  rows.eps = eps;
  dispatch_floating(x.dtype, op, [&]<typename T>() {
    gpu::launch_norm<T>(op, rows, x, residual, weight, nullptr, sum, y, nullptr, rstd);
  });
}

// grad_y, grad_sum, x (N, C), weight (C), rstd (N) -> grad_x (N, C), grad_weight (C).
void CudaBackend::rms_norm_backward(const View& grad_y, const View* grad_sum, const View& x, const View* weight,
                                    const View& rstd, const View& grad_x, const View* grad_weight) {
  const char* op = "rms_norm_backward";
  gpu::NormRows rows = gpu::rows_of(op, x, {&grad_y, grad_sum, &x, weight, &rstd, &grad_x, grad_weight});
  gpu::check_floating(&rstd, op);
  rows.rstd_dtype = rstd.dtype;
  rows.rms = true;
  dispatch_floating(x.dtype, op, [&]<typename T>() {
    gpu::launch_norm_backward<T>(op, rows, grad_y, grad_sum, x, weight, nullptr, rstd, grad_x, grad_weight, nullptr);
  });
}

}  // namespace kiln::kernels

// CUDA fused scaled-dot-product attention, forward and backward, with an online softmax: no
// T x T matrix is ever stored, only the output and the per-row log-sum-exp.
//
// One warp owns one row: a query row in the forward and in the query-gradient pass, a key row in
// the key/value-gradient pass, held in shared memory in the compute type (f32, or f64 for f64
// inputs). The warp walks the other side's rows 32 at a time. Each lane computes one whole score
// (a dot product over D against its own row), the warp agrees on the running maximum with
// shuffles, and then the 32 weights are broadcast one at a time while each lane accumulates its
// slice of D (lane owns elements lane, lane + 32, ...), so every value row is read once and
// coalesced. The backward follows the CPU's two-pass plan, with P = exp(S - lse),
// dS = P * (dO V^T - D) and D = rowsum(dO * O): the key pass sums dK and dV over every query
// head of its GQA group, the query pass sums dQ, so every gradient row has exactly one writer and
// no atomics. Head dims up to 256 (eight elements per lane).
#include <cmath>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/launch.cuh"

namespace kiln::kernels {
namespace gpu {
namespace {

constexpr int kWarps = kBlock / 32;
constexpr int kMaxDim = 256;
constexpr int kPerLane = kMaxDim / 32;

// The (B, H, T, D) operands share these sizes; query t sits at key position offset + t.
struct Geometry {
  int64_t batch, query_heads, kv_heads, group, query_len, key_len, dim;
  bool causal;
  int64_t offset;

  // One past the last key query i sees, and the first query that sees key j.
  __device__ int64_t key_end(int64_t i) const { return causal ? min(key_len, offset + i + 1) : key_len; }
  __device__ int64_t first_query(int64_t j) const { return causal ? max(int64_t{0}, j - offset) : 0; }
};

// A (B, H, T, D) view with unit last stride, addressed by rows.
template <typename T>
struct Heads {
  T* data;
  int64_t batch_stride, head_stride, row_stride;
  __device__ T* row(int64_t b, int64_t h, int64_t t) const {
    return data + b * batch_stride + h * head_stride + t * row_stride;
  }
};

template <typename T>
Heads<T> heads_of(const View& v) {
  return Heads<T>{static_cast<T*>(v.data), v.strides[0], v.strides[1], v.strides[2]};
}

template <typename A>
__device__ __forceinline__ A warp_max(A value) {
#pragma unroll
  for (int mask = 16; mask > 0; mask /= 2) {
    A other = __shfl_xor_sync(0xffffffffu, value, mask);
    value = other > value ? other : value;
  }
  return value;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A value) {
#pragma unroll
  for (int mask = 16; mask > 0; mask /= 2) value += __shfl_xor_sync(0xffffffffu, value, mask);
  return value;
}

// sum_c row[c] * other[c] over D, row in shared memory.
template <typename A, typename T>
__device__ __forceinline__ A dot(const A* row, const T* other, int64_t dim) {
  A total = 0;
  for (int64_t c = 0; c < dim; ++c) total += row[c] * static_cast<A>(load(other + c));
  return total;
}

// shared[0, D) <- row, widened to A, by the whole warp.
template <typename A, typename T>
__device__ __forceinline__ void load_row(A* shared, const T* row, int64_t dim, int lane) {
  for (int64_t c = lane; c < dim; c += 32) shared[c] = static_cast<A>(load(row + c));
  __syncwarp();
}

// acc[k] += weight * row[lane + 32 k] for the lane's slice of D.
template <typename A, typename T>
__device__ __forceinline__ void accumulate(A (&acc)[kPerLane], A weight, const T* row, int64_t dim, int lane) {
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    int64_t c = lane + 32 * k;
    if (c < dim) acc[k] += weight * static_cast<A>(load(row + c));
  }
}

template <typename A, typename T>
__device__ __forceinline__ void store_row(T* row, const A (&acc)[kPerLane], A factor, int64_t dim, int lane) {
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    int64_t c = lane + 32 * k;
    if (c < dim) store(row + c, static_cast<compute_t<T>>(acc[k] * factor));
  }
}

// q (B, Hq, Tq, D), k, v (B, Hkv, Tk, D) -> out (B, Hq, Tq, D), lse (B, Hq, Tq); a warp per query row.
template <typename T, typename A>
__global__ void attention_forward_kernel(Geometry g, A scale, Heads<const T> q, Heads<const T> k, Heads<const T> v,
                                         Heads<T> out, Heads<A> lse) {
  __shared__ A query_rows[kWarps][kMaxDim];
  int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= g.batch * g.query_heads * g.query_len) return;
  int64_t i = row % g.query_len, h = row / g.query_len % g.query_heads, b = row / g.query_len / g.query_heads;
  int64_t kv = h / g.group;
  A* query = query_rows[warp];
  load_row(query, q.row(b, h, i), g.dim, lane);

  A acc[kPerLane] = {};
  A maximum = -INFINITY, sum = 0;
  int64_t end = g.key_end(i);
  for (int64_t j0 = 0; j0 < end; j0 += 32) {
    int64_t j = j0 + lane;
    A score = j < end ? scale * dot(query, k.row(b, kv, j), g.dim) : A(-INFINITY);
    A chunk_max = warp_max(score);
    A next = chunk_max > maximum ? chunk_max : maximum;
    // A row that has seen no key yet keeps the maximum at -inf and contributes nothing.
    A correction = next == A(-INFINITY) ? A(1) : exp(maximum - next);
    A weight = j < end ? exp(score - next) : A(0);
    sum = sum * correction + weight;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) acc[c] *= correction;
    int count = static_cast<int>(min(int64_t{32}, end - j0));
    for (int t = 0; t < count; ++t) accumulate(acc, __shfl_sync(0xffffffffu, weight, t), v.row(b, kv, j0 + t), g.dim, lane);
    maximum = next;
  }
  sum = warp_sum(sum);
  store_row(out.row(b, h, i), acc, A(1) / sum, g.dim, lane);
  if (lane == 0) *lse.row(b, h, i) = maximum + log(sum);
}

// D (B, Hq, Tq) contiguous = rowsum(grad_out * out); a warp per query row.
template <typename T, typename A>
__global__ void row_dots_kernel(Geometry g, Heads<const T> grad_out, Heads<const T> out, A* dots) {
  int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= g.batch * g.query_heads * g.query_len) return;
  int64_t i = row % g.query_len, h = row / g.query_len % g.query_heads, b = row / g.query_len / g.query_heads;
  const T* go = grad_out.row(b, h, i);
  const T* o = out.row(b, h, i);
  A total = 0;
  for (int64_t c = lane; c < g.dim; c += 32) total += static_cast<A>(load(go + c)) * static_cast<A>(load(o + c));
  total = warp_sum(total);
  if (lane == 0) dots[row] = total;
}

// grad_k, grad_v (B, Hkv, Tk, D); a warp per key row, summing over the queries of its GQA group.
template <typename T, typename A>
__global__ void attention_key_kernel(Geometry g, A scale, Heads<const T> q, Heads<const T> k, Heads<const T> v,
                                     Heads<const A> lse, Heads<const T> grad_out, const A* dots, Heads<T> grad_k,
                                     Heads<T> grad_v) {
  __shared__ A key_rows[kWarps][kMaxDim];
  __shared__ A value_rows[kWarps][kMaxDim];
  int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= g.batch * g.kv_heads * g.key_len) return;
  int64_t j = row % g.key_len, kv = row / g.key_len % g.kv_heads, b = row / g.key_len / g.kv_heads;
  A* key = key_rows[warp];
  A* value = value_rows[warp];
  load_row(key, k.row(b, kv, j), g.dim, lane);
  load_row(value, v.row(b, kv, j), g.dim, lane);

  A grad_key[kPerLane] = {}, grad_value[kPerLane] = {};
  for (int64_t h = kv * g.group; h < (kv + 1) * g.group; ++h) {
    for (int64_t i0 = g.first_query(j); i0 < g.query_len; i0 += 32) {
      int64_t i = i0 + lane;
      A probability = 0, score_grad = 0;
      if (i < g.query_len) {
        A score = scale * dot(key, q.row(b, h, i), g.dim);
        probability = exp(score - *lse.row(b, h, i));
        A row_dot = dots[(b * g.query_heads + h) * g.query_len + i];
        score_grad = probability * (dot(value, grad_out.row(b, h, i), g.dim) - row_dot);
      }
      int count = static_cast<int>(min(int64_t{32}, g.query_len - i0));
      for (int t = 0; t < count; ++t) {
        accumulate(grad_value, __shfl_sync(0xffffffffu, probability, t), grad_out.row(b, h, i0 + t), g.dim, lane);
        accumulate(grad_key, __shfl_sync(0xffffffffu, score_grad, t), q.row(b, h, i0 + t), g.dim, lane);
      }
    }
  }
  store_row(grad_k.row(b, kv, j), grad_key, scale, g.dim, lane);
  store_row(grad_v.row(b, kv, j), grad_value, A(1), g.dim, lane);
}

// grad_q (B, Hq, Tq, D); a warp per query row.
template <typename T, typename A>
__global__ void attention_query_kernel(Geometry g, A scale, Heads<const T> q, Heads<const T> k, Heads<const T> v,
                                       Heads<const A> lse, Heads<const T> grad_out, const A* dots, Heads<T> grad_q) {
  __shared__ A query_rows[kWarps][kMaxDim];
  __shared__ A grad_rows[kWarps][kMaxDim];
  int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= g.batch * g.query_heads * g.query_len) return;
  int64_t i = row % g.query_len, h = row / g.query_len % g.query_heads, b = row / g.query_len / g.query_heads;
  int64_t kv = h / g.group;
  A* query = query_rows[warp];
  A* grad = grad_rows[warp];
  load_row(query, q.row(b, h, i), g.dim, lane);
  load_row(grad, grad_out.row(b, h, i), g.dim, lane);
  A row_lse = *lse.row(b, h, i), row_dot = dots[row];

  A grad_query[kPerLane] = {};
  int64_t end = g.key_end(i);
  for (int64_t j0 = 0; j0 < end; j0 += 32) {
    int64_t j = j0 + lane;
    A score_grad = 0;
    if (j < end) {
      A probability = exp(scale * dot(query, k.row(b, kv, j), g.dim) - row_lse);
      score_grad = probability * (dot(grad, v.row(b, kv, j), g.dim) - row_dot);
    }
    int count = static_cast<int>(min(int64_t{32}, end - j0));
    for (int t = 0; t < count; ++t) {
      accumulate(grad_query, __shfl_sync(0xffffffffu, score_grad, t), k.row(b, kv, j0 + t), g.dim, lane);
    }
  }
  store_row(grad_q.row(b, h, i), grad_query, scale, g.dim, lane);
}

Geometry geometry_of(const char* op, const View& q, const View& k, const View& lse, bool causal,
                     std::initializer_list<const View*> unit_last) {
  for (const View* view : unit_last) {
    KILN_CHECK(view->ndim == 4 && (view->strides[3] == 1 || view->sizes[3] == 1), op,
               ": operands must be (B, H, T, D) with unit stride in the last dim");
  }
  DType stats = q.dtype == DType::f64 ? DType::f64 : DType::f32;
  KILN_CHECK(lse.dtype == stats, op, ": lse must be ", dtype_name(stats), " for ", dtype_name(q.dtype), " inputs");
  KILN_CHECK(k.sizes[1] > 0 && q.sizes[1] % k.sizes[1] == 0, op, ": ", q.sizes[1], " query heads on ", k.sizes[1],
             " kv heads");
  KILN_CHECK(q.sizes[3] <= kMaxDim, op, ": head dim ", q.sizes[3], " is larger than the cuda backend's limit of ",
             kMaxDim);
  return Geometry{q.sizes[0], q.sizes[1], k.sizes[1], q.sizes[1] / k.sizes[1], q.sizes[2], k.sizes[2], q.sizes[3],
                  causal, k.sizes[2] - q.sizes[2]};
}

// The (B, H, T) statistics as a Heads view (its `row` addresses one value).
template <typename A>
Heads<A> stats_of(const View& v) {
  return Heads<A>{static_cast<A*>(v.data), v.strides[0], v.strides[1], v.strides[2]};
}

unsigned warp_blocks(int64_t rows) { return static_cast<unsigned>((rows + kWarps - 1) / kWarps); }

}  // namespace
}  // namespace gpu

void CudaBackend::attention(const View& q, const View& k, const View& v, const View& out, const View& lse, bool causal,
                            double scale) {
  gpu::Geometry g = gpu::geometry_of("attention", q, k, lse, causal, {&q, &k, &v, &out});
  dispatch_floating(q.dtype, "attention", [&]<typename T>() {
    using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
    cudaStream_t stream = gpu::stream_for("attention", q);
    int64_t rows = g.batch * g.query_heads * g.query_len;
    if (rows == 0) return;
    gpu::attention_forward_kernel<T, A><<<gpu::warp_blocks(rows), gpu::kBlock, 0, stream>>>(
        g, static_cast<A>(scale), gpu::heads_of<const T>(q), gpu::heads_of<const T>(k), gpu::heads_of<const T>(v),
        gpu::heads_of<T>(out), gpu::stats_of<A>(lse));
    KILN_CUDA_CHECK_LAUNCH();
  });
}

void CudaBackend::attention_backward(const View& q, const View& k, const View& v, const View& out, const View& lse,
                                     const View& grad_out, const View& grad_q, const View& grad_k, const View& grad_v,
                                     bool causal, double scale) {
  gpu::Geometry g = gpu::geometry_of("attention_backward", q, k, lse, causal,
                                     {&q, &k, &v, &out, &grad_out, &grad_q, &grad_k, &grad_v});
  dispatch_floating(q.dtype, "attention_backward", [&]<typename T>() {
    using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
    cudaStream_t stream = gpu::stream_for("attention_backward", q);
    int64_t query_rows = g.batch * g.query_heads * g.query_len, key_rows = g.batch * g.kv_heads * g.key_len;
    if (query_rows == 0 || key_rows == 0) return;
    kiln::cuda::DeviceBuffer dots(static_cast<size_t>(query_rows) * sizeof(A));
    gpu::row_dots_kernel<T, A><<<gpu::warp_blocks(query_rows), gpu::kBlock, 0, stream>>>(
        g, gpu::heads_of<const T>(grad_out), gpu::heads_of<const T>(out), dots.as<A>());
    KILN_CUDA_CHECK_LAUNCH();
    gpu::attention_key_kernel<T, A><<<gpu::warp_blocks(key_rows), gpu::kBlock, 0, stream>>>(
        g, static_cast<A>(scale), gpu::heads_of<const T>(q), gpu::heads_of<const T>(k), gpu::heads_of<const T>(v),
        gpu::stats_of<const A>(lse), gpu::heads_of<const T>(grad_out), dots.as<A>(), gpu::heads_of<T>(grad_k),
        gpu::heads_of<T>(grad_v));
    KILN_CUDA_CHECK_LAUNCH();
    gpu::attention_query_kernel<T, A><<<gpu::warp_blocks(query_rows), gpu::kBlock, 0, stream>>>(
        g, static_cast<A>(scale), gpu::heads_of<const T>(q), gpu::heads_of<const T>(k), gpu::heads_of<const T>(v),
        gpu::stats_of<const A>(lse), gpu::heads_of<const T>(grad_out), dots.as<A>(), gpu::heads_of<T>(grad_q));
    KILN_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace kiln::kernels

// CPU fused scaled-dot-product attention, forward and backward, blocked with an online softmax
// (FlashAttention-2): no T x T matrix is ever stored.
//
// Forward: one task per (batch, query head, query block). The task keeps, for its query rows, the
// running row max m, the running sum l of exp(s - m) and an unnormalised output accumulator, and
// walks the key blocks left to right: S = scale Q K^T on the block (a small GEMM), m' = max(m,
// rowmax S), O = O exp(m - m') + exp(S - m') V. It writes O / l and the log-sum-exp m + log l,
// from which the backward recomputes the probabilities exactly.
//
// Backward, with P = exp(S - lse), dS = P * (dO V^T - D) and D = rowsum(dO * O), in two passes so
// that every gradient block has exactly one writer (no atomics, the same bits for any thread count):
//   keys:    a task per (batch, kv head, key block) sums dV += P^T dO and dK += scale dS^T Q over
//            every query head of its GQA group and every query block that sees the key block;
//   queries: a task per (batch, query head, query block) sums dQ += scale dS K.
// P and dS are computed in both passes: two extra GEMMs per block pair buy the absence of atomics.
//
// Blocks are copied into per-thread scratch in the compute type (f32, or f64 for f64 inputs)
// before the GEMMs, K and V also transposed where they are the right operand of Q K^T or dO V^T.
// That widens bf16/f16, lets any row stride through (a (B, T, H, D) tensor transposed to
// (B, H, T, D) needs no whole copy), keeps every GEMM on OpenBLAS's fast small-matrix path, and
// costs O(block^2) beside an O(block^3) GEMM. Scratch is O(block * (block + D)) per thread and
// comes from the CPU allocator, so the memory counters see it. Tasks run under a dynamic schedule,
// heaviest first: with a causal mask the last query blocks (and the first key blocks) do the most.
// exp is vector_math::exp, which vectorises: glibc's expf, a scalar call, was a third of the time.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "kernels/allocator.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/vector_math.h"
#include "kernels/error.h"

namespace kiln::kernels {
namespace {

// Query and key block sizes, by measurement at T = 2048, D = 64: 64 x 64 and 128 x 64 tie within
// noise; 32 x 32, 128 x 128 and 256 x 64 are 20-30% slower. 64 keeps more tasks for small T.
constexpr int64_t kQueryBlock = 64;
constexpr int64_t kKeyBlock = 64;

// The (B, H, T, D) operands share these sizes; `offset` places query t at key position offset + t.
struct Geometry {
  int64_t batch, query_heads, kv_heads, group, query_len, key_len, dim;
  bool causal;
  int64_t offset;

  int64_t query_blocks() const { return (query_len + kQueryBlock - 1) / kQueryBlock; }
  int64_t key_blocks() const { return (key_len + kKeyBlock - 1) / kKeyBlock; }
  // How many leading keys of the block starting at `key_start` query t sees.
  int64_t visible_keys(int64_t t, int64_t key_start, int64_t cols) const {
    return causal ? std::clamp<int64_t>(offset + t - key_start + 1, 0, cols) : cols;
  }
  // One past the last key that any of the query rows [query_start, query_start + rows) sees.
  int64_t key_end(int64_t query_start, int64_t rows) const {
    return causal ? std::min(key_len, offset + query_start + rows) : key_len;
  }
  // The first query that sees the key at `key_start`.
  int64_t first_query(int64_t key_start) const { return causal ? std::max<int64_t>(0, key_start - offset) : 0; }
};

// A (B, H, T, D) view with unit last stride, addressed by rows.
template <typename T>
struct Heads {
  T* data;
  int64_t batch_stride, head_stride, row_stride;
  explicit Heads(const View& v)
      : data(v.as<T>()), batch_stride(v.strides[0]), head_stride(v.strides[1]), row_stride(v.strides[2]) {}
  T* row(int64_t b, int64_t h, int64_t t) const {
    return data + b * batch_stride + h * head_stride + t * row_stride;
  }
};

// Per-row statistics (B, H, T): a view's strides, or a contiguous scratch array.
template <typename A>
struct RowStats {
  A* data;
  int64_t batch_stride, head_stride, row_stride;
  explicit RowStats(const View& v)
      : data(v.as<A>()), batch_stride(v.strides[0]), head_stride(v.strides[1]), row_stride(v.strides[2]) {}
  RowStats(A* contiguous, int64_t heads, int64_t length)
      : data(contiguous), batch_stride(heads * length), head_stride(length), row_stride(1) {}
  A& at(int64_t b, int64_t h, int64_t t) const { return data[b * batch_stride + h * head_stride + t * row_stride]; }
};

// Per-thread scratch from the CPU allocator: `slots` slices of `elements` values of type A, each
// slice 64-byte aligned. Allocated before the parallel region, where nothing may throw.
template <typename A>
class Scratch {
 public:
  static constexpr int64_t kAlign = 64 / sizeof(A);
  Scratch(int slots, int64_t elements)
      : stride_((elements + kAlign - 1) / kAlign * kAlign),
        bytes_(static_cast<size_t>(std::max<int64_t>(1, slots * stride_)) * sizeof(A)),
        allocator_(allocator_for(Device::cpu())),
        data_(static_cast<A*>(allocator_.allocate(bytes_))) {}
  ~Scratch() { allocator_.deallocate(data_, bytes_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  A* slot(int index) const { return data_ + index * stride_; }

 private:
  int64_t stride_;
  size_t bytes_;
  Allocator& allocator_;
  A* data_;
};

// `count` rounded up to whole 64-byte lines, and consecutive pieces of that size from one slot.
template <typename A>
constexpr int64_t aligned(int64_t count) {
  return (count + Scratch<A>::kAlign - 1) / Scratch<A>::kAlign * Scratch<A>::kAlign;
}
template <typename A>
struct Carver {
  A* next;
  A* take(int64_t count) { return std::exchange(next, next + aligned<A>(count)); }
};

int threads_for(int64_t tasks) {
  return omp_in_parallel() ? 1 : static_cast<int>(std::min<int64_t>(omp_get_max_threads(), tasks));
}

// Calls task(index, slot) for every index in [0, tasks), slot < threads naming the thread's scratch.
template <typename Task>
void run_tasks(int64_t tasks, int threads, Task&& task) {
  if (threads <= 1) {
    for (int64_t index = 0; index < tasks; ++index) task(index, 0);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t index = 0; index < tasks; ++index) task(index, omp_get_thread_num());
}

// c (m, n) = alpha op(a) b + beta c, all row-major, op(a) = a^T when `transpose_a`. The right
// operand is never transposed: OpenBLAS runs these shapes in its small-matrix kernels, while a
// row-major b^T takes its much slower packing path.
template <typename A>
void gemm(bool transpose_a, int64_t m, int64_t n, int64_t k, A alpha, const A* a, int64_t lda, const A* b,
          int64_t ldb, A beta, A* c, int64_t ldc) {
  cpu::gemm<A>(transpose_a, false, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// max(start, s[0], ..., s[n - 1]). Spelled as a comparison: GCC vectorises this reduction but
// not the one through std::max.
template <typename A>
A row_maximum(const A* s, int64_t n, A start) {
#pragma omp simd reduction(max : start)
  for (int64_t c = 0; c < n; ++c) start = s[c] > start ? s[c] : start;
  return start;
}

// block (rows, D) contiguous <- rows of `source` `stride` elements apart, widened to A.
template <typename T, typename A>
void load_block(const T* source, int64_t stride, int64_t rows, int64_t dim, A* block) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* line = source + r * stride;
#pragma omp simd
    for (int64_t c = 0; c < dim; ++c) block[r * dim + c] = static_cast<A>(line[c]);
  }
}

// block (D, rows) contiguous <- the transpose of rows of `source` `stride` elements apart, so that
// products with K^T and V^T need no transposed right operand (see gemm). Walking the destination in
// order (strided reads) measured twice as fast as walking the source in order.
template <typename T, typename A>
void load_block_transposed(const T* source, int64_t stride, int64_t rows, int64_t dim, A* block) {
  for (int64_t c = 0; c < dim; ++c) {
    for (int64_t r = 0; r < rows; ++r) block[c * rows + r] = static_cast<A>(source[r * stride + c]);
  }
}

// rows of `target` `stride` elements apart <- block (rows, D) times factor[r] (or 1), rounded to T.
template <typename T, typename A>
void store_block(const A* block, const A* factor, int64_t rows, int64_t dim, T* target, int64_t stride) {
  for (int64_t r = 0; r < rows; ++r) {
    A f = factor ? factor[r] : A(1);
    T* line = target + r * stride;
#pragma omp simd
    for (int64_t c = 0; c < dim; ++c) line[c] = static_cast<T>(block[r * dim + c] * f);
  }
}

// q (B, Hq, Tq, D), k, v (B, Hkv, Tk, D) -> out (B, Hq, Tq, D), lse (B, Hq, Tq).
template <typename T, typename A>
void attention_forward(const Geometry& g, const View& q_view, const View& k_view, const View& v_view,
                       const View& out_view, const View& lse_view, A scale) {
  Heads<T> q(q_view), k(k_view), v(v_view), out(out_view);
  RowStats<A> lse(lse_view);
  const int64_t D = g.dim, Br = kQueryBlock, Bc = kKeyBlock, blocks = g.query_blocks();
  int64_t tasks = g.batch * g.query_heads * blocks;
  int threads = threads_for(tasks);
  Scratch<A> scratch(threads,
                     2 * aligned<A>(Br * D) + 2 * aligned<A>(Bc * D) + aligned<A>(Br * Bc) + 2 * aligned<A>(Br));
  run_tasks(tasks, threads, [&](int64_t index, int slot) {
    int64_t block = blocks - 1 - index % blocks, b = index / blocks / g.query_heads, h = index / blocks % g.query_heads;
    int64_t kv_head = h / g.group, i0 = block * Br, rows = std::min(Br, g.query_len - i0);
    Carver<A> carve{scratch.slot(slot)};
    A *Q = carve.take(Br * D), *O = carve.take(Br * D), *K_t = carve.take(Bc * D), *V = carve.take(Bc * D);
    A *S = carve.take(Br * Bc), *m = carve.take(Br), *l = carve.take(Br);
    load_block(q.row(b, h, i0), q.row_stride, rows, D, Q);
    std::fill(O, O + rows * D, A(0));
    std::fill(m, m + rows, -std::numeric_limits<A>::infinity());
    std::fill(l, l + rows, A(0));
    for (int64_t j0 = 0; j0 < g.key_end(i0, rows); j0 += Bc) {
      int64_t cols = std::min(Bc, g.key_len - j0);
      load_block_transposed(k.row(b, kv_head, j0), k.row_stride, cols, D, K_t);
      load_block(v.row(b, kv_head, j0), v.row_stride, cols, D, V);
      gemm<A>(false, rows, cols, D, scale, Q, D, K_t, cols, A(0), S, cols);  // S (rows, cols)
      for (int64_t r = 0; r < rows; ++r) {
        A* s = S + r * cols;
        int64_t visible = g.visible_keys(i0 + r, j0, cols);
        A row_max = row_maximum(s, visible, m[r]);
        // A row that has seen no key yet keeps m = -inf and contributes nothing.
        A correction = row_max == -std::numeric_limits<A>::infinity() ? A(1) : std::exp(m[r] - row_max);
        A sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t c = 0; c < visible; ++c) {
          s[c] = vector_math::exp(s[c] - row_max);
          sum += s[c];
        }
        std::fill(s + visible, s + cols, A(0));
        l[r] = l[r] * correction + sum;
        m[r] = row_max;
        A* o = O + r * D;
#pragma omp simd
        for (int64_t c = 0; c < D; ++c) o[c] *= correction;
      }
      gemm<A>(false, rows, D, cols, A(1), S, cols, V, D, A(1), O, D);  // O += P V
    }
    for (int64_t r = 0; r < rows; ++r) {
      lse.at(b, h, i0 + r) = m[r] + std::log(l[r]);
      l[r] = A(1) / l[r];
    }
    store_block(O, l, rows, D, out.row(b, h, i0), out.row_stride);
  });
}

// The backward's per-thread blocks. Keys: K (cols, D), K^T and V^T (D, cols), dK and dV (cols, D);
// queries: Q, dO, dQ (rows, D), lse and D (rows); products P and dS (rows, cols).
template <typename A>
struct BackwardBlocks {
  A *K, *K_t, *V_t, *dK, *dV, *Q, *dO, *dQ, *lse, *row_dots, *P, *dS;

  static int64_t elements(int64_t dim) {
    return 5 * aligned<A>(kKeyBlock * dim) + 3 * aligned<A>(kQueryBlock * dim) +
           2 * aligned<A>(kQueryBlock * kKeyBlock) + 2 * aligned<A>(kQueryBlock);
  }
  BackwardBlocks(A* slot, int64_t dim) {
    Carver<A> carve{slot};
    for (A** key_block : {&K, &K_t, &V_t, &dK, &dV}) *key_block = carve.take(kKeyBlock * dim);
    for (A** query_block : {&Q, &dO, &dQ}) *query_block = carve.take(kQueryBlock * dim);
    lse = carve.take(kQueryBlock);
    row_dots = carve.take(kQueryBlock);
    P = carve.take(kQueryBlock * kKeyBlock);
    dS = carve.take(kQueryBlock * kKeyBlock);
  }
};

// P = exp(scale Q K^T - lse) and dS = P * (dO V^T - D), both (rows, cols) and zero where masked, for
// the query rows from i0 and the key columns from j0 loaded in `blocks`.
template <typename A>
void probabilities_and_score_gradient(const Geometry& g, const BackwardBlocks<A>& blocks, int64_t i0, int64_t rows,
                                      int64_t j0, int64_t cols, A scale) {
  const int64_t D = g.dim;
  gemm<A>(false, rows, cols, D, scale, blocks.Q, D, blocks.K_t, cols, A(0), blocks.P, cols);
  gemm<A>(false, rows, cols, D, A(1), blocks.dO, D, blocks.V_t, cols, A(0), blocks.dS, cols);
  for (int64_t r = 0; r < rows; ++r) {
    A *prob = blocks.P + r * cols, *ds = blocks.dS + r * cols;
    A row_lse = blocks.lse[r], row_dot = blocks.row_dots[r];
    int64_t visible = g.visible_keys(i0 + r, j0, cols);
#pragma omp simd
    for (int64_t c = 0; c < visible; ++c) {
      prob[c] = vector_math::exp(prob[c] - row_lse);
      ds[c] = prob[c] * (ds[c] - row_dot);
    }
    std::fill(prob + visible, prob + cols, A(0));
    std::fill(ds + visible, ds + cols, A(0));
  }
}

// grad_out, q, k, v, out, lse -> grad_q (B, Hq, Tq, D), grad_k, grad_v (B, Hkv, Tk, D).
template <typename T, typename A>
void attention_backward_impl(const Geometry& g, const View& q_view, const View& k_view, const View& v_view,
                             const View& out_view, const View& lse_view, const View& grad_out_view,
                             const View& grad_q_view, const View& grad_k_view, const View& grad_v_view, A scale) {
  Heads<T> q(q_view), k(k_view), v(v_view), out(out_view), grad_out(grad_out_view);
  Heads<T> grad_q(grad_q_view), grad_k(grad_k_view), grad_v(grad_v_view);
  RowStats<A> lse(lse_view);
  const int64_t D = g.dim, Br = kQueryBlock, Bc = kKeyBlock;
  const int64_t query_blocks = g.query_blocks(), key_blocks = g.key_blocks();

  // D (B, Hq, Tq) = rowsum(dO * O): the gradient of the softmax normaliser, O(T) per head.
  Scratch<A> row_dots(1, g.batch * g.query_heads * g.query_len);
  RowStats<A> dots(row_dots.slot(0), g.query_heads, g.query_len);
  run_tasks(g.batch * g.query_heads, threads_for(g.batch * g.query_heads), [&](int64_t index, int) {
    int64_t b = index / g.query_heads, h = index % g.query_heads;
    for (int64_t t = 0; t < g.query_len; ++t) {
      const T *o = out.row(b, h, t), *d_o = grad_out.row(b, h, t);
      A sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < D; ++c) sum += static_cast<A>(o[c]) * static_cast<A>(d_o[c]);
      dots.at(b, h, t) = sum;
    }
  });

  int64_t key_tasks = g.batch * g.kv_heads * key_blocks, query_tasks = g.batch * g.query_heads * query_blocks;
  int threads = threads_for(std::max(key_tasks, query_tasks));
  Scratch<A> scratch(threads, BackwardBlocks<A>::elements(D));
  auto load_queries = [&](const BackwardBlocks<A>& blocks, int64_t b, int64_t h, int64_t i0, int64_t rows) {
    load_block(q.row(b, h, i0), q.row_stride, rows, D, blocks.Q);
    load_block(grad_out.row(b, h, i0), grad_out.row_stride, rows, D, blocks.dO);
    for (int64_t r = 0; r < rows; ++r) {
      blocks.lse[r] = lse.at(b, h, i0 + r);
      blocks.row_dots[r] = dots.at(b, h, i0 + r);
    }
  };
  auto load_keys_transposed = [&](const BackwardBlocks<A>& blocks, int64_t b, int64_t kv, int64_t j0, int64_t cols) {
    load_block_transposed(k.row(b, kv, j0), k.row_stride, cols, D, blocks.K_t);
    load_block_transposed(v.row(b, kv, j0), v.row_stride, cols, D, blocks.V_t);
  };

  // Keys pass: dK, dV of one key block, summed over its GQA group's query heads and the query
  // blocks that see it.
  run_tasks(key_tasks, threads, [&](int64_t index, int slot) {
    int64_t block = index % key_blocks, b = index / key_blocks / g.kv_heads, kv_head = index / key_blocks % g.kv_heads;
    int64_t j0 = block * Bc, cols = std::min(Bc, g.key_len - j0);
    BackwardBlocks<A> blocks(scratch.slot(slot), D);
    load_keys_transposed(blocks, b, kv_head, j0, cols);
    std::fill(blocks.dK, blocks.dK + cols * D, A(0));
    std::fill(blocks.dV, blocks.dV + cols * D, A(0));
    for (int64_t h = kv_head * g.group; h < (kv_head + 1) * g.group; ++h) {
      for (int64_t i0 = g.first_query(j0) / Br * Br; i0 < g.query_len; i0 += Br) {
        int64_t rows = std::min(Br, g.query_len - i0);
        load_queries(blocks, b, h, i0, rows);
        probabilities_and_score_gradient(g, blocks, i0, rows, j0, cols, scale);
        gemm<A>(true, cols, D, rows, A(1), blocks.P, cols, blocks.dO, D, A(1), blocks.dV, D);  // += P^T dO
        gemm<A>(true, cols, D, rows, scale, blocks.dS, cols, blocks.Q, D, A(1), blocks.dK, D);  // += s dS^T Q
      }
    }
    store_block<T, A>(blocks.dK, nullptr, cols, D, grad_k.row(b, kv_head, j0), grad_k.row_stride);
    store_block<T, A>(blocks.dV, nullptr, cols, D, grad_v.row(b, kv_head, j0), grad_v.row_stride);
  });

  // Queries pass: dQ of one query block, summed over the key blocks it sees.
  run_tasks(query_tasks, threads, [&](int64_t index, int slot) {
    int64_t block = query_blocks - 1 - index % query_blocks;
    int64_t b = index / query_blocks / g.query_heads, h = index / query_blocks % g.query_heads;
    int64_t i0 = block * Br, rows = std::min(Br, g.query_len - i0);
    BackwardBlocks<A> blocks(scratch.slot(slot), D);
    load_queries(blocks, b, h, i0, rows);
    std::fill(blocks.dQ, blocks.dQ + rows * D, A(0));
    for (int64_t j0 = 0; j0 < g.key_end(i0, rows); j0 += Bc) {
      int64_t cols = std::min(Bc, g.key_len - j0);
      load_keys_transposed(blocks, b, h / g.group, j0, cols);
      load_block(k.row(b, h / g.group, j0), k.row_stride, cols, D, blocks.K);
      probabilities_and_score_gradient(g, blocks, i0, rows, j0, cols, scale);
      gemm<A>(false, rows, D, cols, scale, blocks.dS, cols, blocks.K, D, A(1), blocks.dQ, D);  // += s dS K
    }
    store_block<T, A>(blocks.dQ, nullptr, rows, D, grad_q.row(b, h, i0), grad_q.row_stride);
  });
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
  return Geometry{q.sizes[0], q.sizes[1], k.sizes[1], q.sizes[1] / k.sizes[1], q.sizes[2], k.sizes[2], q.sizes[3],
                  causal, k.sizes[2] - q.sizes[2]};
}

}  // namespace

void CpuBackend::attention(const View& q, const View& k, const View& v, const View& out, const View& lse, bool causal,
                           double scale) {
  Geometry g = geometry_of("attention", q, k, lse, causal, {&q, &k, &v, &out});
  dispatch_floating(q.dtype, "attention", [&]<typename T>() {
    using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
    attention_forward<T, A>(g, q, k, v, out, lse, static_cast<A>(scale));
  });
}

void CpuBackend::attention_backward(const View& q, const View& k, const View& v, const View& out, const View& lse,
                                    const View& grad_out, const View& grad_q, const View& grad_k, const View& grad_v,
                                    bool causal, double scale) {
  Geometry g = geometry_of("attention_backward", q, k, lse, causal,
                           {&q, &k, &v, &out, &grad_out, &grad_q, &grad_k, &grad_v});
  dispatch_floating(q.dtype, "attention_backward", [&]<typename T>() {
    using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
    attention_backward_impl<T, A>(g, q, k, v, out, lse, grad_out, grad_q, grad_k, grad_v, static_cast<A>(scale));
  });
}

}  // namespace kiln::kernels

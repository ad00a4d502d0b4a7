// gemm (see blas.h): OpenBLAS where the build has it (KILN_HAVE_BLAS), portable loops elsewhere.
#include "kernels/cpu/blas.h"

#include <omp.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#ifdef KILN_HAVE_BLAS
#include <cblas.h>
#endif

namespace kiln::kernels::cpu {

// Row i of c is beta c_i + sum_p (alpha op(a)_ip) op(b)_p: the inner loop runs along a row of
// op(b), which is packed contiguous first when b is transposed, so it vectorises. Rows of c are
// shared among threads unless the caller is already inside a parallel region.
template <typename T>
void portable_gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                   int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  std::vector<T> packed;
  const T* rows_of_b = b;  // op(b) (k, n), rows row_stride apart
  int64_t row_stride = ldb;
  if (transpose_b && k > 0 && n > 0) {
    packed.resize(static_cast<size_t>(k * n));
    for (int64_t p = 0; p < k; ++p) {
      for (int64_t j = 0; j < n; ++j) packed[static_cast<size_t>(p * n + j)] = b[j * ldb + p];
    }
    rows_of_b = packed.data();
    row_stride = n;
  }
  const bool parallel = !omp_in_parallel() && m > 1 && m * n * k >= (int64_t{1} << 16);
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t i = 0; i < m; ++i) {
    T* row = c + i * ldc;
    if (beta == T(0)) {
      std::fill(row, row + n, T(0));
    } else if (beta != T(1)) {
      for (int64_t j = 0; j < n; ++j) row[j] *= beta;
    }
    for (int64_t p = 0; p < k; ++p) {
      const T scale = alpha * (transpose_a ? a[p * lda + i] : a[i * lda + p]);
      const T* b_row = rows_of_b + p * row_stride;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) row[j] += scale * b_row[j];
    }
  }
}

#ifdef KILN_HAVE_BLAS

bool gemm_uses_blas() { return true; }

template <typename T>
void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  CBLAS_TRANSPOSE ta = transpose_a ? CblasTrans : CblasNoTrans, tb = transpose_b ? CblasTrans : CblasNoTrans;
  auto i = [](int64_t value) { return static_cast<int>(value); };
  auto ld = [](int64_t value) { return static_cast<int>(std::max<int64_t>(1, value)); };  // BLAS wants >= 1
  if constexpr (std::is_same_v<T, double>) {
    cblas_dgemm(CblasRowMajor, ta, tb, i(m), i(n), i(k), alpha, a, ld(lda), b, ld(ldb), beta, c, ld(ldc));
  } else {
    cblas_sgemm(CblasRowMajor, ta, tb, i(m), i(n), i(k), alpha, a, ld(lda), b, ld(ldb), beta, c, ld(ldc));
  }
}

#else

bool gemm_uses_blas() { return false; }

template <typename T>
void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  portable_gemm(transpose_a, transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

#endif

#define KILN_INSTANTIATE_GEMM(name, T)                                                                         \
  template void name<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*, int64_t, T, T*, \
                        int64_t);
KILN_INSTANTIATE_GEMM(gemm, float)
KILN_INSTANTIATE_GEMM(gemm, double)
KILN_INSTANTIATE_GEMM(portable_gemm, float)
KILN_INSTANTIATE_GEMM(portable_gemm, double)
#undef KILN_INSTANTIATE_GEMM

}  // namespace kiln::kernels::cpu

// The one GEMM the CPU kernels call: row-major c (m, n) = alpha op(a) op(b) + beta c in f32 or
// f64, op(x) = x^T when its flag is set. It goes to OpenBLAS's cblas_sgemm / cblas_dgemm, or, in a
// build configured with -DKILN_BLAS=none (for machines without OpenBLAS, such as the GPU machines,
// where the CPU backend only serves as the reference of small tests), to portable loops that give
// the same products far more slowly.
#pragma once

#include <cstdint>

namespace kiln::kernels::cpu {

// Leading dimensions are in elements; beta = 0 overwrites c without reading it (as BLAS does).
template <typename T>
void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// Whether gemm goes to OpenBLAS (false: the portable loops).
bool gemm_uses_blas();

// The portable loops themselves, built in every configuration so that the tests check them
// against BLAS where a build has it.
template <typename T>
void portable_gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                   int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

}  // namespace kiln::kernels::cpu

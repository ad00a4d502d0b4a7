// The CPU backend's GEMM (kernels/cpu/blas.h): OpenBLAS in this build, and the portable loops
// that replace it in a -DKILN_BLAS=none build, both against a plain f64 triple loop, for every
// transpose combination, padded leading dimensions, alpha, and beta 0 (c not read), 1 and 0.5.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/blas.h"

using kiln::kernels::cpu::gemm;
using kiln::kernels::cpu::portable_gemm;

namespace {

// Row-major op(x) (rows, cols) stored with leading dimension ld (padding filled with a marker).
template <typename T>
std::vector<T> matrix(bool transposed, int64_t rows, int64_t cols, int64_t ld, unsigned seed) {
  int64_t stored_rows = transposed ? cols : rows;
  std::vector<T> values(static_cast<size_t>(stored_rows * ld), T(1e30));
  unsigned state = seed;
  for (int64_t r = 0; r < stored_rows; ++r) {
    for (int64_t c = 0; c < (transposed ? rows : cols); ++c) {
      state = state * 1664525u + 1013904223u;
      values[static_cast<size_t>(r * ld + c)] = T(static_cast<double>(state >> 8) / double(1u << 24) * 2.0 - 1.0);
    }
  }
  return values;
}

template <typename T>
T at(const std::vector<T>& x, bool transposed, int64_t ld, int64_t r, int64_t c) {
  return transposed ? x[static_cast<size_t>(c * ld + r)] : x[static_cast<size_t>(r * ld + c)];
}

template <typename T, typename Gemm>
void check_gemm(Gemm&& multiply, double tolerance) {
  const int64_t m = 37, n = 45, k = 29;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      for (double beta : {0.0, 1.0, 0.5}) {
        INFO("transpose a " << ta << ", transpose b " << tb << ", beta " << beta);
        const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2, ldc = n + 5;
        std::vector<T> a = matrix<T>(ta, m, k, lda, 1), b = matrix<T>(tb, k, n, ldb, 2), c = matrix<T>(false, m, n, ldc, 3);
        std::vector<T> original = c;
        if (beta == 0.0) {
          for (int64_t i = 0; i < m; ++i) c[static_cast<size_t>(i * ldc)] = std::numeric_limits<T>::quiet_NaN();
        }
        const double alpha = 0.7;
        multiply(ta, tb, m, n, k, T(alpha), a.data(), lda, b.data(), ldb, T(beta), c.data(), ldc);
        double worst = 0;
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            double expected = beta == 0.0 ? 0.0 : beta * static_cast<double>(original[static_cast<size_t>(i * ldc + j)]);
            for (int64_t p = 0; p < k; ++p) {
              expected += alpha * static_cast<double>(at(a, ta, lda, i, p)) * static_cast<double>(at(b, tb, ldb, p, j));
            }
            worst = std::max(worst, std::abs(static_cast<double>(c[static_cast<size_t>(i * ldc + j)]) - expected));
          }
          // The padding of c is never written.
          for (int64_t j = n; j < ldc; ++j) CHECK(c[static_cast<size_t>(i * ldc + j)] == original[static_cast<size_t>(i * ldc + j)]);
        }
        CHECK(worst <= tolerance);  // NaN (a beta-0 c that was read) fails too
      }
    }
  }
}

}  // namespace

// Each entry sums 30 terms (29 products and beta c) whose magnitudes add up to at most 21.3; the
// standard bound for such a sum in any order is 30 u 21.3: 3.8e-5 in f32 (u = 2^-24), 7.1e-14 in
// f64 (u = 2^-53).
TEST_CASE("the CPU GEMM matches an f64 reference for every layout", "[gemm]") {
  check_gemm<float>(gemm<float>, 3.8e-5);
  check_gemm<double>(gemm<double>, 7.1e-14);
}

TEST_CASE("the portable GEMM of builds without BLAS matches an f64 reference for every layout", "[gemm]") {
  check_gemm<float>(portable_gemm<float>, 3.8e-5);
  check_gemm<double>(portable_gemm<double>, 7.1e-14);
}

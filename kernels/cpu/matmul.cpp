// CPU matrix products through OpenBLAS (cblas_sgemm / cblas_dgemm, via cpu::gemm in blas.h).
//
// Transposed operands are passed to BLAS as transpose flags with their leading dimension, so a
// transposed view costs no copy; only operands BLAS cannot describe (stride 0 inside a matrix,
// both strides non-unit) are copied. Batches run as a loop of GEMMs: small matrices in parallel
// over the batch (OpenBLAS runs single-threaded inside an OpenMP region), large ones one after
// another with OpenBLAS's own threads. A batch whose right operand is broadcast is folded into
// one tall GEMM. bf16/f16 operands are widened to f32 for BLAS and the result rounded back.
#include <vector>

#include "kernels/cpu/blas.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/loops.h"
#include "kernels/error.h"

namespace kiln::kernels {
namespace {

// How BLAS should read a rows x cols matrix with the given element strides, if it can.
struct BlasOperand {
  bool usable = false;
  bool transpose = false;
  int64_t leading = 1;
};

BlasOperand describe(int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride) {
  BlasOperand op;
  bool unit_cols = col_stride == 1 || cols == 1;
  bool unit_rows = row_stride == 1 || rows == 1;
  if (unit_cols && (rows == 1 || row_stride >= cols) && (rows == 1 || row_stride > 0)) {
    op.usable = true;
    op.transpose = false;
    op.leading = rows == 1 ? std::max<int64_t>(1, cols) : row_stride;
  } else if (unit_rows && (cols == 1 || col_stride >= rows) && (cols == 1 || col_stride > 0)) {
    op.usable = true;
    op.transpose = true;
    op.leading = cols == 1 ? std::max<int64_t>(1, rows) : col_stride;
  }
  return op;
}

template <typename T>
void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc) {
  cpu::gemm<T>(transpose_a, transpose_b, m, n, k, T(1), a, lda, b, ldb, beta, c, ldc);
}

// One matrix operand of one batch element, as BLAS will read it.
template <typename T>
struct Matrix {
  const T* data;
  BlasOperand layout;
  std::vector<T> copy;  // holds a packed copy when BLAS cannot read the original
};

template <typename T>
Matrix<T> prepare(const T* base, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride) {
  Matrix<T> matrix{base, describe(rows, cols, row_stride, col_stride), {}};
  if (!matrix.layout.usable) {
    matrix.copy.resize(static_cast<size_t>(rows * cols));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) matrix.copy[static_cast<size_t>(r * cols + c)] = base[r * row_stride + c * col_stride];
    }
    matrix.data = matrix.copy.data();
    matrix.layout = BlasOperand{true, false, std::max<int64_t>(1, cols)};
  }
  return matrix;
}

// out = a @ b (+ out) for f32/f64 views; out must have unit column stride.
template <typename T>
void matmul_blas(const View& a, const View& b, const View& out, bool accumulate) {
  int nd = out.ndim;
  int64_t m = out.sizes[nd - 2], n = out.sizes[nd - 1], k = a.sizes[nd - 1];
  if (m == 0 || n == 0) return;
  int64_t batches = 1;
  for (int d = 0; d < nd - 2; ++d) batches *= out.sizes[d];
  T beta = accumulate ? T(1) : T(0);
  const T* a_data = a.as<T>();
  const T* b_data = b.as<T>();
  T* out_data = out.as<T>();

  // A broadcast right operand over a batch of row-major left operands is one (batch*M, K) GEMM.
  bool b_broadcast = true, batch_folds = nd > 2;
  int64_t rows_stride_a = a.strides[nd - 2], rows_stride_out = out.strides[nd - 2];
  int64_t expected_a = rows_stride_a * m, expected_out = rows_stride_out * m;
  for (int d = nd - 3; d >= 0; --d) {
    if (out.sizes[d] == 1) continue;
    b_broadcast = b_broadcast && b.strides[d] == 0;
    batch_folds = batch_folds && a.strides[d] == expected_a && out.strides[d] == expected_out;
    expected_a *= out.sizes[d];
    expected_out *= out.sizes[d];
  }
  if (batches > 1 && b_broadcast && batch_folds && (a.strides[nd - 1] == 1 || k == 1) && out.strides[nd - 1] == 1 &&
      rows_stride_a >= k && rows_stride_out >= n) {
    Matrix<T> right = prepare(b_data, k, n, b.strides[nd - 2], b.strides[nd - 1]);
    gemm<T>(false, right.layout.transpose, batches * m, n, k, a_data, rows_stride_a, right.data,
            right.layout.leading, beta, out_data, rows_stride_out);
    return;
  }

  auto offset_of = [&](const View& v, int64_t batch) {
    int64_t offset = 0;
    for (int d = nd - 3; d >= 0; --d) {
      offset += (batch % out.sizes[d]) * v.strides[d];
      batch /= out.sizes[d];
    }
    return offset;
  };
  auto one = [&](int64_t batch) {
    T* c = out_data + offset_of(out, batch);
    if (k == 0) {
      if (!accumulate) {
        for (int64_t r = 0; r < m; ++r) {
          for (int64_t col = 0; col < n; ++col) c[r * out.strides[nd - 2] + col] = T(0);
        }
      }
      return;
    }
    Matrix<T> left = prepare(a_data + offset_of(a, batch), m, k, a.strides[nd - 2], a.strides[nd - 1]);
    Matrix<T> right = prepare(b_data + offset_of(b, batch), k, n, b.strides[nd - 2], b.strides[nd - 1]);
    gemm<T>(left.layout.transpose, right.layout.transpose, m, n, k, left.data, left.layout.leading, right.data,
            right.layout.leading, beta, c, std::max<int64_t>(out.strides[nd - 2], n));
  };
  constexpr int64_t kSmallGemmWork = 64 * 64 * 64;
  if (batches > 1 && m * n * std::max<int64_t>(k, 1) < kSmallGemmWork) {
    cpu::parallel_for(batches, 1, [&](int64_t begin, int64_t end) {
      for (int64_t batch = begin; batch < end; ++batch) one(batch);
    });
  } else {
    for (int64_t batch = 0; batch < batches; ++batch) one(batch);
  }
}

// A contiguous f32 copy of a 16-bit view (same sizes).
View widen(const View& v, std::vector<float>& storage, CpuBackend& backend) {
  storage.resize(static_cast<size_t>(v.numel()));
  View wide = v;
  wide.dtype = DType::f32;
  wide.data = storage.data();
  int64_t stride = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    wide.strides[d] = stride;
    stride *= v.sizes[d];
  }
  backend.copy(v, wide);
  return wide;
}

}  // namespace

void CpuBackend::matmul(const View& a, const View& b, const View& out, bool accumulate) {
  KILN_CHECK(out.ndim >= 2, "matmul: output must have at least 2 dims, got ", out.ndim);
  KILN_CHECK(out.strides[out.ndim - 1] == 1 || out.sizes[out.ndim - 1] == 1,
             "matmul: output must have unit stride in its last dim");
  switch (out.dtype) {
    case DType::f32: return matmul_blas<float>(a, b, out, accumulate);
    case DType::f64: return matmul_blas<double>(a, b, out, accumulate);
    case DType::bf16:
    case DType::f16: {
      std::vector<float> a_wide, b_wide, out_wide;
      View a32 = widen(a, a_wide, *this), b32 = widen(b, b_wide, *this), out32 = widen(out, out_wide, *this);
      matmul_blas<float>(a32, b32, out32, accumulate);
      copy(out32, out);
      return;
    }
    default: KILN_FAIL("matmul: dtype ", dtype_name(out.dtype), " is not supported (expected a floating dtype)");
  }
}

}  // namespace kiln::kernels

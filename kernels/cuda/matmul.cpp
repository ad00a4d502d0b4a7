// CUDA matrix products through cuBLAS (cublasGemmEx and cublasGemmStridedBatchedEx).
//
// cuBLAS is column-major and kiln row-major. A row-major (M, N) matrix is the column-major
// (N, M) matrix of its transpose, so out = a @ b runs as out^T = b^T a^T with the operands
// swapped. An operand with unit stride along its rows or its columns is passed as a transpose
// flag and a leading dimension, so transposed views cost no copy; only operands cuBLAS cannot
// describe (stride 0 inside a matrix, no unit stride) are packed into a contiguous buffer first.
// Batches whose offsets are one stride per operand (0 for a broadcast operand) are one
// strided-batched call; a broadcast right operand over row-major left operands folds into one
// tall GEMM, as on the CPU; any other batch layout loops over single GEMMs.
//
// Precision: f32 computes in full f32 (CUBLAS_COMPUTE_32F, which never uses TF32), so results
// match the CPU's to f32 rounding; bf16 and f16 multiply on tensor cores with f32 accumulation
// and, with reduced-precision reductions disallowed, round once at the end like the CPU's
// widen-multiply-round; f64 computes in f64.
#include <array>
#include <climits>
#include <optional>

#include "kernels/cuda/caching_allocator.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/stream.h"

namespace kiln::kernels {
namespace {

constexpr int kMaxDevices = 64;

// One handle per thread and device: a handle is not safe to share between threads that set
// different streams. Handles live until the process exits (their teardown would race the
// runtime's).
cublasHandle_t handle_for(int device, cudaStream_t stream) {
  thread_local std::array<cublasHandle_t, kMaxDevices> handles{};
  cublasHandle_t& handle = handles[static_cast<size_t>(device)];
  if (!handle) {
    KILN_CUBLAS_CHECK(cublasCreate(&handle));
    KILN_CUBLAS_CHECK(cublasSetMathMode(
        handle, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
  }
  KILN_CUBLAS_CHECK(cublasSetStream(handle, stream));
  return handle;
}

// How cuBLAS reads a rows x cols matrix with the given element strides, if it can: row by row
// (unit column stride) or, `column_major`, column by column (unit row stride: a transposed
// view), with the distance between rows or columns as the leading dimension.
struct Operand {
  bool usable = false;
  bool column_major = false;
  int64_t leading = 1;
};

Operand describe(int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride) {
  Operand op;
  bool unit_cols = col_stride == 1 || cols == 1;
  bool unit_rows = row_stride == 1 || rows == 1;
  if (unit_cols && (rows == 1 || (row_stride >= cols && row_stride > 0))) {
    op = {true, false, rows == 1 ? std::max<int64_t>(1, cols) : row_stride};
  } else if (unit_rows && (cols == 1 || (col_stride >= rows && col_stride > 0))) {
    op = {true, true, cols == 1 ? std::max<int64_t>(1, rows) : col_stride};
  }
  return op;
}

struct Types {
  cudaDataType_t data;
  cublasComputeType_t compute;
};

Types types_of(DType dtype) {
  switch (dtype) {
    case DType::f32: return {CUDA_R_32F, CUBLAS_COMPUTE_32F};
    case DType::f64: return {CUDA_R_64F, CUBLAS_COMPUTE_64F};
    case DType::bf16: return {CUDA_R_16BF, CUBLAS_COMPUTE_32F};
    case DType::f16: return {CUDA_R_16F, CUBLAS_COMPUTE_32F};
    default: KILN_FAIL("matmul: dtype ", dtype_name(dtype), " is not supported (expected a floating dtype)");
  }
}

// The element stride between consecutive batch entries of `v` if its batch dims (those of out
// with size > 1) collapse to one stride; false when they do not.
bool batch_stride(const View& v, const View& out, int64_t& stride) {
  stride = 0;
  int64_t span = 0;
  for (int d = out.ndim - 3; d >= 0; --d) {
    if (out.sizes[d] == 1) continue;
    if (span == 0) {
      stride = v.strides[d];
      span = out.sizes[d];
    } else {
      if (v.strides[d] != stride * span) return false;
      span *= out.sizes[d];
    }
  }
  return true;
}

// The element offset of batch entry `batch` (row-major over out's batch dims) in `v`.
int64_t batch_offset(const View& v, const View& out, int64_t batch) {
  int64_t offset = 0;
  for (int d = out.ndim - 3; d >= 0; --d) {
    offset += (batch % out.sizes[d]) * v.strides[d];
    batch /= out.sizes[d];
  }
  return offset;
}

int to_int(int64_t value, const char* what) {
  KILN_CHECK(value <= INT_MAX, "matmul: ", what, " ", value, " exceeds cuBLAS's 32-bit limit");
  return static_cast<int>(value);
}

class Gemm {
 public:
  Gemm(const View& out, bool accumulate, cublasHandle_t handle) : handle_(handle), types_(types_of(out.dtype)) {
    if (out.dtype == DType::f64) {
      alpha_f64_ = 1.0;
      beta_f64_ = accumulate ? 1.0 : 0.0;
    } else {
      alpha_f32_ = 1.0f;
      beta_f32_ = accumulate ? 1.0f : 0.0f;
    }
    wide_ = out.dtype == DType::f64;
  }

  // out (m, n) = a (m, k) @ b (k, n) for `batches` entries `stride_*` elements apart, each
  // operand described by describe(); out row-major with leading dimension ldc.
  void run(int64_t m, int64_t n, int64_t k, const void* a, const Operand& a_op, int64_t stride_a, const void* b,
           const Operand& b_op, int64_t stride_b, void* out, int64_t ldc, int64_t stride_out, int64_t batches) {
    cublasOperation_t op_b = b_op.column_major ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_a = a_op.column_major ? CUBLAS_OP_T : CUBLAS_OP_N;
    int rows = to_int(n, "N"), cols = to_int(m, "M"), inner = to_int(k, "K");
    int lda = to_int(b_op.leading, "leading dimension"), ldb = to_int(a_op.leading, "leading dimension");
    int ldo = to_int(ldc, "leading dimension");
    if (batches == 1) {
      KILN_CUBLAS_CHECK(cublasGemmEx(handle_, op_b, op_a, rows, cols, inner, alpha(), b, types_.data, lda, a,
                                     types_.data, ldb, beta(), out, types_.data, ldo, types_.compute,
                                     CUBLAS_GEMM_DEFAULT));
    } else {
      KILN_CUBLAS_CHECK(cublasGemmStridedBatchedEx(handle_, op_b, op_a, rows, cols, inner, alpha(), b, types_.data,
                                                   lda, stride_b, a, types_.data, ldb, stride_a, beta(), out,
                                                   types_.data, ldo, stride_out, to_int(batches, "batch count"),
                                                   types_.compute, CUBLAS_GEMM_DEFAULT));
    }
  }

 private:
  const void* alpha() const { return wide_ ? static_cast<const void*>(&alpha_f64_) : &alpha_f32_; }
  const void* beta() const { return wide_ ? static_cast<const void*>(&beta_f64_) : &beta_f32_; }

  cublasHandle_t handle_;
  Types types_;
  bool wide_ = false;
  float alpha_f32_ = 1, beta_f32_ = 0;
  double alpha_f64_ = 1, beta_f64_ = 0;
};

// A contiguous copy of `v` with out's batch sizes, for operands cuBLAS cannot read in place.
View pack(const View& v, void* data, const View& out) {
  View packed = v;
  packed.data = data;
  int64_t stride = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    if (d < v.ndim - 2) packed.sizes[d] = out.sizes[d];
    packed.strides[d] = stride;
    stride *= packed.sizes[d];
  }
  return packed;
}

}  // namespace

// out (..., M, N) = a (..., M, K) @ b (..., K, N) (+ out when accumulating).
void CudaBackend::matmul(const View& a_in, const View& b_in, const View& out, bool accumulate) {
  KILN_CHECK(out.ndim >= 2, "matmul: output must have at least 2 dims, got ", out.ndim);
  KILN_CHECK(out.strides[out.ndim - 1] == 1 || out.sizes[out.ndim - 1] == 1,
             "matmul: output must have unit stride in its last dim");
  types_of(out.dtype);
  cudaStream_t stream = cuda::stream_for("matmul", out.device).handle();
  int nd = out.ndim;
  int64_t m = out.sizes[nd - 2], n = out.sizes[nd - 1], k = a_in.sizes[nd - 1];
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (!accumulate) fill(out, 0.0);
    return;
  }
  int64_t batches = 1;
  for (int d = 0; d < nd - 2; ++d) batches *= out.sizes[d];
  int64_t out_rows = out.strides[nd - 2];
  KILN_CHECK(m == 1 || out_rows >= n, "matmul: output rows overlap (row stride ", out_rows, " < ", n, " columns)");
  int64_t ldc = std::max<int64_t>(out_rows, n);

  // Operands cuBLAS cannot read, or whose batches are not evenly spaced, are packed.
  View a = a_in, b = b_in;
  int64_t stride_a = 0, stride_b = 0, stride_out = 0;
  bool uniform = batch_stride(out, out, stride_out);
  std::array<std::optional<cuda::DeviceBuffer>, 2> packed;
  for (int i = 0; i < 2; ++i) {
    View& v = i == 0 ? a : b;
    int64_t rows = v.sizes[nd - 2], cols = v.sizes[nd - 1], ignored = 0;
    bool readable = describe(rows, cols, v.strides[nd - 2], v.strides[nd - 1]).usable;
    if (readable && (!uniform || batch_stride(v, out, ignored))) continue;
    packed[i].emplace(static_cast<size_t>(batches * rows * cols) * dtype_size(v.dtype));
    View target = pack(v, packed[i]->data(), out);
    copy(v, target);
    v = target;
  }
  Operand a_op = describe(m, k, a.strides[nd - 2], a.strides[nd - 1]);
  Operand b_op = describe(k, n, b.strides[nd - 2], b.strides[nd - 1]);
  Gemm gemm(out, accumulate, handle_for(out.device.index, stream));

  // A broadcast right operand over row-major left operands is one (batches * M, K) GEMM.
  bool b_broadcast = batch_stride(b, out, stride_b) && stride_b == 0;
  bool a_rows = batch_stride(a, out, stride_a) && stride_a == a.strides[nd - 2] * m && !a_op.column_major;
  bool out_rows_fold = uniform && stride_out == out_rows * m;
  if (batches > 1 && b_broadcast && a_rows && out_rows_fold && a.strides[nd - 2] >= k && out_rows >= n) {
    Operand tall{true, false, a.strides[nd - 2]};
    return gemm.run(batches * m, n, k, a.data, tall, 0, b.data, b_op, 0, out.data, ldc, 0, 1);
  }
  if (uniform && batch_stride(a, out, stride_a) && batch_stride(b, out, stride_b)) {
    return gemm.run(m, n, k, a.data, a_op, stride_a, b.data, b_op, stride_b, out.data, ldc, stride_out, batches);
  }
  size_t element = dtype_size(out.dtype);
  for (int64_t batch = 0; batch < batches; ++batch) {
    const char* a_data = static_cast<const char*>(a.data) + batch_offset(a, out, batch) * static_cast<int64_t>(element);
    const char* b_data = static_cast<const char*>(b.data) + batch_offset(b, out, batch) * static_cast<int64_t>(element);
    char* out_data = static_cast<char*>(out.data) + batch_offset(out, out, batch) * static_cast<int64_t>(element);
    gemm.run(m, n, k, a_data, a_op, 0, b_data, b_op, 0, out_data, ldc, 0, 1);
  }
}

}  // namespace kiln::kernels

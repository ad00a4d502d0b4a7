// GEMM throughput on the GPU: kiln's matmul (the op library over kernels/cuda/matmul.cpp) against
// cuBLAS called directly in the same process on the same operands and stream, with kiln's compute
// settings: f32 in full f32 (CUBLAS_COMPUTE_32F, never TF32), bf16 on tensor cores with f32
// accumulation, reduced-precision split-K reductions disallowed. Two baselines:
//   cublasGemmEx   the call kiln makes, so kiln / cublasGemmEx is what kiln's op layer costs;
//   cublasLtMatmul the heuristic's first algorithm with a 32 MiB workspace: the best plain
//                  cuBLAS offers for the shape, so kiln / best says whether another call would pay.
// Shapes: square 4096, and every GEMM of a GPT-2 124M training step at B*T = 8192 tokens (each
// linear's forward x W^T, input gradient dy W and weight gradient dy^T x, with the operands laid
// out as kiln's linear and its backward lay them out). FLOPs = 2 M N K.
// Timing: CUDA events around 10 calls, median of 7 after 3 warm-up calls.
//   bench_cuda_matmul
#include <cublasLt.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bench_util.h"
#include "kernels/backend.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/stream.h"
#include "kiln.h"

using namespace kiln;

namespace {

const Device kGpu = Device::cuda(0);

// out (M, N) = a (M, K) @ b (K, N), where a is stored as (K, M) and read transposed when
// a_transposed (likewise b, stored (N, K)).
struct Shape3 {
  std::string name;
  int64_t m, n, k;
  bool a_transposed, b_transposed;
};

std::vector<Shape3> shapes() {
  std::vector<Shape3> result = {{"square 4096", 4096, 4096, 4096, false, false}};
  const int64_t tokens = 8192, d = 768;
  struct Linear {
    const char* name;
    int64_t in, out;
  };
  for (Linear linear : {Linear{"attn qkv", d, 3 * d}, Linear{"attn proj", d, d}, Linear{"mlp fc", d, 4 * d},
                        Linear{"mlp proj", 4 * d, d}, Linear{"lm head", d, 50304}}) {
    std::string name = linear.name;
    result.push_back({name + " x W^T", tokens, linear.out, linear.in, false, true});
    result.push_back({name + " dy W", tokens, linear.in, linear.out, false, false});
    result.push_back({name + " dy^T x", linear.out, linear.in, tokens, true, false});
  }
  return result;
}

// Median milliseconds per call of `body` (see the header), timed on kiln's current stream.
double median_ms(const std::function<void()>& body) {
  constexpr int kWarmup = 3, kRepeats = 7, kCalls = 10;
  for (int i = 0; i < kWarmup; ++i) body();
  std::vector<double> times;
  for (int r = 0; r < kRepeats; ++r) {
    cuda::Event start(true), end(true);
    start.record();
    for (int i = 0; i < kCalls; ++i) body();
    end.record();
    end.synchronize();
    times.push_back(start.elapsed_ms(end) / kCalls);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

cudaDataType_t cuda_type(DType dtype) { return dtype == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F; }

// kiln's matmul.cpp maps row-major out = a b to column-major out^T = b^T a^T: the first cuBLAS
// operand is b, transposed by flag when b is a transposed view; leading dims are stored row lengths.
struct ColumnMajor {
  cublasOperation_t op_b, op_a;
  int ld_b, ld_a;
};

ColumnMajor column_major(const Shape3& s) {
  return {s.b_transposed ? CUBLAS_OP_T : CUBLAS_OP_N, s.a_transposed ? CUBLAS_OP_T : CUBLAS_OP_N,
          static_cast<int>(s.b_transposed ? s.k : s.n), static_cast<int>(s.a_transposed ? s.m : s.k)};
}

class GemmEx {
 public:
  explicit GemmEx(cudaStream_t stream) {
    KILN_CUBLAS_CHECK(cublasCreate(&handle_));
    KILN_CUBLAS_CHECK(cublasSetMathMode(
        handle_, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
    KILN_CUBLAS_CHECK(cublasSetStream(handle_, stream));
  }
  ~GemmEx() { cublasDestroy(handle_); }

  void run(const Shape3& s, DType dtype, const void* a, const void* b, void* out) const {
    ColumnMajor cm = column_major(s);
    const float alpha = 1, beta = 0;
    KILN_CUBLAS_CHECK(cublasGemmEx(handle_, cm.op_b, cm.op_a, static_cast<int>(s.n), static_cast<int>(s.m),
                                   static_cast<int>(s.k), &alpha, b, cuda_type(dtype), cm.ld_b, a, cuda_type(dtype),
                                   cm.ld_a, &beta, out, cuda_type(dtype), static_cast<int>(s.n), CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
  }

 private:
  cublasHandle_t handle_ = nullptr;
};

// One shape and dtype planned for cublasLtMatmul; `found` is false when the heuristic offers none.
class LtGemm {
 public:
  LtGemm(cublasLtHandle_t handle, const Shape3& s, DType dtype, size_t workspace_bytes) : handle_(handle) {
    ColumnMajor cm = column_major(s);
    cudaDataType_t type = cuda_type(dtype);
    KILN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &cm.op_b, sizeof(cm.op_b)));
    KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &cm.op_a, sizeof(cm.op_a)));
    // Stored column-major shapes before the transpose flags apply.
    bool b_flag = cm.op_b == CUBLAS_OP_T, a_flag = cm.op_a == CUBLAS_OP_T;
    KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b_layout_, type, b_flag ? s.k : s.n, b_flag ? s.n : s.k, cm.ld_b));
    KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a_layout_, type, a_flag ? s.m : s.k, a_flag ? s.k : s.m, cm.ld_a));
    KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&out_layout_, type, s.n, s.m, s.n));
    cublasLtMatmulPreference_t preference = nullptr;
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
    uint64_t workspace = workspace_bytes;
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                           &workspace, sizeof(workspace)));
    // kiln's CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION: no split-K sums in the output type.
    uint32_t reductions = CUBLASLT_REDUCTION_SCHEME_MASK & ~CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                           &reductions, sizeof(reductions)));
    int returned = 0;
    cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle_, desc_, b_layout_, a_layout_, out_layout_,
                                                           out_layout_, preference, 1, &heuristic_, &returned);
    found_ = status == CUBLAS_STATUS_SUCCESS && returned > 0;
    cublasLtMatmulPreferenceDestroy(preference);
  }
  ~LtGemm() {
    cublasLtMatrixLayoutDestroy(out_layout_);
    cublasLtMatrixLayoutDestroy(a_layout_);
    cublasLtMatrixLayoutDestroy(b_layout_);
    cublasLtMatmulDescDestroy(desc_);
  }
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  bool found() const { return found_; }
  void run(const void* a, const void* b, void* out, void* workspace, cudaStream_t stream) const {
    const float alpha = 1, beta = 0;
    KILN_CUBLAS_CHECK(cublasLtMatmul(handle_, desc_, &alpha, b, b_layout_, a, a_layout_, &beta, out, out_layout_, out,
                                     out_layout_, &heuristic_.algo, workspace, heuristic_.workspaceSize, stream));
  }

 private:
  cublasLtHandle_t handle_;
  cublasLtMatmulDesc_t desc_ = nullptr;
  cublasLtMatrixLayout_t a_layout_ = nullptr, b_layout_ = nullptr, out_layout_ = nullptr;
  cublasLtMatmulHeuristicResult_t heuristic_{};
  bool found_ = false;
};

// max |x - y| / max |y|, on the GPU: checks that a baseline computed the product kiln did.
double relative_difference(const Tensor& x, const Tensor& y) {
  Tensor wide_x = x.to(DType::f32), wide_y = y.to(DType::f32);
  return amax(abs(sub(wide_x, wide_y))).item() / amax(abs(wide_y)).item();
}

}  // namespace

int main() try {
  if (!cuda::is_available()) {
    std::printf("bench_cuda_matmul: no GPU: %s\n", kernels::unavailable_reason(DeviceType::CUDA).c_str());
    return 1;
  }
  NoGradGuard no_grad;
  cudaStream_t stream = cuda::current_stream().handle();
  GemmEx gemm_ex(stream);
  cublasLtHandle_t lt = nullptr;
  KILN_CUBLAS_CHECK(cublasLtCreate(&lt));
  constexpr size_t kWorkspaceBytes = size_t{32} << 20;
  Tensor workspace = empty({static_cast<int64_t>(kWorkspaceBytes / sizeof(float))}, TensorOptions(kGpu));

  std::puts(
      "| GEMM | M x N x K | dtype | kiln TFLOP/s | cublasGemmEx TFLOP/s | cublasLt TFLOP/s | kiln / best cuBLAS |");
  std::puts("|---|---|---|---|---|---|---|");
  Generator generator(0);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (const Shape3& s : shapes()) {
      TensorOptions options = TensorOptions(dtype).device(kGpu);
      Tensor a_stored = randn(s.a_transposed ? Shape{s.k, s.m} : Shape{s.m, s.k}, options, &generator);
      Tensor b_stored = randn(s.b_transposed ? Shape{s.n, s.k} : Shape{s.k, s.n}, options, &generator);
      Tensor a = s.a_transposed ? a_stored.t() : a_stored, b = s.b_transposed ? b_stored.t() : b_stored;
      Tensor kiln_out, baseline_out = empty({s.m, s.n}, options);

      double kiln_ms = median_ms([&] { kiln_out = matmul(a, b); });
      double gemm_ex_ms =
          median_ms([&] { gemm_ex.run(s, dtype, a_stored.raw_data(), b_stored.raw_data(), baseline_out.raw_data()); });
      // Same call, same inputs: anything beyond reordered sums means the baseline is wrong.
      const double agree = dtype == DType::bf16 ? 1e-2 : 1e-5;
      KILN_CHECK(relative_difference(kiln_out, baseline_out) <= agree, "bench_cuda_matmul: ", s.name,
                 ": cublasGemmEx disagrees with kiln's matmul");
      LtGemm lt_gemm(lt, s, dtype, kWorkspaceBytes);
      double lt_ms = 0;
      if (lt_gemm.found()) {
        lt_ms = median_ms([&] {
          lt_gemm.run(a_stored.raw_data(), b_stored.raw_data(), baseline_out.raw_data(), workspace.raw_data(), stream);
        });
        KILN_CHECK(relative_difference(kiln_out, baseline_out) <= agree, "bench_cuda_matmul: ", s.name,
                   ": cublasLtMatmul disagrees with kiln's matmul");
      }
      double flop = 2.0 * static_cast<double>(s.m) * static_cast<double>(s.n) * static_cast<double>(s.k);
      auto tflops = [&](double ms) { return flop / (ms * 1e-3) / 1e12; };
      double best_ms = lt_gemm.found() ? std::min(gemm_ex_ms, lt_ms) : gemm_ex_ms;
      bench::row({s.name,
                  std::to_string(s.m) + " x " + std::to_string(s.n) + " x " + std::to_string(s.k),
                  dtype_name(dtype), bench::format("%.1f", tflops(kiln_ms)), bench::format("%.1f", tflops(gemm_ex_ms)),
                  lt_gemm.found() ? bench::format("%.1f", tflops(lt_ms)) : "no algorithm",
                  bench::format("%.2f", best_ms / kiln_ms)});
    }
  }
  cublasLtDestroy(lt);
  return 0;
} catch (const Error& error) {
  std::fprintf(stderr, "%s\n", error.what());
  return 1;
}

// Device parity helpers: run the same op on CPU tensors and on CUDA copies of them, and compare
// the outputs and the input gradients.
//
// Tolerances are |cuda - cpu| <= rtol |cpu| + atol element by element; NaNs must sit in the same
// places and infinities match exactly; integer and bool results must be equal. The default is
// the f32 bound (1e-5 relative + 1e-6 absolute: a few f32 ulps of an O(1) value), which covers
// one rounding of a math-library function (CUDA's expf, tanhf, erff, powf are within 2-4 ulps
// of glibc's). bf16 results round a float that may differ by those ulps to 8 bits, so they may
// land one bf16 ulp apart: kBf16 allows 2^-7 relative.
#pragma once

#include <catch2/catch.hpp>

#include <functional>
#include <string>
#include <vector>

#include "kiln.h"

namespace kiln::cuda_test {

inline const Device kCuda = Device::cuda(0);

struct Tolerance {
  double rtol = 1e-5;
  double atol = 1e-6;
};
inline constexpr Tolerance kF32{};
inline constexpr Tolerance kBf16{7.9e-3, 1e-6};
inline constexpr Tolerance kExact{0.0, 0.0};

// A fresh random CPU tensor with values in [low, high) (a leaf requiring grad when floating).
Tensor random(const Shape& shape, DType dtype = DType::f32, double low = -1.0, double high = 1.0,
              bool requires_grad = true);
// A CPU i64 tensor holding `values`.
Tensor indices(const std::vector<int64_t>& values, const Shape& shape = {});
// CUDA copies of CPU tensors, leaves with the same requires_grad.
std::vector<Tensor> to_cuda(const std::vector<Tensor>& inputs);

// Empty when `actual` (on the GPU) matches `expected` (on the CPU) within `tolerance`, else a
// description of the first mismatch.
std::string mismatch(const Tensor& expected, const Tensor& actual, Tolerance tolerance = kF32);
// Empty when the two tensors hold the same bits (shape and dtype included). NaNs only need to
// be NaN on both sides: x86 and NVIDIA GPUs create NaNs with different payloads.
std::string bit_mismatch(const Tensor& expected, const Tensor& actual);

using Function = std::function<std::vector<Tensor>(const std::vector<Tensor>& inputs)>;

// Runs f on `inputs` (CPU) and on CUDA copies of them and compares every output within
// `forward`; then backpropagates sum_k sum(out_k * w_k), with the same random weights w_k in
// [0.5, 1.5) on both devices, through every floating output that requires grad, and compares
// the gradient of every input that requires grad within `backward`.
void check_parity(const std::vector<Tensor>& inputs, const Function& f, Tolerance forward = kF32,
                  Tolerance backward = kF32);

// The message of the kiln::Error that f throws, or "(no error)".
std::string error_of(const std::function<void()>& f);

}  // namespace kiln::cuda_test

#define CHECK_MATCH(expected, actual, tolerance)                                                 \
  do {                                                                                           \
    std::string kiln_mismatch_ = ::kiln::cuda_test::mismatch((expected), (actual), (tolerance)); \
    INFO(kiln_mismatch_);                                                                        \
    CHECK(kiln_mismatch_.empty());                                                               \
  } while (0)

#define CHECK_BITS(expected, actual)                                                     \
  do {                                                                                   \
    std::string kiln_mismatch_ = ::kiln::cuda_test::bit_mismatch((expected), (actual)); \
    INFO(kiln_mismatch_);                                                                \
    CHECK(kiln_mismatch_.empty());                                                       \
  } while (0)

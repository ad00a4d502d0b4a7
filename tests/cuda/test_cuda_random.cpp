// Device parity for random numbers: rand, randn, uniform_, normal_ and dropout draw the same
// Philox streams on the GPU as on the CPU for the same generator state.
//
// Uniforms and dropout masks are exact in every dtype. Normals go through log, sin and cos in
// double, and CUDA's versions may differ from glibc's in the last bit of a double: f32 and
// 16-bit normals still round to the same value (two doubles an ulp apart straddle an f32
// rounding boundary with probability about 2^-29 per element, and these draws are fixed), while
// f64 normals are compared within a few double ulps.
#include <catch2/catch.hpp>

#include "test_cuda_parity.h"

using namespace kiln;
using namespace kiln::cuda_test;

namespace {

const std::vector<DType> kFloating = {DType::f32, DType::f64, DType::bf16, DType::f16};

}  // namespace

TEST_CASE("cuda: rand and uniform_ draw the CPU's stream bit for bit", "[cuda][random]") {
  for (DType dtype : kFloating) {
    INFO(dtype_name(dtype));
    Generator cpu(42), gpu(42);
    TensorOptions on_gpu = TensorOptions(dtype).device(kCuda);
    // Lengths that are not multiples of the four (or two) elements of a Philox counter.
    CHECK_BITS(rand({1001}, dtype, &cpu), rand({1001}, on_gpu, &gpu));
    CHECK_BITS(rand({7, 13}, dtype, &cpu), rand({7, 13}, on_gpu, &gpu));
    Tensor host = empty({6, 9}, dtype), device = empty({6, 9}, on_gpu);
    uniform_(host, -2.0, 3.0, &cpu);
    uniform_(device, -2.0, 3.0, &gpu);
    CHECK_BITS(host, device);
    // Into a strided view: element i of the stream lands at logical position i of the view.
    Tensor host_t = zeros({9, 6}, dtype), device_t = zeros({9, 6}, on_gpu);
    Tensor view = host_t.t(), device_view = device_t.t();
    uniform_(view, 0.5, 1.5, &cpu);
    uniform_(device_view, 0.5, 1.5, &gpu);
    CHECK_BITS(host_t, device_t);
    CHECK(cpu.state().offset == gpu.state().offset);
  }
}

TEST_CASE("cuda: randn and normal_ draw the CPU's stream", "[cuda][random]") {
  for (DType dtype : kFloating) {
    INFO(dtype_name(dtype));
    Generator cpu(7), gpu(7);
    TensorOptions on_gpu = TensorOptions(dtype).device(kCuda);
    Tensor host = randn({4099}, dtype, &cpu), device = randn({4099}, on_gpu, &gpu);
    Tensor host_scaled = empty({5, 11}, dtype), device_scaled = empty({11, 5}, on_gpu).t();
    normal_(host_scaled, 0.25, 0.02, &cpu);
    normal_(device_scaled, 0.25, 0.02, &gpu);
    if (dtype == DType::f64) {
      CHECK_MATCH(host, device, (Tolerance{1e-14, 1e-15}));
      CHECK_MATCH(host_scaled, device_scaled, (Tolerance{1e-14, 1e-15}));
    } else {
      CHECK_BITS(host, device);
      CHECK_BITS(host_scaled, device_scaled);
    }
  }
}

TEST_CASE("cuda: dropout keeps the CPU's elements, forward and backward", "[cuda][random][dropout]") {
  for (DType dtype : kFloating) {
    INFO(dtype_name(dtype));
    for (double p : {0.1, 0.5, 1.0}) {
      INFO("p = " << p);
      Tensor x = random({37, 29}, dtype, -2.0, 2.0);
      Tensor x_gpu = x.detach().to(kCuda).set_requires_grad(true);
      Generator cpu(11), gpu(11);
      Tensor y = dropout(x, p, true, &cpu), y_gpu = dropout(x_gpu, p, true, &gpu);
      CHECK_BITS(y, y_gpu);
      Tensor weights = random({37, 29}, dtype, 0.5, 1.5, false);
      sum(mul(y, weights)).backward();
      sum(mul(y_gpu, weights.to(kCuda))).backward();
      CHECK_MATCH(x.grad(), x_gpu.grad(), is_floating(dtype) && dtype_size(dtype) == 2 ? kBf16 : kF32);
    }
    // A transposed input is made contiguous first, on both devices alike.
    Tensor x = random({8, 5}, dtype, -2.0, 2.0, false);
    Generator cpu(3), gpu(3);
    CHECK_BITS(dropout(x.t(), 0.3, true, &cpu), dropout(x.to(kCuda).t(), 0.3, true, &gpu));
  }
}

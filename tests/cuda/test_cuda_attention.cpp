// Device parity for attention: the fused scaled-dot-product attention (causal or not, grouped
// kv heads, a KV cache with Tq < Tk, transposed (B, T, H, D) views, head dims that are not a
// multiple of the warp), the reference built from matmul and softmax, and rotary embeddings.
//
// Tolerances: an output row is a weighted mean of up to 70 O(1) value rows accumulated in f32 in
// a different order on each device, so it may differ by about 70 f32 ulps absolutely (~4e-6),
// whence a 1e-5 floor. The gradients contain dS = P (dO.v - D), a difference that cancels, and
// sums of up to 2 x 70 such terms: 1e-4 relative with a 2e-5 floor.
#include <catch2/catch.hpp>

#include "test_cuda_parity.h"

using namespace kiln;
using namespace kiln::cuda_test;

namespace {

const Tolerance kForward{1e-5, 1e-5};
const Tolerance kBackward{1e-4, 2e-5};

}  // namespace

TEST_CASE("cuda: fused attention matches the CPU", "[cuda][attention]") {
  check_parity({random({2, 4, 37, 40}), random({2, 2, 37, 40}), random({2, 2, 37, 40})}, [](auto& in) {
    return std::vector{scaled_dot_product_attention(in[0], in[1], in[2], true),
                       scaled_dot_product_attention(in[0], in[1], in[2], false, 0.3)};
  }, kForward, kBackward);
  // A KV cache: 5 new queries over 70 keys, the last 5 positions.
  check_parity({random({1, 3, 5, 16}), random({1, 3, 70, 16}), random({1, 3, 70, 16})}, [](auto& in) {
    return std::vector{scaled_dot_product_attention(in[0], in[1], in[2], true)};
  }, kForward, kBackward);
  // (B, T, H, D) activations viewed as (B, H, T, D), multi-query (one kv head), D = 64.
  check_parity({random({2, 33, 4, 64}), random({2, 33, 1, 64}), random({2, 33, 1, 64})}, [](auto& in) {
    return std::vector{scaled_dot_product_attention(in[0].transpose(1, 2), in[1].transpose(1, 2), in[2].transpose(1, 2))};
  }, kForward, kBackward);
  check_parity({random({1, 2, 20, 32}, DType::bf16), random({1, 2, 20, 32}, DType::bf16),
                random({1, 2, 20, 32}, DType::bf16)},
               [](auto& in) { return std::vector{scaled_dot_product_attention(in[0], in[1], in[2])}; }, kBf16,
               Tolerance{2e-2, 1e-3});
  check_parity({random({1, 2, 20, 24}, DType::f64), random({1, 1, 20, 24}, DType::f64),
                random({1, 1, 20, 24}, DType::f64)},
               [](auto& in) { return std::vector{scaled_dot_product_attention(in[0], in[1], in[2])}; },
               Tolerance{1e-12, 1e-13}, Tolerance{1e-11, 1e-12});
}

TEST_CASE("cuda: reference attention matches the CPU", "[cuda][attention]") {
  check_parity({random({1, 4, 9, 8}), random({1, 2, 12, 8}), random({1, 2, 12, 8})}, [](auto& in) {
    return std::vector{attention_reference(in[0], in[1], in[2], true), attention_reference(in[0], in[1], in[2], false)};
  }, kForward, kBackward);
}

TEST_CASE("cuda: rotary embeddings match the CPU", "[cuda][attention]") {
  // Positions up to 1e5, where the angles need double precision.
  Tensor positions = indices({0, 1, 5, 100000, 7, 4096});
  check_parity({random({2, 6, 3, 16}), positions}, [](auto& in) {
    return std::vector{rope(in[0], in[1]), rope(in[0], in[1], 500.0)};
  });
  check_parity({random({2, 3, 6, 8}), positions}, [](auto& in) {
    return std::vector{rope(in[0].transpose(1, 2), in[1])};
  });
  check_parity({random({1, 6, 2, 8}, DType::bf16), positions}, [](auto& in) { return std::vector{rope(in[0], in[1])}; },
               kBf16, kBf16);
}

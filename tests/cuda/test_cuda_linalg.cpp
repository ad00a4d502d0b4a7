// Device parity for matmul and linear, layer norm and RMS norm, softmax, log-softmax and the
// fused cross-entropy.
//
// Matrix products use entries in [0.5, 1.5): with no cancellation every output is a sum of
// positive terms whose f32 rounding error is a small multiple of sqrt(K) ulps on both sides
// (cuBLAS in full f32, OpenBLAS), well inside kF32, whereas signed entries can cancel to a
// result near 0 whose absolute error is that of the terms, not of the result. The gradients are
// products with the positive loss weights and stay positive too.
#include <catch2/catch.hpp>

#include "test_cuda_parity.h"

using namespace kiln;
using namespace kiln::cuda_test;

namespace {

Tensor positive(const Shape& shape, DType dtype = DType::f32) { return random(shape, dtype, 0.5, 1.5); }

}  // namespace

TEST_CASE("cuda: matmul matches the CPU for every operand layout", "[cuda][matmul]") {
  // 2-D, 1-D on either side, and 1-D x 1-D.
  check_parity({positive({7, 9}), positive({9, 5})}, [](auto& in) { return std::vector{matmul(in[0], in[1])}; });
  check_parity({positive({9}), positive({9, 5})}, [](auto& in) { return std::vector{matmul(in[0], in[1])}; });
  check_parity({positive({7, 9}), positive({9})}, [](auto& in) { return std::vector{matmul(in[0], in[1])}; });
  check_parity({positive({9}), positive({9})}, [](auto& in) { return std::vector{matmul(in[0], in[1])}; });
  // Transposed operands go to cuBLAS as transpose flags.
  check_parity({positive({9, 7}), positive({5, 9})}, [](auto& in) {
    return std::vector{matmul(in[0].t(), in[1].t()), matmul(in[0].t(), in[0]), matmul(in[1], in[1].t())};
  });
  // Sliced rows (row stride > columns) and an expanded operand (stride 0 inside the matrix,
  // which cuBLAS cannot read and is packed first).
  check_parity({positive({8, 12}), positive({6, 5}), positive({12, 3})}, [](auto& in) {
    return std::vector{matmul(in[0].slice(1, 2, 8), in[1]), matmul(in[0].slice(0, 0, 8, 2), in[2])};
  });
  check_parity({positive({1, 6}), positive({6, 4})}, [](auto& in) {
    return std::vector{matmul(in[0].expand({5, 6}), in[1]), matmul(in[1].t(), in[0].t().expand({6, 3}))};
  });
  // Batches: a broadcast right operand (one tall GEMM), evenly strided batches (one strided
  // batched call), broadcasting on both sides, and transposed batched operands.
  check_parity({positive({3, 4, 6}), positive({6, 5})}, [](auto& in) { return std::vector{matmul(in[0], in[1])}; });
  check_parity({positive({3, 4, 6}), positive({3, 6, 5})}, [](auto& in) { return std::vector{matmul(in[0], in[1])}; });
  check_parity({positive({2, 1, 4, 6}), positive({1, 3, 6, 5})}, [](auto& in) { return std::vector{matmul(in[0], in[1])}; });
  check_parity({positive({3, 6, 4}), positive({3, 5, 6})}, [](auto& in) {
    return std::vector{matmul(in[0].transpose(1, 2), in[1].transpose(1, 2))};
  });
  check_parity({positive({4, 3, 6}), positive({6, 5})}, [](auto& in) {
    return std::vector{matmul(in[0].transpose(0, 1), in[1])};  // batch stride != rows * row stride
  });
  // Large enough for cuBLAS's tensor-core and split-K kernels.
  check_parity({positive({128, 512}), positive({512, 96})}, [](auto& in) { return std::vector{matmul(in[0], in[1])}; });
}

TEST_CASE("cuda: matmul in bf16, f16 and f64 matches the CPU", "[cuda][matmul]") {
  // 16-bit products are exact in f32 and both sides accumulate in f32 and round once, so the
  // results differ by at most one ulp of the 16-bit result.
  check_parity({positive({16, 64}, DType::bf16), positive({64, 24}, DType::bf16)},
               [](auto& in) { return std::vector{matmul(in[0], in[1]), matmul(in[0], in[1].t().t())}; }, kBf16, kBf16);
  // One f16 ulp is at most 2^-10 < 1e-3 of the value.
  check_parity({positive({16, 64}, DType::f16), positive({2, 64, 24}, DType::f16)},
               [](auto& in) { return std::vector{matmul(in[0], in[1])}; }, Tolerance{1e-3, 1e-6}, Tolerance{1e-3, 1e-6});
  check_parity({random({16, 64}, DType::f64), random({64, 24}, DType::f64)},
               [](auto& in) { return std::vector{matmul(in[0], in[1].t().t())}; }, Tolerance{1e-12, 1e-13},
               Tolerance{1e-12, 1e-13});
}

TEST_CASE("cuda: linear matches the CPU with and without bias", "[cuda][matmul]") {
  check_parity({positive({2, 5, 12}), positive({7, 12}), positive({7})},
               [](auto& in) { return std::vector{linear(in[0], in[1], in[2])}; });
  check_parity({positive({6, 12}), positive({7, 12})}, [](auto& in) { return std::vector{linear(in[0], in[1])}; });
  check_parity({positive({6, 12}, DType::bf16), positive({7, 12}, DType::bf16), positive({7}, DType::bf16)},
               [](auto& in) { return std::vector{linear(in[0], in[1], in[2])}; }, kBf16, kBf16);
}

TEST_CASE("cuda: layer norm and RMS norm match the CPU", "[cuda][norm]") {
  // The weight and bias gradients sum over rows; the CPU sums each block of rows in f32, which
  // over these 24 rows of O(1) terms errs by a few 1e-7 at most: within kF32's 1e-6 floor.
  Tensor x = random({2, 12, 40}), w = random({40}, DType::f32, 0.5, 1.5), b = random({40});
  check_parity({x, w, b}, [](auto& in) {
    return std::vector{layer_norm(in[0], in[1], in[2]), layer_norm(in[0].transpose(0, 1), in[1], Tensor(), 1e-3),
                       layer_norm(in[0]), rms_norm(in[0], in[1]), rms_norm(in[0].transpose(0, 1))};
  });
  // Rows wider than a block (lanes take several elements each), a large mean (the shifted sums),
  // and a single short row.
  check_parity({random({3, 1000}), random({1000}, DType::f32, 0.5, 1.5)},
               [](auto& in) { return std::vector{layer_norm(in[0] * 3.0 + 100.0, in[1]), rms_norm(in[0], in[1])}; });
  check_parity({random({1, 5}), random({5})}, [](auto& in) { return std::vector{layer_norm(in[0], in[1], in[1])}; });
  check_parity({random({300, 24})}, [](auto& in) { return std::vector{layer_norm(in[0]), rms_norm(in[0])}; });
  // The bf16 gradients are differences of O(1) float terms rounded once: where they cancel to
  // nearly 0, float results 1e-6 apart can round more than one bf16 ulp apart, hence the floor.
  check_parity({random({6, 64}, DType::bf16), random({64}, DType::bf16, 0.5, 1.5), random({64}, DType::bf16)},
               [](auto& in) { return std::vector{layer_norm(in[0], in[1], in[2]), rms_norm(in[0], in[1])}; }, kBf16,
               Tolerance{7.9e-3, 1e-4});
  check_parity({random({6, 64}, DType::f64), random({64}, DType::f64), random({64}, DType::f64)},
               [](auto& in) { return std::vector{layer_norm(in[0], in[1], in[2]), rms_norm(in[0], in[1])}; },
               Tolerance{1e-12, 1e-13}, Tolerance{1e-12, 1e-13});
}

TEST_CASE("cuda: residual norms match the CPU, and the unfused ops on the GPU bit for bit", "[cuda][norm]") {
  // Against the CPU: the tolerances of the plain norms above (the sum itself is one rounding).
  Tensor x = random({2, 12, 40}), u = random({2, 12, 40}), w = random({40}, DType::f32, 0.5, 1.5), b = random({40});
  auto residual_norms = [](auto& in) {
    ResidualNorm layer = add_layer_norm(in[0], in[1], in[2], in[3]);
    ResidualNorm rms = add_rms_norm(in[0].transpose(0, 1), in[1].transpose(0, 1), in[2]);
    return std::vector{layer.sum, layer.normed, rms.sum, rms.normed};
  };
  check_parity({x, u, w, b}, residual_norms);
  check_parity({random({6, 64}, DType::bf16), random({6, 64}, DType::bf16), random({64}, DType::bf16, 0.5, 1.5),
                random({64}, DType::bf16)},
               residual_norms, kBf16, Tolerance{7.9e-3, 1e-4});
  // On the GPU, fused against add then the norm: the kernels round where add and autograd do.
  const Device cpu = Device::cpu();
  for (DType dtype : {DType::f32, DType::bf16, DType::f64}) {
    INFO(dtype_name(dtype));
    std::vector<Tensor> operands{random({300, 96}, dtype), random({300, 96}, dtype), random({96}, dtype, 0.5, 1.5),
                                 random({96}, dtype)};
    std::vector<Tensor> fused = to_cuda(operands), plain = to_cuda(operands);
    ResidualNorm r = add_layer_norm(fused[0], fused[1], fused[2], fused[3]);
    Tensor h = add(plain[0], plain[1]), y = layer_norm(h, plain[2], plain[3]);
    CHECK_BITS(h.to(cpu), r.sum.to(cpu));
    CHECK_BITS(y.to(cpu), r.normed.to(cpu));
    Tensor grad_h = random({300, 96}, dtype, -1, 1, false).to(kCuda);
    Tensor grad_y = random({300, 96}, dtype, -1, 1, false).to(kCuda);
    run_backward({r.sum, r.normed}, {grad_h, grad_y}, false);
    run_backward({h, y}, {grad_h, grad_y}, false);
    for (size_t i = 0; i < operands.size(); ++i) CHECK_BITS(plain[i].grad().to(cpu), fused[i].grad().to(cpu));
  }
}

TEST_CASE("cuda: softmax and log-softmax match the CPU along any dim", "[cuda][softmax]") {
  check_parity({random({6, 9}, DType::f32, -3, 3)}, [](auto& in) {
    return std::vector{softmax(in[0], 1), log_softmax(in[0], 1), softmax(in[0], 0), log_softmax(in[0].t(), 1),
                       softmax(in[0].t(), 0)};
  });
  check_parity({random({3, 4, 5}, DType::f32, -3, 3)}, [](auto& in) {
    return std::vector{softmax(in[0], 1), log_softmax(in[0], 0), softmax(in[0].permute({2, 0, 1}), 2)};
  });
  // Rows longer than a block, many rows, and large logits (the max shift matters).
  check_parity({random({5, 4000}, DType::f32, -10, 10)},
               [](auto& in) { return std::vector{softmax(in[0], 1), log_softmax(in[0] * 30.0, 1)}; });
  check_parity({random({2000, 7}, DType::f32, -3, 3)},
               [](auto& in) { return std::vector{softmax(in[0], 1), log_softmax(in[0], 0)}; });
  check_parity({random({8, 33}, DType::bf16, -3, 3)},
               [](auto& in) { return std::vector{softmax(in[0], 1), log_softmax(in[0], 0)}; }, kBf16, kBf16);
  check_parity({random({8, 33}, DType::f64, -3, 3)}, [](auto& in) { return std::vector{softmax(in[0], 1), log_softmax(in[0], 0)}; },
               Tolerance{1e-12, 1e-14}, Tolerance{1e-12, 1e-14});
}

TEST_CASE("cuda: cross-entropy matches the CPU", "[cuda][softmax]") {
  Tensor logits = random({6, 11}, DType::f32, -3, 3);
  Tensor targets = indices({0, 10, 3, -100, 7, 3});
  check_parity({logits, targets}, [](auto& in) {
    return std::vector{cross_entropy(in[0], in[1]),
                       cross_entropy(in[0], in[1], CrossEntropyOptions().reduce(Reduction::sum)),
                       cross_entropy(in[0], in[1], CrossEntropyOptions().reduce(Reduction::none)),
                       cross_entropy(in[0], in[1], CrossEntropyOptions().smoothing(0.1))};
  });
  check_parity({logits, indices({0, 10, 3, 3, 7, 1})}, [](auto& in) {
    return std::vector{cross_entropy(in[0], in[1], CrossEntropyOptions().ignore(3).smoothing(0.2))};
  });
  // (..., C) logits with i32 targets, transposed logits, a large vocabulary.
  check_parity({random({2, 3, 5}, DType::f32, -3, 3), indices({1, 4, 0, 2, 2, 3}, {2, 3}).to(DType::i32)},
               [](auto& in) { return std::vector{cross_entropy(in[0], in[1])}; });
  check_parity({random({5, 4}, DType::f32, -3, 3), indices({0, 4, 1, 1})},
               [](auto& in) { return std::vector{cross_entropy(in[0].t(), in[1])}; });
  check_parity({random({4, 5000}, DType::f32, -5, 5), indices({17, 4999, 0, 2500})},
               [](auto& in) { return std::vector{cross_entropy(in[0], in[1], CrossEntropyOptions().smoothing(0.05))}; });
  check_parity({random({8, 40}, DType::bf16, -3, 3), indices({1, 2, 3, 4, 5, 6, 7, -100})},
               [](auto& in) { return std::vector{cross_entropy(in[0], in[1], CrossEntropyOptions().reduce(Reduction::none))}; },
               kBf16, kBf16);
}

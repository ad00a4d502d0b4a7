// Device parity for reductions: sum, mean, var, logsumexp, amax/amin, max/min with indices and
// argmax/argmin, over single and multiple dims, all dims, transposed inputs, the bias-gradient
// layout, long reductions split across blocks, integers, bf16, ties and NaN.
//
// Both backends accumulate floating sums in double and round once, so long f32 sums still
// agree within kF32; indices must be equal.
#include <catch2/catch.hpp>

#include <limits>

#include "test_cuda_parity.h"

using namespace kiln;
using namespace kiln::cuda_test;

TEST_CASE("cuda: sum, mean, var and logsumexp match the CPU", "[cuda][reduce]") {
  check_parity({random({5, 7, 3})}, [](auto& in) {
    return std::vector{sum(in[0]), sum(in[0], {0, 2}, true), sum(in[0], {1}), mean(in[0]), mean(in[0], {1}),
                       var(in[0], {1}), var(in[0], {0, 2}, 0.0, true), logsumexp(in[0], {2}), logsumexp(in[0], {0, 1})};
  });
  // Transposed input (reduced dim strided), and the bias-gradient layout (leading dim reduced,
  // outputs adjacent): the group layouts where lanes or groups are adjacent threads.
  check_parity({random({7, 5})}, [](auto& in) {
    return std::vector{sum(in[0].t(), {1}), mean(in[0].t(), {0}), var(in[0].t(), {1}), logsumexp(in[0].t(), {0})};
  });
  check_parity({random({64, 33})}, [](auto& in) { return std::vector{sum(in[0], {0}), mean(in[0], {0})}; });
  check_parity({random({3000, 96})}, [](auto& in) { return std::vector{sum(in[0], {0}), var(in[0], {0})}; });
  // Many short rows, and a 5-D input reducing non-adjacent dims.
  check_parity({random({4096, 3})}, [](auto& in) { return std::vector{sum(in[0], {1}), logsumexp(in[0], {1})}; });
  check_parity({random({2, 3, 4, 5, 6})}, [](auto& in) {
    return std::vector{sum(in[0], {0, 2, 4}), var(in[0], {1, 3}), amax(in[0], {0, 4})};
  });
}

TEST_CASE("cuda: long reductions split across blocks match the CPU", "[cuda][reduce]") {
  // 2^21 elements: the reduced range is cut into chunks whose partials are merged in order.
  check_parity({random({1 << 21})}, [](auto& in) {
    return std::vector{sum(in[0]), mean(in[0]), var(in[0]), logsumexp(in[0], {0}), amax(in[0]), amin(in[0])};
  });
  Tensor values = random({1 << 21}, DType::f32, -1, 1, false);
  check_parity({values}, [](auto& in) {
    return std::vector{argmax(in[0]), argmin(in[0]), max(in[0], 0).second, min(in[0], 0).second};
  }, kExact);
  check_parity({random({3, 1 << 19})}, [](auto& in) { return std::vector{sum(in[0], {1}), var(in[0], {1})}; });
}

TEST_CASE("cuda: extrema and their indices match the CPU", "[cuda][reduce]") {
  check_parity({random({5, 6})}, [](auto& in) {
    auto [values, indices] = max(in[0], 1);
    auto [low, low_indices] = min(in[0].t(), 1, true);
    return std::vector{values, indices, low, low_indices, amax(in[0], {1}), amin(in[0]), argmax(in[0], 0),
                       argmin(in[0], 1, true), argmax(in[0])};
  });
  // Ties: the first occurrence wins, and amax shares its gradient among the maxima.
  Tensor tied = from_vector<float>({1, 3, 3, 2, 0, 0, 5, 5, 5, -1, -1, 4}, {3, 4}).set_requires_grad(true);
  check_parity({tied}, [](auto& in) {
    return std::vector{max(in[0], 1).second, min(in[0], 1).second, argmax(in[0], 0), argmin(in[0]), amax(in[0], {1}),
                       amin(in[0], {0}), max(in[0], 1).first};
  });
  // NaN beats every number; the first NaN is the one reported.
  float nan = std::numeric_limits<float>::quiet_NaN();
  Tensor with_nan = from_vector<float>({1, nan, 3, nan, 0, 2, 7, 1}, {2, 4});
  check_parity({with_nan}, [](auto& in) {
    return std::vector{max(in[0], 1).first, max(in[0], 1).second, argmin(in[0], 1), amax(in[0], {0}), logsumexp(in[0], {1})};
  });
}

TEST_CASE("cuda: integer, bf16 and f64 reductions match the CPU", "[cuda][reduce]") {
  for (DType dtype : {DType::i32, DType::i64}) {
    Tensor x = random({6, 700}, DType::f32, -1000, 1000, false).to(dtype);
    check_parity({x}, [](auto& in) {
      return std::vector{sum(in[0]), sum(in[0], {1}), amax(in[0], {0}), amin(in[0]), argmax(in[0], 1),
                         max(in[0].t(), 0).second};
    }, kExact);
  }
  check_parity({random({5, 80}, DType::bf16)}, [](auto& in) {
    return std::vector{sum(in[0], {1}), mean(in[0], {0}), var(in[0], {1}), logsumexp(in[0], {1}), amax(in[0], {1})};
  }, kBf16, kBf16);
  check_parity({random({5, 80}, DType::f64)}, [](auto& in) {
    return std::vector{sum(in[0], {1}), mean(in[0]), var(in[0], {0}), logsumexp(in[0], {1}), amin(in[0], {1})};
  }, Tolerance{1e-12, 1e-14}, Tolerance{1e-12, 1e-14});
}

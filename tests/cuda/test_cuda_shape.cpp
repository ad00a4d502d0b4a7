// Device parity for the ops that join, cut and view tensors: cat, stack, split, chunk and the
// view methods (reshape, transpose, permute, narrow, slice, select, expand, squeeze, unsqueeze,
// flatten), contiguous and clone, forward and backward. Views reach the kernels as strided
// operands, so these also exercise the strided copy and the gradient accumulation into views.
#include <catch2/catch.hpp>

#include "test_cuda_parity.h"

using namespace kiln;
using namespace kiln::cuda_test;

TEST_CASE("cuda: cat, stack, split and chunk match the CPU", "[cuda][shape]") {
  check_parity({random({2, 3}), random({2, 2}), random({3, 2})}, [](auto& in) {
    return std::vector{cat({in[0], in[1].t(), in[2].t()}, 1), cat({in[0].t(), in[2]}, 0), stack({in[0], in[2].t()}, 1),
                       stack({in[0], in[0] * 2.0}, 0)};
  });
  check_parity({random({6, 5})}, [](auto& in) {
    std::vector<Tensor> pieces = split(in[0], 2, 1);
    std::vector<Tensor> uneven = split(in[0], {1, 3, 2}, 0);
    std::vector<Tensor> parts = chunk(in[0], 4, 0);
    return std::vector{pieces[0] * 2.0, pieces[2] + 1.0, uneven[1] * uneven[1], parts[3] - parts[0], parts[1].exp()};
  });
  for (DType dtype : {DType::bf16, DType::i64, DType::boolean}) {
    Tensor a = random({3, 4}, DType::f32, -3, 3, false).to(dtype), b = random({2, 4}, DType::f32, -3, 3, false).to(dtype);
    check_parity({a, b}, [](auto& in) { return std::vector{cat({in[0], in[1]}, 0), stack({in[0].t(), in[0].t()}, 2)}; },
                 kExact);
  }
}

TEST_CASE("cuda: views, contiguous and clone match the CPU", "[cuda][shape]") {
  check_parity({random({4, 6, 5})}, [](auto& in) {
    const Tensor& x = in[0];
    return std::vector{x.reshape({6, 20}).contiguous() * 1.5,
                       x.transpose(0, 2).contiguous(),
                       x.permute({1, 2, 0}).reshape({-1}) + 0.0,
                       x.narrow(1, 2, 3).clone(),
                       x.slice(2, 1, 5, 2).contiguous(),
                       x.select(0, 3) * 3.0,
                       x.select(1, -1).unsqueeze(1).expand({4, 7, 5}).contiguous(),
                       x.slice(0, 1, 2).squeeze(0).t().contiguous(),
                       x.flatten(1).t().clone(),
                       x.unsqueeze(0).squeeze().sum({1})};
  });
  // A gradient accumulated through two views of one leaf.
  check_parity({random({5, 5})}, [](auto& in) { return std::vector{in[0].t() * in[0], in[0].slice(0, 0, 5, 2) * 2.0}; });
}

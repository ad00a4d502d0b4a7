// Finite-difference gradient checks (f64) for elementwise ops, reductions, matrix products
// and views, on broadcast and non-contiguous (transposed, sliced) operands.
#include <catch2/catch.hpp>

#include "kiln.h"
#include "support/gradcheck.h"

using namespace kiln;
using kiln::testing::random_leaf;

TEST_CASE("gradcheck: unary elementwise ops", "[gradcheck][elementwise]") {
  using Unary = Tensor (*)(const Tensor&);
  std::vector<std::pair<const char*, Unary>> ops = {
      {"neg", neg}, {"exp", exp}, {"tanh", tanh}, {"sigmoid", sigmoid}, {"silu", silu},
      {"sin", sin}, {"cos", cos}, {"square", square}, {"abs", abs}, {"relu", relu}};
  for (auto [name, op] : ops) {
    SECTION(name) {
      // Values kept away from 0 so abs and relu are differentiable at every sample.
      Tensor x = random_leaf({3, 4}, 1, 0.1, 1.0);
      Tensor sign_flip = from_vector<double>({1, -1, 1, -1}, {1, 4});
      REQUIRE_GRADCHECK([op, sign_flip](const auto& in) { return op(mul(in[0], sign_flip).transpose(0, 1)); }, {x});
    }
  }
  SECTION("log, sqrt, rsqrt, reciprocal on positive inputs") {
    Tensor x = random_leaf({4, 3}, 2, 0.5, 2.0);
    for (Unary op : {Unary(log), Unary(sqrt), Unary(rsqrt), Unary(reciprocal)}) {
      REQUIRE_GRADCHECK([op](const auto& in) { return op(in[0].slice(0, 0, 4, 2)); }, {x});
    }
  }
  SECTION("gelu, exact and tanh") {
    Tensor x = random_leaf({5, 3}, 3, -3.0, 3.0);
    REQUIRE_GRADCHECK([](const auto& in) { return gelu(in[0]); }, {x});
    REQUIRE_GRADCHECK([](const auto& in) { return gelu(in[0].t(), GeluApproximation::tanh); }, {x});
  }
  SECTION("clamp") {
    Tensor x = random_leaf({20}, 4, -2.0, 2.0);
    REQUIRE_GRADCHECK([](const auto& in) { return clamp(in[0], -0.7, 0.9); }, {x});
    REQUIRE_GRADCHECK([](const auto& in) { return clamp(in[0], std::nullopt, 0.3); }, {x});
  }
}

TEST_CASE("gradcheck: binary ops with broadcasting", "[gradcheck][elementwise]") {
  Tensor a = random_leaf({3, 1, 4}, 10, -1.0, 1.0);
  Tensor b = random_leaf({2, 4}, 11, 0.5, 1.5);
  REQUIRE_GRADCHECK([](const auto& in) { return add(in[0], in[1], 0.5); }, {a, b});
  REQUIRE_GRADCHECK([](const auto& in) { return sub(in[0], in[1], 2.0); }, {a, b});
  REQUIRE_GRADCHECK([](const auto& in) { return mul(in[0], in[1]); }, {a, b});
  REQUIRE_GRADCHECK([](const auto& in) { return div(in[0], in[1]); }, {a, b});
  REQUIRE_GRADCHECK([](const auto& in) { return maximum(in[0], in[1]); }, {a, b});
  REQUIRE_GRADCHECK([](const auto& in) { return minimum(in[0], in[1]); }, {a, b});
  Tensor positive = random_leaf({3, 4}, 12, 0.5, 2.0);
  Tensor exponent = random_leaf({4}, 13, -1.5, 1.5);
  REQUIRE_GRADCHECK([](const auto& in) { return pow(in[0], in[1]); }, {positive, exponent});
  REQUIRE_GRADCHECK([](const auto& in) { return pow(in[0].t(), 3.0); }, {positive});
  REQUIRE_GRADCHECK([](const auto& in) { return (in[0] * 2.0 - 1.0) / 3.0 + 0.5; }, {positive});
  REQUIRE_GRADCHECK([](const auto& in) { return 2.0 / in[0] - (1.0 - in[0]); }, {positive});
}

TEST_CASE("gradcheck: where and masked_fill", "[gradcheck][elementwise]") {
  Tensor a = random_leaf({3, 4}, 20), b = random_leaf({4}, 21);
  Tensor condition = gt(random_leaf({3, 4}, 22).detach(), 0.0);
  REQUIRE_GRADCHECK([condition](const auto& in) { return where(condition, in[0], in[1]); }, {a, b});
  Tensor mask = lt(random_leaf({1, 4}, 23).detach(), 0.0);
  REQUIRE_GRADCHECK([mask](const auto& in) { return masked_fill(in[0], mask, -5.0); }, {a});
}

TEST_CASE("gradcheck: reductions", "[gradcheck][reduce]") {
  Tensor x = random_leaf({3, 4, 5}, 30);
  REQUIRE_GRADCHECK([](const auto& in) { return sum(in[0]); }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return sum(in[0], {0, 2}, true); }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return mean(in[0].transpose(0, 2), {1}); }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return var(in[0], {2}); }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return var(in[0], {0, 1}, 0.0, true); }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return logsumexp(in[0], {1}); }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return logsumexp(in[0].slice(2, 0, 5, 2), {0, 2}, true); }, {x});
  // Distinct values keep max/min differentiable.
  REQUIRE_GRADCHECK([](const auto& in) { return amax(in[0], {1}); }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return amin(in[0]); }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return max(in[0], 2).first; }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return min(in[0].transpose(1, 2), 1, true).first; }, {x});
}

TEST_CASE("gradcheck: matrix products", "[gradcheck][matmul]") {
  Tensor a = random_leaf({2, 3, 4}, 40), b = random_leaf({4, 5}, 41), c = random_leaf({2, 4, 5}, 42);
  REQUIRE_GRADCHECK([](const auto& in) { return matmul(in[0], in[1]); }, {a, b});
  REQUIRE_GRADCHECK([](const auto& in) { return matmul(in[0], in[1]); }, {a, c});
  REQUIRE_GRADCHECK([](const auto& in) { return matmul(in[1].transpose(0, 1), in[0].transpose(1, 2)); }, {a, b});
  Tensor v = random_leaf({4}, 43), m = random_leaf({4, 3}, 44);
  REQUIRE_GRADCHECK([](const auto& in) { return matmul(in[0], in[1]); }, {v, m});
  REQUIRE_GRADCHECK([](const auto& in) { return matmul(in[1].t(), in[0]); }, {v, m});
  REQUIRE_GRADCHECK([](const auto& in) { return matmul(in[0], in[0]); }, {v});
  Tensor x = random_leaf({2, 3, 4}, 45), w = random_leaf({6, 4}, 46), bias = random_leaf({6}, 47);
  REQUIRE_GRADCHECK([](const auto& in) { return linear(in[0], in[1], in[2]); }, {x, w, bias});
  REQUIRE_GRADCHECK([](const auto& in) { return linear(in[0].transpose(0, 1), in[1]); }, {x, w});
}

TEST_CASE("gradcheck: views", "[gradcheck][views]") {
  Tensor x = random_leaf({2, 3, 4}, 50);
  REQUIRE_GRADCHECK([](const auto& in) { return in[0].reshape({4, 6}) * 1.5; }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return in[0].permute({2, 0, 1}) * 1.5; }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return in[0].slice(2, 1, 4, 2) * 1.5; }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return in[0].select(1, -1) * 1.5; }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return in[0].narrow(0, 1, 1).squeeze() * 1.5; }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return in[0].unsqueeze(1).expand({2, 5, 3, 4}) * 1.5; }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return in[0].transpose(0, 2).contiguous().flatten() * 1.5; }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return in[0].clone() * 1.5; }, {x});
}

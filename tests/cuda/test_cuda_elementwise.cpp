// Device parity for elementwise ops: unary ops and their gradients, binary ops with
// broadcasting, comparisons and logical ops, where, masked_fill and clamp, on contiguous,
// transposed, broadcast and sliced operands, in f32, bf16, f64 and the integer dtypes.
#include <catch2/catch.hpp>

#include <limits>

#include "test_cuda_parity.h"

using namespace kiln;
using namespace kiln::cuda_test;

namespace {

using Unary = Tensor (*)(const Tensor&);
using Binary = Tensor (*)(const Tensor&, const Tensor&);

struct UnaryCase {
  const char* name;
  Unary op;
  double low, high;  // an input range inside the op's domain
};

const std::vector<UnaryCase> kUnary = {
    {"neg", neg, -2, 2},       {"exp", exp, -3, 3},         {"log", log, 0.1, 3},       {"sqrt", sqrt, 0.1, 3},
    {"rsqrt", rsqrt, 0.2, 3},  {"abs", abs, -2, 2},         {"tanh", tanh, -3, 3},      {"sigmoid", sigmoid, -6, 6},
    {"relu", relu, -2, 2},     {"silu", silu, -5, 5},       {"sin", sin, -4, 4},        {"cos", cos, -4, 4},
    {"reciprocal", reciprocal, 0.3, 3}, {"sign", sign, -2, 2}, {"square", square, -2, 2}};

Tensor gelu_erf(const Tensor& x) { return gelu(x); }
Tensor gelu_tanh(const Tensor& x) { return gelu(x, GeluApproximation::tanh); }

}  // namespace

TEST_CASE("cuda: unary ops and their gradients match the CPU", "[cuda][elementwise]") {
  std::vector<UnaryCase> cases = kUnary;
  cases.push_back({"gelu", gelu_erf, -4, 4});
  cases.push_back({"gelu_tanh", gelu_tanh, -4, 4});
  for (const UnaryCase& c : cases) {
    INFO(c.name);
    Unary op = c.op;
    // Contiguous (the vectorised path, 4099 elements leave a tail), transposed and sliced
    // (the strided path), in f32, bf16 and f64.
    check_parity({random({4099}, DType::f32, c.low, c.high)}, [op](auto& in) { return std::vector{op(in[0])}; });
    check_parity({random({9, 7}, DType::f32, c.low, c.high)}, [op](auto& in) { return std::vector{op(in[0].t())}; });
    check_parity({random({10, 6}, DType::f32, c.low, c.high)},
                 [op](auto& in) { return std::vector{op(in[0].slice(0, 1, 10, 3))}; });
    check_parity({random({33, 5}, DType::bf16, c.low, c.high)}, [op](auto& in) { return std::vector{op(in[0])}; },
                 kBf16, kBf16);
    check_parity({random({33, 5}, DType::f64, c.low, c.high)}, [op](auto& in) { return std::vector{op(in[0])}; },
                 Tolerance{1e-12, 1e-14}, Tolerance{1e-12, 1e-14});
  }
}

TEST_CASE("cuda: binary ops with broadcasting match the CPU", "[cuda][elementwise]") {
  std::vector<std::pair<const char*, Binary>> ops = {
      {"mul", mul}, {"div", div}, {"maximum", maximum}, {"minimum", minimum}, {"pow", static_cast<Binary>(pow)}};
  for (auto& [name, op] : ops) {
    INFO(name);
    Binary f = op;
    check_parity({random({4, 1, 6}, DType::f32, 0.2, 2), random({5, 6}, DType::f32, 0.5, 2)},
                 [f](auto& in) { return std::vector{f(in[0], in[1])}; });
    check_parity({random({6, 5}, DType::f32, 0.2, 2), random({5, 6}, DType::f32, 0.5, 2)},
                 [f](auto& in) { return std::vector{f(in[0].t(), in[1])}; });
    check_parity({random({4000}, DType::f32, 0.2, 2), random({4000}, DType::f32, 0.5, 2)},
                 [f](auto& in) { return std::vector{f(in[0], in[1])}; });
    check_parity({random({8, 8}, DType::bf16, 0.2, 2), random({8}, DType::bf16, 0.5, 2)},
                 [f](auto& in) { return std::vector{f(in[0], in[1])}; }, kBf16, kBf16);
  }
  check_parity({random({3, 4}), random({4})}, [](auto& in) { return std::vector{add(in[0], in[1], 0.5)}; });
  check_parity({random({3, 1}), random({3, 4})}, [](auto& in) { return std::vector{sub(in[0], in[1], 2.0)}; });
  check_parity({random({3, 4}, DType::f32, 0.2, 2)}, [](auto& in) { return std::vector{pow(in[0], 2.5)}; });
  // A broadcast scalar operand (the flat path with a stride-0 input) and the operators.
  check_parity({random({1001})}, [](auto& in) {
    return std::vector{in[0] * 2.5 + 1.0, 3.0 - in[0], in[0] / 4.0, 1.0 / (in[0] + 2.0), -in[0]};
  });
  check_parity({random({2, 3, 4}), random({4, 3})}, [](auto& in) {
    return std::vector{in[0] + in[1].t(), in[0] - in[1].t(), in[0] * in[1].t(), in[0] / (in[1].t() + 2.0)};
  });
  // Integer arithmetic is exact.
  for (DType dtype : {DType::i32, DType::i64}) {
    Tensor a = random({5, 6}, DType::f32, -100, 100, false).to(dtype);
    Tensor b = random({6}, DType::f32, -100, 100, false).to(dtype);
    check_parity({a, b}, [](auto& in) {
      return std::vector{add(in[0], in[1]), sub(in[0], in[1]), mul(in[0], in[1]), maximum(in[0], in[1]),
                         minimum(in[0], in[1]), neg(in[0]), abs(in[0]), sign(in[0]), clamp(in[0], -10, 20)};
    }, kExact);
  }
}

TEST_CASE("cuda: NaN and infinity follow the CPU's rules", "[cuda][elementwise]") {
  double inf = std::numeric_limits<double>::infinity();
  Tensor a = from_vector<float>({1.0f, std::nanf(""), -2.0f, 0.0f, static_cast<float>(inf), -0.0f});
  Tensor b = from_vector<float>({std::nanf(""), 3.0f, -1.0f, -0.0f, 1.0f, 0.0f});
  check_parity({a, b}, [](auto& in) {
    return std::vector{maximum(in[0], in[1]), minimum(in[0], in[1]), clamp(in[0], -1.0, 1.0), relu(in[0]),
                       sign(in[0]), eq(in[0], in[1]), ne(in[0], in[1]), lt(in[0], in[1])};
  }, kExact);
}

TEST_CASE("cuda: comparisons and logical ops match the CPU", "[cuda][elementwise]") {
  Tensor a = random({4, 6}, DType::f32, -1, 1, false);
  // Ties on purpose, so that equality is exercised.
  Tensor b = where(gt(random({6}, DType::f32, -1, 1, false), 0.0), a.select(0, 0), random({6}, DType::f32, -1, 1, false));
  check_parity({a, b}, [](auto& in) {
    return std::vector{eq(in[0], in[1]), ne(in[0], in[1]), lt(in[0], in[1]), le(in[0], in[1]), gt(in[0], in[1]),
                       ge(in[0], in[1]), eq(in[0], 0.5), ne(in[0], 0.5), lt(in[0], 0.5), le(in[0], 0.5),
                       gt(in[0].t(), 0.5), ge(in[0], 0.5)};
  }, kExact);
  Tensor p = gt(random({3, 4}, DType::f32, -1, 1, false), 0.0), q = gt(random({4}, DType::f32, -1, 1, false), 0.0);
  check_parity({p, q}, [](auto& in) {
    return std::vector{logical_and(in[0], in[1]), logical_or(in[0], in[1]), logical_not(in[0]),
                       logical_not(in[0].t()), eq(in[0], in[1])};
  }, kExact);
  Tensor integers = random({3, 4}, DType::f32, -3, 3, false).to(DType::i64);
  check_parity({integers}, [](auto& in) {
    return std::vector{logical_not(in[0]), gt(in[0], 0.0), logical_and(in[0], in[0].t().t())};
  }, kExact);
  CHECK(allclose(a.to(kCuda), a));
}

TEST_CASE("cuda: where, masked_fill and clamp match the CPU", "[cuda][elementwise]") {
  Tensor condition = gt(random({4, 5}, DType::f32, -1, 1, false), 0.0);
  check_parity({condition, random({4, 5}), random({5})}, [](auto& in) {
    return std::vector{where(in[0], in[1], in[2]), where(in[0], 2.0, in[2]), where(in[0], in[1], -1.5),
                       where(in[0].t(), in[1].t(), in[2].unsqueeze(1))};
  });
  Tensor mask = lt(random({1, 5}, DType::f32, -1, 1, false), 0.0);
  check_parity({random({4, 5}), mask}, [](auto& in) { return std::vector{masked_fill(in[0], in[1], -3.5)}; });
  check_parity({random({50}, DType::f32, -2, 2)}, [](auto& in) {
    return std::vector{clamp(in[0], -0.5, 0.75), clamp(in[0], 0.1, std::nullopt), clamp(in[0], std::nullopt, 0.2)};
  });
  // Exactly at the bounds, where the gradient convention matters.
  Tensor at_bounds = from_vector<float>({-0.5f, 0.75f, 0.0f, -1.0f, 1.0f}).set_requires_grad(true);
  check_parity({at_bounds}, [](auto& in) { return std::vector{clamp(in[0], -0.5, 0.75)}; });
  for (DType dtype : {DType::bf16, DType::f64, DType::i32, DType::boolean}) {
    INFO(dtype_name(dtype));
    Tensor x = random({4, 5}, DType::f32, -3, 3, false).to(dtype);
    Tensor y = random({4, 5}, DType::f32, -3, 3, false).to(dtype);
    check_parity({condition, x, y}, [](auto& in) { return std::vector{where(in[0], in[1], in[2].t().t())}; }, kExact);
  }
}

TEST_CASE("cuda: sum_to_shape matches the CPU", "[cuda][elementwise]") {
  check_parity({random({4, 3, 5})}, [](auto& in) {
    return std::vector{sum_to_shape(in[0], {3, 1}), sum_to_shape(in[0], {1, 5}), sum_to_shape(in[0], {4, 3, 5})};
  });
}

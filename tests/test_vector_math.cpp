// Accuracy of the vectorisable float functions in kernels/cpu/vector_math.h against the std
// functions evaluated in double, which are exact to well within a float ulp.
//
// Each function is swept over every 509th float bit pattern (both signs, all exponents, so the
// saturated ranges, the subnormals and inf and NaN patterns too), over every float in a window
// around each of its edges (overflow, the subnormal boundary, underflow to 0, the switch between
// its two formulas, saturation), and over the special values. The worst error, in float ulps of
// the double reference, must stay within the bound stated for the function. The functions run in
// loops over arrays, as in the kernels, and this test is built with the kernels' flags, so what it
// checks is the vectorised code the kernels run.
//
// Where a formula cancels or has an ill-conditioned float argument no float evaluation does better,
// and the bound says so: errors are measured in ulps of the formula's largest term (the
// derivatives near their zeros, exact GELU where 1 + erf cancels), with an absolute floor where
// a factor exp(-|z|) is subnormal, and the GELU-tanh bounds grow with the condition number of
// sigmoid at its argument z, whose float rounding alone moves the result by that many ulps.
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <string>
#include <vector>

#include "kernels/cpu/vector_math.h"

namespace vector_math = kiln::kernels::vector_math;

namespace {

constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kSmallestNormal = 0x1p-126;

double reference_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
double gelu_argument(double x) { return 2.0 * kSqrt2OverPi * (x + 0.044715 * x * x * x); }
double gelu_argument_slope(double x) { return 2.0 * kSqrt2OverPi * (1.0 + 3.0 * 0.044715 * x * x); }
double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }
double normal_pdf(double x) { return std::exp(-0.5 * x * x) / std::sqrt(2.0 * std::numbers::pi); }
// The condition number of sigmoid at the GELU argument z: a relative error in z moves the result
// by this many times as much.
double gelu_condition(double x) {
  double z = gelu_argument(x);
  return std::fabs(z) * reference_sigmoid(-z);
}

struct Case {
  std::string name;
  float (*function)(float);
  double (*reference)(double);
  double bound_ulps;
  // Errors are counted in ulps of scale(x, reference) (by default the reference itself) and may
  // reach bound_ulps * (1 + condition(x)).
  double (*scale)(double x, double reference) = nullptr;
  double (*condition)(double x) = nullptr;
  std::vector<float> edges = {};
};

// The float ulp at magnitude |value|: 2^-149 through the subnormals.
double ulp_of(double value) {
  double magnitude = std::fabs(value);
  int exponent = magnitude >= kSmallestNormal ? std::ilogb(magnitude) : -126;
  return std::ldexp(1.0, exponent - 23);
}

struct Worst {
  double ratio = 0;  // error over the allowed error; <= 1 passes
  double ulps = 0;
  float x = 0, got = 0;
  double reference = 0;
};

// Error of `got` against `reference` over the allowed error. A float that must round to inf, or a
// NaN, must be matched exactly; a got of inf where the reference is finite counts as 2^128.
void score(const Case& c, float x, float got, Worst& worst) {
  double reference = c.reference(x);
  double ulps;
  if (std::isnan(reference) || std::isnan(got)) {
    ulps = std::isnan(reference) && std::isnan(got) ? 0.0 : std::numeric_limits<double>::infinity();
  } else if (std::isinf(static_cast<float>(reference))) {
    ulps = got == static_cast<float>(reference) ? 0.0 : std::numeric_limits<double>::infinity();
  } else {
    double value = std::isinf(got) ? std::copysign(0x1p128, got) : got;
    double scale = c.scale ? c.scale(x, reference) : reference;
    ulps = std::fabs(value - reference) / ulp_of(scale);
  }
  if (ulps == 0.0) return;  // also where a condition number is undefined (x = NaN or inf)
  double ratio = ulps / (c.bound_ulps * (1.0 + (c.condition ? c.condition(x) : 0.0)));
  if (!(ratio <= worst.ratio)) worst = {ratio, ulps, x, got, reference};
}

void sweep(const Case& c, const std::vector<float>& inputs, Worst& worst) {
  std::vector<float> outputs(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) outputs[i] = c.function(inputs[i]);
  for (size_t i = 0; i < inputs.size(); ++i) score(c, inputs[i], outputs[i], worst);
}

std::vector<float> special_values() {
  constexpr float inf = std::numeric_limits<float>::infinity();
  constexpr float nan = std::numeric_limits<float>::quiet_NaN();
  return {0.0f, -0.0f, inf, -inf, nan, -nan, std::bit_cast<float>(0x7fa00000u) /* payload */,
          std::numeric_limits<float>::denorm_min(), -std::numeric_limits<float>::denorm_min(),
          std::bit_cast<float>(0x007fffffu), -std::bit_cast<float>(0x007fffffu),
          std::numeric_limits<float>::min(), -std::numeric_limits<float>::min(),
          std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(), 1.0f, -1.0f};
}

// Every float within 2^14 patterns of each edge, on both sides of zero.
std::vector<float> edge_windows(const std::vector<float>& edges) {
  std::vector<float> inputs;
  for (float edge : edges) {
    for (float signed_edge : {edge, -edge}) {
      auto centre = static_cast<int64_t>(std::bit_cast<uint32_t>(signed_edge));
      for (int64_t offset = -(1 << 14); offset <= (1 << 14); ++offset) {
        int64_t bits = centre + offset;
        if (bits >= 0 && bits <= 0xffffffff) inputs.push_back(std::bit_cast<float>(static_cast<uint32_t>(bits)));
      }
    }
  }
  return inputs;
}

void check(const Case& c) {
  Worst worst;
  std::vector<float> inputs;
  constexpr uint64_t kStride = 509, kBatch = 1 << 20;
  for (uint64_t bits = 0; bits < (uint64_t{1} << 32); bits += kStride) {
    inputs.push_back(std::bit_cast<float>(static_cast<uint32_t>(bits)));
    if (inputs.size() == kBatch) {
      sweep(c, inputs, worst);
      inputs.clear();
    }
  }
  sweep(c, inputs, worst);
  sweep(c, edge_windows(c.edges), worst);
  sweep(c, special_values(), worst);
  INFO(c.name << ": worst " << worst.ulps << " ulp (" << worst.ratio << " of the bound) at x = "
       << std::hexfloat << worst.x << ", got " << worst.got << ", reference " << worst.reference);
  CHECK(worst.ratio <= 1.0);
}

}  // namespace

TEST_CASE("exp is within 1.02 ulp, with std's overflow, subnormals, underflow and specials", "[vector_math]") {
  // Edges: overflow to inf, the last normal result, the last nonzero result, the clamps.
  check({"exp", vector_math::exp, [](double x) { return std::exp(x); }, 1.02, nullptr, nullptr,
         {88.72283f, 87.33655f, 103.9721f, 104.0f, 89.0f}});
  constexpr float inf = std::numeric_limits<float>::infinity();
  CHECK(vector_math::exp(inf) == inf);
  CHECK(vector_math::exp(-inf) == 0.0f);
  CHECK(vector_math::exp(0.0f) == 1.0f);
  CHECK(vector_math::exp(-0.0f) == 1.0f);
  CHECK(std::isnan(vector_math::exp(std::numeric_limits<float>::quiet_NaN())));
  CHECK(vector_math::exp(-100.0f) > 0.0f);  // a subnormal, not flushed
  CHECK(vector_math::exp(-100.0f) < std::numeric_limits<float>::min());
}

TEST_CASE("tanh is within 1.1 ulp, keeps the sign of zero and saturates to +-1", "[vector_math]") {
  // Edges: the switch from the polynomial to the exp form, and where tanh rounds to 1.
  check({"tanh", vector_math::tanh, [](double x) { return std::tanh(x); }, 1.1, nullptr, nullptr, {0.9f, 9.01f}});
  CHECK(std::signbit(vector_math::tanh(-0.0f)));
  CHECK(vector_math::tanh(std::numeric_limits<float>::infinity()) == 1.0f);
  CHECK(vector_math::tanh(-std::numeric_limits<float>::infinity()) == -1.0f);
  CHECK(vector_math::tanh(1e-40f) == 1e-40f);
}

TEST_CASE("erf is within 1.3 ulp and saturates to +-1", "[vector_math]") {
  // Edges: the switch from the polynomial to the erfc form, where erf rounds to 1, the clamp.
  check({"erf", vector_math::erf, [](double x) { return std::erf(x); }, 1.3, nullptr, nullptr, {1.0f, 3.92f, 4.0f}});
  CHECK(std::signbit(vector_math::erf(-0.0f)));
  CHECK(vector_math::erf(std::numeric_limits<float>::infinity()) == 1.0f);
  CHECK(vector_math::erf(-std::numeric_limits<float>::infinity()) == -1.0f);
}

TEST_CASE("sigmoid is within 2.5 ulp, down to its subnormal tail", "[vector_math]") {
  // Edges: exp(-|x|) turning subnormal and then 0, and sigmoid rounding to 1.
  check({"sigmoid", vector_math::sigmoid<float>, reference_sigmoid, 2.5, nullptr, nullptr,
         {87.33655f, 103.9721f, 16.636f}});
  CHECK(vector_math::sigmoid(std::numeric_limits<float>::infinity()) == 1.0f);
  CHECK(vector_math::sigmoid(-std::numeric_limits<float>::infinity()) == 0.0f);
}

TEST_CASE("silu is within 3.5 ulp, counted from |x| 2^-126 where exp(x) is subnormal", "[vector_math]") {
  auto reference = [](double x) { return x * reference_sigmoid(x); };
  auto scale = [](double x, double reference) {
    return std::fmax(std::fabs(reference), std::fabs(x) * kSmallestNormal);
  };
  check({"silu", vector_math::silu<float>, reference, 3.5, scale, nullptr, {87.33655f, 103.9721f}});
  CHECK(vector_math::silu(std::numeric_limits<float>::infinity()) == std::numeric_limits<float>::infinity());
}

TEST_CASE("silu's derivative is within 5.5 ulp of its largest term", "[vector_math]") {
  // sigmoid(x) + x sigmoid(x) sigmoid(-x) cancels near its zero at x = -1.28.
  auto reference = [](double x) {
    return reference_sigmoid(x) + x * reference_sigmoid(x) * reference_sigmoid(-x);
  };
  auto scale = [](double x, double) {
    double product_term = std::fabs(x * reference_sigmoid(x) * reference_sigmoid(-x));
    return std::fmax(std::fmax(reference_sigmoid(x), product_term), std::fabs(x) * kSmallestNormal);
  };
  check({"silu_derivative", vector_math::silu_derivative<float>, reference, 5.5, scale, nullptr,
         {87.33655f, 1.2785f}});
}

TEST_CASE("gelu (tanh form) is within 3 (1 + |z| sigmoid(-z)) ulp", "[vector_math]") {
  auto reference = [](double x) { return x * reference_sigmoid(gelu_argument(x)); };
  auto scale = [](double x, double reference) {
    return std::fmax(std::fabs(reference), std::fabs(x) * kSmallestNormal);
  };
  // Edges: exp(z) turning subnormal (x = -10.0) and 0 (x = -10.66), and gelu(x) rounding to x.
  check({"gelu_tanh", vector_math::gelu_tanh<float>, reference, 3.0, scale, gelu_condition, {10.0f, 10.66f, 5.3f}});
  CHECK(vector_math::gelu_tanh(std::numeric_limits<float>::infinity()) == std::numeric_limits<float>::infinity());
  CHECK(vector_math::gelu_tanh(-1e30f) == 0.0f);
}

TEST_CASE("gelu (tanh form)'s derivative is within 4 (1 + |z| sigmoid(-z)) ulp of its largest term",
          "[vector_math]") {
  auto reference = [](double x) {
    double z = gelu_argument(x);
    return reference_sigmoid(z) + x * reference_sigmoid(z) * reference_sigmoid(-z) * gelu_argument_slope(x);
  };
  auto scale = [](double x, double) {
    double z = gelu_argument(x), slope = gelu_argument_slope(x);
    double product_term = std::fabs(x * reference_sigmoid(z) * reference_sigmoid(-z) * slope);
    return std::fmax(std::fmax(reference_sigmoid(z), product_term), std::fabs(x) * slope * kSmallestNormal);
  };
  check({"gelu_tanh_derivative", vector_math::gelu_tanh_derivative<float>, reference, 4.0, scale, gelu_condition,
         {10.0f, 10.66f, 0.7522f}});
  CHECK(vector_math::gelu_tanh_derivative(0x1p70f) == 1.0f);  // x^2 overflows, the result does not
}

TEST_CASE("gelu (exact) is within 2 ulp of 0.5 x and its derivative within 3 ulp of 0.5", "[vector_math]") {
  // 0.5 x (1 + erf(x / sqrt 2)) cancels for negative x: its error is measured against the terms.
  auto reference = [](double x) { return x * normal_cdf(x); };
  auto scale = [](double x, double reference) { return std::fmax(std::fabs(reference), 0.5 * std::fabs(x)); };
  check({"gelu_erf", vector_math::gelu_erf<float>, reference, 2.0, scale, nullptr, {1.4142135f, 5.54f}});
  auto derivative = [](double x) { return normal_cdf(x) + x * normal_pdf(x); };
  auto derivative_scale = [](double x, double) { return std::fmax(0.5, std::fabs(x * normal_pdf(x))); };
  check({"gelu_erf_derivative", vector_math::gelu_erf_derivative<float>, derivative, 3.0, derivative_scale, nullptr,
         {1.4142135f, 5.54f, 0.7518f}});
}

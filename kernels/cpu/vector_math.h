// Vectorisable float exp and the functions the CPU kernels build on it: sigmoid, tanh, silu,
// gelu (tanh form), erf, and the activations' derivatives.
//
// glibc's expf, tanhf and erff are scalar calls, so a loop that calls them does not vectorise;
// softmax, cross-entropy, attention and the activations were bound by them. These functions are
// inline and branch-free (lanes pick results with ?: blends, never with control flow), so GCC
// vectorises loops over them at -O3 without -ffast-math. They are always inlined: a translation
// unit with many callers (elementwise.cpp) otherwise exhausts GCC's inlining budget, and a loop
// that calls an out-of-line exp per element does not vectorise. They keep the std functions' special
// values: NaN in gives NaN out, exp(-inf) = 0, exp(+inf) = inf, results beyond the float range
// overflow to inf, tiny ones underflow through the subnormals to 0, and each function saturates
// where its float result does.
//
// Accuracy, checked against the double std functions by tests/test_vector_math.cpp:
//   exp, sigmoid, tanh, erf           within 1 to 2 ulp everywhere (the test states each bound)
//   silu, gelu_tanh, the derivatives  a few ulp, plus what rounding their float argument costs
//
// The double overloads forward to the std functions: f64 is the gradient checks' type and needs
// full double accuracy. Kernels templated on the compute type call one name for both.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

#define KILN_ALWAYS_INLINE [[gnu::always_inline]] inline

namespace kiln::kernels::vector_math {

// exp(x): x = n ln2 + r with |r| <= ln2 / 2 (Cody and Waite's two-part ln2, so r is exact to
// within one rounding), Cephes' degree-6 polynomial for exp(r), then the scale by 2^n.
KILN_ALWAYS_INLINE float exp(float x) {
  // Outside [-104, 89] the result is 0 or inf already; the clamp keeps 2^n representable. It
  // compares so that NaN passes through, and NaN then propagates through the arithmetic.
  float clamped = x < -104.0f ? -104.0f : (x > 89.0f ? 89.0f : x);
  // Adding 1.5 * 2^23 rounds x / ln2 to the nearest integer n, which lands in the sum's low bits.
  float shifted = clamped * 1.44269504088896341f + 12582912.0f;
  float n = shifted - 12582912.0f;
  int32_t k = std::bit_cast<int32_t>(shifted) - 0x4B400000;
  float r = clamped - n * 0.693359375f;  // exact: ln2's high part has 9 bits and |n| <= 150
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * (r * r) + r + 1.0f;
  // 2^n as two factors, each a normal float for n in [-150, 128]: y * 2^(n/2) is exact and the
  // second product rounds once, to a subnormal or to inf where the result is one.
  int32_t half = k >> 1;
  float scale_a = std::bit_cast<float>((half + 127) << 23);
  float scale_b = std::bit_cast<float>((k - half + 127) << 23);
  return y * scale_a * scale_b;
}
inline double exp(double x) { return std::exp(x); }

// tanh(x). Below |x| = 0.9 an odd minimax polynomial x + x^3 P(x^2) (relative error 2^-29.9),
// where the exp form would lose bits to cancellation; above, 1 - 2 / (exp(2|x|) + 1), which
// saturates to 1 by itself (exp overflows to inf, 2 / inf = 0). Both are computed on |x| and
// blended; the sign is copied last, so tanh(-0) = -0.
KILN_ALWAYS_INLINE float tanh(float x) {
  float magnitude = std::fabs(x);
  float square = x * x;
  float q = -4.5907785534e-04f;
  q = q * square + 2.5928150862e-03f;
  q = q * square - 8.2756765187e-03f;
  q = q * square + 2.1669553593e-02f;
  q = q * square - 5.3930945694e-02f;
  q = q * square + 1.3332998753e-01f;
  q = q * square - 3.3333322406e-01f;
  float small = magnitude + magnitude * square * q;
  float large = 1.0f - 2.0f / (exp(2.0f * magnitude) + 1.0f);
  return std::copysign(magnitude < 0.9f ? small : large, x);
}
inline double tanh(double x) { return std::tanh(x); }

// erf(x). Below |x| = 1 an odd minimax polynomial x + x P(x^2) (relative error 2^-29.6; the
// leading 2 / sqrt(pi) is split as 1 + 0.128.. so that its float rounding costs nothing); above,
// 1 - erfc(|x|) with erfc(x) = exp(-x^2) R(1 / x) and R a minimax polynomial for exp(x^2) erfc(x)
// on [1, 4] (relative error 2^-26.0; erfc < 0.16 there, so its errors reach erf a fifth as
// large). From |x| = 3.92 erf rounds to 1, so |x| is clamped to 4, which keeps inf and the large
// arguments out of the polynomial and lets NaN through.
KILN_ALWAYS_INLINE float erf(float x) {
  float magnitude = std::fabs(x);
  float square = x * x;
  float p = 7.8538861999e-05f;
  p = p * square - 8.0102018546e-04f;
  p = p * square + 5.1883286797e-03f;
  p = p * square - 2.6853812858e-02f;
  p = p * square + 1.1283585429e-01f;
  p = p * square - 3.7612625957e-01f;
  p = p * square + 1.2837916613e-01f;
  float small = magnitude + magnitude * p;
  float clamped = magnitude > 4.0f ? 4.0f : magnitude;
  float u = 1.0f / clamped - 0.625f;  // R's variable, centred on [1/4, 1]
  float r = 3.0713316053e-02f;
  r = r * u - 6.9466778077e-03f;
  r = r * u - 2.8408322483e-02f;
  r = r * u + 4.4619943947e-02f;
  r = r * u - 4.6786040068e-02f;
  r = r * u + 2.3261979222e-02f;
  r = r * u + 4.3760802597e-02f;
  r = r * u - 1.7239360511e-01f;
  r = r * u + 3.8228383660e-01f;
  r = r * u + 3.0595299602e-01f;
  float large = 1.0f - exp(-clamped * clamped) * r;
  return std::copysign(magnitude < 1.0f ? small : large, x);
}
inline double erf(double x) { return std::erf(x); }

// The activations, written once for the float and the double compute types. Each evaluates its
// sigmoid as e / (1 + e) or 1 / (1 + e) with e = exp(-|z|) <= 1: exp never overflows, the tail
// keeps its relative accuracy (1 / (1 + exp(-z)) turns to 0 where the result is still a normal
// float), and sigmoid(z) sigmoid(-z) = e / (1 + e)^2 gives the derivatives without 1 - sigmoid.
template <typename C> inline constexpr C kTwoSqrt2OverPi = static_cast<C>(1.5957691216057308);  // 2 sqrt(2 / pi)
template <typename C> inline constexpr C kGeluCubic = static_cast<C>(0.044715);
template <typename C> inline constexpr C kInvSqrt2 = static_cast<C>(0.7071067811865476);
template <typename C> inline constexpr C kInvSqrt2Pi = static_cast<C>(0.3989422804014327);

// 1 / (1 + exp(-x)).
template <typename C>
KILN_ALWAYS_INLINE C sigmoid(C x) {
  C e = exp(-std::fabs(x));
  return (x >= C(0) ? C(1) : e) / (C(1) + e);
}

// x sigmoid(x) and its derivative sigmoid(x) (1 + x sigmoid(-x)).
template <typename C>
KILN_ALWAYS_INLINE C silu(C x) {
  return x * sigmoid(x);
}
template <typename C>
KILN_ALWAYS_INLINE C silu_derivative(C x) {
  C e = exp(-std::fabs(x));
  C inverse = C(1) / (C(1) + e);
  C s = x >= C(0) ? inverse : e * inverse;
  return s + x * (e * inverse * inverse);
}

// GELU, tanh form: 0.5 x (1 + tanh(u)) with u = sqrt(2 / pi) (x + 0.044715 x^3), computed as
// x sigmoid(2u), the same function without the cancellation of 1 + tanh(u) for negative x.
template <typename C>
KILN_ALWAYS_INLINE C gelu_tanh(C x) {
  return x * sigmoid(x * (kTwoSqrt2OverPi<C> + kTwoSqrt2OverPi<C> * kGeluCubic<C> * x * x));
}
// d/dx of x sigmoid(z), z = 2u: sigmoid(z) + x sigmoid(z) sigmoid(-z) dz/dx. dz/dx takes x^2
// capped at 2^100, so that a finite x whose x^2 overflows (there exp(-|z|) = 0) gives 0 * finite,
// not 0 * inf; x = +-inf still gives NaN, as the tanh formula does.
template <typename C>
KILN_ALWAYS_INLINE C gelu_tanh_derivative(C x) {
  C square = x * x;
  C z = x * (kTwoSqrt2OverPi<C> + kTwoSqrt2OverPi<C> * kGeluCubic<C> * square);
  C capped = square < C(0x1p100) ? square : C(0x1p100);
  C dz = kTwoSqrt2OverPi<C> + C(3) * kTwoSqrt2OverPi<C> * kGeluCubic<C> * capped;
  C e = exp(-std::fabs(z));
  C inverse = C(1) / (C(1) + e);
  C s = z >= C(0) ? inverse : e * inverse;
  return s + x * (e * inverse * inverse) * dz;
}

// GELU, exact form: x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), and its derivative Phi(x) + x phi(x).
template <typename C>
KILN_ALWAYS_INLINE C gelu_erf(C x) {
  return C(0.5) * x * (C(1) + erf(x * kInvSqrt2<C>));
}
template <typename C>
KILN_ALWAYS_INLINE C gelu_erf_derivative(C x) {
  C cdf = C(0.5) * (C(1) + erf(x * kInvSqrt2<C>));
  C pdf = kInvSqrt2Pi<C> * exp(C(-0.5) * x * x);
  return cdf + x * pdf;
}

}  // namespace kiln::kernels::vector_math

#undef KILN_ALWAYS_INLINE

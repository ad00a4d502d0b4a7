// CPU elementwise kernels: unary ops and their derivatives, binary ops, where and clamp.
//
// Each op is a small functor on the compute type; map_unary / map_binary run it over strided
// operands with one contiguous fast path per run, so the op's switch runs once per call, not
// once per element. The exp-based activations come from vector_math.h, whose float versions
// vectorise (glibc's expf, tanhf and erff are scalar calls); f64 keeps the std functions.
#include <cmath>
#include <limits>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/loops.h"
#include "kernels/cpu/vector_math.h"
#include "kernels/error.h"

namespace kiln::kernels {
namespace {

using cpu::for_each_strided;

// On the loops over each run: inlines the op's functor (and the vector_math functions it calls)
// into them. GCC otherwise keeps some functors out of line in this file, whose many instantiations
// exhaust its inlining budget, and a loop that calls a function per element does not vectorise
// (exp ran 17 times slower than a multiply).
#define KILN_FLATTEN __attribute__((flatten))

// out = f(in); In and Out are storage types.
template <typename In, typename Out, typename F>
void map_unary(const View& in, const View& out, F f) {
  for_each_strided<2>({&out, &in}, [&](auto p, auto s, int64_t n) KILN_FLATTEN {
    if (s[0] == sizeof(Out) && s[1] == sizeof(In)) {
      Out* o = reinterpret_cast<Out*>(p[0]);
      const In* x = reinterpret_cast<const In*>(p[1]);
      for (int64_t i = 0; i < n; ++i) o[i] = static_cast<Out>(f(static_cast<compute_t<In>>(x[i])));
    } else {
      for (int64_t i = 0; i < n; ++i) cpu::store<Out>(p[0] + i * s[0], f(cpu::load<In>(p[1] + i * s[1])));
    }
  });
}

// out = f(a, b) with fast paths for all-contiguous and for a broadcast scalar b.
template <typename In, typename Out, typename F>
void map_binary(const View& a, const View& b, const View& out, F f) {
  for_each_strided<3>({&out, &a, &b}, [&](auto p, auto s, int64_t n) KILN_FLATTEN {
    Out* o = reinterpret_cast<Out*>(p[0]);
    const In* x = reinterpret_cast<const In*>(p[1]);
    const In* y = reinterpret_cast<const In*>(p[2]);
    using C = compute_t<In>;
    if (s[0] == sizeof(Out) && s[1] == sizeof(In) && s[2] == sizeof(In)) {
      for (int64_t i = 0; i < n; ++i) o[i] = static_cast<Out>(f(static_cast<C>(x[i]), static_cast<C>(y[i])));
    } else if (s[0] == sizeof(Out) && s[1] == sizeof(In) && s[2] == 0) {
      C scalar = static_cast<C>(y[0]);
      for (int64_t i = 0; i < n; ++i) o[i] = static_cast<Out>(f(static_cast<C>(x[i]), scalar));
    } else {
      for (int64_t i = 0; i < n; ++i) {
        cpu::store<Out>(p[0] + i * s[0], f(cpu::load<In>(p[1] + i * s[1]), cpu::load<In>(p[2] + i * s[2])));
      }
    }
  });
}

// grad_in = g * derivative(x, y) over four operands.
template <typename T, typename F>
void map_backward(const View& grad_out, const View& x, const View& y, const View& grad_in, F f) {
  for_each_strided<4>({&grad_in, &grad_out, &x, &y}, [&](auto p, auto s, int64_t n) KILN_FLATTEN {
    using C = compute_t<T>;
    if (s[0] == sizeof(T) && s[1] == sizeof(T) && s[2] == sizeof(T) && s[3] == sizeof(T)) {
      T* gi = reinterpret_cast<T*>(p[0]);
      const T* go = reinterpret_cast<const T*>(p[1]);
      const T* xs = reinterpret_cast<const T*>(p[2]);
      const T* ys = reinterpret_cast<const T*>(p[3]);
      for (int64_t i = 0; i < n; ++i) {
        gi[i] = static_cast<T>(f(static_cast<C>(go[i]), static_cast<C>(xs[i]), static_cast<C>(ys[i])));
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        cpu::store<T>(p[0] + i * s[0], f(cpu::load<T>(p[1] + i * s[1]), cpu::load<T>(p[2] + i * s[2]),
                                         cpu::load<T>(p[3] + i * s[3])));
      }
    }
  });
}

template <typename C> C sign_of(C x) { return static_cast<C>((C(0) < x) - (x < C(0))); }

template <typename T>
void unary_floating(UnaryOp op, const View& in, const View& out) {
  using C = compute_t<T>;
  switch (op) {
    case UnaryOp::exp: return map_unary<T, T>(in, out, [](C x) { return vector_math::exp(x); });
    case UnaryOp::log: return map_unary<T, T>(in, out, [](C x) { return std::log(x); });
    case UnaryOp::sqrt: return map_unary<T, T>(in, out, [](C x) { return std::sqrt(x); });
    case UnaryOp::rsqrt: return map_unary<T, T>(in, out, [](C x) { return C(1) / std::sqrt(x); });
    case UnaryOp::tanh: return map_unary<T, T>(in, out, [](C x) { return vector_math::tanh(x); });
    case UnaryOp::sigmoid: return map_unary<T, T>(in, out, [](C x) { return vector_math::sigmoid(x); });
    case UnaryOp::relu: return map_unary<T, T>(in, out, [](C x) { return x > C(0) ? x : C(0); });
    case UnaryOp::gelu_tanh: return map_unary<T, T>(in, out, [](C x) { return vector_math::gelu_tanh(x); });
    case UnaryOp::gelu_erf: return map_unary<T, T>(in, out, [](C x) { return vector_math::gelu_erf(x); });
    case UnaryOp::silu: return map_unary<T, T>(in, out, [](C x) { return vector_math::silu(x); });
    case UnaryOp::sin: return map_unary<T, T>(in, out, [](C x) { return std::sin(x); });
    case UnaryOp::cos: return map_unary<T, T>(in, out, [](C x) { return std::cos(x); });
    case UnaryOp::reciprocal: return map_unary<T, T>(in, out, [](C x) { return C(1) / x; });
    default: KILN_FAIL(unary_op_name(op), ": not a floating unary op");
  }
}

template <typename T>
void unary_derivative(UnaryOp op, const View& g, const View& x, const View& y, const View& gi) {
  using C = compute_t<T>;
  switch (op) {
    case UnaryOp::neg: return map_backward<T>(g, x, y, gi, [](C go, C, C) { return -go; });
    case UnaryOp::exp: return map_backward<T>(g, x, y, gi, [](C go, C, C out) { return go * out; });
    case UnaryOp::log: return map_backward<T>(g, x, y, gi, [](C go, C in, C) { return go / in; });
    case UnaryOp::sqrt: return map_backward<T>(g, x, y, gi, [](C go, C, C out) { return go / (C(2) * out); });
    case UnaryOp::rsqrt:
      return map_backward<T>(g, x, y, gi, [](C go, C, C out) { return C(-0.5) * go * out * out * out; });
    case UnaryOp::abs: return map_backward<T>(g, x, y, gi, [](C go, C in, C) { return go * sign_of(in); });
    case UnaryOp::tanh:
      return map_backward<T>(g, x, y, gi, [](C go, C, C out) { return go * (C(1) - out * out); });
    case UnaryOp::sigmoid:
      return map_backward<T>(g, x, y, gi, [](C go, C, C out) { return go * out * (C(1) - out); });
    case UnaryOp::relu: return map_backward<T>(g, x, y, gi, [](C go, C in, C) { return in > C(0) ? go : C(0); });
    case UnaryOp::gelu_tanh:
      return map_backward<T>(g, x, y, gi, [](C go, C in, C) { return go * vector_math::gelu_tanh_derivative(in); });
    case UnaryOp::gelu_erf:
      return map_backward<T>(g, x, y, gi, [](C go, C in, C) { return go * vector_math::gelu_erf_derivative(in); });
    case UnaryOp::silu:
      return map_backward<T>(g, x, y, gi, [](C go, C in, C) { return go * vector_math::silu_derivative(in); });
    case UnaryOp::sin: return map_backward<T>(g, x, y, gi, [](C go, C in, C) { return go * std::cos(in); });
    case UnaryOp::cos: return map_backward<T>(g, x, y, gi, [](C go, C in, C) { return -go * std::sin(in); });
    case UnaryOp::reciprocal:
      return map_backward<T>(g, x, y, gi, [](C go, C, C out) { return -go * out * out; });
    case UnaryOp::sign: return map_backward<T>(g, x, y, gi, [](C, C, C) { return C(0); });
    case UnaryOp::logical_not: KILN_FAIL("logical_not: not differentiable");
  }
}

template <typename C> C propagate_nan_max(C a, C b) {
  if constexpr (std::numeric_limits<C>::has_quiet_NaN) {
    if (a != a || b != b) return std::numeric_limits<C>::quiet_NaN();
  }
  return a > b ? a : b;
}
template <typename C> C propagate_nan_min(C a, C b) {
  if constexpr (std::numeric_limits<C>::has_quiet_NaN) {
    if (a != a || b != b) return std::numeric_limits<C>::quiet_NaN();
  }
  return a < b ? a : b;
}

template <typename T>
void binary_typed(BinaryOp op, const View& a, const View& b, const View& out) {
  using C = compute_t<T>;
  switch (op) {
    case BinaryOp::add: return map_binary<T, T>(a, b, out, [](C x, C y) { return x + y; });
    case BinaryOp::sub: return map_binary<T, T>(a, b, out, [](C x, C y) { return x - y; });
    case BinaryOp::mul: return map_binary<T, T>(a, b, out, [](C x, C y) { return x * y; });
    case BinaryOp::div:
      if constexpr (std::is_floating_point_v<C>) return map_binary<T, T>(a, b, out, [](C x, C y) { return x / y; });
      KILN_FAIL("div: integer dtype ", dtype_name(a.dtype), " is not supported (cast to a floating dtype)");
    case BinaryOp::pow:
      if constexpr (std::is_floating_point_v<C>) {
        return map_binary<T, T>(a, b, out, [](C x, C y) { return std::pow(x, y); });
      }
      KILN_FAIL("pow: integer dtype ", dtype_name(a.dtype), " is not supported (cast to a floating dtype)");
    case BinaryOp::maximum: return map_binary<T, T>(a, b, out, [](C x, C y) { return propagate_nan_max(x, y); });
    case BinaryOp::minimum: return map_binary<T, T>(a, b, out, [](C x, C y) { return propagate_nan_min(x, y); });
    case BinaryOp::eq: return map_binary<T, bool>(a, b, out, [](C x, C y) { return x == y; });
    case BinaryOp::ne: return map_binary<T, bool>(a, b, out, [](C x, C y) { return x != y; });
    case BinaryOp::lt: return map_binary<T, bool>(a, b, out, [](C x, C y) { return x < y; });
    case BinaryOp::le: return map_binary<T, bool>(a, b, out, [](C x, C y) { return x <= y; });
    case BinaryOp::gt: return map_binary<T, bool>(a, b, out, [](C x, C y) { return x > y; });
    case BinaryOp::ge: return map_binary<T, bool>(a, b, out, [](C x, C y) { return x >= y; });
    case BinaryOp::logical_and:
      return map_binary<T, bool>(a, b, out, [](C x, C y) { return x != C(0) && y != C(0); });
    case BinaryOp::logical_or:
      return map_binary<T, bool>(a, b, out, [](C x, C y) { return x != C(0) || y != C(0); });
  }
}

}  // namespace

void CpuBackend::unary(UnaryOp op, const View& in, const View& out) {
  const char* name = unary_op_name(op);
  switch (op) {
    case UnaryOp::logical_not:
      return dispatch_all(in.dtype, name, [&]<typename T>() {
        map_unary<T, bool>(in, out, [](compute_t<T> x) { return x == compute_t<T>(0); });
      });
    case UnaryOp::neg:
      return dispatch_numeric(in.dtype, name, [&]<typename T>() {
        map_unary<T, T>(in, out, [](compute_t<T> x) { return -x; });
      });
    case UnaryOp::abs:
      return dispatch_numeric(in.dtype, name, [&]<typename T>() {
        map_unary<T, T>(in, out, [](compute_t<T> x) { return x < compute_t<T>(0) ? -x : x; });
      });
    case UnaryOp::sign:
      return dispatch_numeric(in.dtype, name, [&]<typename T>() {
        map_unary<T, T>(in, out, [](compute_t<T> x) { return sign_of(x); });
      });
    default:
      return dispatch_floating(in.dtype, name, [&]<typename T>() { unary_floating<T>(op, in, out); });
  }
}

void CpuBackend::unary_backward(UnaryOp op, const View& grad_out, const View& x, const View& y,
                                const View& grad_in) {
  dispatch_floating(grad_out.dtype, unary_op_name(op), [&]<typename T>() {
    unary_derivative<T>(op, grad_out, x, y, grad_in);
  });
}

void CpuBackend::binary(BinaryOp op, const View& a, const View& b, const View& out) {
  if (op == BinaryOp::logical_and || op == BinaryOp::logical_or || is_predicate(op)) {
    return dispatch_all(a.dtype, binary_op_name(op), [&]<typename T>() { binary_typed<T>(op, a, b, out); });
  }
  dispatch_numeric(a.dtype, binary_op_name(op), [&]<typename T>() { binary_typed<T>(op, a, b, out); });
}

void CpuBackend::where(const View& condition, const View& a, const View& b, const View& out) {
  dispatch_all(out.dtype, "where", [&]<typename T>() {
    for_each_strided<4>({&out, &condition, &a, &b}, [&](auto p, auto s, int64_t n) {
      for (int64_t i = 0; i < n; ++i) {
        bool take_a = *reinterpret_cast<const bool*>(p[1] + i * s[1]);
        const char* source = take_a ? p[2] + i * s[2] : p[3] + i * s[3];
        *reinterpret_cast<T*>(p[0] + i * s[0]) = *reinterpret_cast<const T*>(source);
      }
    });
  });
}

void CpuBackend::clamp(const View& in, const View& out, std::optional<double> low,
                       std::optional<double> high) {
  dispatch_numeric(in.dtype, "clamp", [&]<typename T>() {
    using C = compute_t<T>;
    C lo = low ? static_cast<C>(*low) : std::numeric_limits<C>::lowest();
    C hi = high ? static_cast<C>(*high) : std::numeric_limits<C>::max();
    map_unary<T, T>(in, out, [lo, hi](C x) {
      if (x != x) return x;  // NaN passes through, as in PyTorch
      return x < lo ? lo : (x > hi ? hi : x);
    });
  });
}

void CpuBackend::clamp_backward(const View& grad_out, const View& x, const View& grad_in,
                                std::optional<double> low, std::optional<double> high) {
  dispatch_floating(x.dtype, "clamp", [&]<typename T>() {
    using C = compute_t<T>;
    C lo = low ? static_cast<C>(*low) : -std::numeric_limits<C>::infinity();
    C hi = high ? static_cast<C>(*high) : std::numeric_limits<C>::infinity();
    map_backward<T>(grad_out, x, x, grad_in, [lo, hi](C go, C in, C) {
      return (in >= lo && in <= hi) ? go : C(0);
    });
  });
}

}  // namespace kiln::kernels

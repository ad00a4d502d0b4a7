// CUDA elementwise kernels: unary ops and their derivatives, binary ops, where and clamp.
//
// One kernel template maps a functor over an output and up to three inputs. The functors hold
// the op as a runtime value and switch on it per element: the switch is uniform across the
// grid, so it costs a few instructions against a memory-bound loop, and it keeps the number of
// instantiations (and the build) small. Three paths share the kernel, picked once per call:
//  - vector:  every operand contiguous and 4-element aligned: four elements per load/store;
//  - flat:    every input contiguous or a broadcast scalar (x * 0.5), the output contiguous;
//  - strided: anything else (transposed, sliced, broadcast views), through the Layout.
// The formulas are the CPU backend's, in the same compute type, so results differ only by the
// last-bit differences of the math library (exp, tanh, erf, pow).
#include <cmath>
#include <limits>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/launch.cuh"

namespace kiln::kernels {
namespace gpu {
namespace {

enum class Path : int { vector, flat, strided };

template <typename T>
struct alignas(4 * sizeof(T)) Pack4 {
  T v[4];
};

template <int kInputs, typename In>
struct Inputs {
  const In* pointer[kInputs];
  int64_t step[kInputs];  // 1 contiguous, 0 broadcast scalar (flat path only)
};

template <int kInputs, typename F, typename C>
__device__ __forceinline__ auto invoke(const F& f, const C (&x)[kInputs]) {
  if constexpr (kInputs == 1) return f(x[0]);
  else if constexpr (kInputs == 2) return f(x[0], x[1]);
  else return f(x[0], x[1], x[2]);
}

// out (n) = f(inputs (n)); operand 0 of the layout is out.
template <typename Out, typename In, int kInputs, typename F>
__global__ void map_kernel(Layout<kInputs + 1> layout, int64_t n, Path path, Out* out, Inputs<kInputs, In> in, F f) {
  using C = compute_t<In>;
  int64_t begin = 0;
  if (path == Path::vector) {
    int64_t packs = n / 4;
    for (int64_t p = thread_index(); p < packs; p += thread_count()) {
      Pack4<In> x[kInputs];
#pragma unroll
      for (int k = 0; k < kInputs; ++k) x[k] = reinterpret_cast<const Pack4<In>*>(in.pointer[k])[p];
      Pack4<Out> y;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        C values[kInputs];
#pragma unroll
        for (int k = 0; k < kInputs; ++k) values[k] = static_cast<C>(x[k].v[j]);
        y.v[j] = static_cast<Out>(invoke<kInputs>(f, values));
      }
      reinterpret_cast<Pack4<Out>*>(out)[p] = y;
    }
    begin = packs * 4;
  }
  for (int64_t i = begin + thread_index(); i < n; i += thread_count()) {
    int64_t offset[kInputs + 1];
    if (path == Path::strided) {
      layout.offsets(i, offset);
    } else {
      offset[0] = i;
#pragma unroll
      for (int k = 0; k < kInputs; ++k) offset[k + 1] = path == Path::vector ? i : i * in.step[k];
    }
    C values[kInputs];
#pragma unroll
    for (int k = 0; k < kInputs; ++k) values[k] = static_cast<C>(in.pointer[k][offset[k + 1]]);
    out[offset[0]] = static_cast<Out>(invoke<kInputs>(f, values));
  }
}

template <typename Out, typename In, int kInputs, typename F>
void map(const char* op, const View& out, const std::array<const View*, kInputs>& inputs, F f) {
  cudaStream_t stream = stream_for(op, out);
  int64_t n = out.numel();
  if (n == 0) return;
  std::array<const View*, kInputs + 1> views;
  views[0] = &out;
  for (int k = 0; k < kInputs; ++k) views[k + 1] = inputs[k];
  Layout<kInputs + 1> layout = make_layout<kInputs + 1>(views);
  Inputs<kInputs, In> in;
  bool flat = layout.flat_step(0) == 1, all_contiguous = flat;
  bool aligned = reinterpret_cast<uintptr_t>(out.data) % sizeof(Pack4<Out>) == 0;
  for (int k = 0; k < kInputs; ++k) {
    in.pointer[k] = inputs[k]->template as<In>();
    in.step[k] = layout.flat_step(k + 1);
    flat = flat && in.step[k] >= 0;
    all_contiguous = all_contiguous && in.step[k] == 1;
    aligned = aligned && reinterpret_cast<uintptr_t>(inputs[k]->data) % sizeof(Pack4<In>) == 0;
  }
  Path path = !flat ? Path::strided : (all_contiguous && aligned ? Path::vector : Path::flat);
  unsigned grid = grid_for(path == Path::vector ? (n + 3) / 4 : n);
  map_kernel<Out, In, kInputs, F><<<grid, kBlock, 0, stream>>>(layout, n, path, out.as<Out>(), in, f);
  KILN_CUDA_CHECK_LAUNCH();
}

template <typename C> constexpr C kSqrt2OverPi = static_cast<C>(0.7978845608028654);
template <typename C> constexpr C kInvSqrt2 = static_cast<C>(0.7071067811865476);
template <typename C> constexpr C kInvSqrt2Pi = static_cast<C>(0.3989422804014327);
template <typename C> constexpr C kGeluCubic = static_cast<C>(0.044715);

template <typename C> __device__ __forceinline__ C sigmoid(C x) { return C(1) / (C(1) + std::exp(-x)); }
template <typename C> __device__ __forceinline__ C sign_of(C x) { return static_cast<C>((C(0) < x) - (x < C(0))); }

template <typename C>
struct UnaryFn {
  UnaryOp op;
  __device__ C operator()(C x) const {
    switch (op) {
      case UnaryOp::neg: return -x;
      case UnaryOp::abs: return x < C(0) ? -x : x;
      case UnaryOp::sign: return sign_of(x);
      default: break;
    }
    if constexpr (std::is_floating_point_v<C>) {
      switch (op) {
        case UnaryOp::exp: return std::exp(x);
        case UnaryOp::log: return std::log(x);
        case UnaryOp::sqrt: return std::sqrt(x);
        case UnaryOp::rsqrt: return C(1) / std::sqrt(x);
        case UnaryOp::tanh: return std::tanh(x);
        case UnaryOp::sigmoid: return sigmoid(x);
        case UnaryOp::relu: return x > C(0) ? x : C(0);
        case UnaryOp::gelu_tanh:
          return C(0.5) * x * (C(1) + std::tanh(kSqrt2OverPi<C> * (x + kGeluCubic<C> * x * x * x)));
        case UnaryOp::gelu_erf: return C(0.5) * x * (C(1) + std::erf(x * kInvSqrt2<C>));
        case UnaryOp::silu: return x * sigmoid(x);
        case UnaryOp::sin: return std::sin(x);
        case UnaryOp::cos: return std::cos(x);
        case UnaryOp::reciprocal: return C(1) / x;
        default: break;
      }
    }
    return x;
  }
};

template <typename C>
struct LogicalNotFn {
  __device__ bool operator()(C x) const { return x == C(0); }
};

// grad_in = grad_out * op'(x), y the forward output.
template <typename C>
struct UnaryBackwardFn {
  UnaryOp op;
  __device__ C operator()(C go, C in, C out) const {
    switch (op) {
      case UnaryOp::neg: return -go;
      case UnaryOp::exp: return go * out;
      case UnaryOp::log: return go / in;
      case UnaryOp::sqrt: return go / (C(2) * out);
      case UnaryOp::rsqrt: return C(-0.5) * go * out * out * out;
      case UnaryOp::abs: return go * sign_of(in);
      case UnaryOp::tanh: return go * (C(1) - out * out);
      case UnaryOp::sigmoid: return go * out * (C(1) - out);
      case UnaryOp::relu: return in > C(0) ? go : C(0);
      case UnaryOp::gelu_tanh: {
        C inner = kSqrt2OverPi<C> * (in + kGeluCubic<C> * in * in * in);
        C t = std::tanh(inner);
        C d_inner = kSqrt2OverPi<C> * (C(1) + C(3) * kGeluCubic<C> * in * in);
        return go * (C(0.5) * (C(1) + t) + C(0.5) * in * (C(1) - t * t) * d_inner);
      }
      case UnaryOp::gelu_erf: {
        C cdf = C(0.5) * (C(1) + std::erf(in * kInvSqrt2<C>));
        C pdf = kInvSqrt2Pi<C> * std::exp(C(-0.5) * in * in);
        return go * (cdf + in * pdf);
      }
      case UnaryOp::silu: {
        C s = sigmoid(in);
        return go * s * (C(1) + in * (C(1) - s));
      }
      case UnaryOp::sin: return go * std::cos(in);
      case UnaryOp::cos: return -go * std::sin(in);
      case UnaryOp::reciprocal: return -go * out * out;
      default: return C(0);  // sign
    }
  }
};

template <typename C>
__device__ __forceinline__ bool is_nan(C x) {
  if constexpr (std::is_floating_point_v<C>) return x != x;
  return false;
}

template <typename C>
struct BinaryFn {
  BinaryOp op;
  __device__ C operator()(C x, C y) const {
    switch (op) {
      case BinaryOp::add: return x + y;
      case BinaryOp::sub: return x - y;
      case BinaryOp::mul: return x * y;
      case BinaryOp::maximum:
        if (is_nan(x) || is_nan(y)) return std::numeric_limits<C>::quiet_NaN();
        return x > y ? x : y;
      case BinaryOp::minimum:
        if (is_nan(x) || is_nan(y)) return std::numeric_limits<C>::quiet_NaN();
        return x < y ? x : y;
      default: break;
    }
    if constexpr (std::is_floating_point_v<C>) {
      if (op == BinaryOp::div) return x / y;
      if (op == BinaryOp::pow) return std::pow(x, y);
    }
    return x;
  }
};

template <typename C>
struct PredicateFn {
  BinaryOp op;
  __device__ bool operator()(C x, C y) const {
    switch (op) {
      case BinaryOp::eq: return x == y;
      case BinaryOp::ne: return x != y;
      case BinaryOp::lt: return x < y;
      case BinaryOp::le: return x <= y;
      case BinaryOp::gt: return x > y;
      case BinaryOp::ge: return x >= y;
      case BinaryOp::logical_and: return x != C(0) && y != C(0);
      default: return x != C(0) || y != C(0);  // logical_or
    }
  }
};

template <typename C>
struct ClampFn {
  C low, high;
  __device__ C operator()(C x) const {
    if (is_nan(x)) return x;  // NaN passes through, as in PyTorch
    return x < low ? low : (x > high ? high : x);
  }
};

template <typename C>
struct ClampBackwardFn {
  C low, high;
  __device__ C operator()(C go, C x) const { return (x >= low && x <= high) ? go : C(0); }
};

// out = condition ? a : b, moving the chosen element's bits.
template <typename Bits>
__global__ void where_kernel(Layout<4> layout, int64_t n, Bits* out, const bool* condition, const Bits* a,
                             const Bits* b) {
  for (int64_t i = thread_index(); i < n; i += thread_count()) {
    int64_t offset[4];
    layout.offsets(i, offset);
    out[offset[0]] = condition[offset[1]] ? a[offset[2]] : b[offset[3]];
  }
}

}  // namespace
}  // namespace gpu

void CudaBackend::unary(UnaryOp op, const View& in, const View& out) {
  const char* name = unary_op_name(op);
  switch (op) {
    case UnaryOp::logical_not:
      return dispatch_all(in.dtype, name, [&]<typename T>() {
        gpu::map<bool, T, 1>(name, out, {&in}, gpu::LogicalNotFn<compute_t<T>>{});
      });
    case UnaryOp::neg:
    case UnaryOp::abs:
    case UnaryOp::sign:
      return dispatch_numeric(in.dtype, name, [&]<typename T>() {
        gpu::map<T, T, 1>(name, out, {&in}, gpu::UnaryFn<compute_t<T>>{op});
      });
    default:
      return dispatch_floating(in.dtype, name, [&]<typename T>() {
        gpu::map<T, T, 1>(name, out, {&in}, gpu::UnaryFn<compute_t<T>>{op});
      });
  }
}

void CudaBackend::unary_backward(UnaryOp op, const View& grad_out, const View& x, const View& y,
                                 const View& grad_in) {
  dispatch_floating(grad_out.dtype, unary_op_name(op), [&]<typename T>() {
    KILN_CHECK(op != UnaryOp::logical_not, "logical_not: not differentiable");
    gpu::map<T, T, 3>(unary_op_name(op), grad_in, {&grad_out, &x, &y}, gpu::UnaryBackwardFn<compute_t<T>>{op});
  });
}

void CudaBackend::binary(BinaryOp op, const View& a, const View& b, const View& out) {
  const char* name = binary_op_name(op);
  if (is_predicate(op)) {
    return dispatch_all(a.dtype, name, [&]<typename T>() {
      gpu::map<bool, T, 2>(name, out, {&a, &b}, gpu::PredicateFn<compute_t<T>>{op});
    });
  }
  dispatch_numeric(a.dtype, name, [&]<typename T>() {
    if constexpr (!std::is_floating_point_v<compute_t<T>>) {
      KILN_CHECK(op != BinaryOp::div && op != BinaryOp::pow, name, ": integer dtype ", dtype_name(a.dtype),
                 " is not supported (cast to a floating dtype)");
    }
    gpu::map<T, T, 2>(name, out, {&a, &b}, gpu::BinaryFn<compute_t<T>>{op});
  });
}

void CudaBackend::where(const View& condition, const View& a, const View& b, const View& out) {
  cudaStream_t stream = gpu::stream_for("where", out);
  int64_t n = out.numel();
  if (n == 0) return;
  gpu::Layout<4> layout = gpu::make_layout<4>({&out, &condition, &a, &b});
  gpu::dispatch_bits(out.dtype, [&]<typename Bits>() {
    gpu::where_kernel<<<gpu::grid_for(n), gpu::kBlock, 0, stream>>>(layout, n, out.as<Bits>(), condition.as<bool>(),
                                                                     a.as<Bits>(), b.as<Bits>());
  });
  KILN_CUDA_CHECK_LAUNCH();
}

void CudaBackend::clamp(const View& in, const View& out, std::optional<double> low,
                        std::optional<double> high) {
  dispatch_numeric(in.dtype, "clamp", [&]<typename T>() {
    using C = compute_t<T>;
    C lo = low ? static_cast<C>(*low) : std::numeric_limits<C>::lowest();
    C hi = high ? static_cast<C>(*high) : std::numeric_limits<C>::max();
    gpu::map<T, T, 1>("clamp", out, {&in}, gpu::ClampFn<C>{lo, hi});
  });
}

void CudaBackend::clamp_backward(const View& grad_out, const View& x, const View& grad_in,
                                 std::optional<double> low, std::optional<double> high) {
  dispatch_floating(x.dtype, "clamp", [&]<typename T>() {
    using C = compute_t<T>;
    C lo = low ? static_cast<C>(*low) : -std::numeric_limits<C>::infinity();
    C hi = high ? static_cast<C>(*high) : std::numeric_limits<C>::infinity();
    gpu::map<T, T, 2>("clamp", grad_in, {&grad_out, &x}, gpu::ClampBackwardFn<C>{lo, hi});
  });
}

}  // namespace kiln::kernels

// CPU rotary position embedding (RoPE), forward and backward.
//
// x (B, T, H, D) -> out (B, T, H, D): the pair (x[2i], x[2i+1]) of token t is rotated by the angle
// positions[t] * theta^(-2i/D). The rotation is orthogonal, so the backward is the same kernel
// rotating the gradient by the negative angle (`inverse`).
//
// Angles are computed in double: positions reach 1e5 and beyond, where a float product would be
// off by milliradians. A (T, D/2) table of cos and sin in the compute type is built once per call
// (O(T D), a fraction of x), then the B T H rows run in parallel, each a loop over its pairs that
// vectorises when the last dim has unit stride. x and out may be the same memory.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/loops.h"
#include "kernels/error.h"

namespace kiln::kernels {
namespace {

// Rotates one row's D / 2 pairs: (a, b) -> (a cos - b sin, a sin + b cos).
template <bool kUnit, typename T, typename C>
void rotate_row(const T* x, int64_t x_stride, T* out, int64_t out_stride, const C* cosines, const C* sines,
                int64_t pairs) {
  if constexpr (kUnit) x_stride = out_stride = 1;
#pragma omp simd
  for (int64_t i = 0; i < pairs; ++i) {
    C a = static_cast<C>(x[2 * i * x_stride]), b = static_cast<C>(x[(2 * i + 1) * x_stride]);
    C cosine = cosines[i], sine = sines[i];
    out[2 * i * out_stride] = static_cast<T>(a * cosine - b * sine);
    out[(2 * i + 1) * out_stride] = static_cast<T>(a * sine + b * cosine);
  }
}

// x (B, T, H, D), positions (T) i64 -> out (B, T, H, D).
template <typename T>
void rope_impl(const View& x, const View& positions, const View& out, double theta, bool inverse) {
  using C = compute_t<T>;
  const int64_t batch = x.sizes[0], length = x.sizes[1], heads = x.sizes[2], dim = x.sizes[3], pairs = dim / 2;
  // table[t] holds the pairs' cosines then their sines: (T, 2, D/2).
  std::vector<C> table(static_cast<size_t>(length * dim));
  std::vector<double> frequencies(static_cast<size_t>(pairs));
  for (int64_t i = 0; i < pairs; ++i) {
    frequencies[static_cast<size_t>(i)] = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(dim));
  }
  const int64_t* where = positions.as<int64_t>();
  double sign = inverse ? -1.0 : 1.0;
  cpu::parallel_for(length * pairs, cpu::kParallelGrain / 16, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      int64_t t = index / pairs, i = index % pairs;
      double angle = static_cast<double>(where[t * positions.strides[0]]) * frequencies[static_cast<size_t>(i)];
      table[static_cast<size_t>(t * dim + i)] = static_cast<C>(std::cos(angle));
      table[static_cast<size_t>(t * dim + pairs + i)] = static_cast<C>(sign * std::sin(angle));
    }
  });

  const T* x_data = x.as<T>();
  T* out_data = out.as<T>();
  const int64_t x_last = x.strides[3], out_last = out.strides[3];
  const bool unit = x_last == 1 && out_last == 1;
  int64_t grain = std::max<int64_t>(1, cpu::kParallelGrain / std::max<int64_t>(1, dim));
  cpu::parallel_for(batch * length * heads, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      int64_t h = row % heads, t = row / heads % length, b = row / heads / length;
      const T* source = x_data + b * x.strides[0] + t * x.strides[1] + h * x.strides[2];
      T* target = out_data + b * out.strides[0] + t * out.strides[1] + h * out.strides[2];
      const C* cosines = table.data() + t * dim;
      if (unit) {
        rotate_row<true>(source, 1, target, 1, cosines, cosines + pairs, pairs);
      } else {
        rotate_row<false>(source, x_last, target, out_last, cosines, cosines + pairs, pairs);
      }
    }
  });
}

}  // namespace

void CpuBackend::rope(const View& x, const View& positions, const View& out, double theta, bool inverse) {
  KILN_CHECK(x.ndim == 4 && out.ndim == 4, "rope: x and out must be (B, T, H, D), got ", x.ndim, " and ", out.ndim,
             " dims");
  KILN_CHECK(x.sizes[3] % 2 == 0, "rope: head dim must be even, got ", x.sizes[3]);
  KILN_CHECK(positions.dtype == DType::i64 && positions.ndim == 1 && positions.sizes[0] == x.sizes[1],
             "rope: positions must be i64 of shape (", x.sizes[1], ")");
  dispatch_floating(x.dtype, "rope", [&]<typename T>() { rope_impl<T>(x, positions, out, theta, inverse); });
}

}  // namespace kiln::kernels

// CPU random kernels: uniform and normal fills and dropout, all on Philox streams.
//
// Element i of the output is element i of the stream in the row-major logical order of `out`,
// whatever its strides, so a result depends only on (seed, offset) and never on the thread
// count or on which device drew it. f64 uniforms take the 'wide' stream, 53 random bits per
// element. Uniforms (and dropout's keep decisions) make one Philox call per counter and use all
// of its words, four times fewer calls than uniform_at per element; normals call normal_at,
// whose Box-Muller pairs are not worth duplicating for a fill that runs once per parameter.
#include <cmath>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/loops.h"
#include "kernels/error.h"
#include "kernels/philox.h"

namespace kiln::kernels {
namespace {

// Calls run(address, stride, first, count) over runs of `out` along its innermost merged dim,
// in parallel, where `first` is the row-major logical index of the run's first element and
// stride is in bytes.
template <typename Run>
void for_each_indexed_run(const View& out, Run&& run) {
  cpu::StridedLayout<1> layout({&out});
  int64_t total = layout.numel();
  if (total == 0) return;
  int last = layout.ndim - 1;
  int64_t inner_stride = last >= 0 ? layout.strides[0][last] : 0;
  cpu::parallel_for(total, cpu::kParallelGrain, [&](int64_t begin, int64_t end) {
    int64_t index[kMaxDims] = {};
    int64_t remaining = begin;
    for (int d = last; d >= 0; --d) {
      index[d] = remaining % layout.sizes[d];
      remaining /= layout.sizes[d];
    }
    for (int64_t position = begin; position < end;) {
      int64_t offset = 0;
      for (int d = 0; d <= last; ++d) offset += index[d] * layout.strides[0][d];
      int64_t count = last >= 0 ? std::min(layout.sizes[last] - index[last], end - position) : 1;
      run(static_cast<char*>(out.data) + offset, inner_stride, position, count);
      position += count;
      if (last < 0) break;
      index[last] += count;
      for (int d = last; d > 0 && index[d] == layout.sizes[d]; --d) {
        index[d] = 0;
        ++index[d - 1];
      }
    }
  });
}

// Calls use(i, u_i) for i in [begin, end) in order, u_i being exactly
// uniform_at(seed, offset, i, kWide): one counter holds four narrow or two wide elements.
template <bool kWide, typename Use>
void for_each_uniform(uint64_t seed, uint64_t offset, int64_t begin, int64_t end, Use&& use) {
  constexpr int64_t per_counter = kWide ? 2 : 4;
  for (int64_t i = begin; i < end;) {
    Philox4 r = philox4x32(seed, offset + static_cast<uint64_t>(i / per_counter));
    for (int64_t lane = i % per_counter; lane < per_counter && i < end; ++lane, ++i) {
      if constexpr (kWide) {
        use(i, uniform_double(r.word[2 * lane], r.word[2 * lane + 1]));
      } else {
        use(i, static_cast<double>(uniform_float(r.word[lane])));
      }
    }
  }
}

}  // namespace

// out (any sizes) = low + (high - low) * u_i, u_i uniform in [0, 1).
void CpuBackend::uniform(const View& out, double low, double high, uint64_t seed, uint64_t offset) {
  dispatch_floating(out.dtype, "uniform", [&]<typename T>() {
    constexpr bool kWide = std::is_same_v<T, double>;
    double range = high - low;
    for_each_indexed_run(out, [&](char* address, int64_t stride, int64_t first, int64_t count) {
      for_each_uniform<kWide>(seed, offset, first, first + count, [&](int64_t i, double u) {
        cpu::store<T>(address + (i - first) * stride, static_cast<compute_t<T>>(low + range * u));
      });
    });
  });
}

// out (any sizes) = mean + stddev * n_i, n_i standard normal.
void CpuBackend::normal(const View& out, double mean, double stddev, uint64_t seed, uint64_t offset) {
  dispatch_floating(out.dtype, "normal", [&]<typename T>() {
    for_each_indexed_run(out, [&](char* address, int64_t stride, int64_t first, int64_t count) {
      for (int64_t i = 0; i < count; ++i) {
        double value = mean + stddev * normal_at(seed, offset, first + i);
        cpu::store<T>(address + i * stride, static_cast<compute_t<T>>(value));
      }
    });
  });
}

// in (n) -> out (n) = keep_i ? in_i * (1 / (1 - p)) : 0 with keep_i = u_i >= p on the narrow
// stream for every dtype, so the backward (the same call on the gradient) drops the same
// elements. Multiplying by the rounded reciprocal is PyTorch's scaling.
void CpuBackend::dropout(const View& in, const View& out, double p, uint64_t seed, uint64_t offset) {
  KILN_CHECK(in.is_contiguous() && out.is_contiguous(), "dropout: in and out must be contiguous");
  dispatch_floating(in.dtype, "dropout", [&]<typename T>() {
    using C = compute_t<T>;
    const T* x = in.as<T>();
    T* y = out.as<T>();
    // p == 1 keeps nothing (u < 1 always), so the infinite scale is never multiplied in.
    C scale = static_cast<C>(1.0 / (1.0 - p));
    cpu::parallel_for(in.numel(), cpu::kParallelGrain, [&](int64_t begin, int64_t end) {
      for_each_uniform<false>(seed, offset, begin, end, [&](int64_t i, double u) {
        y[i] = static_cast<T>(u >= p ? static_cast<C>(x[i]) * scale : C(0));
      });
    });
  });
}

}  // namespace kiln::kernels

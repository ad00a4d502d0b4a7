// CPU memory kernels: strided copy with dtype conversion, fill and arange.
#include <cstring>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/loops.h"
#include "kernels/error.h"

namespace kiln::kernels {

void CpuBackend::copy(const View& src, const View& dst) {
  KILN_CHECK(src.device.is_cpu() && dst.device.is_cpu(), "copy: the cpu backend cannot copy ",
             src.device.str(), " -> ", dst.device.str());
  dispatch_all(dst.dtype, "copy", [&]<typename Dst>() {
    dispatch_all(src.dtype, "copy", [&]<typename Src>() {
      cpu::for_each_strided<2>({&dst, &src}, [&](auto p, auto s, int64_t n) {
        if constexpr (std::is_same_v<Src, Dst>) {
          if (s[0] == sizeof(Dst) && s[1] == sizeof(Src)) {
            std::memcpy(p[0], p[1], static_cast<size_t>(n) * sizeof(Dst));
            return;
          }
        }
        if (s[0] == sizeof(Dst) && s[1] == sizeof(Src)) {
          Dst* out = reinterpret_cast<Dst*>(p[0]);
          const Src* in = reinterpret_cast<const Src*>(p[1]);
          for (int64_t i = 0; i < n; ++i) out[i] = static_cast<Dst>(static_cast<compute_t<Src>>(in[i]));
        } else {
          for (int64_t i = 0; i < n; ++i) {
            cpu::store<Dst>(p[0] + i * s[0], cpu::load<Src>(p[1] + i * s[1]));
          }
        }
      });
    });
  });
}

void CpuBackend::fill(const View& out, double value) {
  dispatch_all(out.dtype, "fill", [&]<typename T>() {
    T filled = static_cast<T>(static_cast<compute_t<T>>(value));
    cpu::for_each_strided<1>({&out}, [&](auto p, auto s, int64_t n) {
      for (int64_t i = 0; i < n; ++i) *reinterpret_cast<T*>(p[0] + i * s[0]) = filled;
    });
  });
}

void CpuBackend::arange(const View& out, double start, double step) {
  KILN_CHECK(out.is_contiguous(), "arange: output must be contiguous");
  dispatch_numeric(out.dtype, "arange", [&]<typename T>() {
    T* data = out.as<T>();
    cpu::parallel_for(out.numel(), cpu::kParallelGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        data[i] = static_cast<T>(static_cast<compute_t<T>>(start + static_cast<double>(i) * step));
      }
    });
  });
}

}  // namespace kiln::kernels

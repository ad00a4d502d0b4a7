// CPU reductions: sum, mean, prod, max/min (with indices), argmax/argmin, logsumexp, variance.
//
// Each reduction is an accumulator (add one element, merge two partial results) driven by one
// of three loops:
//  - rows:   the reduced elements of each output are one strided run (the common last-dim
//            case); outputs run in parallel, or, when there are too few outputs to occupy the
//            threads, each output's run is split across threads and the partials merged.
//  - prefix: leading dims reduced and trailing dims kept in a contiguous input, the layout of a
//            bias gradient: rows are added into the output vector, vectorised across it.
//  - general: any other layout, an odometer over the reduced dims of each output.
// Floating sums accumulate in double, so an f32 sum of a million elements stays accurate to
// f32 rounding instead of growing with the length.
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/loops.h"
#include "kernels/error.h"

namespace kiln::kernels {
namespace {

template <typename T>
using accumulate_t = std::conditional_t<std::is_floating_point_v<compute_t<T>>, double, int64_t>;

template <typename T>
bool is_nan(T value) {
  if constexpr (std::is_floating_point_v<T>) return value != value;
  return false;
}

template <typename T>
struct SumAccumulator {
  accumulate_t<T> total = 0;
  void add(compute_t<T> x, int64_t) { total += x; }
  void merge(const SumAccumulator& other) { total += other.total; }
  double value(int64_t) const { return static_cast<double>(total); }
};

template <typename T>
struct MeanAccumulator : SumAccumulator<T> {
  double value(int64_t count) const { return static_cast<double>(this->total) / static_cast<double>(count); }
};

template <typename T>
struct ProdAccumulator {
  accumulate_t<T> total = 1;
  void add(compute_t<T> x, int64_t) { total *= x; }
  void merge(const ProdAccumulator& other) { total *= other.total; }
  double value(int64_t) const { return static_cast<double>(total); }
};

// First occurrence wins ties; a NaN wins over everything (PyTorch's max/argmax semantics).
template <typename T, bool kMax>
struct ExtremumAccumulator {
  using C = compute_t<T>;
  C best = kMax ? std::numeric_limits<C>::lowest() : std::numeric_limits<C>::max();
  int64_t index = -1;
  bool better(C x) const {
    if (index < 0) return true;
    if (is_nan(best)) return false;
    if (is_nan(x)) return true;
    return kMax ? x > best : x < best;
  }
  void add(C x, int64_t i) {
    if (better(x)) {
      best = x;
      index = i;
    }
  }
  void merge(const ExtremumAccumulator& other) {
    if (other.index >= 0 && better(other.best)) {
      best = other.best;
      index = other.index;
    }
  }
  double value(int64_t) const { return static_cast<double>(best); }
};

// Online log-sum-exp: a running maximum and the sum of exp(x - maximum).
template <typename T>
struct LogSumExpAccumulator {
  double maximum = -std::numeric_limits<double>::infinity();
  double scaled_sum = 0.0;
  bool saw_nan = false;
  void add(compute_t<T> value, int64_t) {
    double x = static_cast<double>(value);
    if (x != x) {
      saw_nan = true;
    } else if (x > maximum) {
      scaled_sum = (maximum == -std::numeric_limits<double>::infinity() ? 0.0 : scaled_sum * std::exp(maximum - x)) + 1.0;
      maximum = x;
    } else if (x != -std::numeric_limits<double>::infinity()) {
      scaled_sum += std::exp(x - maximum);
    }
  }
  void merge(const LogSumExpAccumulator& other) {
    saw_nan = saw_nan || other.saw_nan;
    if (other.maximum == -std::numeric_limits<double>::infinity()) return;
    if (maximum == -std::numeric_limits<double>::infinity()) {
      maximum = other.maximum;
      scaled_sum = other.scaled_sum;
    } else if (other.maximum > maximum) {
      scaled_sum = scaled_sum * std::exp(maximum - other.maximum) + other.scaled_sum;
      maximum = other.maximum;
    } else {
      scaled_sum += other.scaled_sum * std::exp(other.maximum - maximum);
    }
  }
  double value(int64_t) const {
    if (saw_nan) return std::numeric_limits<double>::quiet_NaN();
    if (std::isinf(maximum)) return maximum;
    return maximum + std::log(scaled_sum);
  }
};

// Welford's running mean and squared deviation, merged with Chan et al.'s formula.
template <typename T>
struct VarianceAccumulator {
  double count = 0, mean = 0, squared_deviation = 0;
  double correction = 1;
  void add(compute_t<T> value, int64_t) {
    double x = static_cast<double>(value);
    count += 1;
    double delta = x - mean;
    mean += delta / count;
    squared_deviation += delta * (x - mean);
  }
  void merge(const VarianceAccumulator& other) {
    if (other.count == 0) return;
    double total = count + other.count;
    double delta = other.mean - mean;
    squared_deviation += other.squared_deviation + delta * delta * count * other.count / total;
    mean += delta * other.count / total;
    count = total;
  }
  double value(int64_t) const {
    double divisor = count - correction;
    return divisor > 0 ? squared_deviation / divisor : std::numeric_limits<double>::quiet_NaN();
  }
};

// The reduced dims of `in` (those where out has size 1 and in does not), coalesced.
struct ReducedLayout {
  int ndim = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // elements of in
  int64_t count = 1;

  ReducedLayout(const View& in, const View& out) {
    for (int d = 0; d < in.ndim; ++d) {
      if (out.sizes[d] != 1 || in.sizes[d] == 1) continue;
      count *= in.sizes[d];
      if (ndim > 0 && strides[ndim - 1] == in.strides[d] * in.sizes[d]) {
        sizes[ndim - 1] *= in.sizes[d];
        strides[ndim - 1] = in.strides[d];
      } else {
        sizes[ndim] = in.sizes[d];
        strides[ndim] = in.strides[d];
        ++ndim;
      }
    }
  }
};

// Feeds the reduced elements under `base` (flat positions 0..count) into the accumulator.
template <typename T, typename Acc>
void accumulate_general(const T* base, const ReducedLayout& layout, Acc& acc) {
  int64_t index[kMaxDims] = {};
  for (int64_t flat = 0; flat < layout.count; ++flat) {
    int64_t offset = 0;
    for (int d = 0; d < layout.ndim; ++d) offset += index[d] * layout.strides[d];
    acc.add(static_cast<compute_t<T>>(base[offset]), flat);
    for (int d = layout.ndim - 1; d >= 0; --d) {
      if (++index[d] < layout.sizes[d]) break;
      index[d] = 0;
    }
  }
}

template <typename T, typename Acc>
void accumulate_run(const T* base, int64_t stride, int64_t begin, int64_t end, Acc& acc) {
  if (stride == 1) {
    for (int64_t i = begin; i < end; ++i) acc.add(static_cast<compute_t<T>>(base[i]), i);
  } else {
    for (int64_t i = begin; i < end; ++i) acc.add(static_cast<compute_t<T>>(base[i * stride]), i);
  }
}

template <typename T, typename Acc>
void write_result(const Acc& acc, int64_t count, char* out_address, char* index_address) {
  if (out_address) *reinterpret_cast<T*>(out_address) = static_cast<T>(static_cast<compute_t<T>>(acc.value(count)));
  if constexpr (requires { acc.index; }) {
    if (index_address) *reinterpret_cast<int64_t*>(index_address) = acc.index < 0 ? 0 : acc.index;
  }
}

// Drives one accumulator type over every output. `values` may be null (argmax), `indices` too.
template <typename T, typename Acc>
void reduce_with(const View& in, const View* values, const View* indices, const Acc& initial) {
  const View& shape_of_out = values ? *values : *indices;
  ReducedLayout reduced(in, shape_of_out);
  // in restricted to the kept dims: same sizes as out, pointing at each output's first element.
  View kept = in;
  for (int d = 0; d < in.ndim; ++d) {
    if (shape_of_out.sizes[d] == 1) kept.sizes[d] = 1;
  }
  int64_t outputs = shape_of_out.numel();
  const T* in_data = in.as<T>();

  bool single_run = reduced.ndim <= 1;
  int64_t run_stride = reduced.ndim == 1 ? reduced.strides[0] : 1;
  if (single_run && outputs < omp_get_max_threads() && reduced.count >= cpu::kParallelGrain) {
    // Few outputs, long runs: split each run across threads and merge the partials in order.
    int64_t out_index[kMaxDims] = {};
    for (int64_t o = 0; o < outputs; ++o) {
      int64_t in_offset = 0, value_offset = 0, index_offset = 0;
      for (int d = 0; d < in.ndim; ++d) {
        in_offset += out_index[d] * kept.strides[d];
        if (values) value_offset += out_index[d] * values->strides[d];
        if (indices) index_offset += out_index[d] * indices->strides[d];
      }
      int threads = omp_get_max_threads();
      std::vector<Acc> partial(static_cast<size_t>(threads), initial);
      int64_t chunk = (reduced.count + threads - 1) / threads;
      cpu::parallel_for(threads, 1, [&](int64_t first, int64_t last) {
        for (int64_t t = first; t < last; ++t) {
          int64_t begin = t * chunk, end = std::min(reduced.count, begin + chunk);
          if (begin < end) accumulate_run(in_data + in_offset, run_stride, begin, end, partial[static_cast<size_t>(t)]);
        }
      });
      Acc total = initial;
      for (const Acc& p : partial) total.merge(p);
      write_result<T>(total, reduced.count,
                      values ? static_cast<char*>(values->data) + value_offset * static_cast<int64_t>(sizeof(T)) : nullptr,
                      indices ? static_cast<char*>(indices->data) + index_offset * 8 : nullptr);
      for (int d = in.ndim - 1; d >= 0; --d) {
        if (++out_index[d] < shape_of_out.sizes[d]) break;
        out_index[d] = 0;
      }
    }
    return;
  }

  // One output per iteration, outputs in parallel.
  View index_view = indices ? *indices : shape_of_out;
  View value_view = values ? *values : shape_of_out;
  int64_t grain = std::max<int64_t>(1, cpu::kParallelGrain / std::max<int64_t>(1, reduced.count));
  cpu::for_each_strided<3>(
      {&kept, &value_view, &index_view},
      [&](auto p, auto s, int64_t n) {
        for (int64_t i = 0; i < n; ++i) {
          const T* base = reinterpret_cast<const T*>(p[0] + i * s[0]);
          Acc acc = initial;
          if (single_run) {
            accumulate_run(base, run_stride, 0, reduced.count, acc);
          } else {
            accumulate_general(base, reduced, acc);
          }
          write_result<T>(acc, reduced.count, values ? p[1] + i * s[1] : nullptr,
                          indices ? p[2] + i * s[2] : nullptr);
        }
      },
      grain);
}

// Contiguous input whose leading dims are reduced and trailing dims kept: out[k] = sum_r in[r][k].
template <typename T>
bool try_sum_prefix(const View& in, const View& out, bool mean) {
  if (!in.is_contiguous() || !out.is_contiguous()) return false;
  int first_kept = 0;
  while (first_kept < in.ndim && out.sizes[first_kept] == 1) ++first_kept;
  for (int d = first_kept; d < in.ndim; ++d) {
    if (out.sizes[d] != in.sizes[d]) return false;
  }
  int64_t rows = 1, width = 1;
  for (int d = 0; d < first_kept; ++d) rows *= in.sizes[d];
  for (int d = first_kept; d < in.ndim; ++d) width *= in.sizes[d];
  if (width < 16 || rows < 2) return false;  // the row path is as good for narrow outputs
  const T* data = in.as<T>();
  T* result = out.as<T>();
  int64_t grain = std::max<int64_t>(16, cpu::kParallelGrain / rows);
  cpu::parallel_for(width, grain, [&](int64_t begin, int64_t end) {
    std::vector<accumulate_t<T>> column(static_cast<size_t>(end - begin), 0);
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = data + r * width;
      for (int64_t k = begin; k < end; ++k) column[static_cast<size_t>(k - begin)] += static_cast<compute_t<T>>(row[k]);
    }
    for (int64_t k = begin; k < end; ++k) {
      double total = static_cast<double>(column[static_cast<size_t>(k - begin)]);
      if (mean) total /= static_cast<double>(rows);
      result[k] = static_cast<T>(static_cast<compute_t<T>>(total));
    }
  });
  return true;
}

}  // namespace

void CpuBackend::reduce(ReduceOp op, const View& in, const View& out, const View* indices) {
  const char* name = reduce_op_name(op);
  bool floating_only = op == ReduceOp::mean || op == ReduceOp::logsumexp;
  auto run = [&]<typename T>() {
    switch (op) {
      case ReduceOp::sum:
        if (!try_sum_prefix<T>(in, out, false)) reduce_with<T>(in, &out, nullptr, SumAccumulator<T>{});
        return;
      case ReduceOp::mean:
        if (!try_sum_prefix<T>(in, out, true)) reduce_with<T>(in, &out, nullptr, MeanAccumulator<T>{});
        return;
      case ReduceOp::prod: return reduce_with<T>(in, &out, nullptr, ProdAccumulator<T>{});
      case ReduceOp::max: return reduce_with<T>(in, &out, indices, ExtremumAccumulator<T, true>{});
      case ReduceOp::min: return reduce_with<T>(in, &out, indices, ExtremumAccumulator<T, false>{});
      case ReduceOp::argmax: return reduce_with<T>(in, nullptr, indices, ExtremumAccumulator<T, true>{});
      case ReduceOp::argmin: return reduce_with<T>(in, nullptr, indices, ExtremumAccumulator<T, false>{});
      case ReduceOp::logsumexp: return reduce_with<T>(in, &out, nullptr, LogSumExpAccumulator<T>{});
    }
  };
  if (floating_only) {
    dispatch_floating(in.dtype, name, run);
  } else {
    dispatch_numeric(in.dtype, name, run);
  }
}

void CpuBackend::variance(const View& in, const View& out, double correction) {
  dispatch_floating(in.dtype, "var", [&]<typename T>() {
    VarianceAccumulator<T> initial;
    initial.correction = correction;
    reduce_with<T>(in, &out, nullptr, initial);
  });
}

}  // namespace kiln::kernels

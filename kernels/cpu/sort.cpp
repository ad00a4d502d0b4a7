// CPU sort and topk along one dim of a strided view.
//
// Both are one kernel: each line along dim is copied into (value, position) pairs, the first k
// pairs in the requested order are selected (nth_element, then sorted when asked), and their
// values and positions are written out; sort is the case k = line length. Ties are broken by
// position, which makes the order total: std::sort then gives stable sort's result without
// stable_sort's buffer, and topk keeps the lower position among equal values. NaN orders as the
// largest value, as in PyTorch: last ascending, first descending.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/loops.h"
#include "kernels/error.h"

namespace kiln::kernels {
namespace {

template <typename C>
struct Entry {
  C value;
  int64_t position;
};

template <typename C>
bool is_nan(C value) {
  if constexpr (std::is_floating_point_v<C>) return value != value;
  return false;
}

// Whether a comes strictly before b in the order of values alone, NaN counting as the largest.
template <bool kDescending, typename C>
bool value_before(C a, C b) {
  if constexpr (kDescending) return is_nan(a) ? !is_nan(b) : a > b;
  return is_nan(b) ? !is_nan(a) : a < b;
}

template <bool kDescending, typename C>
bool entry_before(const Entry<C>& a, const Entry<C>& b) {
  if (value_before<kDescending>(a.value, b.value)) return true;
  if (value_before<kDescending>(b.value, a.value)) return false;
  return a.position < b.position;
}

// in (..., L, ...) -> values, indices (..., k, ...) along dim: the first k of each line in the
// order (descending or ascending, ties by position), in that order when `sorted`.
template <typename T, bool kDescending>
void select_lines(const View& in, int dim, int64_t k, bool sorted, const View& values,
                  const View& indices) {
  using C = compute_t<T>;
  cpu::for_each_line<3>({&in, &values, &indices}, dim, [&](auto p, auto s, auto lengths) {
    // Scratch reused across lines and calls, so short lines (MoE routing) cost no allocation.
    thread_local std::vector<Entry<C>> entries;
    int64_t length = lengths[0];
    entries.resize(static_cast<size_t>(length));
    for (int64_t i = 0; i < length; ++i) entries[static_cast<size_t>(i)] = {cpu::load<T>(p[0] + i * s[0]), i};
    auto first = entries.begin();
    if (k < length) std::nth_element(first, first + k, entries.end(), entry_before<kDescending, C>);
    if (sorted) std::sort(first, first + k, entry_before<kDescending, C>);
    for (int64_t j = 0; j < k; ++j) {
      int64_t position = entries[static_cast<size_t>(j)].position;
      // The input element itself rather than its compute-type value: exact for every dtype.
      *reinterpret_cast<T*>(p[1] + j * s[1]) = *reinterpret_cast<const T*>(p[0] + position * s[0]);
      *reinterpret_cast<int64_t*>(p[2] + j * s[2]) = position;
    }
  });
}

template <typename T>
void select(const View& in, int dim, int64_t k, bool descending, bool sorted, const View& values,
            const View& indices) {
  if (descending) {
    select_lines<T, true>(in, dim, k, sorted, values, indices);
  } else {
    select_lines<T, false>(in, dim, k, sorted, values, indices);
  }
}

// A 0-d view as a 1-d view of one element, so dim 0 of a scalar means what it does in PyTorch.
View at_least_1d(const View& view) {
  View result = view;
  if (result.ndim == 0) {
    result.ndim = 1;
    result.sizes[0] = 1;
    result.strides[0] = 0;
  }
  return result;
}

void check_dim(const char* op, int dim, const View& view) {
  KILN_CHECK(dim >= 0 && dim < view.ndim, op, ": dim ", dim, " is out of range for a ", view.ndim,
             "-d tensor");
}

}  // namespace

// in (..., L, ...) -> values (..., k, ...) in's dtype, indices (..., k, ...) i64.
void CpuBackend::topk(const View& in_view, int64_t k, int dim, bool largest, bool sorted,
                      const View& values_view, const View& indices_view) {
  View in = at_least_1d(in_view), values = at_least_1d(values_view), indices = at_least_1d(indices_view);
  check_dim("topk", dim, in);
  int64_t length = in.sizes[dim];
  KILN_CHECK(k >= 0 && k <= length, "topk: k ", k, " is out of range for dim ", dim, " with size ",
             length);
  if (k == 0) return;
  dispatch_numeric(in.dtype, "topk", [&]<typename T>() {
    select<T>(in, dim, k, largest, sorted, values, indices);
  });
}

// in (..., L, ...) -> values (..., L, ...) in's dtype, indices (..., L, ...) i64.
void CpuBackend::sort(const View& in_view, int dim, bool descending, const View& values_view,
                      const View& indices_view) {
  View in = at_least_1d(in_view), values = at_least_1d(values_view), indices = at_least_1d(indices_view);
  check_dim("sort", dim, in);
  dispatch_numeric(in.dtype, "sort", [&]<typename T>() {
    select<T>(in, dim, in.sizes[dim], descending, true, values, indices);
  });
}

}  // namespace kiln::kernels

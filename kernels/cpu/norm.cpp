// CPU layer norm and RMS norm over the last dim of a contiguous (N, C) view, forward and backward.
//
// Rows run in parallel and every row loop is unit-stride and vectorised. The formulas are
// PyTorch's: biased variance, rstd = 1 / sqrt(var + eps). Sums accumulate in the compute type
// (float for f32 and the 16-bit types; double sums cost f32 a quarter of the forward's time), so
// layer norm's statistics take care instead: the mean is taken of x - x[0] and the variance in a
// second pass over squared deviations, which stay accurate when |mean| >> std where a running
// float total or E[x^2] - E[x]^2 would lose the digits that matter.
//
// The weight and bias gradients are sums over rows. Rows are cut into blocks whose number
// depends only on N and C, each block sums into its own partial row, and the partials are added
// in block order: no atomics, and the same bits for any thread count.
// mean and rstd are read and written in their own views' dtype, so 16-bit inputs may keep f32
// statistics.
//
// The residual form normalises x + residual: each row's sum is written first, rounded to the
// dtype as the add op rounds it, and normalised while it is still in cache. Its backward adds the
// sum's other gradient to the rounded grad_x, as autograd would. Both give the unfused ops' bits.
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/loops.h"
#include "kernels/error.h"

namespace kiln::kernels {
namespace {

// The (N, C) shape of a contiguous view normalised over its last dim.
struct Rows {
  int64_t count = 1;
  int64_t width = 0;
};

Rows rows_of(const char* op, const View& x, std::initializer_list<const View*> contiguous) {
  for (const View* v : contiguous) {
    if (v) KILN_CHECK(v->is_contiguous(), op, ": every operand must be contiguous (rows of the last dim)");
  }
  Rows rows;
  rows.width = x.ndim ? x.sizes[x.ndim - 1] : 1;
  for (int d = 0; d + 1 < x.ndim; ++d) rows.count *= x.sizes[d];
  return rows;
}

using LoadScalar = double (*)(const char*);
using StoreScalar = void (*)(char*, double);

// Accessors for the (N) statistics, resolved before the parallel loop so a bad dtype throws here.
LoadScalar stat_loader(const View& v, const char* op) {
  return dispatch_floating(v.dtype, op, [&]<typename S>() -> LoadScalar {
    return [](const char* address) { return static_cast<double>(cpu::load<S>(address)); };
  });
}
StoreScalar stat_storer(const View& v, const char* op) {
  return dispatch_floating(v.dtype, op, [&]<typename S>() -> StoreScalar {
    return [](char* address, double value) { cpu::store<S>(address, static_cast<compute_t<S>>(value)); };
  });
}
char* element_address(const View& v, int64_t i) {
  return static_cast<char*>(v.data) + i * static_cast<int64_t>(dtype_size(v.dtype));
}

// Calls body.template operator()<flag>() with the flag as a compile-time constant, so optional
// operands cost no branch inside the row loops.
template <typename Body>
void with_flag(bool flag, Body&& body) {
  if (flag) {
    body.template operator()<true>();
  } else {
    body.template operator()<false>();
  }
}

// The parameter-gradient sums over rows: blocks of rows, each with a partial row per output.
// Partial rows accumulate in the compute type (float partials run a fifth faster than double
// for f32), and the blocks are added in double.
template <typename T>
class ParameterGradients {
 public:
  using C = compute_t<T>;
  // At most this many partial rows per output; the block count never depends on threads.
  static constexpr int64_t kMaxBlocks = 128;

  ParameterGradients(int64_t rows, int64_t width, int outputs) : width_(width), outputs_(outputs) {
    int64_t min_rows = std::max<int64_t>(1, cpu::kParallelGrain / std::max<int64_t>(1, width));
    rows_per_block_ = std::max(min_rows, (rows + kMaxBlocks - 1) / kMaxBlocks);
    blocks_ = (rows + rows_per_block_ - 1) / rows_per_block_;
    if (outputs > 0) partials_.assign(static_cast<size_t>(blocks_ * width * outputs), C(0));
  }

  int64_t blocks() const { return blocks_; }
  int64_t first_row(int64_t block) const { return block * rows_per_block_; }
  int64_t end_row(int64_t block, int64_t rows) const { return std::min(rows, (block + 1) * rows_per_block_); }
  // The partial row of output k (0 weight, 1 bias) for one block; null when not accumulated.
  C* partial(int64_t block, int output) {
    return output < outputs_ ? partials_.data() + (block * outputs_ + output) * width_ : nullptr;
  }

  // Writes the sum over blocks of output k's partial rows to `out` (C).
  void write(int output, const View& out) {
    T* result = out.as<T>();
    int64_t grain = std::max<int64_t>(16, cpu::kParallelGrain / std::max<int64_t>(1, blocks_));
    cpu::parallel_for(width_, grain, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        double total = 0;
        for (int64_t block = 0; block < blocks_; ++block) total += partial(block, output)[c];
        result[c] = static_cast<T>(static_cast<C>(total));
      }
    });
  }

 private:
  int64_t width_;
  int outputs_;
  int64_t rows_per_block_ = 1;
  int64_t blocks_ = 0;
  std::vector<C> partials_;
};

// Calls row(r, block) for every row, the blocks in parallel and each block's rows in order.
template <typename T, typename Row>
void for_each_row_in_blocks(ParameterGradients<T>& sums, int64_t rows, Row&& row) {
  cpu::parallel_for(sums.blocks(), 1, [&](int64_t first_block, int64_t last_block) {
    for (int64_t block = first_block; block < last_block; ++block) {
      for (int64_t r = sums.first_row(block); r < sums.end_row(block, rows); ++r) row(r, block);
    }
  });
}

// sum (C) = x + residual, rounded to T as the add op rounds it.
template <typename T>
void add_row(const T* x, const T* residual, T* sum, int64_t width) {
  using C = compute_t<T>;
#pragma omp simd
  for (int64_t c = 0; c < width; ++c) sum[c] = static_cast<T>(static_cast<C>(x[c]) + static_cast<C>(residual[c]));
}

// grad_x (C) += grad_sum, in the compute type and rounded to T: the sum's other gradient added
// to the rounded norm gradient, as autograd adds them. A loop of its own, so that the compiler
// cannot contract the norm gradient's last product and this add into one fma.
template <typename T>
void add_gradient_row(T* grad_x, const T* grad_sum, int64_t width) {
  using C = compute_t<T>;
#pragma omp simd
  for (int64_t c = 0; c < width; ++c) grad_x[c] = static_cast<T>(static_cast<C>(grad_x[c]) + static_cast<C>(grad_sum[c]));
}

// x (C) -> y (C) = (x - mean) * rstd * weight + bias; writes the row's mean and rstd.
template <typename T, bool kWeight, bool kBias>
void layer_norm_row(const T* x, const T* weight, const T* bias, double eps, T* y, int64_t width,
                    double& mean_out, double& rstd_out) {
  using C = compute_t<T>;
  // Summing x - x[0] keeps the float sum near zero when |mean| >> std, so the mean carries the
  // rounding of the result rather than that of a large running total.
  C shift = width > 0 ? static_cast<C>(x[0]) : C(0);
  C shifted_sum = 0;
#pragma omp simd reduction(+ : shifted_sum)
  for (int64_t c = 0; c < width; ++c) shifted_sum += static_cast<C>(x[c]) - shift;
  C mean = shift + shifted_sum / static_cast<C>(width);
  C squares = 0;
#pragma omp simd reduction(+ : squares)
  for (int64_t c = 0; c < width; ++c) {
    C deviation = static_cast<C>(x[c]) - mean;
    squares += deviation * deviation;
  }
  C rstd = C(1) / std::sqrt(squares / static_cast<C>(width) + static_cast<C>(eps));
#pragma omp simd
  for (int64_t c = 0; c < width; ++c) {
    C value = (static_cast<C>(x[c]) - mean) * rstd;
    if constexpr (kWeight) value *= static_cast<C>(weight[c]);
    if constexpr (kBias) value += static_cast<C>(bias[c]);
    y[c] = static_cast<T>(value);
  }
  mean_out = static_cast<double>(mean);
  rstd_out = static_cast<double>(rstd);
}

// grad_y, x (C) -> grad_x (C), with xhat = (x - mean) * rstd and g = grad_y * weight:
//   grad_x = rstd * (g - mean(g) - xhat * mean(g * xhat))
// and adds grad_y * xhat and grad_y into the weight and bias partial rows.
template <typename T, bool kWeight, bool kWeightGrad, bool kBiasGrad, bool kGradSum>
void layer_norm_backward_row(const T* grad_y, const T* grad_sum, const T* x, const T* weight, double mean_in,
                             double rstd_in, T* grad_x, int64_t width, compute_t<T>* weight_partial,
                             compute_t<T>* bias_partial) {
  using C = compute_t<T>;
  C mean = static_cast<C>(mean_in), rstd = static_cast<C>(rstd_in);
  C sum_g = 0, sum_g_xhat = 0;
#pragma omp simd reduction(+ : sum_g, sum_g_xhat)
  for (int64_t c = 0; c < width; ++c) {
    C dy = static_cast<C>(grad_y[c]);
    C xhat = (static_cast<C>(x[c]) - mean) * rstd;
    C g = kWeight ? dy * static_cast<C>(weight[c]) : dy;
    sum_g += g;
    sum_g_xhat += g * xhat;
    if constexpr (kWeightGrad) weight_partial[c] += dy * xhat;
    if constexpr (kBiasGrad) bias_partial[c] += dy;
  }
  C mean_g = sum_g / static_cast<C>(width);
  C mean_g_xhat = sum_g_xhat / static_cast<C>(width);
#pragma omp simd
  for (int64_t c = 0; c < width; ++c) {
    C dy = static_cast<C>(grad_y[c]);
    C xhat = (static_cast<C>(x[c]) - mean) * rstd;
    C g = kWeight ? dy * static_cast<C>(weight[c]) : dy;
    grad_x[c] = static_cast<T>(rstd * (g - mean_g - xhat * mean_g_xhat));
  }
  if constexpr (kGradSum) add_gradient_row(grad_x, grad_sum, width);
}

// x (C) -> y (C) = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps); returns rstd.
template <typename T, bool kWeight>
double rms_norm_row(const T* x, const T* weight, double eps, T* y, int64_t width) {
  using C = compute_t<T>;
  C squares = 0;
#pragma omp simd reduction(+ : squares)
  for (int64_t c = 0; c < width; ++c) {
    C value = static_cast<C>(x[c]);
    squares += value * value;
  }
  C rstd = C(1) / std::sqrt(squares / static_cast<C>(width) + static_cast<C>(eps));
#pragma omp simd
  for (int64_t c = 0; c < width; ++c) {
    C value = static_cast<C>(x[c]) * rstd;
    if constexpr (kWeight) value *= static_cast<C>(weight[c]);
    y[c] = static_cast<T>(value);
  }
  return static_cast<double>(rstd);
}

// grad_y, x (C) -> grad_x (C), with xhat = x * rstd and g = grad_y * weight:
//   grad_x = rstd * (g - xhat * mean(g * xhat))
// and adds grad_y * xhat into the weight partial row.
template <typename T, bool kWeight, bool kWeightGrad, bool kGradSum>
void rms_norm_backward_row(const T* grad_y, const T* grad_sum, const T* x, const T* weight, double rstd_in,
                           T* grad_x, int64_t width, compute_t<T>* weight_partial) {
  using C = compute_t<T>;
  C rstd = static_cast<C>(rstd_in);
  C sum_g_xhat = 0;
#pragma omp simd reduction(+ : sum_g_xhat)
  for (int64_t c = 0; c < width; ++c) {
    C dy = static_cast<C>(grad_y[c]);
    C xhat = static_cast<C>(x[c]) * rstd;
    C g = kWeight ? dy * static_cast<C>(weight[c]) : dy;
    sum_g_xhat += g * xhat;
    if constexpr (kWeightGrad) weight_partial[c] += dy * xhat;
  }
  C mean_g_xhat = sum_g_xhat / static_cast<C>(width);
#pragma omp simd
  for (int64_t c = 0; c < width; ++c) {
    C dy = static_cast<C>(grad_y[c]);
    C xhat = static_cast<C>(x[c]) * rstd;
    C g = kWeight ? dy * static_cast<C>(weight[c]) : dy;
    grad_x[c] = static_cast<T>(rstd * (g - xhat * mean_g_xhat));
  }
  if constexpr (kGradSum) add_gradient_row(grad_x, grad_sum, width);
}

template <typename T>
const T* data_or_null(const View* v) {
  return v ? v->as<T>() : nullptr;
}

}  // namespace

// The first element of row r of an optional (N, C) view.
template <typename T>
T* row_or_null(const View* v, int64_t offset) {
  return v ? v->as<T>() + offset : nullptr;
}

// x, residual (N, C), weight (C), bias (C) -> sum, y (N, C), mean (N), rstd (N).
void CpuBackend::layer_norm(const View& x, const View* residual, const View* weight, const View* bias,
                            double eps, const View* sum, const View& y, const View& mean, const View& rstd) {
  const char* op = "layer_norm";
  Rows rows = rows_of(op, x, {&x, residual, weight, bias, sum, &y, &mean, &rstd});
  KILN_CHECK((residual == nullptr) == (sum == nullptr), op, ": a residual needs a sum to write, and only then");
  StoreScalar store_mean = stat_storer(mean, op), store_rstd = stat_storer(rstd, op);
  int64_t grain = std::max<int64_t>(1, cpu::kParallelGrain / std::max<int64_t>(1, rows.width));
  dispatch_floating(x.dtype, op, [&]<typename T>() {
    with_flag(weight != nullptr, [&]<bool kWeight>() {
      with_flag(bias != nullptr, [&]<bool kBias>() {
        cpu::parallel_for(rows.count, grain, [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            int64_t offset = r * rows.width;
            const T* in = x.as<T>() + offset;
            if (residual) {
              add_row(in, residual->as<T>() + offset, sum->as<T>() + offset, rows.width);
              in = sum->as<T>() + offset;
            }
            double row_mean, row_rstd;
            layer_norm_row<T, kWeight, kBias>(in, data_or_null<T>(weight), data_or_null<T>(bias), eps,
                                              y.as<T>() + offset, rows.width, row_mean, row_rstd);
            store_mean(element_address(mean, r), row_mean);
            store_rstd(element_address(rstd, r), row_rstd);
          }
        });
      });
    });
  });
}

// grad_y, grad_sum, x (N, C), weight (C), mean, rstd (N) -> grad_x (N, C), grad_weight, grad_bias (C).
void CpuBackend::layer_norm_backward(const View& grad_y, const View* grad_sum, const View& x, const View* weight,
                                     const View& mean, const View& rstd, const View& grad_x,
                                     const View* grad_weight, const View* grad_bias) {
  const char* op = "layer_norm_backward";
  Rows rows = rows_of(op, x, {&grad_y, grad_sum, &x, weight, &mean, &rstd, &grad_x, grad_weight, grad_bias});
  LoadScalar load_mean = stat_loader(mean, op), load_rstd = stat_loader(rstd, op);
  dispatch_floating(x.dtype, op, [&]<typename T>() {
    ParameterGradients<T> sums(rows.count, rows.width, grad_weight || grad_bias ? 2 : 0);
    with_flag(weight != nullptr, [&]<bool kWeight>() {
      with_flag(grad_weight != nullptr, [&]<bool kWeightGrad>() {
        with_flag(grad_bias != nullptr, [&]<bool kBiasGrad>() {
          with_flag(grad_sum != nullptr, [&]<bool kGradSum>() {
            for_each_row_in_blocks(sums, rows.count, [&](int64_t r, int64_t block) {
              int64_t offset = r * rows.width;
              layer_norm_backward_row<T, kWeight, kWeightGrad, kBiasGrad, kGradSum>(
                  grad_y.as<T>() + offset, row_or_null<const T>(grad_sum, offset), x.as<T>() + offset,
                  data_or_null<T>(weight), load_mean(element_address(mean, r)), load_rstd(element_address(rstd, r)),
                  grad_x.as<T>() + offset, rows.width, sums.partial(block, 0), sums.partial(block, 1));
            });
          });
        });
      });
    });
    if (grad_weight) sums.write(0, *grad_weight);
    if (grad_bias) sums.write(1, *grad_bias);
  });
}

// x, residual (N, C), weight (C) -> sum, y (N, C), rstd (N).
void CpuBackend::rms_norm(const View& x, const View* residual, const View* weight, double eps, const View* sum,
                          const View& y, const View& rstd) {
  const char* op = "rms_norm";
  Rows rows = rows_of(op, x, {&x, residual, weight, sum, &y, &rstd});
  KILN_CHECK((residual == nullptr) == (sum == nullptr), op, ": a residual needs a sum to write, and only then");
  StoreScalar store_rstd = stat_storer(rstd, op);
  int64_t grain = std::max<int64_t>(1, cpu::kParallelGrain / std::max<int64_t>(1, rows.width));
  dispatch_floating(x.dtype, op, [&]<typename T>() {
    with_flag(weight != nullptr, [&]<bool kWeight>() {
      cpu::parallel_for(rows.count, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          int64_t offset = r * rows.width;
          const T* in = x.as<T>() + offset;
          if (residual) {
            add_row(in, residual->as<T>() + offset, sum->as<T>() + offset, rows.width);
            in = sum->as<T>() + offset;
          }
          double row_rstd = rms_norm_row<T, kWeight>(in, data_or_null<T>(weight), eps, y.as<T>() + offset, rows.width);
          store_rstd(element_address(rstd, r), row_rstd);
        }
      });
    });
  });
}

// grad_y, grad_sum, x (N, C), weight (C), rstd (N) -> grad_x (N, C), grad_weight (C).
void CpuBackend::rms_norm_backward(const View& grad_y, const View* grad_sum, const View& x, const View* weight,
                                   const View& rstd, const View& grad_x, const View* grad_weight) {
  const char* op = "rms_norm_backward";
  Rows rows = rows_of(op, x, {&grad_y, grad_sum, &x, weight, &rstd, &grad_x, grad_weight});
  LoadScalar load_rstd = stat_loader(rstd, op);
  dispatch_floating(x.dtype, op, [&]<typename T>() {
    ParameterGradients<T> sums(rows.count, rows.width, grad_weight ? 1 : 0);
    with_flag(weight != nullptr, [&]<bool kWeight>() {
      with_flag(grad_weight != nullptr, [&]<bool kWeightGrad>() {
        with_flag(grad_sum != nullptr, [&]<bool kGradSum>() {
          for_each_row_in_blocks(sums, rows.count, [&](int64_t r, int64_t block) {
            int64_t offset = r * rows.width;
            rms_norm_backward_row<T, kWeight, kWeightGrad, kGradSum>(
                grad_y.as<T>() + offset, row_or_null<const T>(grad_sum, offset), x.as<T>() + offset,
                data_or_null<T>(weight), load_rstd(element_address(rstd, r)), grad_x.as<T>() + offset, rows.width,
                sums.partial(block, 0));
          });
        });
      });
    });
    if (grad_weight) sums.write(0, *grad_weight);
  });
}

}  // namespace kiln::kernels

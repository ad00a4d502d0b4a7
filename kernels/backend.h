// Backend: the complete set of compute kernels one device provides.
//
// autograd/ calls kernels only through this interface, so the op library has no #ifdef for
// CUDA: the CPU backend (kernels/cpu) always exists and the CUDA backend (kernels/cuda)
// registers itself when kiln is built with CUDA. Operands arrive as Views whose sizes have
// already been checked and broadcast by the op library; kernels check only what they alone can
// see (index values). Every kernel writes (never accumulates into) its outputs unless its
// comment says otherwise.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "kernels/optimizer_update.h"
#include "kernels/view.h"

namespace kiln::kernels {

enum class UnaryOp {
  neg, exp, log, sqrt, rsqrt, abs, tanh, sigmoid, relu, gelu_tanh, gelu_erf, silu, sin, cos,
  reciprocal, sign, logical_not
};

enum class BinaryOp {
  add, sub, mul, div, pow, maximum, minimum,     // arithmetic: out has the operands' dtype
  eq, ne, lt, le, gt, ge, logical_and, logical_or  // predicates: out is bool
};

// sum, mean, prod, max, min, logsumexp write values; argmax/argmin write only indices; max and
// min also write indices when an index view is given (first occurrence on ties, as PyTorch).
enum class ReduceOp { sum, mean, prod, max, min, logsumexp, argmax, argmin };

const char* unary_op_name(UnaryOp op);
const char* binary_op_name(BinaryOp op);
const char* reduce_op_name(ReduceOp op);
inline bool is_predicate(BinaryOp op) { return op >= BinaryOp::eq; }

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // ---- memory ------------------------------------------------------------------------------
  // dst = src with dtype conversion; same sizes (src may have stride-0 broadcast dims). When the
  // two views live on different devices the non-CPU backend performs the transfer.
  virtual void copy(const View& src, const View& dst) = 0;
  virtual void fill(const View& out, double value) = 0;
  // out[i] = start + i * step over the flat (contiguous) out.
  virtual void arange(const View& out, double start, double step) = 0;

  // ---- elementwise -------------------------------------------------------------------------
  // out = op(in), same sizes; logical_not writes bool.
  virtual void unary(UnaryOp op, const View& in, const View& out) = 0;
  // grad_in = grad_out * op'(x); y is the forward output (used by exp, tanh, sigmoid, sqrt,
  // rsqrt, reciprocal). All five views have the same sizes.
  virtual void unary_backward(UnaryOp op, const View& grad_out, const View& x, const View& y,
                              const View& grad_in) = 0;
  // out = a op b; a and b are already expanded to out's sizes.
  virtual void binary(BinaryOp op, const View& a, const View& b, const View& out) = 0;
  // out = condition ? a : b (condition bool), all expanded to out's sizes.
  virtual void where(const View& condition, const View& a, const View& b, const View& out) = 0;
  // out = min(max(in, low), high) with either bound optional.
  virtual void clamp(const View& in, const View& out, std::optional<double> low,
                     std::optional<double> high) = 0;
  // grad_in = low <= x <= high ? grad_out : 0 (PyTorch's convention at the bounds).
  virtual void clamp_backward(const View& grad_out, const View& x, const View& grad_in,
                              std::optional<double> low, std::optional<double> high) = 0;

  // ---- reductions --------------------------------------------------------------------------
  // `out` has in's ndim with size 1 on every reduced dim and in's size elsewhere; `indices`
  // (i64, out's sizes) is required for argmax/argmin and optional for max/min.
  virtual void reduce(ReduceOp op, const View& in, const View& out, const View* indices) = 0;
  // Variance over the reduced dims (same layout rule as reduce), divided by (count - correction).
  virtual void variance(const View& in, const View& out, double correction) = 0;

  // ---- matrix products ---------------------------------------------------------------------
  // out (..., M, N) = a (..., M, K) @ b (..., K, N), plus out's old value when `accumulate`.
  // a and b have out's ndim with batch dims expanded to out's (stride 0 where broadcast).
  virtual void matmul(const View& a, const View& b, const View& out, bool accumulate) = 0;

  // ---- softmax and cross-entropy -----------------------------------------------------------
  // out = softmax(in) (or log_softmax when `log`) along dim.
  virtual void softmax(const View& in, const View& out, int dim, bool log) = 0;
  // grad_in from grad_out and the forward output `out`.
  virtual void softmax_backward(const View& grad_out, const View& out, const View& grad_in,
                                int dim, bool log) = 0;
  // logits (N, C), targets (N) i64 -> loss (N) and logsumexp (N), both logits' dtype. The loss
  // of a row whose target is ignore_index is 0. label_smoothing s mixes the one-hot target with
  // the uniform distribution: q = (1 - s) onehot + s / C.
  virtual void cross_entropy(const View& logits, const View& targets, const View& loss,
                             const View& logsumexp, int64_t ignore_index,
                             double label_smoothing) = 0;
  // grad_logits (N, C) = grad_loss (N) * (softmax(logits) - q), 0 on ignored rows; the softmax
  // is recomputed from logits and logsumexp, so probabilities are never stored.
  virtual void cross_entropy_backward(const View& logits, const View& targets,
                                      const View& logsumexp, const View& grad_loss,
                                      const View& grad_logits, int64_t ignore_index,
                                      double label_smoothing) = 0;

  // ---- normalisation (rows of the last dim) ------------------------------------------------
  // x (N, C) -> y (N, C); mean and rstd (N) saved for the backward. weight/bias (C) optional.
  // With `residual` (N, C) the rows normalised are x + residual, rounded to the dtype and also
  // written to `sum`: a pre-norm block's "h = x + f(x); norm(h)" makes one pass over h.
  virtual void layer_norm(const View& x, const View* residual, const View* weight, const View* bias,
                          double eps, const View* sum, const View& y, const View& mean,
                          const View& rstd) = 0;
  // Writes grad_x (N, C) and, when given, grad_weight and grad_bias (C). x is what was
  // normalised (the sum, in the residual form). grad_sum, when given, is the gradient the sum
  // receives from its other uses: it is added to grad_x after grad_x is rounded to the dtype,
  // as autograd would add the two.
  virtual void layer_norm_backward(const View& grad_y, const View* grad_sum, const View& x,
                                   const View* weight, const View& mean, const View& rstd,
                                   const View& grad_x, const View* grad_weight,
                                   const View* grad_bias) = 0;
  // y = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps); residual and sum as above.
  virtual void rms_norm(const View& x, const View* residual, const View* weight, double eps,
                        const View* sum, const View& y, const View& rstd) = 0;
  virtual void rms_norm_backward(const View& grad_y, const View* grad_sum, const View& x,
                                 const View* weight, const View& rstd, const View& grad_x,
                                 const View* grad_weight) = 0;

  // ---- indexing ----------------------------------------------------------------------------
  // Index values are checked here (they are data): an out-of-range index throws kiln::Error
  // naming the op, the index, the dim and its size.
  // out = in.index_select(dim, index); index is 1-D.
  virtual void index_select(const View& in, int dim, const View& index, const View& out) = 0;
  // out[..., index[i], ...] += alpha * src[..., i, ...] along dim (accumulates into out).
  virtual void index_add(const View& out, int dim, const View& index, const View& src,
                         double alpha) = 0;
  // out[i][j][k] = in[i][index[i][j][k]][k] for dim 1 (and likewise for any dim).
  virtual void gather(const View& in, int dim, const View& index, const View& out) = 0;
  // out[i][index[i][j][k]][k] += src[i][j][k] for dim 1 (accumulates into out).
  virtual void scatter_add(const View& out, int dim, const View& index, const View& src) = 0;
  // The k largest (or smallest) along dim, values and i64 indices; sorted by value when asked.
  virtual void topk(const View& in, int64_t k, int dim, bool largest, bool sorted,
                    const View& values, const View& indices) = 0;
  // Stable sort along dim (ties keep input order), values and i64 indices.
  virtual void sort(const View& in, int dim, bool descending, const View& values,
                    const View& indices) = 0;

  // ---- attention and rotary embeddings ------------------------------------------------------
  // Fused scaled-dot-product attention, blocked with an online softmax (flash-style): extra
  // memory is O(T) per head (the log-sum-exp), never a T x T matrix.
  //   q (B, Hq, Tq, D), k and v (B, Hkv, Tk, D) with Hq % Hkv == 0 (GQA: query head h reads
  //   kv head h / (Hq / Hkv), without copies) -> out (B, Hq, Tq, D), lse (B, Hq, Tq).
  // lse is f64 for f64 inputs and f32 otherwise. With `causal`, query i sits at position
  // Tk - Tq + i and sees keys j <= Tk - Tq + i (a KV cache makes Tq < Tk). The last dim of
  // q, k, v and out has unit stride; the other strides are free.
  virtual void attention(const View& q, const View& k, const View& v, const View& out, const View& lse,
                         bool causal, double scale);
  // Gradients from grad_out and the forward's out and lse (recomputing the probabilities);
  // writes grad_q (q's shape) and grad_k, grad_v (k's shape), each with unit last stride.
  virtual void attention_backward(const View& q, const View& k, const View& v, const View& out,
                                  const View& lse, const View& grad_out, const View& grad_q,
                                  const View& grad_k, const View& grad_v, bool causal, double scale);
  // Rotary position embedding on x (B, T, H, D), D even, pairs (2i, 2i+1) rotated by angle
  // position_t * theta^(-2i/D) with position_t = positions[t] (i64, (T)). `inverse` rotates by
  // the negative angle, which is the backward.
  virtual void rope(const View& x, const View& positions, const View& out, double theta, bool inverse);

  // ---- fused optimizer updates (optimizer_update.h; the arithmetic of each is stated in
  // kernels/cpu/optimizer_kernels.h): param, grad and every state buffer contiguous, of param's
  // size and dtype (f32 or f64), on this device; an unused optional buffer has null data.
  virtual void sgd_update(const View& param, const View& grad, const View& momentum_buffer, const SgdHyper& hyper);
  virtual void adagrad_update(const View& param, const View& grad, const View& sum, const AdagradHyper& hyper);
  virtual void rmsprop_update(const View& param, const View& grad, const View& square_avg, const View& grad_avg,
                              const View& momentum_buffer, const RmspropHyper& hyper);
  virtual void adam_update(const View& param, const View& grad, const View& exp_avg, const View& exp_avg_sq,
                           const View& max_exp_avg_sq, const AdamHyper& hyper);

  // ---- random (Philox streams: element i of out depends only on seed, offset and i) ---------
  virtual void uniform(const View& out, double low, double high, uint64_t seed,
                       uint64_t offset) = 0;
  virtual void normal(const View& out, double mean, double stddev, uint64_t seed,
                      uint64_t offset) = 0;
  // out = in * keep / (1 - p), keep_i = uniform_i >= p. in and out contiguous, same sizes. The
  // backward calls it again on the gradient with the same seed and offset: no mask is stored.
  virtual void dropout(const View& in, const View& out, double p, uint64_t seed,
                       uint64_t offset) = 0;
};

// The backend that owns `device`'s memory; throws kiln::Error if the device is unavailable.
Backend& backend_for(Device device);
// The CUDA backend installs itself here when its library loads and finds a GPU.
void register_backend(DeviceType type, Backend* backend);
// Why a device type has no backend, for the error a user sees (set by the CUDA library when it
// loads but finds no usable GPU; otherwise "kiln was built without CUDA").
void set_unavailable_reason(DeviceType type, const std::string& reason);
const std::string& unavailable_reason(DeviceType type);

}  // namespace kiln::kernels

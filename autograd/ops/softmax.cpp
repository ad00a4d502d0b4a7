// softmax, log_softmax and the fused softmax cross-entropy.
//   cross_entropy: logits (N, C), targets (N) -> loss per row (N), then mean / sum / none.
//   The forward keeps logsumexp (N) and the backward recomputes probabilities from it.
#include "autograd/ops/softmax.h"

#include "autograd/node.h"
#include "autograd/ops/creation.h"
#include "autograd/ops/elementwise.h"
#include "autograd/ops/op_helpers.h"
#include "autograd/ops/reduce.h"

namespace kiln {
namespace {

Tensor softmax_family(const Tensor& x, int64_t dim, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  detail::check_defined(name, x, "input");
  detail::check_floating(name, x);
  int d = normalize_dim(name, dim, x.ndim());
  if (x.ndim() == 0) d = 0;
  Tensor input = x.ndim() == 0 ? x.reshape({1}) : x;
  Tensor out = empty_like(input);
  detail::backend_of(x).softmax(input.view_for_kernels(), out.view_for_kernels(), d, log);
  out = out.reshape(x.sizes());
  SavedTensor saved = should_record({x}) ? save(out) : SavedTensor();
  record_op(name, {x}, {out}, [saved, d, log, name](const auto& grads, const Node&) {
    Tensor forward = saved.unpack(name);
    Tensor shaped = forward.ndim() == 0 ? forward.reshape({1}) : forward;
    Tensor grad = grads[0].reshape(shaped.sizes());
    Tensor grad_in = empty_like(shaped);
    detail::backend_of(forward).softmax_backward(grad.view_for_kernels(), shaped.view_for_kernels(),
                                                 grad_in.view_for_kernels(), d, log);
    return std::vector<Tensor>{grad_in.reshape(forward.sizes())};
  });
  return out;
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_family(x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_family(x, dim, true); }

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, CrossEntropyOptions options) {
  detail::check_defined("cross_entropy", logits, "logits");
  detail::check_defined("cross_entropy", targets, "targets");
  detail::check_floating("cross_entropy", logits);
  detail::check_index_dtype("cross_entropy", targets);
  detail::check_same_device("cross_entropy", logits, targets);
  KILN_CHECK(logits.ndim() >= 1, "cross_entropy: logits must have a class dim, got shape ", shape_str(logits.sizes()));
  Shape row_shape(logits.sizes().begin(), logits.sizes().end() - 1);
  KILN_CHECK(targets.sizes() == row_shape, "cross_entropy: targets of shape ", shape_str(targets.sizes()),
             " do not match logits of shape ", shape_str(logits.sizes()), " (expected ", shape_str(row_shape), ")");
  KILN_CHECK(options.label_smoothing >= 0.0 && options.label_smoothing <= 1.0,
             "cross_entropy: label_smoothing must be in [0, 1], got ", options.label_smoothing);
  int64_t classes = logits.size(-1);
  Tensor logits_2d = logits.reshape({-1, classes}).contiguous();
  Tensor targets_1d = targets.reshape({-1}).contiguous();
  int64_t rows = logits_2d.size(0);
  // Per-row statistics of 16-bit logits are kept in f32: a bf16 logsumexp near 10 is off by up
  // to 0.06, which would shift every recomputed probability by percents. The loss stays f32 too.
  DType row_dtype = logits.dtype() == DType::f64 ? DType::f64 : DType::f32;
  TensorOptions row_options = TensorOptions(row_dtype).device(logits.device());
  Tensor losses = empty({rows}, row_options);
  Tensor lse = empty({rows}, row_options);
  detail::backend_of(logits).cross_entropy(logits_2d.view_for_kernels(), targets_1d.view_for_kernels(),
                                           losses.view_for_kernels(), lse.view_for_kernels(), options.ignore_index,
                                           options.label_smoothing);

  // The mean is over rows whose target is not ignored, as F.cross_entropy. The count stays a
  // tensor on the logits' device: reading it back would make every loss wait for the GPU.
  Tensor divisor;
  Tensor out;
  {
    NoGradGuard no_grad;
    if (options.reduction == Reduction::none) {
      out = losses.reshape(row_shape);
    } else {
      out = sum(losses);
      if (options.reduction == Reduction::mean) {
        divisor = sum(ne(targets_1d, static_cast<double>(options.ignore_index))).to(row_dtype);
        out = div(out, divisor);
      }
    }
  }
  if (!should_record({logits})) return out;
  SavedTensor saved_logits = save(logits_2d), saved_targets = save(targets_1d), saved_lse = save(lse);
  record_op("cross_entropy", {logits}, {out},
            [saved_logits, saved_targets, saved_lse, options, divisor, rows, shape = logits.sizes()](
                const auto& grads, const Node&) {
              Tensor x = saved_logits.unpack("cross_entropy");
              // Every row's loss has the same upstream gradient unless the reduction is none.
              Tensor upstream = grads[0].to(saved_lse.unpack("cross_entropy").dtype());
              Tensor scaled = divisor.defined() ? div(upstream, divisor) : upstream;
              Tensor grad_rows = options.reduction == Reduction::none ? upstream.reshape({rows}).contiguous()
                                                                      : scaled.expand({rows}).contiguous();
              Tensor grad_logits = empty_like(x);
              detail::backend_of(x).cross_entropy_backward(
                  x.view_for_kernels(), saved_targets.unpack("cross_entropy").view_for_kernels(),
                  saved_lse.unpack("cross_entropy").view_for_kernels(), grad_rows.view_for_kernels(),
                  grad_logits.view_for_kernels(), options.ignore_index, options.label_smoothing);
              return std::vector<Tensor>{grad_logits.reshape(shape)};
            });
  return out;
}

}  // namespace kiln

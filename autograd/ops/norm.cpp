// layer_norm and rms_norm over the last dim: one fused kernel forward (saving mean / rstd per
// row) and one backward (gradients of x, weight and bias together). The residual forms pass the
// update to the same kernels, which add it first and, backward, add the sum's other gradient.
#include "autograd/ops/norm.h"

#include "autograd/node.h"
#include "autograd/ops/creation.h"
#include "autograd/ops/op_helpers.h"

namespace kiln {
namespace {

enum class NormKind { layer, rms };

// One norm call: the operands (update, weight, bias may be undefined) and what to call it.
struct NormCall {
  const char* op;
  NormKind kind;
  Tensor x, update, weight, bias;
  double eps;
};

void check_norm_arguments(const NormCall& call) {
  const char* op = call.op;
  detail::check_defined(op, call.x, "input");
  detail::check_floating(op, call.x);
  KILN_CHECK(call.x.ndim() >= 1, op, ": input must have at least 1 dim");
  KILN_CHECK(call.eps >= 0.0, op, ": eps must be non-negative, got ", call.eps);
  if (call.update.defined()) {
    detail::check_same_dtype(op, call.x, call.update);
    detail::check_same_device(op, call.x, call.update);
    KILN_CHECK(call.update.sizes() == call.x.sizes(), op, ": the update of shape ", shape_str(call.update.sizes()),
               " must have the residual's shape ", shape_str(call.x.sizes()));
  }
  Shape features{call.x.size(-1)};
  for (const Tensor* parameter : {&call.weight, &call.bias}) {
    if (!parameter->defined()) continue;
    detail::check_same_dtype(op, call.x, *parameter);
    detail::check_same_device(op, call.x, *parameter);
    KILN_CHECK(parameter->sizes() == features, op, ": parameter of shape ", shape_str(parameter->sizes()),
               " does not match the normalised dim of size ", features[0], " (input shape ", shape_str(call.x.sizes()),
               ")");
  }
}

// Per-row mean and rstd of 16-bit inputs are kept in f32 (as the kernels compute them).
DType statistics_dtype(const Tensor& x) { return x.dtype() == DType::f64 ? DType::f64 : DType::f32; }

kernels::View optional_view(const Tensor& tensor) { return tensor.defined() ? tensor.view_for_kernels() : kernels::View(); }
const kernels::View* pointer_or_null(const Tensor& tensor, const kernels::View& view) {
  return tensor.defined() ? &view : nullptr;
}

// What the backward of one call needs to know besides its saved tensors.
struct NormSignature {
  const char* op;
  NormKind kind;
  bool residual;      // inputs are x, update, weight[, bias]; else x, weight[, bias]
  bool bias;          // a bias was given (layer norm)
  Shape shape;        // of x, and of the outputs
};

// The backward of one norm call. `input` is what was normalised (x, or the sum), grad_y the
// normed output's gradient and grad_sum the sum's (undefined when none reaches them).
std::vector<Tensor> norm_backward(const NormSignature& call, const Tensor& input, const Tensor& weight,
                                  const Tensor& mean, const Tensor& rstd, Tensor grad_y, const Tensor& grad_sum,
                                  const Node& node) {
  TensorOptions options = TensorOptions(input.dtype()).device(input.device());
  grad_y = grad_y.defined() ? grad_y.reshape(input.sizes()).contiguous() : zeros(input.sizes(), options);
  Tensor sum_grad = grad_sum.defined() ? grad_sum.reshape(input.sizes()).contiguous() : Tensor();
  const size_t weight_index = call.residual ? 2 : 1;
  Tensor grad_x = empty_like(input), grad_w, grad_b;
  if (weight.defined() && node.needs_input_grad(weight_index)) grad_w = empty_like(weight);
  if (call.bias && node.needs_input_grad(weight_index + 1)) grad_b = empty({input.size(1)}, options);
  kernels::View w_view = optional_view(weight), gw_view = optional_view(grad_w), gb_view = optional_view(grad_b);
  kernels::View sum_grad_view = optional_view(sum_grad);
  kernels::Backend& backend = detail::backend_of(input);
  if (call.kind == NormKind::layer) {
    backend.layer_norm_backward(grad_y.view_for_kernels(), pointer_or_null(sum_grad, sum_grad_view),
                                input.view_for_kernels(), pointer_or_null(weight, w_view), mean.view_for_kernels(),
                                rstd.view_for_kernels(), grad_x.view_for_kernels(), pointer_or_null(grad_w, gw_view),
                                pointer_or_null(grad_b, gb_view));
  } else {
    backend.rms_norm_backward(grad_y.view_for_kernels(), pointer_or_null(sum_grad, sum_grad_view),
                              input.view_for_kernels(), pointer_or_null(weight, w_view), rstd.view_for_kernels(),
                              grad_x.view_for_kernels(), pointer_or_null(grad_w, gw_view));
  }
  Tensor grad_input = grad_x.view(call.shape);
  std::vector<Tensor> grads{grad_input};
  if (call.residual) grads.push_back(grad_input);  // the sum's gradient reaches x and update alike
  grads.push_back(grad_w);
  if (call.kind == NormKind::layer) grads.push_back(grad_b);
  return grads;
}

// Runs one norm call forward and records its backward; returns {sum, normed} (sum undefined
// without an update).
ResidualNorm run_norm(const NormCall& call) {
  check_norm_arguments(call);
  const int64_t width = call.x.size(-1);
  Tensor x_2d = call.x.reshape({-1, width}).contiguous();
  Tensor update_2d = call.update.defined() ? call.update.reshape({-1, width}).contiguous() : Tensor();
  Tensor w = call.weight.defined() ? call.weight.contiguous() : Tensor();
  Tensor b = call.bias.defined() ? call.bias.contiguous() : Tensor();
  const int64_t rows = x_2d.size(0);
  TensorOptions row_options = TensorOptions(statistics_dtype(call.x)).device(call.x.device());
  Tensor y = empty_like(x_2d), sum = update_2d.defined() ? empty_like(x_2d) : Tensor();
  Tensor mean = call.kind == NormKind::layer ? empty({rows}, row_options) : Tensor();
  Tensor rstd = empty({rows}, row_options);
  kernels::View update_view = optional_view(update_2d), sum_view = optional_view(sum);
  kernels::View w_view = optional_view(w), b_view = optional_view(b);
  kernels::Backend& backend = detail::backend_of(call.x);
  if (call.kind == NormKind::layer) {
    backend.layer_norm(x_2d.view_for_kernels(), pointer_or_null(update_2d, update_view), pointer_or_null(w, w_view),
                       pointer_or_null(b, b_view), call.eps, pointer_or_null(sum, sum_view), y.view_for_kernels(),
                       mean.view_for_kernels(), rstd.view_for_kernels());
  } else {
    backend.rms_norm(x_2d.view_for_kernels(), pointer_or_null(update_2d, update_view), pointer_or_null(w, w_view),
                     call.eps, pointer_or_null(sum, sum_view), y.view_for_kernels(), rstd.view_for_kernels());
  }
  ResidualNorm result{sum.defined() ? sum.view(call.x.sizes()) : Tensor(), y.view(call.x.sizes())};

  std::vector<Tensor> inputs{call.x};
  if (call.update.defined()) inputs.push_back(call.update);
  inputs.push_back(call.weight);
  if (call.kind == NormKind::layer) inputs.push_back(call.bias);
  if (!should_record(inputs)) return result;
  std::vector<Tensor> outputs{result.normed};
  if (result.sum.defined()) outputs.push_back(result.sum);
  NormSignature signature{call.op, call.kind, call.update.defined(), call.bias.defined(), call.x.sizes()};
  // The backward needs what was normalised: x itself, or the sum written here.
  SavedTensor saved_input = save(sum.defined() ? sum : x_2d), saved_w = save(w), saved_mean = save(mean),
              saved_rstd = save(rstd);
  record_op(call.op, inputs, outputs,
            [signature, saved_input, saved_w, saved_mean, saved_rstd](const auto& grads, const Node& node) {
              const char* op = signature.op;
              Tensor w = saved_w.defined() ? saved_w.unpack(op) : Tensor();
              Tensor mean = saved_mean.defined() ? saved_mean.unpack(op) : Tensor();
              Tensor grad_sum = grads.size() > 1 ? grads[1] : Tensor();
              return norm_backward(signature, saved_input.unpack(op), w, mean, saved_rstd.unpack(op), grads[0],
                                   grad_sum, node);
            });
  return result;
}

}  // namespace

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  return run_norm({"layer_norm", NormKind::layer, x, Tensor(), weight, bias, eps}).normed;
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  return run_norm({"rms_norm", NormKind::rms, x, Tensor(), weight, Tensor(), eps}).normed;
}

ResidualNorm add_layer_norm(const Tensor& x, const Tensor& update, const Tensor& weight, const Tensor& bias,
                            double eps) {
  detail::check_defined("add_layer_norm", update, "update");
  return run_norm({"add_layer_norm", NormKind::layer, x, update, weight, bias, eps});
}

ResidualNorm add_rms_norm(const Tensor& x, const Tensor& update, const Tensor& weight, double eps) {
  detail::check_defined("add_rms_norm", update, "update");
  return run_norm({"add_rms_norm", NormKind::rms, x, update, weight, Tensor(), eps});
}

}  // namespace kiln

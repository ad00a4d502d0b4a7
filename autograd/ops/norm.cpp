// layer_norm and rms_norm over the last dim: one fused kernel forward (saving mean / rstd per
// row) and one backward (gradients of x, weight and bias together).
#include "autograd/ops/norm.h"

#include "autograd/node.h"
#include "autograd/ops/creation.h"
#include "autograd/ops/op_helpers.h"

namespace kiln {
namespace {

void check_norm_arguments(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  detail::check_defined(op, x, "input");
  detail::check_floating(op, x);
  KILN_CHECK(x.ndim() >= 1, op, ": input must have at least 1 dim");
  KILN_CHECK(eps >= 0.0, op, ": eps must be non-negative, got ", eps);
  Shape features{x.size(-1)};
  for (const Tensor* parameter : {&weight, &bias}) {
    if (!parameter->defined()) continue;
    detail::check_same_dtype(op, x, *parameter);
    detail::check_same_device(op, x, *parameter);
    KILN_CHECK(parameter->sizes() == features, op, ": parameter of shape ", shape_str(parameter->sizes()),
               " does not match the normalised dim of size ", features[0], " (input shape ", shape_str(x.sizes()), ")");
  }
}

// Per-row mean and rstd of 16-bit inputs are kept in f32 (as the kernels compute them).
DType statistics_dtype(const Tensor& x) { return x.dtype() == DType::f64 ? DType::f64 : DType::f32; }

kernels::View optional_view(const Tensor& tensor) { return tensor.defined() ? tensor.view_for_kernels() : kernels::View(); }

}  // namespace

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  check_norm_arguments("layer_norm", x, weight, bias, eps);
  int64_t features = x.size(-1);
  Tensor x_2d = x.reshape({-1, features}).contiguous();
  Tensor w = weight.defined() ? weight.contiguous() : Tensor();
  Tensor b = bias.defined() ? bias.contiguous() : Tensor();
  int64_t rows = x_2d.size(0);
  TensorOptions row_options = TensorOptions(statistics_dtype(x)).device(x.device());
  Tensor y = empty_like(x_2d), mean = empty({rows}, row_options), rstd = empty({rows}, row_options);
  kernels::View weight_view = optional_view(w), bias_view = optional_view(b);
  detail::backend_of(x).layer_norm(x_2d.view_for_kernels(), w.defined() ? &weight_view : nullptr,
                                   b.defined() ? &bias_view : nullptr, eps, y.view_for_kernels(),
                                   mean.view_for_kernels(), rstd.view_for_kernels());
  Tensor out = y.view(x.sizes());
  if (!should_record({x, weight, bias})) return out;
  SavedTensor saved_x = save(x_2d), saved_w = save(w), saved_mean = save(mean), saved_rstd = save(rstd);
  record_op("layer_norm", {x, weight, bias}, {out},
            [saved_x, saved_w, saved_mean, saved_rstd, shape = x.sizes()](const auto& grads, const Node& node) {
              Tensor input = saved_x.unpack("layer_norm");
              Tensor w = saved_w.defined() ? saved_w.unpack("layer_norm") : Tensor();
              Tensor grad_y = grads[0].reshape(input.sizes()).contiguous();
              Tensor grad_x = empty_like(input), grad_w, grad_b;
              kernels::View weight_view = optional_view(w), grad_w_view, grad_b_view;
              if (node.needs_input_grad(1)) {
                grad_w = empty_like(w);
                grad_w_view = grad_w.view_for_kernels();
              }
              if (node.needs_input_grad(2)) {
                grad_b = empty({input.size(1)}, TensorOptions(input.dtype()).device(input.device()));
                grad_b_view = grad_b.view_for_kernels();
              }
              detail::backend_of(input).layer_norm_backward(
                  grad_y.view_for_kernels(), input.view_for_kernels(), w.defined() ? &weight_view : nullptr,
                  saved_mean.unpack("layer_norm").view_for_kernels(), saved_rstd.unpack("layer_norm").view_for_kernels(),
                  grad_x.view_for_kernels(), grad_w.defined() ? &grad_w_view : nullptr,
                  grad_b.defined() ? &grad_b_view : nullptr);
              return std::vector<Tensor>{grad_x.view(shape), grad_w, grad_b};
            });
  return out;
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  check_norm_arguments("rms_norm", x, weight, Tensor(), eps);
  int64_t features = x.size(-1);
  Tensor x_2d = x.reshape({-1, features}).contiguous();
  Tensor w = weight.defined() ? weight.contiguous() : Tensor();
  Tensor y = empty_like(x_2d);
  Tensor rstd = empty({x_2d.size(0)}, TensorOptions(statistics_dtype(x)).device(x.device()));
  kernels::View weight_view = optional_view(w);
  detail::backend_of(x).rms_norm(x_2d.view_for_kernels(), w.defined() ? &weight_view : nullptr, eps,
                                 y.view_for_kernels(), rstd.view_for_kernels());
  Tensor out = y.view(x.sizes());
  if (!should_record({x, weight})) return out;
  SavedTensor saved_x = save(x_2d), saved_w = save(w), saved_rstd = save(rstd);
  record_op("rms_norm", {x, weight}, {out},
            [saved_x, saved_w, saved_rstd, shape = x.sizes()](const auto& grads, const Node& node) {
              Tensor input = saved_x.unpack("rms_norm");
              Tensor w = saved_w.defined() ? saved_w.unpack("rms_norm") : Tensor();
              Tensor grad_y = grads[0].reshape(input.sizes()).contiguous();
              Tensor grad_x = empty_like(input), grad_w;
              kernels::View weight_view = optional_view(w), grad_w_view;
              if (node.needs_input_grad(1)) {
                grad_w = empty_like(w);
                grad_w_view = grad_w.view_for_kernels();
              }
              detail::backend_of(input).rms_norm_backward(
                  grad_y.view_for_kernels(), input.view_for_kernels(), w.defined() ? &weight_view : nullptr,
                  saved_rstd.unpack("rms_norm").view_for_kernels(), grad_x.view_for_kernels(),
                  grad_w.defined() ? &grad_w_view : nullptr);
              return std::vector<Tensor>{grad_x.view(shape), grad_w};
            });
  return out;
}

}  // namespace kiln

// LayerNorm and RMSNorm modules around the fused ops.
#include "nn/normalization.h"

#include "autograd/ops.h"

namespace kiln::nn {

LayerNorm::LayerNorm(int64_t size, double epsilon, bool affine, bool with_bias)
    : Module("LayerNorm"), features(size), eps(epsilon) {
  KILN_CHECK(size > 0, "LayerNorm: features must be positive, got ", size);
  if (affine) {
    weight = register_parameter("weight", ones({size}), ParameterInfo{.weight_decay = false});
    if (with_bias) bias = register_parameter("bias", zeros({size}), ParameterInfo{.weight_decay = false});
  }
}

Tensor LayerNorm::forward(const Tensor& x) {
  return with_hooks(x, [&] { return layer_norm(x, weight, bias, eps); });
}

ResidualNorm LayerNorm::forward_residual(const Tensor& x, const Tensor& update) {
  Tensor sum;
  Tensor normed = with_hooks(x, [&] {
    ResidualNorm result = add_layer_norm(x, update, weight, bias, eps);
    sum = result.sum;
    return result.normed;
  });
  return {sum, normed};
}

RMSNorm::RMSNorm(int64_t size, double epsilon) : Module("RMSNorm"), features(size), eps(epsilon) {
  KILN_CHECK(size > 0, "RMSNorm: features must be positive, got ", size);
  weight = register_parameter("weight", ones({size}), ParameterInfo{.weight_decay = false});
}

Tensor RMSNorm::forward(const Tensor& x) {
  return with_hooks(x, [&] { return rms_norm(x, weight, eps); });
}

ResidualNorm RMSNorm::forward_residual(const Tensor& x, const Tensor& update) {
  Tensor sum;
  Tensor normed = with_hooks(x, [&] {
    ResidualNorm result = add_rms_norm(x, update, weight, eps);
    sum = result.sum;
    return result.normed;
  });
  return {sum, normed};
}

}  // namespace kiln::nn

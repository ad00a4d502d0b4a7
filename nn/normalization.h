// LayerNorm and RMSNorm over the last dim (fused kernels), gains initialised to 1, biases to 0.
// forward_residual normalises x + update and returns the sum too (one fused op), for pre-norm
// blocks; forward hooks see x as the input and the normed tensor as the output.
#pragma once

#include "autograd/ops/norm.h"
#include "nn/module.h"

namespace kiln::nn {

class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t features, double eps = 1e-5, bool affine = true, bool bias = true);
  Tensor forward(const Tensor& x);  // x (..., C) -> (..., C)
  ResidualNorm forward_residual(const Tensor& x, const Tensor& update);  // {x + update, its norm}

  int64_t features;
  double eps;
  Tensor weight, bias;  // (C) each; undefined when not affine / without bias
};

class RMSNorm : public Module {
 public:
  explicit RMSNorm(int64_t features, double eps = 1e-6);
  Tensor forward(const Tensor& x);  // x (..., C) -> (..., C)
  ResidualNorm forward_residual(const Tensor& x, const Tensor& update);  // {x + update, its norm}

  int64_t features;
  double eps;
  Tensor weight;  // (C)
};

}  // namespace kiln::nn

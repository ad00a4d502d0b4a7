// Fused normalisation over the last dim, forward and backward in one kernel each, alone or with
// the residual add of a pre-norm block fused in front.
#pragma once

#include "autograd/tensor.h"

namespace kiln {

// (x - mean) / sqrt(var + eps) * weight + bias over the last dim; weight and bias optional.
Tensor layer_norm(const Tensor& x, const Tensor& weight = Tensor(), const Tensor& bias = Tensor(), double eps = 1e-5);
// x / sqrt(mean(x^2) + eps) * weight over the last dim; weight optional.
Tensor rms_norm(const Tensor& x, const Tensor& weight = Tensor(), double eps = 1e-6);

// The residual stream and its normalisation, as one op computes them.
struct ResidualNorm {
  Tensor sum;     // x + update
  Tensor normed;  // the norm of sum
};

// sum = x + update and normed = layer_norm(sum, ...) in one pass over the rows, and one pass back:
// a pre-norm block's "h = x + attention(...); ffn(norm(h))" without re-reading h. x and update
// have the same shape; both results are those of add and layer_norm bit for bit, gradients too.
ResidualNorm add_layer_norm(const Tensor& x, const Tensor& update, const Tensor& weight = Tensor(),
                            const Tensor& bias = Tensor(), double eps = 1e-5);
// The same with rms_norm.
ResidualNorm add_rms_norm(const Tensor& x, const Tensor& update, const Tensor& weight = Tensor(), double eps = 1e-6);

}  // namespace kiln

// Matrix products.
#pragma once

#include "autograd/tensor.h"

namespace kiln {

// torch.matmul semantics: 1-D operands are promoted and the added dim removed, batch dims
// broadcast. a (..., M, K) @ b (..., K, N) -> (..., M, N).
Tensor matmul(const Tensor& a, const Tensor& b);
// x (..., in) @ weight (out, in)^T + bias (out) -> (..., out); bias may be undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

}  // namespace kiln

// Transformer feed-forward blocks: the GELU MLP of GPT-2 and the SwiGLU of Llama.
#pragma once

#include "autograd/ops/elementwise.h"
#include "nn/linear.h"

namespace kiln::nn {

// x -> proj(gelu(fc(x))), hidden width 4 d by default.
class MLP : public Module {
 public:
  MLP(int64_t d_model, int64_t hidden, bool bias = true, GeluApproximation approximation = GeluApproximation::tanh,
      Generator* generator = nullptr);
  Tensor forward(const Tensor& x);  // (..., d) -> (..., d)

  std::shared_ptr<Linear> fc, proj;
  GeluApproximation approximation;
};

// x -> down(silu(gate(x)) * up(x)) (Shazeer 2020).
class SwiGLU : public Module {
 public:
  SwiGLU(int64_t d_model, int64_t hidden, bool bias = false, Generator* generator = nullptr);
  Tensor forward(const Tensor& x);  // (..., d) -> (..., d)

  std::shared_ptr<Linear> gate, up, down;
};

}  // namespace kiln::nn

// Activation and dropout modules.
#include "nn/activation.h"

#include "autograd/ops.h"

namespace kiln::nn {

Tensor GELU::forward(const Tensor& x) {
  return with_hooks(x, [&] { return gelu(x, approximation); });
}

Tensor SiLU::forward(const Tensor& x) {
  return with_hooks(x, [&] { return silu(x); });
}

Tensor ReLU::forward(const Tensor& x) {
  return with_hooks(x, [&] { return relu(x); });
}

Dropout::Dropout(double probability, Generator* source) : Module("Dropout"), p(probability), generator(source) {
  KILN_CHECK(p >= 0.0 && p <= 1.0, "Dropout: probability must be in [0, 1], got ", p);
}

Tensor Dropout::forward(const Tensor& x) {
  return with_hooks(x, [&] { return dropout(x, p, is_training(), generator); });
}

}  // namespace kiln::nn

// Feed-forward blocks.
#include "nn/feed_forward.h"

#include "autograd/ops.h"

namespace kiln::nn {

MLP::MLP(int64_t d_model, int64_t hidden, bool bias, GeluApproximation gelu_form, Generator* generator)
    : Module("MLP"), approximation(gelu_form) {
  fc = register_module("fc", std::make_shared<Linear>(d_model, hidden, bias, generator));
  proj = register_module("proj", std::make_shared<Linear>(hidden, d_model, bias, generator));
}

Tensor MLP::forward(const Tensor& x) {
  return with_hooks(x, [&] { return proj->forward(gelu(fc->forward(x), approximation)); });
}

SwiGLU::SwiGLU(int64_t d_model, int64_t hidden, bool bias, Generator* generator) : Module("SwiGLU") {
  gate = register_module("gate", std::make_shared<Linear>(d_model, hidden, bias, generator));
  up = register_module("up", std::make_shared<Linear>(d_model, hidden, bias, generator));
  down = register_module("down", std::make_shared<Linear>(hidden, d_model, bias, generator));
}

Tensor SwiGLU::forward(const Tensor& x) {
  return with_hooks(x, [&] { return down->forward(mul(silu(gate->forward(x)), up->forward(x))); });
}

}  // namespace kiln::nn

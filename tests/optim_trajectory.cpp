// The optimizer tests' parameters and gradient sequence (see optim_trajectory.h).
#include "optim_trajectory.h"

#include "autograd/ops.h"

namespace kiln::testing {

const std::vector<ParameterSpec> kParameters = {
    {"layer.weight", {3, 5}, 1.0, true},
    {"layer.bias", {7}, 0.01, false},
    {"block.0.w", {2, 3, 4}, 3.0, true},
    {"scale", {1}, 1.0, false},
};
const ParameterSpec kBig = {"big", {40000}, 1.0, true};

bool has_grad_at(const std::string& name, int step) { return name != "block.0.w" || step % 2 == 0; }


NamedParameters make_parameters(DType dtype, bool big, Generator& generator) {
  std::vector<ParameterSpec> specs = kParameters;
  if (big) specs.push_back(kBig);
  NamedParameters parameters;
  for (const ParameterSpec& spec : specs) {
    Tensor tensor = empty(spec.shape, dtype);
    uniform_(tensor, -1.0, 1.0, &generator);
    tensor.set_requires_grad(true);
    parameters.push_back({spec.name, tensor, ParameterInfo{.weight_decay = spec.weight_decay}});
  }
  return parameters;
}

double grad_scale(const std::string& name) {
  for (const ParameterSpec& spec : kParameters) {
    if (spec.name == name) return spec.grad_scale;
  }
  return kBig.grad_scale;
}

std::vector<std::vector<Tensor>> make_gradients(const NamedParameters& parameters, Generator& generator) {
  std::vector<std::vector<Tensor>> grads(kSteps);
  for (int step = 0; step < kSteps; ++step) {
    for (const NamedParameter& parameter : parameters) {
      Tensor grad;
      if (has_grad_at(parameter.name, step)) {
        grad = empty(parameter.tensor.sizes(), parameter.tensor.dtype());
        double scale = grad_scale(parameter.name);
        uniform_(grad, -scale, scale, &generator);
      }
      grads[step].push_back(grad);
    }
  }
  return grads;
}

void set_gradients(const NamedParameters& parameters, const std::vector<Tensor>& grads) {
  for (size_t i = 0; i < parameters.size(); ++i) {
    parameters[i].tensor.set_grad(grads[i].defined() ? grads[i].clone() : Tensor());
  }
}

}  // namespace kiln::testing

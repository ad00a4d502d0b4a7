// The optimizer tests' trajectory: named parameters of several shapes (one 40000-element one
// for the OpenMP path) and a seeded gradient sequence in which "block.0.w" gets a gradient on
// even steps only. Shared by test_optim.cpp (torch parity, clipping) and test_optim_state.cpp
// (state dicts, groups, errors).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "autograd/generator.h"
#include "autograd/parameter.h"
#include "optim/optimizer.h"

namespace kiln::testing {

using optim::Optimizer;
using Factory = std::function<std::unique_ptr<Optimizer>(const NamedParameters&)>;

constexpr int kSteps = 20;

struct ParameterSpec {
  std::string name;
  Shape shape;
  double grad_scale;
  bool weight_decay;
};

extern const std::vector<ParameterSpec> kParameters;
extern const ParameterSpec kBig;

bool has_grad_at(const std::string& name, int step);
// kParameters (and kBig when `big`) in `dtype`, uniform in [-1, 1).
NamedParameters make_parameters(DType dtype, bool big, Generator& generator);
double grad_scale(const std::string& name);
// The gradient sequence: grads[step][parameter index], undefined where a parameter gets none.
std::vector<std::vector<Tensor>> make_gradients(const NamedParameters& parameters, Generator& generator);
void set_gradients(const NamedParameters& parameters, const std::vector<Tensor>& grads);

template <typename O, typename Options>
Factory single_group(Options options) {
  return [options](const NamedParameters& parameters) { return std::make_unique<O>(parameters, options); };
}


}  // namespace kiln::testing

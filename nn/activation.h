// Activation and dropout modules (parameter-free wrappers of the ops, usable in Sequential).
#pragma once

#include "autograd/ops/elementwise.h"
#include "nn/module.h"

namespace kiln::nn {

class GELU : public Module {
 public:
  explicit GELU(GeluApproximation approximation = GeluApproximation::none)
      : Module("GELU"), approximation(approximation) {}
  Tensor forward(const Tensor& x);
  GeluApproximation approximation;
};

class SiLU : public Module {
 public:
  SiLU() : Module("SiLU") {}
  Tensor forward(const Tensor& x);
};

class ReLU : public Module {
 public:
  ReLU() : Module("ReLU") {}
  Tensor forward(const Tensor& x);
};

// Zeroes elements with probability p in training mode (the identity in eval mode), drawing from
// `generator` (the default one when null).
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5, Generator* generator = nullptr);
  Tensor forward(const Tensor& x);
  double p;
  Generator* generator;
};

}  // namespace kiln::nn

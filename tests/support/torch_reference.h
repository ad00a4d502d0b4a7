// Parity with PyTorch: kiln runs each case, then one Python process runs the same cases through
// torch (tests/reference/torch_reference.py) and the outputs and input gradients are compared.
//
// Inputs, the weights of the loss L = sum_j sum(out_j * w_j) and the torch results travel in
// safetensors files; the case list travels as JSON. Nothing expected is written by hand.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kiln.h"

namespace kiln::testing {

struct Tolerance {
  double rtol = 1e-5;
  double atol = 1e-6;
};

// Applied to an input on both sides before the op: {"transpose": [0, 1]} or
// {"slice": [dim, start, end, step]} make non-contiguous operands.
using Transform = nlohmann::json;

using OpFunction = std::function<std::vector<Tensor>(const std::vector<Tensor>& inputs)>;

class ParitySuite {
 public:
  // `op` names an entry of the Python OPS table; `params` are passed to it as keyword arguments.
  // Floating inputs that require grad get their gradients compared too.
  void add(const std::string& name, const std::string& op, const std::vector<Tensor>& inputs, nlohmann::json params,
           const OpFunction& kiln_op, Tolerance tolerance = {}, std::vector<Transform> transforms = {});
  // Runs torch on every case; returns one line per disagreement (empty when all agree).
  std::vector<std::string> compare();
  size_t size() const { return cases_.size(); }

 private:
  struct Case {
    std::string name, op;
    std::vector<Tensor> inputs;
    std::vector<Transform> transforms;
    nlohmann::json params;
    std::vector<Tensor> outputs, weights, grads;
    Tolerance tolerance;
  };
  std::vector<Case> cases_;
};

// Applies a Transform (see above) to a tensor.
Tensor apply_transform(const Tensor& tensor, const Transform& transform);

}  // namespace kiln::testing

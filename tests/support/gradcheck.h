// Finite-difference gradient checking in f64.
//
// gradcheck(f, inputs) compares the gradients autograd computes for L = sum(f(inputs) * w),
// with w a fixed random weighting of the output, against central differences
// (L(x + eps) - L(x - eps)) / 2 eps for every element of every input that requires grad.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "kiln.h"

namespace kiln::testing {

struct GradcheckResult {
  bool ok = true;
  std::string message;  // the first mismatch, or a summary of the largest error
};

using GradFunction = std::function<Tensor(const std::vector<Tensor>& inputs)>;

// Inputs must be contiguous f64 leaves; non-contiguous operands are made inside f (by
// transposing or slicing), so the check covers the view ops and the strided kernels.
GradcheckResult gradcheck(const GradFunction& f, const std::vector<Tensor>& inputs, double eps = 1e-6,
                          double atol = 1e-7, double rtol = 1e-5);

// A random f64 leaf that requires grad, values in [low, high).
Tensor random_leaf(const Shape& shape, uint64_t seed, double low = -1.0, double high = 1.0);

}  // namespace kiln::testing

#define REQUIRE_GRADCHECK(...)                                        \
  do {                                                                \
    ::kiln::testing::GradcheckResult result_ = ::kiln::testing::gradcheck(__VA_ARGS__); \
    INFO(result_.message);                                            \
    REQUIRE(result_.ok);                                              \
  } while (0)

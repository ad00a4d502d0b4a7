// Dropout with an explicit generator: the mask is regenerated from the Philox stream in the
// backward instead of being stored.
#pragma once

#include "autograd/generator.h"
#include "autograd/tensor.h"

namespace kiln {

// Zeroes each element with probability p and scales the rest by 1 / (1 - p) when `training`;
// the identity otherwise.
Tensor dropout(const Tensor& x, double p, bool training = true, Generator* generator = nullptr);

}  // namespace kiln

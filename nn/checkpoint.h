// Activation checkpointing: run a block without keeping its activations and recompute them
// during the backward, trading one extra forward for the block's activation memory.
#pragma once

#include <functional>

#include "autograd/generator.h"
#include "autograd/tensor.h"

namespace kiln::nn {

// y = fn(x), keeping only x. The backward restores `generator`'s state (the default generator
// when null) so dropout masks repeat exactly, recomputes fn(x) with grad enabled and
// backpropagates through it: parameter gradients accumulate as without checkpointing.
// Gradients reach fn's parameters only through x, so x must require grad (as hidden states do).
Tensor checkpoint(const std::function<Tensor(const Tensor&)>& fn, const Tensor& x, Generator* generator = nullptr);

}  // namespace kiln::nn

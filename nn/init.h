// Parameter initialisers, in place and seeded through an explicit Generator (the default one
// when null), following torch.nn.init's definitions.
#pragma once

#include <string>

#include "autograd/generator.h"
#include "autograd/tensor.h"

namespace kiln::nn::init {

enum class FanMode { fan_in, fan_out };

// (fan_in, fan_out) of a weight: (in, out) for a (out, in) matrix times the receptive field.
std::pair<int64_t, int64_t> fans(const Tensor& weight);

void normal_(Tensor& tensor, double mean = 0.0, double stddev = 1.0, Generator* generator = nullptr);
void uniform_(Tensor& tensor, double low, double high, Generator* generator = nullptr);
void zeros_(Tensor& tensor);
void ones_(Tensor& tensor);
// U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)).
void xavier_uniform_(Tensor& tensor, double gain = 1.0, Generator* generator = nullptr);
// N(0, s^2) with s = gain * sqrt(2 / (fan_in + fan_out)).
void xavier_normal_(Tensor& tensor, double gain = 1.0, Generator* generator = nullptr);
// U(-b, b) with b = gain * sqrt(3 / fan), gain = sqrt(2 / (1 + a^2)) (leaky ReLU slope a).
void kaiming_uniform_(Tensor& tensor, double a = 0.0, FanMode mode = FanMode::fan_in, Generator* generator = nullptr);
// N(0, s^2) with s = gain / sqrt(fan).
void kaiming_normal_(Tensor& tensor, double a = 0.0, FanMode mode = FanMode::fan_in, Generator* generator = nullptr);
// GPT-2's init of the projections that write into the residual stream: N(0, (0.02 / sqrt(2 L))^2)
// for a model of L layers, so the residual stream's variance does not grow with depth.
void gpt2_residual_normal_(Tensor& tensor, int64_t n_layers, double base_std = 0.02, Generator* generator = nullptr);

}  // namespace kiln::nn::init

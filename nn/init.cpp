// Initialisers (torch.nn.init's formulas).
#include "nn/init.h"

#include <cmath>

#include "autograd/ops.h"

namespace kiln::nn::init {

std::pair<int64_t, int64_t> fans(const Tensor& weight) {
  KILN_CHECK(weight.ndim() >= 2, "init: fan in/out need a tensor with at least 2 dims, got shape ",
             shape_str(weight.sizes()));
  int64_t receptive = 1;
  for (int64_t d = 2; d < weight.ndim(); ++d) receptive *= weight.size(d);
  return {weight.size(1) * receptive, weight.size(0) * receptive};
}

void normal_(Tensor& tensor, double mean, double stddev, Generator* generator) {
  NoGradGuard no_grad;
  kiln::normal_(tensor, mean, stddev, generator);
}

void uniform_(Tensor& tensor, double low, double high, Generator* generator) {
  NoGradGuard no_grad;
  kiln::uniform_(tensor, low, high, generator);
}

void zeros_(Tensor& tensor) {
  NoGradGuard no_grad;
  tensor.zero_();
}

void ones_(Tensor& tensor) {
  NoGradGuard no_grad;
  tensor.fill_(1.0);
}

void xavier_uniform_(Tensor& tensor, double gain, Generator* generator) {
  auto [fan_in, fan_out] = fans(tensor);
  double bound = gain * std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
  init::uniform_(tensor, -bound, bound, generator);
}

void xavier_normal_(Tensor& tensor, double gain, Generator* generator) {
  auto [fan_in, fan_out] = fans(tensor);
  init::normal_(tensor, 0.0, gain * std::sqrt(2.0 / static_cast<double>(fan_in + fan_out)), generator);
}

namespace {
double kaiming_std(const Tensor& tensor, double a, FanMode mode) {
  auto [fan_in, fan_out] = fans(tensor);
  double fan = static_cast<double>(mode == FanMode::fan_in ? fan_in : fan_out);
  double gain = std::sqrt(2.0 / (1.0 + a * a));
  return gain / std::sqrt(fan);
}
}  // namespace

void kaiming_uniform_(Tensor& tensor, double a, FanMode mode, Generator* generator) {
  double bound = std::sqrt(3.0) * kaiming_std(tensor, a, mode);
  init::uniform_(tensor, -bound, bound, generator);
}

void kaiming_normal_(Tensor& tensor, double a, FanMode mode, Generator* generator) {
  init::normal_(tensor, 0.0, kaiming_std(tensor, a, mode), generator);
}

void gpt2_residual_normal_(Tensor& tensor, int64_t n_layers, double base_std, Generator* generator) {
  KILN_CHECK(n_layers > 0, "gpt2_residual_normal_: n_layers must be positive, got ", n_layers);
  init::normal_(tensor, 0.0, base_std / std::sqrt(2.0 * static_cast<double>(n_layers)), generator);
}

}  // namespace kiln::nn::init

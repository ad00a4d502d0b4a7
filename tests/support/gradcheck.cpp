// Central-difference gradient checks (see gradcheck.h).
#include "support/gradcheck.h"

#include <cmath>
#include <sstream>

namespace kiln::testing {

Tensor random_leaf(const Shape& shape, uint64_t seed, double low, double high) {
  Generator generator(seed);
  Tensor tensor = empty(shape, TensorOptions(DType::f64));
  uniform_(tensor, low, high, &generator);
  tensor.set_requires_grad(true);
  return tensor;
}

namespace {

double weighted_sum(const Tensor& output, const Tensor& weights) {
  return sum(mul(output.to(DType::f64), weights)).item();
}

}  // namespace

GradcheckResult gradcheck(const GradFunction& f, const std::vector<Tensor>& inputs, double eps, double atol,
                          double rtol) {
  GradcheckResult result;
  for (const Tensor& input : inputs) {
    if (!input.defined() || !input.requires_grad()) continue;
    KILN_CHECK(input.dtype() == DType::f64 && input.is_contiguous() && input.is_leaf(),
               "gradcheck: inputs must be contiguous f64 leaves");
    input.set_grad(Tensor());
  }
  Tensor output = f(inputs);
  Generator generator(1234);
  Tensor weights = empty(output.sizes(), TensorOptions(DType::f64));
  uniform_(weights, 0.5, 1.5, &generator);
  Tensor loss = sum(mul(output.to(DType::f64), weights));
  loss.backward();

  double worst = 0.0;
  std::ostringstream summary;
  for (size_t k = 0; k < inputs.size(); ++k) {
    const Tensor& input = inputs[k];
    if (!input.defined() || !input.requires_grad()) continue;
    Tensor analytic = input.grad().defined() ? input.grad() : zeros_like(input);
    std::vector<double> analytic_values = analytic.to_vector<double>();
    double* data = input.data<double>();
    NoGradGuard no_grad;
    for (int64_t i = 0; i < input.numel(); ++i) {
      double original = data[i];
      data[i] = original + eps;
      double plus = weighted_sum(f(inputs), weights);
      data[i] = original - eps;
      double minus = weighted_sum(f(inputs), weights);
      data[i] = original;
      double numeric = (plus - minus) / (2.0 * eps);
      double a = analytic_values[static_cast<size_t>(i)];
      double error = std::abs(a - numeric);
      worst = std::max(worst, error);
      if (!(error <= atol + rtol * std::abs(numeric))) {
        std::ostringstream message;
        message << "gradcheck: input " << k << " element " << i << ": analytic " << a << " vs numeric " << numeric
                << " (|diff| " << error << ", tolerance " << atol + rtol * std::abs(numeric) << ")";
        result.ok = false;
        result.message = message.str();
        return result;
      }
    }
  }
  summary << "gradcheck passed, largest |analytic - numeric| = " << worst;
  result.message = summary.str();
  return result;
}

}  // namespace kiln::testing

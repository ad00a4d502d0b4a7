// Adam and AdamW: one set of checks and one kernel, differing only in where weight decay goes.
#include "optim/adam.h"

#include <cmath>

#include "kernels/backend.h"

namespace kiln::optim {
namespace {

template <typename Options>
void validate_adam(const Options& options, const std::string& where) {
  check_at_least(where, "lr", options.lr(), 0.0);
  check_in_unit_interval(where, "beta1", options.beta1(), false);
  check_in_unit_interval(where, "beta2", options.beta2(), false);
  check_positive(where, "eps", options.eps());
  check_at_least(where, "weight_decay", options.weight_decay(), 0.0);
}

template <typename Options>
void adam_family_update(const Options& options, bool decoupled, const Tensor& parameter, const Tensor& grad,
                        const ParameterState& state, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                        const Tensor& max_exp_avg_sq) {
  kernels::AdamHyper hyper;
  hyper.lr = options.lr();
  hyper.beta1 = options.beta1();
  hyper.beta2 = options.beta2();
  hyper.eps = options.eps();
  hyper.weight_decay = options.weight_decay();
  hyper.decoupled_weight_decay = decoupled;
  hyper.amsgrad = options.amsgrad();
  if (options.bias_correction()) {
    double step = static_cast<double>(state.step);
    hyper.bias_correction1 = 1.0 - std::pow(options.beta1(), step);
    hyper.bias_correction2 = 1.0 - std::pow(options.beta2(), step);
  }
  kernels::backend_for(parameter.device())
      .adam_update(parameter.view_for_kernels(), grad.view_for_kernels(), exp_avg.view_for_kernels(),
                   exp_avg_sq.view_for_kernels(), optional_view(max_exp_avg_sq), hyper);
}

}  // namespace

Adam::Adam(std::vector<ParamGroup> groups, const AdamOptions& defaults)
    : Optimizer("Adam", defaults, std::move(groups)) {
  validate_groups();
}

void Adam::validate(const OptimizerOptions& options, const std::string& where) const {
  validate_adam(static_cast<const AdamOptions&>(options), where);
}

void Adam::update(const OptimizerOptions& base, const Tensor& parameter, const Tensor& grad,
                  ParameterState& state) {
  const auto& options = static_cast<const AdamOptions&>(base);
  Tensor& exp_avg = state_buffer(state, "exp_avg", parameter);
  Tensor& exp_avg_sq = state_buffer(state, "exp_avg_sq", parameter);
  Tensor max_exp_avg_sq;
  if (options.amsgrad()) max_exp_avg_sq = state_buffer(state, "max_exp_avg_sq", parameter);
  adam_family_update(options, false, parameter, grad, state, exp_avg, exp_avg_sq, max_exp_avg_sq);
}

AdamW::AdamW(std::vector<ParamGroup> groups, const AdamWOptions& defaults)
    : Optimizer("AdamW", defaults, std::move(groups)) {
  validate_groups();
}

void AdamW::validate(const OptimizerOptions& options, const std::string& where) const {
  validate_adam(static_cast<const AdamWOptions&>(options), where);
}

void AdamW::update(const OptimizerOptions& base, const Tensor& parameter, const Tensor& grad,
                   ParameterState& state) {
  const auto& options = static_cast<const AdamWOptions&>(base);
  Tensor& exp_avg = state_buffer(state, "exp_avg", parameter);
  Tensor& exp_avg_sq = state_buffer(state, "exp_avg_sq", parameter);
  Tensor max_exp_avg_sq;
  if (options.amsgrad()) max_exp_avg_sq = state_buffer(state, "max_exp_avg_sq", parameter);
  adam_family_update(options, true, parameter, grad, state, exp_avg, exp_avg_sq, max_exp_avg_sq);
}

}  // namespace kiln::optim

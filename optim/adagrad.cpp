// Adagrad: option checks, the per-step learning rate and the call into the fused kernel.
#include "optim/adagrad.h"

#include "kernels/backend.h"

namespace kiln::optim {

nlohmann::json AdagradOptions::to_json() const {
  nlohmann::json json = common_json();
  json["lr_decay"] = lr_decay_;
  json["initial_accumulator_value"] = initial_accumulator_value_;
  json["eps"] = eps_;
  return json;
}

void AdagradOptions::update_from_json(const nlohmann::json& json, const std::string& path) {
  JsonReader reader(json, path);
  read_common(reader);
  reader.read("lr_decay", lr_decay_);
  reader.read("initial_accumulator_value", initial_accumulator_value_);
  reader.read("eps", eps_);
  reader.finish();
}

Adagrad::Adagrad(std::vector<ParamGroup> groups, const AdagradOptions& defaults)
    : Optimizer("Adagrad", defaults, std::move(groups)) {
  validate_groups();
}

void Adagrad::validate(const OptimizerOptions& base, const std::string& where) const {
  const auto& options = static_cast<const AdagradOptions&>(base);
  check_at_least(where, "lr", options.lr(), 0.0);
  check_at_least(where, "lr_decay", options.lr_decay(), 0.0);
  check_at_least(where, "weight_decay", options.weight_decay(), 0.0);
  check_at_least(where, "initial_accumulator_value", options.initial_accumulator_value(), 0.0);
  check_positive(where, "eps", options.eps());
}

void Adagrad::update(const OptimizerOptions& base, const Tensor& parameter, const Tensor& grad,
                     ParameterState& state) {
  const auto& options = static_cast<const AdagradOptions&>(base);
  kernels::AdagradHyper hyper;
  hyper.clr = options.lr() / (1.0 + static_cast<double>(state.step - 1) * options.lr_decay());
  hyper.eps = options.eps();
  hyper.weight_decay = options.weight_decay();
  Tensor& sum = state_buffer(state, "sum", parameter, options.initial_accumulator_value());
  kernels::backend_for(parameter.device())
      .adagrad_update(parameter.view_for_kernels(), grad.view_for_kernels(), sum.view_for_kernels(), hyper);
}

}  // namespace kiln::optim

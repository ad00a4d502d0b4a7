// Adagrad, exactly as torch.optim.Adagrad (t = the parameter's step, from 1):
//
//   clr = lr / (1 + (t - 1) * lr_decay)
//   g = g + weight_decay * p
//   sum = sum + g * g                  (sum starts at initial_accumulator_value)
//   p = p - clr * g / (sqrt(sum) + eps)
#pragma once

#include "optim/optimizer.h"

namespace kiln::optim {

class AdagradOptions : public OptimizerOptionsBase<AdagradOptions> {
 public:
  explicit AdagradOptions(double lr = 1e-2) : OptimizerOptionsBase(lr, 0.0) {}
  AdagradOptions& lr_decay(double value) { lr_decay_ = value; return *this; }
  double lr_decay() const { return lr_decay_; }
  AdagradOptions& initial_accumulator_value(double value) { initial_accumulator_value_ = value; return *this; }
  double initial_accumulator_value() const { return initial_accumulator_value_; }
  AdagradOptions& eps(double value) { eps_ = value; return *this; }
  double eps() const { return eps_; }

  nlohmann::json to_json() const override;
  void update_from_json(const nlohmann::json& json, const std::string& path) override;

 private:
  double lr_decay_ = 0.0;
  double initial_accumulator_value_ = 0.0;
  double eps_ = 1e-10;
};

class Adagrad : public Optimizer {
 public:
  Adagrad(std::vector<ParamGroup> groups, const AdagradOptions& defaults = AdagradOptions());
  Adagrad(const NamedParameters& parameters, const AdagradOptions& defaults = AdagradOptions())
      : Adagrad(std::vector<ParamGroup>{ParamGroup(parameters)}, defaults) {}

 protected:
  void validate(const OptimizerOptions& options, const std::string& where) const override;
  std::vector<std::string> buffer_names() const override { return {"sum"}; }
  void update(const OptimizerOptions& options, const Tensor& parameter, const Tensor& grad,
              ParameterState& state) override;
};

}  // namespace kiln::optim

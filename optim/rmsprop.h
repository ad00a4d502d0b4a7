// RMSprop, exactly as torch.optim.RMSprop:
//
//   g = g + weight_decay * p
//   sq = alpha * sq + (1 - alpha) * g * g
//   avg = sqrt(sq) + eps
//   centered: ga = alpha * ga + (1 - alpha) * g;  avg = sqrt(sq - ga * ga) + eps
//   momentum > 0: buf = momentum * buf + g / avg;  p = p - lr * buf
//   otherwise:    p = p - lr * g / avg
//
// sq, ga and buf start at zero.
#pragma once

#include "optim/optimizer.h"

namespace kiln::optim {

class RMSpropOptions : public OptimizerOptionsBase<RMSpropOptions> {
 public:
  explicit RMSpropOptions(double lr = 1e-2) : OptimizerOptionsBase(lr, 0.0) {}
  RMSpropOptions& alpha(double value) { alpha_ = value; return *this; }
  double alpha() const { return alpha_; }
  RMSpropOptions& eps(double value) { eps_ = value; return *this; }
  double eps() const { return eps_; }
  RMSpropOptions& momentum(double value) { momentum_ = value; return *this; }
  double momentum() const { return momentum_; }
  RMSpropOptions& centered(bool value) { centered_ = value; return *this; }
  bool centered() const { return centered_; }

  nlohmann::json to_json() const override;
  void update_from_json(const nlohmann::json& json, const std::string& path) override;

 private:
  double alpha_ = 0.99;
  double eps_ = 1e-8;
  double momentum_ = 0.0;
  bool centered_ = false;
};

class RMSprop : public Optimizer {
 public:
  RMSprop(std::vector<ParamGroup> groups, const RMSpropOptions& defaults = RMSpropOptions());
  RMSprop(const NamedParameters& parameters, const RMSpropOptions& defaults = RMSpropOptions())
      : RMSprop(std::vector<ParamGroup>{ParamGroup(parameters)}, defaults) {}

 protected:
  void validate(const OptimizerOptions& options, const std::string& where) const override;
  std::vector<std::string> buffer_names() const override { return {"square_avg", "grad_avg", "momentum_buffer"}; }
  void update(const OptimizerOptions& options, const Tensor& parameter, const Tensor& grad,
              ParameterState& state) override;
};

}  // namespace kiln::optim

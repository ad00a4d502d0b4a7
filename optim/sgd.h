// SGD with momentum, dampening, Nesterov momentum and L2 weight decay, exactly as torch.optim.SGD:
//
//   d = g + weight_decay * p
//   buf = d                                      on the parameter's first step
//   buf = momentum * buf + (1 - dampening) * d   afterwards
//   d = nesterov ? d + momentum * buf : buf      (when momentum != 0)
//   p = p - lr * d
//
// The exponential-moving-average form of momentum, v = b v + (1 - b) g, is momentum = b with
// dampening = b (except on the first step, where torch, and so kiln, sets v = g undamped).
#pragma once

#include "optim/optimizer.h"

namespace kiln::optim {

class SGDOptions : public OptimizerOptionsBase<SGDOptions> {
 public:
  explicit SGDOptions(double lr) : OptimizerOptionsBase(lr, 0.0) {}
  SGDOptions& momentum(double value) { momentum_ = value; return *this; }
  double momentum() const { return momentum_; }
  SGDOptions& dampening(double value) { dampening_ = value; return *this; }
  double dampening() const { return dampening_; }
  SGDOptions& nesterov(bool value) { nesterov_ = value; return *this; }
  bool nesterov() const { return nesterov_; }

  nlohmann::json to_json() const override;
  void update_from_json(const nlohmann::json& json, const std::string& path) override;

 private:
  double momentum_ = 0.0;
  double dampening_ = 0.0;
  bool nesterov_ = false;
};

class SGD : public Optimizer {
 public:
  SGD(std::vector<ParamGroup> groups, const SGDOptions& defaults);
  SGD(const NamedParameters& parameters, const SGDOptions& defaults)
      : SGD(std::vector<ParamGroup>{ParamGroup(parameters)}, defaults) {}

 protected:
  void validate(const OptimizerOptions& options, const std::string& where) const override;
  std::vector<std::string> buffer_names() const override { return {"momentum_buffer"}; }
  void update(const OptimizerOptions& options, const Tensor& parameter, const Tensor& grad,
              ParameterState& state) override;
};

}  // namespace kiln::optim

// Adam and AdamW, exactly as torch.optim.Adam and torch.optim.AdamW (t = the parameter's step):
//
//   Adam  (L2 coupled into the gradient): g = g + weight_decay * p
//   AdamW (decoupled):                    p = p * (1 - lr * weight_decay)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   amsgrad: v_max = max(v_max, v), used in place of v below
//   p = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// bias_correction(false) drops both (1 - beta^t) factors (torch always applies them).
// m, v and v_max start at zero.
#pragma once

#include <utility>

#include "optim/optimizer.h"

namespace kiln::optim {

// The options both optimizers share; Derived is AdamOptions or AdamWOptions.
template <typename Derived>
class AdamOptionsFor : public OptimizerOptionsBase<Derived> {
 public:
  Derived& betas(double beta1, double beta2) {
    beta1_ = beta1;
    beta2_ = beta2;
    return static_cast<Derived&>(*this);
  }
  double beta1() const { return beta1_; }
  double beta2() const { return beta2_; }
  Derived& eps(double value) { eps_ = value; return static_cast<Derived&>(*this); }
  double eps() const { return eps_; }
  Derived& amsgrad(bool value) { amsgrad_ = value; return static_cast<Derived&>(*this); }
  bool amsgrad() const { return amsgrad_; }
  Derived& bias_correction(bool value) { bias_correction_ = value; return static_cast<Derived&>(*this); }
  bool bias_correction() const { return bias_correction_; }

  nlohmann::json to_json() const override {
    nlohmann::json json = this->common_json();
    json["betas"] = {beta1_, beta2_};
    json["eps"] = eps_;
    json["amsgrad"] = amsgrad_;
    json["bias_correction"] = bias_correction_;
    return json;
  }
  void update_from_json(const nlohmann::json& json, const std::string& path) override {
    JsonReader reader(json, path);
    this->read_common(reader);
    std::vector<double> betas{beta1_, beta2_};
    reader.read("betas", betas);
    KILN_CHECK(betas.size() == 2, reader.where("betas"), ": expected 2 values, got ", betas.size());
    beta1_ = betas[0];
    beta2_ = betas[1];
    reader.read("eps", eps_);
    reader.read("amsgrad", amsgrad_);
    reader.read("bias_correction", bias_correction_);
    reader.finish();
  }

 protected:
  AdamOptionsFor(double lr, double weight_decay) : OptimizerOptionsBase<Derived>(lr, weight_decay) {}

 private:
  double beta1_ = 0.9;
  double beta2_ = 0.999;
  double eps_ = 1e-8;
  bool amsgrad_ = false;
  bool bias_correction_ = true;
};

class AdamOptions : public AdamOptionsFor<AdamOptions> {
 public:
  explicit AdamOptions(double lr = 1e-3) : AdamOptionsFor(lr, 0.0) {}
};

// torch.optim.AdamW's default weight decay is 1e-2.
class AdamWOptions : public AdamOptionsFor<AdamWOptions> {
 public:
  explicit AdamWOptions(double lr = 1e-3) : AdamOptionsFor(lr, 1e-2) {}
};

class Adam : public Optimizer {
 public:
  Adam(std::vector<ParamGroup> groups, const AdamOptions& defaults = AdamOptions());
  Adam(const NamedParameters& parameters, const AdamOptions& defaults = AdamOptions())
      : Adam(std::vector<ParamGroup>{ParamGroup(parameters)}, defaults) {}

 protected:
  void validate(const OptimizerOptions& options, const std::string& where) const override;
  std::vector<std::string> buffer_names() const override { return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}; }
  void update(const OptimizerOptions& options, const Tensor& parameter, const Tensor& grad,
              ParameterState& state) override;
};

class AdamW : public Optimizer {
 public:
  AdamW(std::vector<ParamGroup> groups, const AdamWOptions& defaults = AdamWOptions());
  AdamW(const NamedParameters& parameters, const AdamWOptions& defaults = AdamWOptions())
      : AdamW(std::vector<ParamGroup>{ParamGroup(parameters)}, defaults) {}

 protected:
  void validate(const OptimizerOptions& options, const std::string& where) const override;
  std::vector<std::string> buffer_names() const override { return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}; }
  void update(const OptimizerOptions& options, const Tensor& parameter, const Tensor& grad,
              ParameterState& state) override;
};

}  // namespace kiln::optim

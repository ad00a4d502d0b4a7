// RMSprop: option checks, lazily created buffers and the call into the fused kernel.
#include "optim/rmsprop.h"

#include "kernels/backend.h"

namespace kiln::optim {

nlohmann::json RMSpropOptions::to_json() const {
  nlohmann::json json = common_json();
  json["alpha"] = alpha_;
  json["eps"] = eps_;
  json["momentum"] = momentum_;
  json["centered"] = centered_;
  return json;
}

void RMSpropOptions::update_from_json(const nlohmann::json& json, const std::string& path) {
  JsonReader reader(json, path);
  read_common(reader);
  reader.read("alpha", alpha_);
  reader.read("eps", eps_);
  reader.read("momentum", momentum_);
  reader.read("centered", centered_);
  reader.finish();
}

RMSprop::RMSprop(std::vector<ParamGroup> groups, const RMSpropOptions& defaults)
    : Optimizer("RMSprop", defaults, std::move(groups)) {
  validate_groups();
}

void RMSprop::validate(const OptimizerOptions& base, const std::string& where) const {
  const auto& options = static_cast<const RMSpropOptions&>(base);
  check_at_least(where, "lr", options.lr(), 0.0);
  check_in_unit_interval(where, "alpha", options.alpha(), true);
  check_positive(where, "eps", options.eps());
  check_at_least(where, "momentum", options.momentum(), 0.0);
  check_at_least(where, "weight_decay", options.weight_decay(), 0.0);
}

void RMSprop::update(const OptimizerOptions& base, const Tensor& parameter, const Tensor& grad,
                     ParameterState& state) {
  const auto& options = static_cast<const RMSpropOptions&>(base);
  kernels::RmspropHyper hyper;
  hyper.lr = options.lr();
  hyper.alpha = options.alpha();
  hyper.eps = options.eps();
  hyper.weight_decay = options.weight_decay();
  hyper.momentum = options.momentum();
  hyper.centered = options.centered();
  Tensor& square_avg = state_buffer(state, "square_avg", parameter);
  Tensor grad_avg, buffer;
  if (options.centered()) grad_avg = state_buffer(state, "grad_avg", parameter);
  if (options.momentum() > 0) buffer = state_buffer(state, "momentum_buffer", parameter);
  kernels::backend_for(parameter.device())
      .rmsprop_update(parameter.view_for_kernels(), grad.view_for_kernels(), square_avg.view_for_kernels(),
                      optional_view(grad_avg), optional_view(buffer), hyper);
}

}  // namespace kiln::optim

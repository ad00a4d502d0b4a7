// SGD: option checks and the call into the fused kernel.
#include "optim/sgd.h"

#include "kernels/backend.h"

namespace kiln::optim {

nlohmann::json SGDOptions::to_json() const {
  nlohmann::json json = common_json();
  json["momentum"] = momentum_;
  json["dampening"] = dampening_;
  json["nesterov"] = nesterov_;
  return json;
}

void SGDOptions::update_from_json(const nlohmann::json& json, const std::string& path) {
  JsonReader reader(json, path);
  read_common(reader);
  reader.read("momentum", momentum_);
  reader.read("dampening", dampening_);
  reader.read("nesterov", nesterov_);
  reader.finish();
}

SGD::SGD(std::vector<ParamGroup> groups, const SGDOptions& defaults) : Optimizer("SGD", defaults, std::move(groups)) {
  validate_groups();
}

void SGD::validate(const OptimizerOptions& base, const std::string& where) const {
  const auto& options = static_cast<const SGDOptions&>(base);
  check_at_least(where, "lr", options.lr(), 0.0);
  check_at_least(where, "momentum", options.momentum(), 0.0);
  check_in_unit_interval(where, "dampening", options.dampening(), true);
  check_at_least(where, "weight_decay", options.weight_decay(), 0.0);
  KILN_CHECK(!options.nesterov() || (options.momentum() > 0 && options.dampening() == 0), where,
             ": nesterov momentum needs momentum > 0 and dampening 0 (got momentum ", options.momentum(),
             ", dampening ", options.dampening(), ")");
}

void SGD::update(const OptimizerOptions& base, const Tensor& parameter, const Tensor& grad,
                 ParameterState& state) {
  const auto& options = static_cast<const SGDOptions&>(base);
  kernels::SgdHyper hyper;
  hyper.lr = options.lr();
  hyper.momentum = options.momentum();
  hyper.dampening = options.dampening();
  hyper.weight_decay = options.weight_decay();
  hyper.nesterov = options.nesterov();
  Tensor buffer;
  if (options.momentum() != 0) {
    hyper.first_step = state.buffers.count("momentum_buffer") == 0;
    buffer = state_buffer(state, "momentum_buffer", parameter);
  }
  kernels::backend_for(parameter.device())
      .sgd_update(parameter.view_for_kernels(), grad.view_for_kernels(), optional_view(buffer), hyper);
}

}  // namespace kiln::optim

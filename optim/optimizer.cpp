// The Optimizer base: groups, the checked step loop, zero_grad, and the state dict.
#include "optim/optimizer.h"

#include <charconv>
#include <cmath>
#include <set>
#include <typeinfo>
#include <utility>

#include "autograd/grad_mode.h"
#include "autograd/ops/creation.h"

namespace kiln::optim {
namespace {

constexpr int kStateDictFormat = 1;

}  // namespace

std::string format_value(double value) {
  char buffer[64];
  auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);  // shortest round-trip form
  return std::string(buffer, result.ptr);
}

void OptimizerOptions::read_common(JsonReader& reader) {
  reader.read("lr", lr_);
  reader.read("weight_decay", weight_decay_);
}

void check_at_least(const std::string& where, const char* what, double value, double low) {
  KILN_CHECK(value >= low && std::isfinite(value), where, ": invalid ", what, " ", format_value(value),
             " (expected a finite value >= ", low, ")");
}

void check_positive(const std::string& where, const char* what, double value) {
  KILN_CHECK(value > 0 && std::isfinite(value), where, ": invalid ", what, " ", format_value(value),
             " (expected a finite value > 0)");
}

void check_in_unit_interval(const std::string& where, const char* what, double value, bool include_one) {
  bool ok = value >= 0 && (include_one ? value <= 1 : value < 1);
  KILN_CHECK(ok, where, ": invalid ", what, " ", format_value(value), " (expected 0 <= ", what,
             include_one ? " <= 1)" : " < 1)");
}

std::vector<ParamGroup> weight_decay_groups(const NamedParameters& parameters) {
  std::vector<ParamGroup> groups(2);
  for (const NamedParameter& parameter : parameters) {
    groups[parameter.info.weight_decay ? 0 : 1].parameters.push_back(parameter);
  }
  groups[1].weight_decay = 0.0;
  return groups;
}

Optimizer::Optimizer(std::string name, const OptimizerOptions& defaults, std::vector<ParamGroup> groups)
    : name_(std::move(name)) {
  KILN_CHECK(!groups.empty(), name_, ": no parameter groups given");
  std::map<std::string, size_t> names;
  std::map<const TensorImpl*, std::string> tensors;
  size_t total = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    ParamGroup& group = groups[g];
    Group resolved;
    resolved.options = group.options ? group.options->clone() : defaults.clone();
    const OptimizerOptions& resolved_options = *resolved.options;
    std::string label = groups.size() <= 1 ? name_ : name_ + ": group " + std::to_string(g);
    KILN_CHECK(typeid(resolved_options) == typeid(defaults), label,
               ": options are of another optimizer's type (expected ", name_, "'s options)");
    if (group.lr) resolved.options->set_lr(*group.lr);
    if (group.weight_decay) resolved.options->set_weight_decay(*group.weight_decay);
    resolved.base_lr = resolved.options->get_lr();
    for (const NamedParameter& parameter : group.parameters) {
      KILN_CHECK(!parameter.name.empty(), label, ": a parameter has an empty name");
      KILN_CHECK(parameter.tensor.defined(), label, ": parameter '", parameter.name, "' is an undefined tensor");
      KILN_CHECK(parameter.tensor.is_leaf(), label, ": parameter '", parameter.name,
                 "' is not a leaf tensor (it was computed from other tensors); optimize leaves only");
      auto [by_name, new_name] = names.emplace(parameter.name, g);
      KILN_CHECK(new_name, label, ": parameter '", parameter.name, "' is listed twice (also in group ",
                 by_name->second, ")");
      auto [by_tensor, new_tensor] = tensors.emplace(parameter.tensor.impl_ptr().get(), parameter.name);
      KILN_CHECK(new_tensor, label, ": parameter '", parameter.name, "' is the same tensor as '", by_tensor->second,
                 "' (list a tied parameter once)");
    }
    total += group.parameters.size();
    resolved.parameters = std::move(group.parameters);
    groups_.push_back(std::move(resolved));
  }
  KILN_CHECK(total > 0, name_, ": no parameters to optimize (every group is empty)");
}

std::string Optimizer::where(size_t group) const {
  return groups_.size() <= 1 ? name_ : name_ + ": group " + std::to_string(group);
}

void Optimizer::validate_groups() const {
  for (size_t g = 0; g < groups_.size(); ++g) validate(*groups_[g].options, where(g));
}

const NamedParameters& Optimizer::group_parameters(size_t group) const {
  KILN_CHECK(group < groups_.size(), name_, ": group ", group, " does not exist (", groups_.size(), " groups)");
  return groups_[group].parameters;
}

OptimizerOptions& Optimizer::group_options(size_t group) {
  KILN_CHECK(group < groups_.size(), name_, ": group ", group, " does not exist (", groups_.size(), " groups)");
  return *groups_[group].options;
}

const OptimizerOptions& Optimizer::group_options(size_t group) const {
  KILN_CHECK(group < groups_.size(), name_, ": group ", group, " does not exist (", groups_.size(), " groups)");
  return *groups_[group].options;
}

void Optimizer::set_lr(size_t group, double lr) {
  check_at_least(where(group), "lr", lr, 0.0);
  group_options(group).set_lr(lr);
}

void Optimizer::set_lr(double lr) {
  for (size_t g = 0; g < groups_.size(); ++g) set_lr(g, lr);
}

double Optimizer::base_lr(size_t group) const {
  group_options(group);  // range check
  return groups_[group].base_lr;
}

void Optimizer::set_base_lr(size_t group, double lr) {
  check_at_least(where(group), "base lr", lr, 0.0);
  group_options(group);
  groups_[group].base_lr = lr;
}

NamedParameters Optimizer::parameters() const {
  NamedParameters all;
  for (const Group& group : groups_) all.insert(all.end(), group.parameters.begin(), group.parameters.end());
  return all;
}

const ParameterState* Optimizer::state(const std::string& parameter) const {
  auto found = state_.find(parameter);
  return found == state_.end() ? nullptr : &found->second;
}

void Optimizer::step() {
  struct Work {
    size_t group;
    const NamedParameter* parameter;
    Tensor grad;
  };
  // Check everything first so that a bad parameter never leaves a half-applied step.
  std::vector<Work> work;
  for (size_t g = 0; g < groups_.size(); ++g) {
    validate(*groups_[g].options, where(g));
    for (const NamedParameter& parameter : groups_[g].parameters) {
      const Tensor& tensor = parameter.tensor;
      Tensor grad = tensor.grad();
      if (!grad.defined()) continue;
      KILN_CHECK(tensor.dtype() == DType::f32 || tensor.dtype() == DType::f64, name_, ": parameter '", parameter.name,
                 "' has dtype ", dtype_name(tensor.dtype()), " (expected f32 or f64)");
      KILN_CHECK(tensor.is_contiguous(), name_, ": parameter '", parameter.name, "' with shape ",
                 shape_str(tensor.sizes()), " is not contiguous; optimizer updates need contiguous parameters");
      KILN_CHECK(grad.device() == tensor.device(), name_, ": the gradient of '", parameter.name, "' is on ",
                 grad.device().str(), " but the parameter is on ", tensor.device().str());
      KILN_CHECK(grad.dtype() == tensor.dtype() && grad.sizes() == tensor.sizes(), name_, ": the gradient of '",
                 parameter.name, "' is ", dtype_name(grad.dtype()), " ", shape_str(grad.sizes()),
                 " but the parameter is ", dtype_name(tensor.dtype()), " ", shape_str(tensor.sizes()));
      if (auto state = state_.find(parameter.name); state != state_.end()) {
        for (const auto& [buffer, value] : state->second.buffers) {
          KILN_CHECK(value.dtype() == tensor.dtype() && value.sizes() == tensor.sizes() &&
                         value.device() == tensor.device() && value.is_contiguous(),
                     name_, ": state '", buffer, "' of parameter '", parameter.name, "' is ",
                     dtype_name(value.dtype()), " ", shape_str(value.sizes()), " on ", value.device().str(),
                     " but the parameter is now ", dtype_name(tensor.dtype()), " ", shape_str(tensor.sizes()), " on ",
                     tensor.device().str(), " (convert the model before creating its optimizer)");
        }
      }
      work.push_back({g, &parameter, grad.contiguous()});
    }
  }
  NoGradGuard no_grad;
  for (Work& item : work) {
    ParameterState& state = state_[item.parameter->name];
    ++state.step;
    update(*groups_[item.group].options, item.parameter->tensor, item.grad, state);
    item.parameter->tensor.bump_version();
  }
}

void Optimizer::zero_grad(bool set_to_none) {
  NoGradGuard no_grad;
  for (const Group& group : groups_) {
    for (const NamedParameter& parameter : group.parameters) {
      if (set_to_none) {
        parameter.tensor.set_grad(Tensor());
      } else if (Tensor grad = parameter.tensor.grad(); grad.defined()) {
        grad.zero_();
      }
    }
  }
}

Tensor& Optimizer::state_buffer(ParameterState& state, const std::string& buffer, const Tensor& parameter,
                                double fill) {
  auto found = state.buffers.find(buffer);
  if (found != state.buffers.end()) return found->second;
  TensorOptions options = TensorOptions(parameter.dtype()).device(parameter.device());
  return state.buffers.emplace(buffer, full(parameter.sizes(), fill, options)).first->second;
}

OptimizerStateDict Optimizer::state_dict() const {
  OptimizerStateDict result;
  nlohmann::json groups = nlohmann::json::array();
  for (const Group& group : groups_) {
    nlohmann::json names = nlohmann::json::array();
    for (const NamedParameter& parameter : group.parameters) names.push_back(parameter.name);
    groups.push_back({{"options", group.options->to_json()}, {"base_lr", group.base_lr}, {"parameters", names}});
  }
  nlohmann::json states = nlohmann::json::object();
  for (const auto& [name, state] : state_) {
    states[name] = {{"step", state.step}};
    for (const auto& [buffer, tensor] : state.buffers) result.tensors[name + "/" + buffer] = tensor;
  }
  result.scalars = {{"optimizer", name_}, {"format", kStateDictFormat}, {"groups", groups}, {"state", states}};
  return result;
}

void Optimizer::load_state_dict(const OptimizerStateDict& state) {
  const std::string what = name_ + ": load_state_dict";
  JsonReader top(state.scalars, "optimizer state");
  std::string optimizer;
  int format = 0;
  top.require("optimizer", optimizer);
  top.require("format", format);
  KILN_CHECK(optimizer == name_, what, ": the state is of a ", optimizer, " optimizer");
  KILN_CHECK(format == kStateDictFormat, what, ": state format ", format, " is not supported (expected ",
             kStateDictFormat, ")");
  const nlohmann::json& groups = top.raw("groups");
  KILN_CHECK(groups.is_array() && groups.size() == groups_.size(), what, ": the state has ",
             groups.is_array() ? groups.size() : 0, " parameter groups but the optimizer has ", groups_.size());

  // Parse everything into new values first; the optimizer changes only once all of it is valid.
  std::map<std::string, const NamedParameter*> by_name;
  std::vector<std::unique_ptr<OptimizerOptions>> options;
  std::vector<double> base_lrs;
  for (size_t g = 0; g < groups_.size(); ++g) {
    std::string path = "optimizer state.groups[" + std::to_string(g) + "]";
    JsonReader reader(groups[g], path);
    std::vector<std::string> names;
    double base = 0.0;
    reader.require("parameters", names);
    reader.require("base_lr", base);
    std::unique_ptr<OptimizerOptions> group_options = groups_[g].options->clone();
    group_options->update_from_json(reader.raw("options"), path + ".options");
    reader.finish();
    validate(*group_options, where(g));
    check_at_least(where(g), "base lr", base, 0.0);
    std::vector<std::string> expected;
    for (const NamedParameter& parameter : groups_[g].parameters) {
      expected.push_back(parameter.name);
      by_name[parameter.name] = &parameter;
    }
    std::set<std::string> have(names.begin(), names.end()), want(expected.begin(), expected.end());
    for (const std::string& name : want) {
      KILN_CHECK(have.count(name), what, ": group ", g, " of the state has no parameter '", name, "'");
    }
    for (const std::string& name : have) {
      KILN_CHECK(want.count(name), what, ": group ", g, " of the state has parameter '", name,
                 "' which this optimizer's group does not have");
    }
    options.push_back(std::move(group_options));
    base_lrs.push_back(base);
  }
  const nlohmann::json& states = top.raw("state");
  top.finish();

  std::vector<std::string> allowed = buffer_names();
  std::map<std::string, ParameterState> new_state;
  KILN_CHECK(states.is_object(), what, ": 'state' must be a JSON object");
  for (const auto& [name, entry] : states.items()) {
    auto parameter = by_name.find(name);
    KILN_CHECK(parameter != by_name.end(), what, ": the state has an entry for unknown parameter '", name, "'");
    JsonReader reader(entry, "optimizer state.state." + name);
    ParameterState restored;
    reader.require("step", restored.step);
    reader.finish();
    KILN_CHECK(restored.step >= 0, what, ": parameter '", name, "' has step ", restored.step, " (expected >= 0)");
    new_state.emplace(name, std::move(restored));
  }
  NoGradGuard no_grad;
  for (const auto& [key, tensor] : state.tensors) {
    size_t slash = key.rfind('/');
    KILN_CHECK(slash != std::string::npos, what, ": tensor key '", key, "' is not '<parameter>/<buffer>'");
    std::string name = key.substr(0, slash), buffer = key.substr(slash + 1);
    auto entry = new_state.find(name);
    KILN_CHECK(entry != new_state.end(), what, ": tensor '", key, "' belongs to no parameter with state");
    bool known = false;
    for (const std::string& allowed_name : allowed) known = known || allowed_name == buffer;
    KILN_CHECK(known, what, ": tensor '", key, "' is not a ", name_, " state buffer");
    const Tensor& parameter = by_name.at(name)->tensor;
    KILN_CHECK(tensor.dtype() == parameter.dtype() && tensor.sizes() == parameter.sizes(), what, ": tensor '", key,
               "' is ", dtype_name(tensor.dtype()), " ", shape_str(tensor.sizes()), " but parameter '", name, "' is ",
               dtype_name(parameter.dtype()), " ", shape_str(parameter.sizes()));
    entry->second.buffers[buffer] = tensor.to(parameter.device()).contiguous().clone();
  }
  for (size_t g = 0; g < groups_.size(); ++g) {
    groups_[g].options = std::move(options[g]);
    groups_[g].base_lr = base_lrs[g];
  }
  state_ = std::move(new_state);
}

}  // namespace kiln::optim

// Module registration, traversal, conversion, state dicts and forward hooks.
#include "nn/module.h"

#include <set>
#include <sstream>

#include "autograd/ops.h"

namespace kiln::nn {

void Module::check_new_name(const std::string& name) const {
  KILN_CHECK(!name.empty() && name.find('.') == std::string::npos, type_name_, ": invalid name '", name,
             "' (names are non-empty and contain no '.')");
  auto taken = [&](const auto& slots) {
    for (const auto& slot : slots) {
      if constexpr (requires { slot.first; }) {
        if (slot.first == name) return true;
      } else {
        if (slot.name == name) return true;
      }
    }
    return false;
  };
  KILN_CHECK(!taken(parameters_) && !taken(buffers_) && !taken(children_), type_name_, ": name '", name,
             "' is already registered");
}

Tensor Module::register_parameter(const std::string& name, Tensor tensor, ParameterInfo info) {
  check_new_name(name);
  KILN_CHECK(tensor.defined(), type_name_, ": parameter '", name, "' is undefined");
  if (!tensor.is_leaf()) tensor = tensor.detach();
  if (!tensor.requires_grad()) tensor.set_requires_grad(true);
  parameters_.push_back({name, tensor, info});
  return tensor;
}

ParameterInfo& Module::parameter_info(const std::string& name) {
  for (ParameterSlot& slot : parameters_) {
    if (slot.name == name) return slot.info;
  }
  KILN_FAIL(type_name_, ": no parameter named '", name, "'");
}

Tensor Module::register_buffer(const std::string& name, Tensor tensor, bool persistent) {
  check_new_name(name);
  KILN_CHECK(tensor.defined(), type_name_, ": buffer '", name, "' is undefined");
  buffers_.push_back({name, tensor.detach(), persistent});
  return buffers_.back().tensor;
}

void Module::add_child(const std::string& name, ModulePtr module) {
  check_new_name(name);
  KILN_CHECK(module != nullptr, type_name_, ": submodule '", name, "' is null");
  children_.emplace_back(name, std::move(module));
}

void Module::collect_parameters(const std::string& prefix, NamedParameters& out, bool recurse) const {
  for (const ParameterSlot& slot : parameters_) out.push_back({prefix + slot.name, slot.tensor, slot.info});
  if (!recurse) return;
  for (const auto& [name, child] : children_) child->collect_parameters(prefix + name + ".", out, true);
}

NamedParameters Module::named_parameters(bool recurse) const {
  NamedParameters all;
  collect_parameters("", all, recurse);
  // A tensor shared by two modules (tied embeddings) is listed once, under its first name.
  NamedParameters unique;
  std::set<const TensorImpl*> seen;
  for (NamedParameter& p : all) {
    if (seen.insert(p.tensor.impl_ptr().get()).second) unique.push_back(std::move(p));
  }
  return unique;
}

std::vector<Tensor> Module::parameters(bool recurse) const {
  std::vector<Tensor> tensors;
  for (const NamedParameter& p : named_parameters(recurse)) tensors.push_back(p.tensor);
  return tensors;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers(bool recurse) const {
  std::vector<std::pair<std::string, Tensor>> result;
  for (const BufferSlot& slot : buffers_) result.emplace_back(slot.name, slot.tensor);
  if (recurse) {
    for (const auto& [name, child] : children_) {
      for (auto& [buffer_name, tensor] : child->named_buffers(true)) result.emplace_back(name + "." + buffer_name, tensor);
    }
  }
  return result;
}

std::vector<ModulePtr> Module::children() const {
  std::vector<ModulePtr> result;
  for (const auto& child : children_) result.push_back(child.second);
  return result;
}

std::vector<std::pair<std::string, ModulePtr>> Module::named_modules(const ModulePtr& self) const {
  std::vector<std::pair<std::string, ModulePtr>> result{{"", self}};
  for (const auto& [name, child] : children_) {
    for (auto& [sub_name, module] : child->named_modules(child)) {
      result.emplace_back(sub_name.empty() ? name : name + "." + sub_name, module);
    }
  }
  return result;
}

void Module::apply(const std::function<void(Module&)>& fn) {
  for (auto& child : children_) child.second->apply(fn);
  fn(*this);
}

void Module::train(bool on) {
  training_ = on;
  for (auto& child : children_) child.second->train(on);
}

void Module::to(DType dtype) {
  NoGradGuard no_grad;
  std::set<const TensorImpl*> done;
  apply([&](Module& module) {
    for (ParameterSlot& slot : module.parameters_) {
      if (is_floating(slot.tensor.dtype()) && done.insert(slot.tensor.impl_ptr().get()).second) {
        slot.tensor.set_data(slot.tensor.detach().to(dtype));
      }
    }
    for (BufferSlot& slot : module.buffers_) {
      if (is_floating(slot.tensor.dtype()) && done.insert(slot.tensor.impl_ptr().get()).second) {
        slot.tensor.set_data(slot.tensor.to(dtype));
      }
    }
  });
}

void Module::to(Device device) {
  NoGradGuard no_grad;
  std::set<const TensorImpl*> done;
  apply([&](Module& module) {
    for (ParameterSlot& slot : module.parameters_) {
      if (done.insert(slot.tensor.impl_ptr().get()).second) slot.tensor.set_data(slot.tensor.detach().to(device));
    }
    for (BufferSlot& slot : module.buffers_) {
      if (done.insert(slot.tensor.impl_ptr().get()).second) slot.tensor.set_data(slot.tensor.to(device));
    }
  });
}

void Module::zero_grad() {
  for (const Tensor& p : parameters()) p.set_grad(Tensor());
}

int64_t Module::count_parameters() const {
  int64_t total = 0;
  for (const Tensor& p : parameters()) total += p.numel();
  return total;
}

StateDict Module::state_dict() const {
  StateDict state;
  NamedParameters all;
  collect_parameters("", all, true);
  for (const NamedParameter& p : all) state[p.name] = p.tensor.detach();
  for (const auto& [name, tensor] : named_buffers(true)) state[name] = tensor;
  // Non-persistent buffers are rebuilt by the module, not saved.
  std::function<void(const Module&, const std::string&)> drop = [&](const Module& module, const std::string& prefix) {
    for (const BufferSlot& slot : module.buffers_) {
      if (!slot.persistent) state.erase(prefix + slot.name);
    }
    for (const auto& [name, child] : module.children_) drop(*child, prefix + name + ".");
  };
  drop(*this, "");
  return state;
}

void Module::load_state_dict(const StateDict& state, bool strict) {
  StateDict own = state_dict();
  std::vector<std::string> missing, unexpected, mismatched;
  for (const auto& [name, tensor] : own) {
    auto found = state.find(name);
    if (found == state.end()) {
      missing.push_back(name);
    } else if (found->second.sizes() != tensor.sizes()) {
      mismatched.push_back(name + " (checkpoint " + shape_str(found->second.sizes()) + ", model " +
                           shape_str(tensor.sizes()) + ")");
    }
  }
  for (const auto& [name, tensor] : state) {
    if (own.find(name) == own.end()) unexpected.push_back(name);
  }
  auto list = [](const std::vector<std::string>& names) {
    std::ostringstream text;
    for (size_t i = 0; i < names.size(); ++i) text << (i ? ", " : "") << names[i];
    return text.str();
  };
  std::ostringstream problems;
  if (!mismatched.empty()) problems << " shape mismatch: " << list(mismatched) << ";";
  if (strict && !missing.empty()) problems << " missing keys: " << list(missing) << ";";
  if (strict && !unexpected.empty()) problems << " unexpected keys: " << list(unexpected) << ";";
  KILN_CHECK(problems.str().empty(), type_name_, ".load_state_dict:", problems.str());
  NoGradGuard no_grad;
  for (auto& [name, tensor] : own) {
    auto found = state.find(name);
    if (found != state.end()) Tensor(tensor).copy_(found->second);
  }
}

void Module::clear_forward_hooks() {
  pre_hooks_.clear();
  post_hooks_.clear();
}

Tensor Module::with_hooks(const Tensor& input, const std::function<Tensor()>& body) {
  for (const ForwardPreHook& hook : pre_hooks_) hook(*this, input);
  Tensor output = body();
  for (const ForwardPostHook& hook : post_hooks_) {
    Tensor replaced = hook(*this, input, output);
    if (replaced.defined()) output = replaced;
  }
  return output;
}

}  // namespace kiln::nn

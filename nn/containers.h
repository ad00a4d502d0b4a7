// Containers: ModuleList (indexed submodules "0", "1", ...) and Sequential (a chain of
// single-tensor modules).
#pragma once

#include <functional>

#include "nn/module.h"

namespace kiln::nn {

class ModuleList : public Module {
 public:
  ModuleList() : Module("ModuleList") {}
  template <typename M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> module) {
    register_module(std::to_string(items_.size()), module);
    items_.push_back(module);
    return module;
  }
  size_t size() const { return items_.size(); }
  template <typename M = Module>
  std::shared_ptr<M> at(size_t index) const {
    KILN_CHECK(index < items_.size(), "ModuleList: index ", index, " is out of range for ", items_.size(), " modules");
    auto typed = std::dynamic_pointer_cast<M>(items_[index]);
    KILN_CHECK(typed != nullptr, "ModuleList: module ", index, " is a ", items_[index]->type_name());
    return typed;
  }

 private:
  std::vector<ModulePtr> items_;
};

class Sequential : public Module {
 public:
  Sequential() : Module("Sequential") {}
  // Appends a module with a `Tensor forward(const Tensor&)`.
  template <typename M>
  Sequential& add(std::shared_ptr<M> module) {
    register_module(std::to_string(steps_.size()), module);
    steps_.push_back([module](const Tensor& x) { return module->forward(x); });
    return *this;
  }
  Tensor forward(const Tensor& x) {
    return with_hooks(x, [&] {
      Tensor y = x;
      for (const auto& step : steps_) y = step(y);
      return y;
    });
  }
  size_t size() const { return steps_.size(); }

 private:
  std::vector<std::function<Tensor(const Tensor&)>> steps_;
};

}  // namespace kiln::nn

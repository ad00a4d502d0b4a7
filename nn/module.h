// Module: the base of every layer and model. Parameters, buffers and submodules are registered
// by name; named_parameters() yields dotted names ("blocks.3.attn.qkv.weight") that key the
// state dict, checkpoints, optimizer state and shard maps.
//
//   class Scale : public nn::Module {
//    public:
//     Scale() { gain = register_parameter("gain", ones({4})); }
//     Tensor forward(const Tensor& x) { return with_hooks(x, [&] { return x * gain; }); }
//     Tensor gain;
//   };
//
// Forward pre- and post-hooks run around every forward that goes through with_hooks (ZeRO-3
// gathers parameters in them; pipeline stages cut the model there).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/generator.h"
#include "autograd/parameter.h"
#include "autograd/tensor.h"

namespace kiln::nn {

class Module;
using ModulePtr = std::shared_ptr<Module>;
using StateDict = std::map<std::string, Tensor>;

// Runs before a module's forward, with the module and its (first) input.
using ForwardPreHook = std::function<void(Module& module, const Tensor& input)>;
// Runs after it, with the output; may return a replacement output (or an undefined tensor).
using ForwardPostHook = std::function<Tensor(Module& module, const Tensor& input, const Tensor& output)>;

class Module {
 public:
  explicit Module(std::string type_name = "Module") : type_name_(std::move(type_name)) {}
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  const std::string& type_name() const { return type_name_; }

  // ---- registration --------------------------------------------------------------------------
  // Registers `tensor` as a leaf that requires grad and returns the handle the module keeps.
  Tensor register_parameter(const std::string& name, Tensor tensor, ParameterInfo info = {});
  // The metadata of this module's own parameter `name` (for marking it tied after the fact).
  ParameterInfo& parameter_info(const std::string& name);
  // State that is not trained (RoPE tables, running statistics); saved when persistent.
  Tensor register_buffer(const std::string& name, Tensor tensor, bool persistent = true);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    add_child(name, module);
    return module;
  }

  // ---- traversal ---------------------------------------------------------------------------
  NamedParameters named_parameters(bool recurse = true) const;
  std::vector<Tensor> parameters(bool recurse = true) const;
  std::vector<std::pair<std::string, Tensor>> named_buffers(bool recurse = true) const;
  std::vector<std::pair<std::string, ModulePtr>> named_children() const { return children_; }
  std::vector<ModulePtr> children() const;
  // Every module below (and including) this one, with dotted names ("" for this one).
  std::vector<std::pair<std::string, ModulePtr>> named_modules(const ModulePtr& self) const;
  // Calls fn on every submodule (depth first) and then on this module.
  void apply(const std::function<void(Module&)>& fn);

  // ---- mode, dtype, device -----------------------------------------------------------------
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  // Converts floating parameters and buffers in place; handles held by others stay valid.
  void to(DType dtype);
  void to(Device device);
  void zero_grad();
  int64_t count_parameters() const;

  // ---- state -------------------------------------------------------------------------------
  StateDict state_dict() const;
  // Copies values into the registered tensors. With `strict`, missing and unexpected keys are
  // errors; a shape mismatch is always an error. The message lists every offending key.
  void load_state_dict(const StateDict& state, bool strict = true);

  // ---- hooks -------------------------------------------------------------------------------
  void register_forward_pre_hook(ForwardPreHook hook) { pre_hooks_.push_back(std::move(hook)); }
  void register_forward_post_hook(ForwardPostHook hook) { post_hooks_.push_back(std::move(hook)); }
  void clear_forward_hooks();

 protected:
  // Runs the hooks around `body`, the module's forward computation on `input`.
  Tensor with_hooks(const Tensor& input, const std::function<Tensor()>& body);

 private:
  struct ParameterSlot {
    std::string name;
    Tensor tensor;
    ParameterInfo info;
  };
  struct BufferSlot {
    std::string name;
    Tensor tensor;
    bool persistent;
  };
  void add_child(const std::string& name, ModulePtr module);
  void check_new_name(const std::string& name) const;
  void collect_parameters(const std::string& prefix, NamedParameters& out, bool recurse) const;

  std::string type_name_;
  bool training_ = true;
  std::vector<ParameterSlot> parameters_;
  std::vector<BufferSlot> buffers_;
  std::vector<std::pair<std::string, ModulePtr>> children_;
  std::vector<ForwardPreHook> pre_hooks_;
  std::vector<ForwardPostHook> post_hooks_;
};

}  // namespace kiln::nn

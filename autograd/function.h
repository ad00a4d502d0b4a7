// Custom autograd functions: a user-written forward and backward, as torch.autograd.Function.
//
//   struct ScaleByTwo : kiln::Function<ScaleByTwo> {
//     static std::vector<Tensor> forward(FunctionContext& ctx, const std::vector<Tensor>& inputs) {
//       return {inputs[0] * 2.0};
//     }
//     static std::vector<Tensor> backward(FunctionContext& ctx, const std::vector<Tensor>& grads) {
//       return {grads[0] * 2.0};
//     }
//   };
//   Tensor y = ScaleByTwo::apply({x})[0];
//
// forward runs with grad mode off; its outputs get one node whose backward is the user's.
// Tensor-parallel mappings and ZeRO-3 gather points are written this way.
#pragma once

#include <any>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/node.h"
#include "autograd/ops/creation.h"

namespace kiln {

class FunctionContext {
 public:
  // Tensors the backward will need; checked against in-place modification when read back.
  void save_for_backward(const std::vector<Tensor>& tensors) {
    saved_.clear();
    for (const Tensor& tensor : tensors) saved_.emplace_back(tensor);
  }
  std::vector<Tensor> saved_tensors() const {
    KILN_CHECK(!released_, name_, ": saved tensors were freed by an earlier backward (use retain_graph=true)");
    std::vector<Tensor> tensors;
    for (const SavedTensor& saved : saved_) tensors.push_back(saved.defined() ? saved.unpack(name_) : Tensor());
    return tensors;
  }
  // Whether input i needs a gradient (its backward may return an undefined tensor if not).
  bool needs_input_grad(size_t input) const { return input < needs_input_grad_.size() && needs_input_grad_[input]; }

  // Non-tensor state for the backward: ctx.set("dim", 2); ctx.get<int>("dim").
  template <typename T> void set(const std::string& key, T value) { values_[key] = std::move(value); }
  template <typename T> T get(const std::string& key) const {
    auto found = values_.find(key);
    KILN_CHECK(found != values_.end(), name_, ": no value saved under '", key, "'");
    return std::any_cast<T>(found->second);
  }

 private:
  template <typename Derived> friend struct Function;
  template <typename Derived> friend class CustomFunctionNode;
  std::string name_ = "custom function";
  std::vector<SavedTensor> saved_;
  std::vector<bool> needs_input_grad_;
  std::map<std::string, std::any> values_;
  bool released_ = false;
};

template <typename Derived>
class CustomFunctionNode final : public Node {
 public:
  CustomFunctionNode(std::string name, std::vector<Edge> edges, std::vector<InputMeta> input_meta,
                     std::vector<InputMeta> output_meta, std::shared_ptr<FunctionContext> context)
      : Node(std::move(name), std::move(edges), std::move(input_meta), static_cast<int>(output_meta.size())),
        output_meta_(std::move(output_meta)),
        context_(std::move(context)) {}

  std::vector<Tensor> apply(std::vector<Tensor>&& grad_outputs) override {
    // Outputs that received no gradient are given zeros, so user backwards need no special case.
    for (size_t i = 0; i < grad_outputs.size(); ++i) {
      if (!grad_outputs[i].defined()) {
        const InputMeta& meta = output_meta_[i];
        grad_outputs[i] = zeros(meta.shape, TensorOptions(meta.dtype).device(meta.device));
      }
    }
    std::vector<Tensor> grads = Derived::backward(*context_, grad_outputs);
    KILN_CHECK(grads.size() == next_edges().size(), name(), ": backward returned ", grads.size(),
               " gradients for ", next_edges().size(), " inputs");
    return grads;
  }

  void release_saved_tensors() override {
    context_->saved_.clear();
    context_->released_ = true;
  }

 private:
  std::vector<InputMeta> output_meta_;
  std::shared_ptr<FunctionContext> context_;
};

template <typename Derived>
struct Function {
  static std::vector<Tensor> apply(const std::vector<Tensor>& inputs, const std::string& name = "custom function") {
    return run(inputs, name, [&](FunctionContext& context) { return Derived::forward(context, inputs); });
  }
  // Passes non-tensor arguments through to forward(ctx, inputs, extra...), which can keep
  // them in the context for backward (a communicator for the tensor-parallel mappings).
  template <typename... Extra>
  static std::vector<Tensor> apply_with(const std::string& name, const std::vector<Tensor>& inputs, Extra&&... extra) {
    return run(inputs, name,
               [&](FunctionContext& context) { return Derived::forward(context, inputs, std::forward<Extra>(extra)...); });
  }

 private:
  template <typename Forward>
  static std::vector<Tensor> run(const std::vector<Tensor>& inputs, const std::string& name, Forward&& forward) {
    auto context = std::make_shared<FunctionContext>();
    context->name_ = name;
    bool record = should_record(inputs);
    for (const Tensor& input : inputs) {
      context->needs_input_grad_.push_back(record && input.defined() && input.requires_grad());
    }
    std::vector<Tensor> outputs;
    {
      NoGradGuard no_grad;
      outputs = forward(*context);
    }
    // An input returned as an output becomes a new tensor over the same memory, so that
    // attaching the node does not rewrite the input's own history.
    for (Tensor& output : outputs) {
      for (const Tensor& input : inputs) {
        if (output.defined() && output.is_same(input)) output = output.detach();
      }
    }
    if (record) {
      auto node = std::make_shared<CustomFunctionNode<Derived>>(name, collect_edges(inputs), collect_meta(inputs),
                                                                collect_meta(outputs), context);
      attach_outputs(node, outputs);
    }
    return outputs;
  }
};

}  // namespace kiln

// Graph recording: node bookkeeping, saved-tensor version checks and record_op.
#include "autograd/node.h"

#include <atomic>

namespace kiln {
namespace {
std::atomic<uint64_t> next_sequence_nr{0};
thread_local bool grad_mode_enabled = true;
}  // namespace

bool GradMode::is_enabled() { return grad_mode_enabled; }
void GradMode::set_enabled(bool enabled) { grad_mode_enabled = enabled; }

Node::Node(std::string name, std::vector<Edge> next_edges, std::vector<InputMeta> input_meta, int num_outputs)
    : name_(std::move(name)),
      next_edges_(std::move(next_edges)),
      input_meta_(std::move(input_meta)),
      num_outputs_(num_outputs),
      sequence_nr_(next_sequence_nr.fetch_add(1)) {}

SavedTensor::SavedTensor(const Tensor& tensor) {
  if (!tensor.defined()) return;
  data_ = tensor.detach();
  saved_version_ = tensor.version();
}

Tensor SavedTensor::unpack(const std::string& op) const {
  KILN_CHECK(data_.defined(), op, ": a tensor saved for backward is missing");
  KILN_CHECK(data_.version() == saved_version_, op,
             ": a tensor needed for gradient computation has been modified by an in-place operation (saved at "
             "version ",
             saved_version_, ", now at version ", data_.version(), ")");
  return data_;
}

FunctionNode::FunctionNode(std::string name, std::vector<Edge> next_edges, std::vector<InputMeta> input_meta,
                           int num_outputs, BackwardFunction backward)
    : Node(std::move(name), std::move(next_edges), std::move(input_meta), num_outputs),
      backward_(std::move(backward)) {}

std::vector<Tensor> FunctionNode::apply(std::vector<Tensor>&& grad_outputs) {
  KILN_CHECK(!released_, name(),
             ": trying to run backward through the graph a second time; its saved tensors were freed by the first "
             "backward (pass retain_graph=true to the first backward)");
  return backward_(grad_outputs, *this);
}

void FunctionNode::release_saved_tensors() {
  backward_ = nullptr;
  released_ = true;
}

bool should_record(const std::vector<Tensor>& inputs) {
  if (!GradMode::is_enabled()) return false;
  for (const Tensor& input : inputs) {
    if (input.defined() && input.requires_grad()) return true;
  }
  return false;
}

Edge gradient_edge(const Tensor& tensor) {
  if (!tensor.defined()) return {};
  if (tensor.grad_fn()) return Edge{tensor.grad_fn(), tensor.impl().output_nr};
  if (tensor.requires_grad()) return Edge{grad_accumulator(tensor), 0};
  return {};
}

std::vector<Edge> collect_edges(const std::vector<Tensor>& inputs) {
  std::vector<Edge> edges;
  edges.reserve(inputs.size());
  for (const Tensor& input : inputs) edges.push_back(gradient_edge(input));
  return edges;
}

std::vector<InputMeta> collect_meta(const std::vector<Tensor>& inputs) {
  std::vector<InputMeta> meta;
  meta.reserve(inputs.size());
  for (const Tensor& input : inputs) {
    if (input.defined()) {
      meta.push_back(InputMeta{input.sizes(), input.dtype(), input.device()});
    } else {
      meta.push_back(InputMeta{{}, DType::f32, Device::cpu()});
    }
  }
  return meta;
}

void attach_outputs(const std::shared_ptr<Node>& node, const std::vector<Tensor>& outputs) {
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!outputs[i].defined() || !is_floating(outputs[i].dtype())) continue;
    TensorImpl& impl = outputs[i].impl();
    impl.grad_fn = node;
    impl.output_nr = static_cast<int>(i);
    impl.requires_grad = true;
  }
}

void record_op(const std::string& name, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs,
               BackwardFunction backward) {
  if (!should_record(inputs)) return;
  auto node = std::make_shared<FunctionNode>(name, collect_edges(inputs), collect_meta(inputs),
                                             static_cast<int>(outputs.size()), std::move(backward));
  attach_outputs(node, outputs);
}

}  // namespace kiln

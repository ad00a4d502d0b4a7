// The backward engine: finds every node reachable from the roots, counts how many gradients
// each must wait for, and runs nodes as their counts reach zero (latest-created first among
// the ready ones), summing gradients that meet at the same input.
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "autograd/node.h"
#include "autograd/ops.h"

namespace kiln {
namespace {

struct LaterFirst {
  bool operator()(const std::shared_ptr<Node>& a, const std::shared_ptr<Node>& b) const {
    return a->sequence_nr() < b->sequence_nr();
  }
};

void check_gradient(const Node& node, size_t input, const Tensor& grad) {
  const InputMeta& meta = node.input_meta()[input];
  KILN_CHECK(grad.sizes() == meta.shape, "backward of ", node.name(), ": gradient for input ", input, " has shape ",
             shape_str(grad.sizes()), " but the input has shape ", shape_str(meta.shape));
  KILN_CHECK(grad.dtype() == meta.dtype, "backward of ", node.name(), ": gradient for input ", input, " has dtype ",
             dtype_name(grad.dtype()), " but the input has dtype ", dtype_name(meta.dtype));
  KILN_CHECK(grad.device() == meta.device, "backward of ", node.name(), ": gradient for input ", input, " is on ",
             grad.device().str(), " but the input is on ", meta.device.str());
}

}  // namespace

void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& root_grads, bool retain_graph) {
  KILN_CHECK(roots.size() == root_grads.size(), "backward: ", roots.size(), " tensors but ", root_grads.size(),
             " gradients");
  NoGradGuard no_grad;

  std::vector<Edge> root_edges;
  std::vector<Tensor> initial_grads;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& root = roots[i];
    KILN_CHECK(root.requires_grad(), "backward: tensor ", i,
               " does not require grad and has no grad_fn (did the computation run under NoGradGuard, or do no "
               "inputs require grad?)");
    Tensor grad = root_grads[i];
    if (grad.defined()) {
      KILN_CHECK(grad.sizes() == root.sizes(), "backward: gradient has shape ", shape_str(grad.sizes()),
                 " but the tensor has shape ", shape_str(root.sizes()));
      KILN_CHECK(grad.dtype() == root.dtype(), "backward: gradient has dtype ", dtype_name(grad.dtype()),
                 " but the tensor has dtype ", dtype_name(root.dtype()));
    } else {
      KILN_CHECK(root.numel() == 1, "backward: a gradient can be created implicitly only for one-element tensors; "
                 "this tensor has shape ", shape_str(root.sizes()), " (pass the gradient explicitly)");
      grad = ones(root.sizes(), TensorOptions(root.dtype()).device(root.device()));
    }
    root_edges.push_back(gradient_edge(root));
    initial_grads.push_back(grad);
  }

  // Count, for each node, the edges that will deliver a gradient to it.
  std::unordered_map<Node*, int> dependencies;
  std::unordered_set<Node*> seen;
  std::vector<Node*> stack;
  for (const Edge& edge : root_edges) {
    if (seen.insert(edge.node.get()).second) stack.push_back(edge.node.get());
  }
  while (!stack.empty()) {
    Node* node = stack.back();
    stack.pop_back();
    for (const Edge& next : node->next_edges()) {
      if (!next.valid()) continue;
      ++dependencies[next.node.get()];
      if (seen.insert(next.node.get()).second) stack.push_back(next.node.get());
    }
  }

  std::unordered_map<Node*, std::vector<Tensor>> buffers;
  auto deliver = [&](Node* node, int index, const Tensor& grad) {
    std::vector<Tensor>& buffer = buffers[node];
    if (buffer.empty()) buffer.resize(static_cast<size_t>(node->num_outputs()));
    Tensor& slot = buffer[static_cast<size_t>(index)];
    slot = slot.defined() ? add(slot, grad) : grad;
  };

  std::priority_queue<std::shared_ptr<Node>, std::vector<std::shared_ptr<Node>>, LaterFirst> ready;
  std::unordered_set<Node*> queued;
  for (size_t i = 0; i < root_edges.size(); ++i) deliver(root_edges[i].node.get(), root_edges[i].input_nr, initial_grads[i]);
  for (const Edge& edge : root_edges) {
    if (dependencies[edge.node.get()] == 0 && queued.insert(edge.node.get()).second) ready.push(edge.node);
  }

  while (!ready.empty()) {
    std::shared_ptr<Node> node = ready.top();
    ready.pop();
    std::vector<Tensor> grads = std::move(buffers[node.get()]);
    buffers.erase(node.get());
    grads.resize(static_cast<size_t>(node->num_outputs()));
    for (const auto& [output, hooks] : node->pre_hooks()) {
      Tensor& grad = grads[static_cast<size_t>(output)];
      for (const TensorHook& hook : hooks) {
        if (!grad.defined()) break;
        Tensor replaced = hook(grad);
        if (replaced.defined()) grad = replaced;
      }
    }
    bool any_grad = false;
    for (const Tensor& grad : grads) any_grad = any_grad || grad.defined();
    std::vector<Tensor> input_grads;
    if (any_grad) input_grads = node->apply(std::move(grads));
    if (!retain_graph) node->release_saved_tensors();

    const std::vector<Edge>& edges = node->next_edges();
    KILN_CHECK(input_grads.empty() || input_grads.size() == edges.size(), "backward of ", node->name(), ": returned ",
               input_grads.size(), " gradients for ", edges.size(), " inputs");
    for (size_t i = 0; i < edges.size(); ++i) {
      const Edge& edge = edges[i];
      if (!edge.valid()) continue;
      if (!input_grads.empty() && input_grads[i].defined()) {
        check_gradient(*node, i, input_grads[i]);
        deliver(edge.node.get(), edge.input_nr, input_grads[i]);
      }
      if (--dependencies[edge.node.get()] == 0) ready.push(edge.node);
    }
  }
}

}  // namespace kiln

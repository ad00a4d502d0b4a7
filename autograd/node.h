// The recorded graph: Node (one backward step), Edge (where its input gradients go), saved
// tensors with version checks, and record_op, which every differentiable op calls.
//
// A Node's apply() receives one gradient per output of the forward op (undefined when that
// output received none) and returns one gradient per input (undefined where not needed).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "autograd/tensor.h"

namespace kiln {

struct Edge {
  std::shared_ptr<Node> node;  // null: this input needs no gradient
  int input_nr = 0;            // which of node's outputs the gradient belongs to
  bool valid() const { return node != nullptr; }
};

// What a gradient for one input must look like.
struct InputMeta {
  Shape shape;
  DType dtype;
  Device device;
};

class Node {
 public:
  Node(std::string name, std::vector<Edge> next_edges, std::vector<InputMeta> input_meta, int num_outputs);
  virtual ~Node() = default;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  virtual std::vector<Tensor> apply(std::vector<Tensor>&& grad_outputs) = 0;
  // Frees saved tensors after a backward that does not retain the graph.
  virtual void release_saved_tensors() {}

  const std::string& name() const { return name_; }
  const std::vector<Edge>& next_edges() const { return next_edges_; }
  const std::vector<InputMeta>& input_meta() const { return input_meta_; }
  bool needs_input_grad(size_t input) const { return input < next_edges_.size() && next_edges_[input].valid(); }
  int num_outputs() const { return num_outputs_; }
  // Later nodes run first when several are ready, as in PyTorch (and DDP's bucket order).
  uint64_t sequence_nr() const { return sequence_nr_; }

  // Hooks on the gradient of output `output_nr`, run before apply() (non-leaf tensor hooks).
  void add_pre_hook(int output_nr, TensorHook hook) { pre_hooks_[output_nr].push_back(std::move(hook)); }
  const std::map<int, std::vector<TensorHook>>& pre_hooks() const { return pre_hooks_; }

 protected:
  void set_sequence_nr(uint64_t value) { sequence_nr_ = value; }

 private:
  std::string name_;
  std::vector<Edge> next_edges_;
  std::vector<InputMeta> input_meta_;
  int num_outputs_;
  uint64_t sequence_nr_;
  std::map<int, std::vector<TensorHook>> pre_hooks_;
};

// A tensor kept for the backward pass, with the version it had when saved. It holds the data
// only (no grad_fn), so an op can save its own output without a reference cycle.
class SavedTensor {
 public:
  SavedTensor() = default;
  explicit SavedTensor(const Tensor& tensor);
  // The saved data; throws kiln::Error naming `op` if it was modified in place since saving.
  Tensor unpack(const std::string& op) const;
  bool defined() const { return data_.defined(); }

 private:
  Tensor data_;
  uint64_t saved_version_ = 0;
};

inline SavedTensor save(const Tensor& tensor) { return SavedTensor(tensor); }

// The backward of one op: grads of its outputs in, grads of its inputs out.
using BackwardFunction = std::function<std::vector<Tensor>(const std::vector<Tensor>& grad_outputs, const Node& node)>;

class FunctionNode final : public Node {
 public:
  FunctionNode(std::string name, std::vector<Edge> next_edges, std::vector<InputMeta> input_meta, int num_outputs,
               BackwardFunction backward);
  std::vector<Tensor> apply(std::vector<Tensor>&& grad_outputs) override;
  void release_saved_tensors() override;

 private:
  BackwardFunction backward_;
  bool released_ = false;
};

// True when ops should record: grad mode is on and some input requires grad.
bool should_record(const std::vector<Tensor>& inputs);
// Where the gradient of `tensor` goes: its grad_fn, its leaf accumulator, or nowhere.
Edge gradient_edge(const Tensor& tensor);
// Connects outputs to a new FunctionNode over `inputs` when should_record(inputs). Floating
// outputs become non-leaf tensors that require grad; integer and bool outputs never do.
void record_op(const std::string& name, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs,
               BackwardFunction backward);
// Attaches an already-built node to outputs (used by custom Functions).
void attach_outputs(const std::shared_ptr<Node>& node, const std::vector<Tensor>& outputs);
std::vector<Edge> collect_edges(const std::vector<Tensor>& inputs);
// The AccumulateGrad node of a leaf that requires grad (created on first use; accumulate_grad.cpp).
std::shared_ptr<Node> grad_accumulator(const Tensor& leaf);
std::vector<InputMeta> collect_meta(const std::vector<Tensor>& inputs);

// Runs the backward pass from `roots` with the given gradients (undefined = ones for a
// one-element root). Implemented in engine.cpp.
void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& root_grads, bool retain_graph);

}  // namespace kiln

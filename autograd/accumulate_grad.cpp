// AccumulateGrad: the node at the end of every path to a leaf. It runs the leaf's tensor
// hooks, adds the gradient into .grad (+=, zeroing is explicit) and then runs the
// post-accumulate hooks that DDP and ZeRO-2 use to start communication early.
#include <cstdint>
#include <limits>

#include "autograd/node.h"
#include "autograd/ops.h"

namespace kiln {
namespace {

class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(std::shared_ptr<TensorImpl> leaf)
      : Node("AccumulateGrad", {}, {}, 1), leaf_(std::move(leaf)) {
    // Accumulation runs as soon as it is ready, before other pending nodes.
    set_sequence_nr(std::numeric_limits<uint64_t>::max());
  }

  std::vector<Tensor> apply(std::vector<Tensor>&& grad_outputs) override {
    Tensor grad = grad_outputs[0];
    if (!grad.defined()) return {};
    Tensor leaf(leaf_);
    for (const TensorHook& hook : leaf_->leaf_hooks) {
      Tensor replaced = hook(grad);
      if (replaced.defined()) grad = replaced;
    }
    {
      NoGradGuard no_grad;
      if (!leaf_->grad) {
        // A private copy: the incoming gradient may be shared with other inputs or be a view.
        leaf_->grad = grad.clone().impl_ptr();
      } else {
        Tensor(leaf_->grad).add_(grad);
      }
    }
    for (const PostAccumulateGradHook& hook : leaf_->post_accumulate_hooks) hook(leaf);
    return {};
  }

 private:
  std::shared_ptr<TensorImpl> leaf_;
};

}  // namespace

std::shared_ptr<Node> grad_accumulator(const Tensor& leaf) {
  TensorImpl& impl = leaf.impl();
  KILN_CHECK(impl.requires_grad && !impl.grad_fn, "grad_accumulator: tensor is not a leaf that requires grad");
  if (auto existing = impl.grad_accumulator.lock()) return existing;
  auto node = std::make_shared<AccumulateGrad>(leaf.impl_ptr());
  impl.grad_accumulator = node;
  return node;
}

}  // namespace kiln

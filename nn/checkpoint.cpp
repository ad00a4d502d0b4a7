// Activation checkpointing through a recorded node whose backward re-runs the forward.
#include "nn/checkpoint.h"

#include "autograd/node.h"

namespace kiln::nn {

Tensor checkpoint(const std::function<Tensor(const Tensor&)>& fn, const Tensor& x, Generator* generator) {
  if (!should_record({x})) return fn(x);
  Generator* source = generator ? generator : &default_generator();
  GeneratorState before = source->state();
  Tensor out;
  {
    NoGradGuard no_grad;
    out = fn(x);
  }
  record_op("checkpoint", {x}, {out}, [fn, source, before, saved = save(x)](const auto& grads, const Node&) {
    Tensor input = saved.unpack("checkpoint").detach();
    input.set_requires_grad(true);
    GeneratorState after = source->state();
    source->set_state(before);
    Tensor recomputed;
    {
      EnableGradGuard enable_grad;
      recomputed = fn(input);
    }
    source->set_state(after);
    run_backward({recomputed}, {grads[0]}, false);
    return std::vector<Tensor>{input.grad()};
  });
  return out;
}

}  // namespace kiln::nn

// Dropout. The keep mask is a pure function of (seed, offset, element index), so the backward
// regenerates it instead of keeping a mask tensor alive.
#include "autograd/ops/dropout.h"

#include "autograd/node.h"
#include "autograd/ops/creation.h"
#include "autograd/ops/op_helpers.h"
#include "kernels/philox.h"

namespace kiln {

Tensor dropout(const Tensor& x, double p, bool training, Generator* generator) {
  detail::check_defined("dropout", x, "input");
  detail::check_floating("dropout", x);
  KILN_CHECK(p >= 0.0 && p <= 1.0, "dropout: probability must be in [0, 1], got ", p);
  if (!training || p == 0.0) return x;
  Tensor input = x.contiguous();
  Generator& source = generator ? *generator : default_generator();
  GeneratorState stream = source.reserve(kernels::philox_counters_used(input.numel(), false));
  Tensor out = empty_like(input);
  detail::backend_of(x).dropout(input.view_for_kernels(), out.view_for_kernels(), p, stream.seed, stream.offset);
  record_op("dropout", {x}, {out}, [p, stream](const auto& grads, const Node&) {
    Tensor grad = grads[0].contiguous();
    Tensor grad_in = empty_like(grad);
    detail::backend_of(grad).dropout(grad.view_for_kernels(), grad_in.view_for_kernels(), p, stream.seed, stream.offset);
    return std::vector<Tensor>{grad_in};
  });
  return out;
}

}  // namespace kiln

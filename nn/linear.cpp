// Linear and Embedding layers.
#include "nn/linear.h"

#include <cmath>

#include "autograd/ops.h"
#include "nn/init.h"

namespace kiln::nn {

Linear::Linear(int64_t in, int64_t out, bool with_bias, Generator* generator)
    : Module("Linear"), in_features(in), out_features(out) {
  KILN_CHECK(in > 0 && out > 0, "Linear: features must be positive, got in=", in, " out=", out);
  double bound = 1.0 / std::sqrt(static_cast<double>(in));
  Tensor w = empty({out, in});
  init::uniform_(w, -bound, bound, generator);
  weight = register_parameter("weight", w);
  if (with_bias) {
    Tensor b = empty({out});
    init::uniform_(b, -bound, bound, generator);
    bias = register_parameter("bias", b, ParameterInfo{.weight_decay = false});
  }
}

Tensor Linear::forward(const Tensor& x) {
  return with_hooks(x, [&] { return linear(x, weight, bias); });
}

Embedding::Embedding(int64_t count, int64_t dim, std::optional<int64_t> padding, Generator* generator)
    : Module("Embedding"), num_embeddings(count), embedding_dim(dim), padding_idx(padding) {
  KILN_CHECK(count > 0 && dim > 0, "Embedding: sizes must be positive, got ", count, " x ", dim);
  if (padding_idx) {
    KILN_CHECK(*padding_idx >= -count && *padding_idx < count, "Embedding: padding_idx ", *padding_idx,
               " is out of range for ", count, " embeddings");
    if (*padding_idx < 0) *padding_idx += count;
  }
  Tensor w = empty({count, dim});
  init::normal_(w, 0.0, 1.0, generator);
  if (padding_idx) {
    NoGradGuard no_grad;
    w.select(0, *padding_idx).zero_();
  }
  weight = register_parameter("weight", w);
}

Tensor Embedding::forward(const Tensor& indices) {
  return with_hooks(indices, [&] { return embedding(indices, weight, padding_idx); });
}

}  // namespace kiln::nn

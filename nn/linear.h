// Linear: y = x W^T + b with W (out, in), initialised as torch.nn.Linear (U(+-1/sqrt(in))).
#pragma once

#include "nn/module.h"

namespace kiln::nn {

class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true, Generator* generator = nullptr);
  // x (..., in) -> (..., out)
  Tensor forward(const Tensor& x);

  int64_t in_features, out_features;
  Tensor weight;  // (out, in)
  Tensor bias;    // (out), undefined without bias
};

class Embedding : public Module {
 public:
  // Rows initialised N(0, 1) as torch.nn.Embedding; the padding row (if any) is zeroed and
  // receives no gradient.
  Embedding(int64_t num_embeddings, int64_t embedding_dim, std::optional<int64_t> padding_idx = std::nullopt,
            Generator* generator = nullptr);
  // indices (...) -> (..., dim)
  Tensor forward(const Tensor& indices);

  int64_t num_embeddings, embedding_dim;
  std::optional<int64_t> padding_idx;
  Tensor weight;  // (num_embeddings, dim)
};

}  // namespace kiln::nn

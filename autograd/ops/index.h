// Indexing ops: selection and accumulation by index tensors (i64 or i32), embedding, one-hot,
// top-k and sorting. Index values are checked: out-of-range indices raise kiln::Error.
#pragma once

#include <utility>

#include "autograd/tensor.h"

namespace kiln {

// x.index_select(dim, index), index 1-D.
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
// x with alpha * source added at index along dim (out of place; differentiable in x and source).
Tensor index_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& source, double alpha = 1.0);
// torch.gather: out[i][j] = x[i][index[i][j]] for dim 1.
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
// x with source added at index along dim (torch.scatter_add, out of place).
Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& source);
// weight (V, C)[indices] -> (..., C); rows equal to padding_idx receive no gradient.
Tensor embedding(const Tensor& indices, const Tensor& weight, std::optional<int64_t> padding_idx = std::nullopt);
// indices (...) -> (..., num_classes) i64 (num_classes < 0: max index + 1).
Tensor one_hot(const Tensor& indices, int64_t num_classes = -1);
// The k largest (or smallest) values along dim and their i64 indices.
std::pair<Tensor, Tensor> topk(const Tensor& x, int64_t k, int64_t dim = -1, bool largest = true, bool sorted = true);
// Stable sort along dim: values and i64 indices.
std::pair<Tensor, Tensor> sort(const Tensor& x, int64_t dim = -1, bool descending = false);
Tensor argsort(const Tensor& x, int64_t dim = -1, bool descending = false);

}  // namespace kiln

// Tensor creation: constants, ranges, random tensors and tensors from host data.
#pragma once

#include <vector>

#include "autograd/generator.h"
#include "autograd/tensor.h"

namespace kiln {

Tensor zeros(const Shape& shape, TensorOptions options = {});
Tensor ones(const Shape& shape, TensorOptions options = {});
Tensor full(const Shape& shape, double value, TensorOptions options = {});
// A 0-dim tensor holding `value`.
Tensor scalar_tensor(double value, TensorOptions options = {});
// [start, end) in steps of `step`, like torch.arange.
Tensor arange(double start, double end, double step = 1.0, TensorOptions options = {});
Tensor arange(double end, TensorOptions options = {});
// Uniform [0, 1) and standard normal, drawn from `generator` (the default one when null).
Tensor rand(const Shape& shape, TensorOptions options = {}, Generator* generator = nullptr);
Tensor randn(const Shape& shape, TensorOptions options = {}, Generator* generator = nullptr);
// Uniform [low, high) and normal(mean, std) in place (initialisers).
Tensor& uniform_(Tensor& tensor, double low, double high, Generator* generator = nullptr);
Tensor& normal_(Tensor& tensor, double mean, double stddev, Generator* generator = nullptr);

// A tensor holding `values` with `shape` (a 1-D tensor when shape is empty); the dtype comes
// from T unless options name another one.
template <typename T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape = {}, std::optional<TensorOptions> options = {});

Tensor zeros_like(const Tensor& like);
Tensor ones_like(const Tensor& like);
Tensor empty_like(const Tensor& like);
Tensor full_like(const Tensor& like, double value);

}  // namespace kiln

// Tensor creation ops. Random tensors draw Philox counters from a Generator, so the values
// depend only on the seed and the order of random ops.
#include "autograd/ops/creation.h"

#include <cmath>
#include <cstring>

#include "autograd/ops/op_helpers.h"
#include "kernels/philox.h"

namespace kiln {

Tensor full(const Shape& shape, double value, TensorOptions options) {
  bool requires_grad = options.requires_grad();
  Tensor tensor = empty(shape, options.requires_grad(false));
  detail::backend_of(tensor).fill(tensor.view_for_kernels(), value);
  if (requires_grad) tensor.set_requires_grad(true);
  return tensor;
}

Tensor zeros(const Shape& shape, TensorOptions options) { return full(shape, 0.0, options); }
Tensor ones(const Shape& shape, TensorOptions options) { return full(shape, 1.0, options); }
Tensor scalar_tensor(double value, TensorOptions options) { return full({}, value, options); }

Tensor arange(double start, double end, double step, TensorOptions options) {
  KILN_CHECK(step != 0.0, "arange: step must be non-zero");
  KILN_CHECK((end - start) / step >= 0.0 || start == end, "arange: range [", start, ", ", end,
             ") is empty in the direction of step ", step);
  auto count = static_cast<int64_t>(std::ceil((end - start) / step));
  Tensor tensor = empty({std::max<int64_t>(count, 0)}, options.requires_grad(false));
  detail::backend_of(tensor).arange(tensor.view_for_kernels(), start, step);
  return tensor;
}

Tensor arange(double end, TensorOptions options) { return arange(0.0, end, 1.0, options); }

namespace {
bool is_wide(DType dtype) { return dtype == DType::f64; }
}  // namespace

Tensor& uniform_(Tensor& tensor, double low, double high, Generator* generator) {
  detail::check_floating("uniform_", tensor);
  detail::check_inplace("uniform_", tensor);
  KILN_CHECK(low <= high, "uniform_: low ", low, " is greater than high ", high);
  Generator& source = generator ? *generator : default_generator();
  GeneratorState stream = source.reserve(kernels::philox_counters_used(tensor.numel(), is_wide(tensor.dtype())));
  detail::backend_of(tensor).uniform(tensor.view_for_kernels(), low, high, stream.seed, stream.offset);
  tensor.bump_version();
  return tensor;
}

Tensor& normal_(Tensor& tensor, double mean, double stddev, Generator* generator) {
  detail::check_floating("normal_", tensor);
  detail::check_inplace("normal_", tensor);
  KILN_CHECK(stddev >= 0.0, "normal_: standard deviation must be non-negative, got ", stddev);
  Generator& source = generator ? *generator : default_generator();
  GeneratorState stream = source.reserve(kernels::philox_counters_used(tensor.numel(), false));
  detail::backend_of(tensor).normal(tensor.view_for_kernels(), mean, stddev, stream.seed, stream.offset);
  tensor.bump_version();
  return tensor;
}

Tensor rand(const Shape& shape, TensorOptions options, Generator* generator) {
  bool requires_grad = options.requires_grad();
  Tensor tensor = empty(shape, options.requires_grad(false));
  uniform_(tensor, 0.0, 1.0, generator);
  if (requires_grad) tensor.set_requires_grad(true);
  return tensor;
}

Tensor randn(const Shape& shape, TensorOptions options, Generator* generator) {
  bool requires_grad = options.requires_grad();
  Tensor tensor = empty(shape, options.requires_grad(false));
  normal_(tensor, 0.0, 1.0, generator);
  if (requires_grad) tensor.set_requires_grad(true);
  return tensor;
}

template <typename T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, std::optional<TensorOptions> options) {
  Shape resolved = shape.empty() ? Shape{static_cast<int64_t>(values.size())} : shape;
  KILN_CHECK(shape_numel(resolved) == static_cast<int64_t>(values.size()), "from_vector: ", values.size(),
             " values do not fill shape ", shape_str(resolved), " (", shape_numel(resolved), " elements)");
  TensorOptions wanted = options.value_or(TensorOptions(dtype_of<T>()));
  Tensor host = empty(resolved, TensorOptions(dtype_of<T>()));
  if (!values.empty()) std::memcpy(host.raw_data(), values.data(), values.size() * sizeof(T));
  Tensor result = host;
  if (wanted.dtype() != dtype_of<T>()) result = result.to(wanted.dtype());
  if (!wanted.device().is_cpu()) result = result.to(wanted.device());
  if (wanted.requires_grad()) result.set_requires_grad(true);
  return result;
}

template Tensor from_vector<float>(const std::vector<float>&, const Shape&, std::optional<TensorOptions>);
template Tensor from_vector<double>(const std::vector<double>&, const Shape&, std::optional<TensorOptions>);
template Tensor from_vector<int32_t>(const std::vector<int32_t>&, const Shape&, std::optional<TensorOptions>);
template Tensor from_vector<int64_t>(const std::vector<int64_t>&, const Shape&, std::optional<TensorOptions>);
template Tensor from_vector<bf16>(const std::vector<bf16>&, const Shape&, std::optional<TensorOptions>);
template Tensor from_vector<f16>(const std::vector<f16>&, const Shape&, std::optional<TensorOptions>);


Tensor zeros_like(const Tensor& like) { return zeros(like.sizes(), TensorOptions(like.dtype()).device(like.device())); }
Tensor ones_like(const Tensor& like) { return ones(like.sizes(), TensorOptions(like.dtype()).device(like.device())); }
Tensor empty_like(const Tensor& like) { return empty(like.sizes(), TensorOptions(like.dtype()).device(like.device())); }
Tensor full_like(const Tensor& like, double value) {
  return full(like.sizes(), value, TensorOptions(like.dtype()).device(like.device()));
}

}  // namespace kiln

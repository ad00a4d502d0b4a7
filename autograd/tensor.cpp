// Tensor metadata, element access and the autograd entry points on a tensor.
#include "autograd/tensor.h"

#include "autograd/node.h"
#include "autograd/ops.h"
#include "kernels/backend.h"

namespace kiln {

Tensor make_tensor(std::shared_ptr<Storage> storage, Shape sizes, Shape strides, int64_t offset, DType dtype) {
  KILN_CHECK(sizes.size() <= static_cast<size_t>(kernels::kMaxDims), "tensor: ", sizes.size(),
             " dims exceed the maximum of ", kernels::kMaxDims);
  for (int64_t size : sizes) KILN_CHECK(size >= 0, "tensor: negative size in shape ", shape_str(sizes));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->sizes = std::move(sizes);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor empty(const Shape& shape, TensorOptions options) {
  for (int64_t size : shape) KILN_CHECK(size >= 0, "empty: negative size in shape ", shape_str(shape));
  size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(options.dtype());
  auto storage = std::make_shared<Storage>(bytes, options.device());
  Tensor tensor = make_tensor(std::move(storage), shape, contiguous_strides(shape), 0, options.dtype());
  if (options.requires_grad()) tensor.set_requires_grad(true);
  return tensor;
}

int64_t Tensor::size(int64_t dim) const { return sizes()[static_cast<size_t>(normalize_dim("size", dim, ndim()))]; }

int64_t Tensor::stride(int64_t dim) const {
  return strides()[static_cast<size_t>(normalize_dim("stride", dim, ndim()))];
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (size_t d = sizes().size(); d-- > 0;) {
    if (sizes()[d] != 1 && strides()[d] != expected) return false;
    expected *= sizes()[d];
  }
  return true;
}

void* Tensor::raw_data() const {
  KILN_CHECK(storage()->has_data(), "tensor of shape ", shape_str(sizes()), ": its memory has been released (a ZeRO-3 ",
             "parameter outside its module's forward and backward); gather it first (ZeroOptimizer::gather_full_parameters)");
  return static_cast<char*>(storage()->data()) + offset() * static_cast<int64_t>(dtype_size(dtype()));
}

kernels::View Tensor::view_for_kernels() const {
  kernels::View view;
  view.data = raw_data();
  view.dtype = dtype();
  view.device = device();
  view.ndim = static_cast<int>(ndim());
  for (int d = 0; d < view.ndim; ++d) {
    view.sizes[d] = sizes()[static_cast<size_t>(d)];
    view.strides[d] = strides()[static_cast<size_t>(d)];
  }
  return view;
}

double Tensor::item() const {
  KILN_CHECK(numel() == 1, "item: tensor has ", numel(), " elements (shape ", shape_str(sizes()),
             "), expected exactly one");
  Tensor host = device().is_cpu() ? *this : to(Device::cpu());
  double value = 0;
  dispatch_all(dtype(), "item", [&]<typename T>() {
    value = static_cast<double>(static_cast<compute_t<T>>(*static_cast<const T*>(host.raw_data())));
  });
  return value;
}

Tensor& Tensor::set_requires_grad(bool value) {
  KILN_CHECK(is_leaf(), "requires_grad_: only leaf tensors can change requires_grad (this tensor was produced by ",
             grad_fn()->name(), "; use detach() for a new leaf)");
  KILN_CHECK(!value || is_floating(dtype()), "requires_grad_: only floating tensors can require grad, got ",
             dtype_name(dtype()));
  impl().requires_grad = value;
  return *this;
}

void Tensor::set_grad(const Tensor& grad) const {
  if (grad.defined()) {
    KILN_CHECK(grad.sizes() == sizes(), "set_grad: gradient has shape ", shape_str(grad.sizes()),
               " but the tensor has shape ", shape_str(sizes()));
    KILN_CHECK(grad.dtype() == dtype(), "set_grad: gradient has dtype ", dtype_name(grad.dtype()),
               " but the tensor has dtype ", dtype_name(dtype()));
  }
  impl().grad = grad.defined() ? grad.impl_ptr() : nullptr;
}

void Tensor::backward(const Tensor& gradient, bool retain_graph) const {
  run_backward({*this}, {gradient}, retain_graph);
}

void Tensor::register_hook(TensorHook hook) const {
  KILN_CHECK(requires_grad(), "register_hook: tensor does not require grad");
  if (grad_fn()) {
    grad_fn()->add_pre_hook(impl().output_nr, std::move(hook));
  } else {
    impl().leaf_hooks.push_back(std::move(hook));
  }
}

void Tensor::register_post_accumulate_grad_hook(PostAccumulateGradHook hook) const {
  KILN_CHECK(is_leaf() && requires_grad(),
             "register_post_accumulate_grad_hook: only leaf tensors that require grad accumulate gradients");
  impl().post_accumulate_hooks.push_back(std::move(hook));
}

void Tensor::retain_grad() const {
  KILN_CHECK(requires_grad(), "retain_grad: tensor does not require grad");
  if (is_leaf() || impl().retains_grad) return;
  impl().retains_grad = true;
  std::weak_ptr<TensorImpl> weak = impl_ptr();
  register_hook([weak](const Tensor& grad) {
    if (auto self = weak.lock()) {
      if (self->grad) {
        Tensor(self->grad).add_(grad);
      } else {
        self->grad = grad.clone().impl_ptr();
      }
    }
    return Tensor();
  });
}

void Tensor::set_data(const Tensor& source) const {
  KILN_CHECK(is_leaf(), "set_data: only leaf tensors can have their data replaced");
  KILN_CHECK(!requires_grad() || is_floating(source.dtype()), "set_data: a tensor that requires grad needs floating ",
             "data, got ", dtype_name(source.dtype()));
  TensorImpl& self = impl();
  const TensorImpl& other = source.impl();
  self.storage = other.storage;
  self.sizes = other.sizes;
  self.strides = other.strides;
  self.offset = other.offset;
  self.dtype = other.dtype;
  self.grad = nullptr;
}

Tensor Tensor::detach() const {
  return make_tensor(storage(), sizes(), strides(), offset(), dtype());
}

}  // namespace kiln

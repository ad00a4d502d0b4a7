// Shared argument checks and view construction for the op library.
#include "autograd/ops/op_helpers.h"

#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "autograd/ops/creation.h"

namespace kiln::detail {

kernels::View broadcast_view(const Tensor& tensor, const Shape& shape) {
  kernels::View view = tensor.view_for_kernels();
  int ndim = static_cast<int>(shape.size());
  int shift = ndim - static_cast<int>(tensor.ndim());
  view.ndim = ndim;
  for (int d = ndim - 1; d >= 0; --d) {
    int source = d - shift;
    int64_t size = source >= 0 ? tensor.sizes()[static_cast<size_t>(source)] : 1;
    int64_t stride = source >= 0 ? tensor.strides()[static_cast<size_t>(source)] : 0;
    view.sizes[d] = shape[static_cast<size_t>(d)];
    view.strides[d] = size == shape[static_cast<size_t>(d)] ? stride : 0;
  }
  return view;
}

void check_defined(const char* op, const Tensor& tensor, const char* role) {
  KILN_CHECK(tensor.defined(), op, ": ", role, " is an undefined tensor");
}

void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  KILN_CHECK(a.device() == b.device(), op, ": tensors are on different devices (", a.device().str(), " and ",
             b.device().str(), ")");
}

void check_same_dtype(const char* op, const Tensor& a, const Tensor& b) {
  KILN_CHECK(a.dtype() == b.dtype(), op, ": dtypes ", dtype_name(a.dtype()), " and ", dtype_name(b.dtype()),
             " do not match (cast one with .to(dtype))");
}

void check_floating(const char* op, const Tensor& tensor) {
  KILN_CHECK(is_floating(tensor.dtype()), op, ": expected a floating tensor, got dtype ", dtype_name(tensor.dtype()));
}

void check_index_dtype(const char* op, const Tensor& index) {
  KILN_CHECK(index.dtype() == DType::i64 || index.dtype() == DType::i32, op, ": index tensor has dtype ",
             dtype_name(index.dtype()), ", expected i64 or i32");
}

void check_inplace(const char* op, const Tensor& self, const std::vector<Tensor>& others) {
  check_defined(op, self, "the tensor modified in place");
  for (size_t d = 0; d < self.sizes().size(); ++d) {
    KILN_CHECK(self.strides()[d] != 0 || self.sizes()[d] <= 1, op,
               ": cannot write in place to an expanded tensor (dim ", d, " has stride 0); call contiguous() first");
  }
  if (!GradMode::is_enabled()) return;
  if (self.requires_grad()) {
    KILN_CHECK(!self.is_leaf(), op,
               ": a leaf tensor that requires grad cannot be modified in place while grad mode is on (update "
               "parameters under NoGradGuard)");
    KILN_FAIL(op, ": in-place modification of a tensor that is part of the autograd graph (produced by ",
              self.grad_fn()->name(), ") is not supported; use the out-of-place op");
  }
  for (const Tensor& other : others) {
    KILN_CHECK(!other.defined() || !other.requires_grad(), op,
               ": an argument requires grad, so the in-place result would need a gradient; use the out-of-place op");
  }
}

Tensor scalar_like(double value, const Tensor& like) {
  return scalar_tensor(value, TensorOptions(like.dtype()).device(like.device()));
}

}  // namespace kiln::detail

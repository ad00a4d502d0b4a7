// Tensor methods that copy (contiguous, clone, to) and the in-place methods used by
// optimizers and initialisers. In-place writes bump the storage version.
#include "autograd/node.h"
#include "autograd/ops.h"
#include "autograd/ops/op_helpers.h"

namespace kiln {
namespace {

// Which backend moves data between two devices: the non-CPU one.
kernels::Backend& transfer_backend(Device a, Device b) {
  return kernels::backend_for(a.is_cpu() ? b : a);
}

}  // namespace

Tensor Tensor::clone() const {
  Tensor out = empty(sizes(), TensorOptions(dtype()).device(device()));
  detail::backend_of(*this).copy(view_for_kernels(), out.view_for_kernels());
  record_op("clone", {*this}, {out}, [](const auto& grads, const Node&) { return std::vector<Tensor>{grads[0]}; });
  return out;
}

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::to(DType target) const {
  if (target == dtype()) return *this;
  Tensor out = empty(sizes(), TensorOptions(target).device(device()));
  detail::backend_of(*this).copy(view_for_kernels(), out.view_for_kernels());
  if (is_floating(dtype()) && is_floating(target)) {
    record_op("to", {*this}, {out}, [source = dtype()](const auto& grads, const Node&) {
      return std::vector<Tensor>{grads[0].to(source)};
    });
  }
  return out;
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  Tensor source = contiguous();
  Tensor out = empty(sizes(), TensorOptions(dtype()).device(target));
  transfer_backend(source.device(), target).copy(source.view_for_kernels(), out.view_for_kernels());
  record_op("to", {*this}, {out}, [origin = device()](const auto& grads, const Node&) {
    return std::vector<Tensor>{grads[0].to(origin)};
  });
  return out;
}

Tensor Tensor::sum(const std::vector<int64_t>& dims, bool keepdim) const { return kiln::sum(*this, dims, keepdim); }
Tensor Tensor::mean(const std::vector<int64_t>& dims, bool keepdim) const { return kiln::mean(*this, dims, keepdim); }
Tensor Tensor::exp() const { return kiln::exp(*this); }
Tensor Tensor::log() const { return kiln::log(*this); }
Tensor Tensor::sqrt() const { return kiln::sqrt(*this); }
Tensor Tensor::pow(double exponent) const { return kiln::pow(*this, exponent); }
Tensor Tensor::matmul(const Tensor& other) const { return kiln::matmul(*this, other); }

Tensor& Tensor::fill_(double value) {
  detail::check_inplace("fill_", *this);
  detail::backend_of(*this).fill(view_for_kernels(), value);
  bump_version();
  return *this;
}

Tensor& Tensor::zero_() { return fill_(0.0); }

Tensor& Tensor::copy_(const Tensor& source) {
  detail::check_inplace("copy_", *this, {source});
  KILN_CHECK(broadcast_shapes("copy_", source.sizes(), sizes()) == sizes(), "copy_: source of shape ",
             shape_str(source.sizes()), " does not broadcast to ", shape_str(sizes()));
  if (source.device() == device()) {
    detail::backend_of(*this).copy(detail::broadcast_view(source, sizes()), view_for_kernels());
  } else {
    // Cross-device transfers move contiguous blocks of one dtype; convert and expand on arrival.
    Tensor moved = source.contiguous().to(device());
    detail::backend_of(*this).copy(detail::broadcast_view(moved, sizes()), view_for_kernels());
  }
  bump_version();
  return *this;
}

namespace {
// self = self op other, with other broadcast to self's shape.
Tensor& binary_inplace(const char* name, kernels::BinaryOp op, Tensor& self, const Tensor& other) {
  detail::check_inplace(name, self, {other});
  detail::check_same_device(name, self, other);
  detail::check_same_dtype(name, self, other);
  KILN_CHECK(broadcast_shapes(name, self.sizes(), other.sizes()) == self.sizes(), name, ": operand of shape ",
             shape_str(other.sizes()), " does not broadcast to the destination's shape ", shape_str(self.sizes()));
  kernels::View target = self.view_for_kernels();
  detail::backend_of(self).binary(op, target, detail::broadcast_view(other, self.sizes()), target);
  self.bump_version();
  return self;
}
}  // namespace

Tensor& Tensor::add_(const Tensor& other, double alpha) {
  if (alpha == 1.0) return binary_inplace("add_", kernels::BinaryOp::add, *this, other);
  detail::check_inplace("add_", *this, {other});
  NoGradGuard no_grad;
  return binary_inplace("add_", kernels::BinaryOp::add, *this, kiln::mul(other, detail::scalar_like(alpha, other)));
}

Tensor& Tensor::add_(double value) {
  return binary_inplace("add_", kernels::BinaryOp::add, *this, detail::scalar_like(value, *this));
}

Tensor& Tensor::sub_(const Tensor& other, double alpha) { return add_(other, -alpha); }

Tensor& Tensor::mul_(const Tensor& other) { return binary_inplace("mul_", kernels::BinaryOp::mul, *this, other); }

Tensor& Tensor::mul_(double value) {
  return binary_inplace("mul_", kernels::BinaryOp::mul, *this, detail::scalar_like(value, *this));
}

Tensor& Tensor::div_(const Tensor& other) { return binary_inplace("div_", kernels::BinaryOp::div, *this, other); }

Tensor& Tensor::div_(double value) {
  return binary_inplace("div_", kernels::BinaryOp::div, *this, detail::scalar_like(value, *this));
}

Tensor& Tensor::clamp_(std::optional<double> low, std::optional<double> high) {
  detail::check_inplace("clamp_", *this);
  kernels::View target = view_for_kernels();
  detail::backend_of(*this).clamp(target, target, low, high);
  bump_version();
  return *this;
}

}  // namespace kiln

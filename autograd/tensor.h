// Tensor: a cheap handle (shared pointer) to shape, strides, offset, dtype and a Storage.
//
// Views (reshape, transpose, slice, expand, ...) share the Storage; contiguous() copies when it
// must. The Storage carries the version counter, so an in-place write through any view marks
// every tensor saved for backward on that memory as modified. Autograd state (requires_grad,
// grad, grad_fn, hooks) lives beside the data in TensorImpl; the engine is in engine.cpp.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "autograd/shape.h"
#include "autograd/storage.h"
#include "kernels/device.h"
#include "kernels/dtype.h"
#include "kernels/error.h"
#include "kernels/view.h"

namespace kiln {

class Tensor;
class Node;
struct TensorImpl;

// A gradient hook: gets the gradient flowing into a tensor; returns a replacement, or an
// undefined Tensor to leave it unchanged.
using TensorHook = std::function<Tensor(const Tensor& grad)>;
// Runs on a leaf after its .grad has been accumulated (DDP buckets, ZeRO-2 reduce-scatter).
using PostAccumulateGradHook = std::function<void(Tensor& leaf)>;

// Creation options with chained setters: TensorOptions().dtype(DType::f64).requires_grad(true).
class TensorOptions {
 public:
  TensorOptions() = default;
  TensorOptions(DType dtype) : dtype_(dtype) {}     // NOLINT: implicit on purpose
  TensorOptions(Device device) : device_(device) {}  // NOLINT: implicit on purpose
  TensorOptions& dtype(DType value) { dtype_ = value; return *this; }
  TensorOptions& device(Device value) { device_ = value; return *this; }
  TensorOptions& requires_grad(bool value) { requires_grad_ = value; return *this; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool requires_grad() const { return requires_grad_; }

 private:
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu();
  bool requires_grad_ = false;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape sizes;
  Shape strides;  // in elements
  int64_t offset = 0;  // in elements
  DType dtype = DType::f32;

  // autograd
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;           // null for leaves
  int output_nr = 0;                       // which output of grad_fn this tensor is
  std::shared_ptr<TensorImpl> grad;        // accumulated gradient (leaves, or retain_grad)
  std::weak_ptr<Node> grad_accumulator;    // the leaf's AccumulateGrad node, while a graph uses it
  std::vector<TensorHook> leaf_hooks;      // tensor hooks of a leaf (non-leaf hooks live on grad_fn)
  std::vector<PostAccumulateGradHook> post_accumulate_hooks;
  bool retains_grad = false;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- metadata ----------------------------------------------------------------------------
  bool defined() const { return impl_ != nullptr; }
  const Shape& sizes() const { return impl().sizes; }
  const Shape& shape() const { return impl().sizes; }
  const Shape& strides() const { return impl().strides; }
  int64_t size(int64_t dim) const;
  int64_t stride(int64_t dim) const;
  int64_t ndim() const { return static_cast<int64_t>(impl().sizes.size()); }
  int64_t dim() const { return ndim(); }
  int64_t numel() const { return shape_numel(impl().sizes); }
  int64_t offset() const { return impl().offset; }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return impl().storage; }
  // The memory of element 0 (offset applied).
  void* raw_data() const;
  template <typename T> T* data() const {
    KILN_CHECK(dtype_of<T>() == dtype(), "data<", dtype_name(dtype_of<T>()), ">: tensor has dtype ",
               dtype_name(dtype()));
    return static_cast<T*>(raw_data());
  }
  // The kernel-level view of this tensor.
  kernels::View view_for_kernels() const;
  // Version of the underlying memory: bumped by every in-place write.
  uint64_t version() const { return impl().storage->version(); }
  void bump_version() const { impl().storage->bump_version(); }
  TensorImpl& impl() const {
    KILN_CHECK(impl_ != nullptr, "use of an undefined tensor");
    return *impl_;
  }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool is_same(const Tensor& other) const { return impl_ == other.impl_; }

  // ---- values ------------------------------------------------------------------------------
  double item() const;  // one-element tensor -> its value as double
  template <typename T> T item() const { return static_cast<T>(item()); }
  template <typename T> std::vector<T> to_vector() const;
  std::string str() const;

  // ---- autograd ----------------------------------------------------------------------------
  bool requires_grad() const { return impl().requires_grad; }
  // Only leaves may change requires_grad; returns *this for chaining.
  Tensor& set_requires_grad(bool value = true);
  Tensor& requires_grad_(bool value = true) { return set_requires_grad(value); }
  bool is_leaf() const { return impl().grad_fn == nullptr; }
  const std::shared_ptr<Node>& grad_fn() const { return impl().grad_fn; }
  Tensor grad() const { return impl().grad ? Tensor(impl().grad) : Tensor(); }
  void set_grad(const Tensor& grad) const;
  // Runs the backward pass from this tensor. `gradient` may be omitted for one-element tensors.
  void backward(const Tensor& gradient = Tensor(), bool retain_graph = false) const;
  void register_hook(TensorHook hook) const;
  void register_post_accumulate_grad_hook(PostAccumulateGradHook hook) const;
  // Keeps .grad for a non-leaf tensor after backward.
  void retain_grad() const;
  // Same data, no autograd history.
  Tensor detach() const;
  // Makes this leaf refer to `source`'s data (storage, shape, dtype), keeping its autograd
  // identity (requires_grad, hooks) and dropping its gradient: how Module::to() converts
  // parameters while every handle to them stays valid.
  void set_data(const Tensor& source) const;

  // ---- views (share storage) ---------------------------------------------------------------
  Tensor view(const Shape& shape) const;      // requires compatible strides
  Tensor reshape(const Shape& shape) const;   // a view when possible, else a copy
  Tensor transpose(int64_t dim0, int64_t dim1) const;
  Tensor t() const;                           // 2-D transpose
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor select(int64_t dim, int64_t index) const;
  Tensor expand(const Shape& shape) const;
  Tensor squeeze() const;
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;

  // ---- common ops as methods (free functions in autograd/ops/ do the work) ----------------
  Tensor sum(const std::vector<int64_t>& dims = {}, bool keepdim = false) const;
  Tensor mean(const std::vector<int64_t>& dims = {}, bool keepdim = false) const;
  Tensor exp() const;
  Tensor log() const;
  Tensor sqrt() const;
  Tensor pow(double exponent) const;
  Tensor matmul(const Tensor& other) const;

  // ---- in-place (bump the version; refused where autograd would need the old values) ------
  Tensor& zero_();
  Tensor& fill_(double value);
  Tensor& copy_(const Tensor& source);
  Tensor& add_(const Tensor& other, double alpha = 1.0);
  Tensor& add_(double value);
  Tensor& sub_(const Tensor& other, double alpha = 1.0);
  Tensor& mul_(const Tensor& other);
  Tensor& mul_(double value);
  Tensor& div_(const Tensor& other);
  Tensor& div_(double value);
  Tensor& clamp_(std::optional<double> low, std::optional<double> high);

 private:
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& tensor);

// A tensor over existing storage with the given geometry (used by views and by kernels' callers).
Tensor make_tensor(std::shared_ptr<Storage> storage, Shape sizes, Shape strides, int64_t offset, DType dtype);
// A fresh, uninitialised, contiguous tensor.
Tensor empty(const Shape& shape, TensorOptions options = {});

// Element access for tests and small host-side code.
template <typename T>
std::vector<T> Tensor::to_vector() const {
  Tensor source = (device().is_cpu() ? *this : to(Device::cpu())).contiguous();
  if (source.dtype() != dtype_of<T>()) source = source.to(dtype_of<T>());
  const T* begin = static_cast<const T*>(source.raw_data());
  return std::vector<T>(begin, begin + source.numel());
}

}  // namespace kiln

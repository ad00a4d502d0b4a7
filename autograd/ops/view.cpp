// View ops: new geometry over the same storage, no copy. Each records how to carry a
// gradient back to the original geometry.
#include <algorithm>
#include <numeric>

#include "autograd/node.h"
#include "autograd/ops/creation.h"
#include "autograd/ops/elementwise.h"
#include "autograd/ops/op_helpers.h"

namespace kiln {
namespace {

Tensor make_view(const Tensor& base, Shape sizes, Shape strides, int64_t offset) {
  return make_tensor(base.storage(), std::move(sizes), std::move(strides), offset, base.dtype());
}

// Resolves one -1 in a requested shape and checks the element count.
Shape infer_shape(const char* op, const Shape& requested, int64_t numel) {
  Shape shape = requested;
  int64_t known = 1;
  int inferred = -1;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == -1) {
      KILN_CHECK(inferred < 0, op, ": only one dim can be -1 in shape ", shape_str(requested));
      inferred = static_cast<int>(d);
    } else {
      KILN_CHECK(shape[d] >= 0, op, ": invalid size ", shape[d], " in shape ", shape_str(requested));
      known *= shape[d];
    }
  }
  if (inferred >= 0) {
    KILN_CHECK(known != 0 && numel % known == 0, op, ": shape ", shape_str(requested), " is invalid for ", numel,
               " elements");
    shape[static_cast<size_t>(inferred)] = numel / known;
  }
  KILN_CHECK(shape_numel(shape) == numel, op, ": shape ", shape_str(requested), " is invalid for ", numel,
             " elements");
  return shape;
}

// Strides that view `sizes`/`strides` as `shape` without copying, if any exist (the
// algorithm of PyTorch's computeStride: dims merge only within contiguous chunks).
std::optional<Shape> view_strides(const Shape& sizes, const Shape& strides, const Shape& shape) {
  if (sizes.empty() || shape_numel(sizes) == 0) return contiguous_strides(shape);
  Shape result(shape.size());
  int64_t view_d = static_cast<int64_t>(shape.size()) - 1;
  int64_t chunk_base_stride = strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t tensor_d = static_cast<int64_t>(sizes.size()) - 1; tensor_d >= 0; --tensor_d) {
    tensor_numel *= sizes[static_cast<size_t>(tensor_d)];
    bool chunk_ends = tensor_d == 0 || (sizes[static_cast<size_t>(tensor_d - 1)] != 1 &&
                                        strides[static_cast<size_t>(tensor_d - 1)] != tensor_numel * chunk_base_stride);
    if (!chunk_ends) continue;
    while (view_d >= 0 && (view_numel < tensor_numel || shape[static_cast<size_t>(view_d)] == 1)) {
      result[static_cast<size_t>(view_d)] = view_numel * chunk_base_stride;
      view_numel *= shape[static_cast<size_t>(view_d)];
      --view_d;
    }
    if (view_numel != tensor_numel) return std::nullopt;
    if (tensor_d > 0) {
      chunk_base_stride = strides[static_cast<size_t>(tensor_d - 1)];
      tensor_numel = 1;
      view_numel = 1;
    }
  }
  if (view_d != -1) return std::nullopt;
  return result;
}

void record_reshape_back(const char* name, const Tensor& input, const Tensor& out) {
  record_op(name, {input}, {out}, [shape = input.sizes()](const auto& grads, const Node&) {
    return std::vector<Tensor>{grads[0].reshape(shape)};
  });
}

}  // namespace

Tensor Tensor::view(const Shape& requested) const {
  Shape shape = infer_shape("view", requested, numel());
  std::optional<Shape> new_strides = view_strides(sizes(), strides(), shape);
  KILN_CHECK(new_strides.has_value(), "view: shape ", shape_str(shape), " is not compatible with the strides of a ",
             shape_str(sizes()), " tensor (use reshape, which copies when it must)");
  Tensor out = make_view(*this, shape, *new_strides, offset());
  record_reshape_back("view", *this, out);
  return out;
}

Tensor Tensor::reshape(const Shape& requested) const {
  Shape shape = infer_shape("reshape", requested, numel());
  if (view_strides(sizes(), strides(), shape)) return view(shape);
  return contiguous().view(shape);
}

Tensor Tensor::transpose(int64_t dim0, int64_t dim1) const {
  int a = normalize_dim("transpose", dim0, ndim()), b = normalize_dim("transpose", dim1, ndim());
  if (ndim() == 0) return *this;
  Shape new_sizes = sizes(), new_strides = strides();
  std::swap(new_sizes[static_cast<size_t>(a)], new_sizes[static_cast<size_t>(b)]);
  std::swap(new_strides[static_cast<size_t>(a)], new_strides[static_cast<size_t>(b)]);
  Tensor out = make_view(*this, new_sizes, new_strides, offset());
  record_op("transpose", {*this}, {out}, [a, b](const auto& grads, const Node&) {
    return std::vector<Tensor>{grads[0].transpose(a, b)};
  });
  return out;
}

Tensor Tensor::t() const {
  KILN_CHECK(ndim() <= 2, "t: expected a tensor with at most 2 dims, got shape ", shape_str(sizes()));
  return ndim() < 2 ? *this : transpose(0, 1);
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  KILN_CHECK(static_cast<int64_t>(dims.size()) == ndim(), "permute: got ", dims.size(), " dims for a tensor with ",
             ndim(), " dims");
  std::vector<int64_t> inverse(dims.size(), -1);
  Shape new_sizes(dims.size()), new_strides(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) {
    int d = normalize_dim("permute", dims[i], ndim());
    KILN_CHECK(inverse[static_cast<size_t>(d)] < 0, "permute: dim ", dims[i], " appears more than once");
    inverse[static_cast<size_t>(d)] = static_cast<int64_t>(i);
    new_sizes[i] = sizes()[static_cast<size_t>(d)];
    new_strides[i] = strides()[static_cast<size_t>(d)];
  }
  Tensor out = make_view(*this, new_sizes, new_strides, offset());
  record_op("permute", {*this}, {out}, [inverse](const auto& grads, const Node&) {
    return std::vector<Tensor>{grads[0].permute(inverse)};
  });
  return out;
}

Tensor Tensor::slice(int64_t dim, int64_t start, int64_t end, int64_t step) const {
  KILN_CHECK(ndim() > 0, "slice: cannot slice a 0-dim tensor");
  int d = normalize_dim("slice", dim, ndim());
  KILN_CHECK(step > 0, "slice: step must be positive, got ", step);
  int64_t size = sizes()[static_cast<size_t>(d)];
  // Python slice rules: negative positions count from the end, out-of-range ones clamp.
  if (start < 0) start += size;
  if (end < 0) end += size;
  start = std::clamp<int64_t>(start, 0, size);
  end = std::clamp<int64_t>(end, start, size);
  Shape new_sizes = sizes(), new_strides = strides();
  new_sizes[static_cast<size_t>(d)] = (end - start + step - 1) / step;
  new_strides[static_cast<size_t>(d)] *= step;
  Tensor out = make_view(*this, new_sizes, new_strides, offset() + start * strides()[static_cast<size_t>(d)]);
  record_op("slice", {*this}, {out}, [shape = sizes(), d, start, end, step](const auto& grads, const Node&) {
    Tensor grad_in = zeros(shape, TensorOptions(grads[0].dtype()).device(grads[0].device()));
    grad_in.slice(d, start, end, step).copy_(grads[0]);
    return std::vector<Tensor>{grad_in};
  });
  return out;
}

Tensor Tensor::narrow(int64_t dim, int64_t start, int64_t length) const {
  KILN_CHECK(ndim() > 0, "narrow: cannot narrow a 0-dim tensor");
  int d = normalize_dim("narrow", dim, ndim());
  int64_t size = sizes()[static_cast<size_t>(d)];
  if (start < 0) start += size;
  KILN_CHECK(start >= 0 && length >= 0 && start + length <= size, "narrow: start ", start, " and length ", length,
             " exceed dim ", d, " of size ", size);
  return slice(d, start, start + length);
}

Tensor Tensor::select(int64_t dim, int64_t index) const {
  KILN_CHECK(ndim() > 0, "select: cannot select from a 0-dim tensor");
  int d = normalize_dim("select", dim, ndim());
  int64_t size = sizes()[static_cast<size_t>(d)];
  KILN_CHECK(index >= -size && index < size, "select: index ", index, " is out of range for dim ", d, " of size ",
             size);
  if (index < 0) index += size;
  Shape new_sizes = sizes(), new_strides = strides();
  new_sizes.erase(new_sizes.begin() + d);
  new_strides.erase(new_strides.begin() + d);
  Tensor out = make_view(*this, new_sizes, new_strides, offset() + index * strides()[static_cast<size_t>(d)]);
  record_op("select", {*this}, {out}, [shape = sizes(), d, index](const auto& grads, const Node&) {
    Tensor grad_in = zeros(shape, TensorOptions(grads[0].dtype()).device(grads[0].device()));
    grad_in.select(d, index).copy_(grads[0]);
    return std::vector<Tensor>{grad_in};
  });
  return out;
}

Tensor Tensor::expand(const Shape& shape) const {
  KILN_CHECK(shape.size() >= sizes().size(), "expand: cannot expand shape ", shape_str(sizes()), " to ",
             shape_str(shape), " (fewer dims)");
  size_t lead = shape.size() - sizes().size();
  Shape new_sizes(shape.size()), new_strides(shape.size());
  for (size_t d = 0; d < shape.size(); ++d) {
    if (d < lead) {
      KILN_CHECK(shape[d] >= 0, "expand: size -1 is not allowed for new leading dim ", d);
      new_sizes[d] = shape[d];
      new_strides[d] = 0;
      continue;
    }
    int64_t size = sizes()[d - lead];
    int64_t wanted = shape[d] == -1 ? size : shape[d];
    KILN_CHECK(size == wanted || size == 1, "expand: cannot expand shape ", shape_str(sizes()), " to ",
               shape_str(shape), " (dim ", d, ": ", size, " vs ", wanted, ")");
    new_sizes[d] = wanted;
    new_strides[d] = size == wanted ? strides()[d - lead] : 0;
  }
  if (new_sizes == sizes()) return *this;
  Tensor out = make_view(*this, new_sizes, new_strides, offset());
  record_op("expand", {*this}, {out}, [original = sizes()](const auto& grads, const Node&) {
    return std::vector<Tensor>{sum_to_shape(grads[0], original)};
  });
  return out;
}

Tensor Tensor::squeeze() const {
  Shape shape;
  for (int64_t size : sizes()) {
    if (size != 1) shape.push_back(size);
  }
  return shape.size() == sizes().size() ? *this : view(shape);
}

Tensor Tensor::squeeze(int64_t dim) const {
  if (ndim() == 0) return *this;
  int d = normalize_dim("squeeze", dim, ndim());
  if (sizes()[static_cast<size_t>(d)] != 1) return *this;
  Shape shape = sizes(), new_strides = strides();
  shape.erase(shape.begin() + d);
  new_strides.erase(new_strides.begin() + d);
  Tensor out = make_view(*this, shape, new_strides, offset());
  record_reshape_back("squeeze", *this, out);
  return out;
}

Tensor Tensor::unsqueeze(int64_t dim) const {
  int d = normalize_dim("unsqueeze", dim, ndim() + 1);
  Shape shape = sizes(), new_strides = strides();
  int64_t stride = d < ndim() ? sizes()[static_cast<size_t>(d)] * strides()[static_cast<size_t>(d)] : 1;
  shape.insert(shape.begin() + d, 1);
  new_strides.insert(new_strides.begin() + d, stride);
  Tensor out = make_view(*this, shape, new_strides, offset());
  record_reshape_back("unsqueeze", *this, out);
  return out;
}

Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim) const {
  if (ndim() == 0) return reshape({1});
  int first = normalize_dim("flatten", start_dim, ndim()), last = normalize_dim("flatten", end_dim, ndim());
  KILN_CHECK(first <= last, "flatten: start_dim ", start_dim, " comes after end_dim ", end_dim);
  Shape shape(sizes().begin(), sizes().begin() + first);
  int64_t merged = 1;
  for (int d = first; d <= last; ++d) merged *= sizes()[static_cast<size_t>(d)];
  shape.push_back(merged);
  shape.insert(shape.end(), sizes().begin() + last + 1, sizes().end());
  return reshape(shape);
}

}  // namespace kiln

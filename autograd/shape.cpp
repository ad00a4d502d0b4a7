// Shape helpers: sizes, strides, broadcasting and dim normalisation with named errors.
#include "autograd/shape.h"

#include <algorithm>

#include "kernels/error.h"

namespace kiln {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t size : shape) n *= size;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

std::string shape_str(const Shape& shape) {
  std::string text = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + ")";
}

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  size_t ndim = std::max(a.size(), b.size());
  Shape out(ndim);
  for (size_t i = 0; i < ndim; ++i) {
    int64_t size_a = i < ndim - a.size() ? 1 : a[i - (ndim - a.size())];
    int64_t size_b = i < ndim - b.size() ? 1 : b[i - (ndim - b.size())];
    KILN_CHECK(size_a == size_b || size_a == 1 || size_b == 1, op, ": shapes ", shape_str(a), " and ",
               shape_str(b), " cannot be broadcast (dim ", i, ": ", size_a, " vs ", size_b, ")");
    out[i] = size_a == 1 ? size_b : size_a;
  }
  return out;
}

int normalize_dim(const char* op, int64_t dim, int64_t ndim) {
  int64_t range = std::max<int64_t>(ndim, 1);
  KILN_CHECK(dim >= -range && dim < range, op, ": dim ", dim, " is out of range for a tensor with ", ndim,
             " dims (expected ", -range, " to ", range - 1, ")");
  return static_cast<int>(dim < 0 ? dim + range : dim);
}

std::vector<int> normalize_dims(const char* op, const std::vector<int64_t>& dims, int64_t ndim) {
  std::vector<int> result;
  if (dims.empty()) {
    for (int d = 0; d < ndim; ++d) result.push_back(d);
    return result;
  }
  for (int64_t dim : dims) {
    int d = normalize_dim(op, dim, ndim);
    KILN_CHECK(std::find(result.begin(), result.end(), d) == result.end(), op, ": dim ", dim,
               " appears more than once");
    result.push_back(d);
  }
  std::sort(result.begin(), result.end());
  return result;
}

}  // namespace kiln

// Shapes and strides: the small vocabulary every op uses to check and broadcast its operands.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace kiln {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
// Row-major strides (in elements) of a contiguous tensor of this shape.
Shape contiguous_strides(const Shape& shape);
// "(2, 3, 4)"; "()" for a scalar.
std::string shape_str(const Shape& shape);
// NumPy broadcasting of two shapes; throws kiln::Error naming `op` when they are incompatible.
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);
// A dim in [-ndim, ndim) mapped to [0, ndim); throws kiln::Error naming `op` otherwise.
int normalize_dim(const char* op, int64_t dim, int64_t ndim);
// Dims to reduce: every dim when `dims` is empty; each normalised, duplicates rejected.
std::vector<int> normalize_dims(const char* op, const std::vector<int64_t>& dims, int64_t ndim);

}  // namespace kiln

// Helpers shared by the op implementations (not part of the public API).
#pragma once

#include <string>
#include <vector>

#include "autograd/tensor.h"
#include "kernels/backend.h"

namespace kiln::detail {

inline kernels::Backend& backend_of(const Tensor& tensor) { return kernels::backend_for(tensor.device()); }

// The kernel view of `tensor` broadcast to `shape` (stride 0 on broadcast dims, no copy).
kernels::View broadcast_view(const Tensor& tensor, const Shape& shape);

void check_defined(const char* op, const Tensor& tensor, const char* role);
void check_same_device(const char* op, const Tensor& a, const Tensor& b);
void check_same_dtype(const char* op, const Tensor& a, const Tensor& b);
void check_floating(const char* op, const Tensor& tensor);
void check_index_dtype(const char* op, const Tensor& index);

// Refuses an in-place write that autograd could not account for, and writes that would land
// on one element twice (expanded tensors). `others` are the op's other inputs.
void check_inplace(const char* op, const Tensor& self, const std::vector<Tensor>& others = {});

// A 0-dim tensor of `like`'s dtype and device.
Tensor scalar_like(double value, const Tensor& like);

}  // namespace kiln::detail

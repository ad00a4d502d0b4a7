// View: a strided window onto device memory, the only way kernels see tensors.
//
// Sizes and strides are in elements; `data` already points at the first element (the
// tensor's offset applied). A stride of 0 repeats an element, which is how broadcasting
// reaches the kernels. Kernels take a fast path when every operand is contiguous.
#pragma once

#include <cstdint>

#include "kernels/device.h"
#include "kernels/dtype.h"

namespace kiln::kernels {

constexpr int kMaxDims = 8;

struct View {
  void* data = nullptr;
  DType dtype = DType::f32;
  Device device;
  int ndim = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};

  int64_t numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= sizes[d];
    return n;
  }

  bool is_contiguous() const {
    int64_t expected = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      if (sizes[d] != 1 && strides[d] != expected) return false;
      expected *= sizes[d];
    }
    return true;
  }

  template <typename T> T* as() const { return static_cast<T*>(data); }
};

}  // namespace kiln::kernels

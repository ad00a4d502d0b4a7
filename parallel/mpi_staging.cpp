// Host staging for the MPI backend: MPI reads and writes host memory, so CUDA tensors are
// copied to the host when an operation is issued and back when it is waited on.
//
// Both copies run on the thread that issues or waits, on its current CUDA stream (the copy to
// the host synchronises that stream first), so they are ordered with that thread's kernels;
// the communication thread only ever touches host memory.
#include "autograd/ops/creation.h"
#include "kernels/backend.h"
#include "parallel/mpi_detail.h"

namespace kiln::parallel::mpi {
namespace {

Tensor host_copy(const Tensor& tensor) {
  Tensor host = empty(tensor.sizes(), TensorOptions(tensor.dtype()));
  kernels::backend_for(tensor.device()).copy(tensor.view_for_kernels(), host.view_for_kernels());
  return host;
}

}  // namespace

Tensor host_buffer(const Tensor& tensor, bool reads_values) {
  if (tensor.device().is_cpu()) return tensor;
  return reads_values ? host_copy(tensor) : empty(tensor.sizes(), TensorOptions(tensor.dtype()));
}

Tensor send_buffer(const Tensor& input, const Tensor& output) {
  return input.device().is_cpu() && !memory_overlaps(input, output) ? input : host_copy(input);
}

std::function<void()> copy_back(const Tensor& host, const Tensor& target) {
  if (host.is_same(target)) return {};
  return [host, target] {
    kernels::backend_for(target.device()).copy(host.view_for_kernels(), target.view_for_kernels());
  };
}

void divide(const Tensor& host, int n) {
  dispatch_floating(host.dtype(), "all_reduce avg", [&]<typename T>() {
    T* data = static_cast<T*>(host.raw_data());
    for (int64_t i = 0; i < host.numel(); ++i) data[i] = T(static_cast<compute_t<T>>(data[i]) / n);
  });
}

}  // namespace kiln::parallel::mpi

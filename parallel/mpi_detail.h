// Shared between the MPI backend's sources: dtype and reduction mapping, error checking, host
// staging, the registry of live communicators. Internal to libkiln (it includes <mpi.h>).
#pragma once

#include <mpi.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "autograd/tensor.h"
#include "kernels/dtype.h"
#include "parallel/communicator.h"

namespace kiln::parallel::mpi {

// The MPI datatype of one element of `dtype` (bf16 and f16 are kiln's own 2-byte types).
MPI_Datatype datatype(DType dtype);
// The MPI reduction for `op` on `dtype` (avg is a sum here; the caller divides). bf16 and f16
// use kiln's own MPI_Ops, which add and compare in float like the CPU kernels.
MPI_Op reduction(ReduceOp op, DType dtype);
// Throws kiln::Error "<context>: <MPI's description of code>" unless code is MPI_SUCCESS.
void check(int code, const std::string& context);

// ---- host staging (mpi_staging.cpp) ----
// The CPU memory MPI works on for `tensor`: the tensor itself on the CPU; for a CUDA tensor a
// host buffer, holding its values when the operation reads them.
Tensor host_buffer(const Tensor& tensor, bool reads_values);
// An input MPI may read while it writes `output`: a host copy when the input is on the GPU or
// shares memory with the output (MPI forbids aliased buffers).
Tensor send_buffer(const Tensor& input, const Tensor& output);
// The after-wait step copying a staged result back to its CUDA tensor (none for CPU tensors).
std::function<void()> copy_back(const Tensor& host, const Tensor& target);
// avg = sum / n, in place on the host buffer the sum was reduced into.
void divide(const Tensor& host, int n);

// A communicator over `comm`, which it owns (and frees).
std::shared_ptr<Communicator> make_communicator(MPI_Comm comm, int world_rank, const std::string& name,
                                                std::chrono::milliseconds timeout);
// Stops the communication threads and frees the MPI_Comms of all live communicators; their
// later use throws. Called by finalize() before MPI_Finalize.
void shut_down_communicators();

}  // namespace kiln::parallel::mpi

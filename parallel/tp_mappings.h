// Tensor-parallel mappings: the collectives of Megatron-style tensor parallelism as autograd
// functions, each paired with its opposite so that the backward of a parallel layer is the
// parallel layer of the backward (Shoeybi et al., Megatron-LM, 2019; Korthikanti et al.,
// sequence parallelism, 2022).
//
//   mapping                                   forward                 backward
//   copy_to_tensor_parallel_region            identity                all-reduce (sum)
//   reduce_from_tensor_parallel_region        all-reduce (sum)        identity
//   scatter_to_tensor_parallel_region         keep own chunk, last dim  all-gather, last dim
//   gather_from_tensor_parallel_region        all-gather, last dim    keep own chunk, last dim
//   scatter_to_sequence_parallel_region       keep own chunk, seq dim   all-gather, seq dim
//   gather_from_sequence_parallel_region      all-gather, seq dim     reduce-scatter, seq dim
//   reduce_scatter_to_sequence_parallel_region  reduce-scatter, seq dim  all-gather, seq dim
//
// The group is the tensor-parallel group (Mesh::tp_group()). Chunks are contiguous and in rank
// order: rank r holds elements [r m, (r+1) m) of a dim of size n m, which must divide evenly.
// Activations are (B, T, C) in kiln, so the sequence dim defaults to 1. At group size 1 every
// mapping is the identity in both directions.
#pragma once

#include <memory>

#include "autograd/tensor.h"
#include "parallel/communicator.h"

namespace kiln::parallel {

using Group = std::shared_ptr<Communicator>;

// x (...) -> x (...). forward: identity; backward: all-reduce the gradient. Where a replicated
// input enters a column-parallel region: each rank's part of the graph adds to its gradient.
Tensor copy_to_tensor_parallel_region(const Tensor& x, const Group& group);
// x (...) -> (...). forward: all-reduce (sum); backward: identity. The output of a row-parallel
// region, whose ranks each hold a partial sum.
Tensor reduce_from_tensor_parallel_region(const Tensor& x, const Group& group);
// x (..., n c) -> (..., c). forward: keep this rank's chunk of the last dim; backward:
// all-gather the gradient along the last dim.
Tensor scatter_to_tensor_parallel_region(const Tensor& x, const Group& group);
// x (..., c) -> (..., n c). forward: all-gather along the last dim; backward: keep this rank's
// chunk of the gradient.
Tensor gather_from_tensor_parallel_region(const Tensor& x, const Group& group);

// x (B, n t, C) -> (B, t, C). forward: keep this rank's chunk of the sequence; backward:
// all-gather the gradient along it.
Tensor scatter_to_sequence_parallel_region(const Tensor& x, const Group& group, int64_t sequence_dim = 1);
// x (B, t, C) -> (B, n t, C). forward: all-gather along the sequence; backward: reduce-scatter
// the gradient (each rank used the whole sequence, so its chunk's gradient is the sum over ranks).
Tensor gather_from_sequence_parallel_region(const Tensor& x, const Group& group, int64_t sequence_dim = 1);
// x (B, n t, C) -> (B, t, C). forward: reduce-scatter (sum) along the sequence; backward:
// all-gather the gradient. Replaces the all-reduce of a row-parallel output under sequence
// parallelism.
Tensor reduce_scatter_to_sequence_parallel_region(const Tensor& x, const Group& group, int64_t sequence_dim = 1);

// The building blocks, outside autograd: x's chunk of dim `dim` for this rank, the all-gather
// of every rank's x along `dim`, and the reduce-scatter (sum) of x along `dim`.
Tensor split_along(const Tensor& x, int64_t dim, Communicator& group);
Tensor gather_along(const Tensor& x, int64_t dim, Communicator& group);
Tensor reduce_scatter_along(const Tensor& x, int64_t dim, Communicator& group);

}  // namespace kiln::parallel

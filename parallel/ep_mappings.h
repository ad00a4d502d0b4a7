// Expert-parallel mappings: the collectives of MoE expert parallelism as autograd functions,
// each documented as "forward: X, backward: Y" like the tensor-parallel mappings (tp_mappings.h).
//
//   mapping                     forward                          backward
//   all_to_all_rows             all_to_all_v of rows             all_to_all_v of the gradient rows,
//                               (send_rows out, recv_rows in)    along the reverse counts
//   sum_over_group              all-reduce (sum)                 all-reduce (sum)
//   scale_gradient              identity                         gradient times `factor`
//
// The group is the expert-parallel group (Mesh::group(MeshDim::ep)). sum_over_group is how a
// loss term computed from every rank's tokens (the MoE balance loss and z-loss) enters each
// rank's loss: every rank sees the group's value, and every rank's backward sends the gradient
// of that value to all ranks' tokens, which is the data-parallel convention that the objective
// is the mean of the ranks' losses and replicated gradients are averaged (expert_parallel.h).
// At group size 1 every collective is the identity (a copy) in both directions.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "autograd/tensor.h"
#include "parallel/communicator.h"

namespace kiln::parallel {

// x (sum(send_rows), ...) -> (sum(recv_rows), ...). forward: send_rows[j] rows of x (in order)
// go to rank j, and recv_rows[j] rows arrive from rank j, stacked in rank order; backward: the
// gradient rows go back along the reverse counts. Every rank's send_rows[r] must equal rank r's
// recv_rows[this rank].
Tensor all_to_all_rows(const Tensor& x, const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows,
                       const std::shared_ptr<Communicator>& group);

// x (...) -> (...). forward: all-reduce (sum) over the group; backward: all-reduce (sum) of the
// gradient, so that each rank's backward reaches every rank's contribution.
Tensor sum_over_group(const Tensor& x, const std::shared_ptr<Communicator>& group);

// x (...) -> x (...). forward: identity; backward: the gradient times `factor`.
Tensor scale_gradient(const Tensor& x, double factor);

}  // namespace kiln::parallel

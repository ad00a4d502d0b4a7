// Context parallelism's sequence layout: which tokens each rank of the cp group holds.
//
// Causal attention makes later tokens more expensive (token t attends to t + 1 keys), so giving
// rank r the r-th contiguous slice of the sequence would leave the last rank with most of the
// work. Instead the sequence of T tokens is cut into 2 cp chunks of T / (2 cp) and rank r holds
// chunks r and 2 cp - 1 - r, concatenated: one early and one late chunk, the same work on every
// rank. This is Megatron-LM's context-parallel layout; Brandon et al. ("Striped Attention", 2023)
// balance the same work by dealing tokens round-robin instead. Ring attention (ring_attention.h)
// computes causal attention over the whole sequence in this layout.
//
//   cp = 2, T = 8: chunks [0 1 | 2 3 | 4 5 | 6 7]; rank 0 holds 0 1 6 7, rank 1 holds 2 3 4 5.
//
// Every rank of a model's cp group shards its tokens, targets and positions (for RoPE or learned
// position embeddings) the same way; the loss of the full sequence is then the sum over the group.
#pragma once

#include <cstdint>

#include "autograd/tensor.h"
#include "parallel/communicator.h"

namespace kiln::parallel {

// The global chunk indices rank `rank` of `size` holds, early then late: {rank, 2 size - 1 - rank}.
struct ContextParallelChunks {
  int64_t early;
  int64_t late;
};
ContextParallelChunks context_parallel_chunks(int rank, int size);

// Throws unless `sequence_length` is positive and divisible by 2 cp, naming `op` and the numbers.
void check_context_parallel_length(const char* op, int64_t sequence_length, int cp_size);

// x (..., T, ...) along `dim` -> this rank's (..., T / cp, ...): chunk r then chunk 2 cp - 1 - r.
// Plain narrow + cat, so it works on any dtype (i64 tokens too) and is differentiable.
Tensor context_parallel_shard(const Tensor& x, int64_t dim, int rank, int size);
Tensor context_parallel_shard(const Tensor& x, int64_t dim, const Communicator& cp);

// The global positions of this rank's tokens: (T / cp) i64, in the order shard() puts them.
Tensor context_parallel_positions(int64_t sequence_length, int rank, int size);
Tensor context_parallel_positions(int64_t sequence_length, const Communicator& cp);

// The inverse of shard, for tests and evaluation: local (..., T / cp, ...) on every rank ->
// (..., T, ...) in sequence order on every rank (an all-gather over cp, then the chunks put back
// in order). Collective; not differentiable (the result does not require grad).
Tensor context_parallel_unshard(const Tensor& local, int64_t dim, Communicator& cp);

}  // namespace kiln::parallel

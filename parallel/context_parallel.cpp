// Context parallelism's sequence layout (see context_parallel.h): chunk r and chunk 2 cp - 1 - r
// of the sequence on rank r, and the way back.
#include "parallel/context_parallel.h"

#include <vector>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "parallel/tp_mappings.h"

namespace kiln::parallel {
namespace {

void check_rank(const char* op, int rank, int size) {
  KILN_CHECK(size >= 1, op, ": the cp group size must be at least 1, got ", size);
  KILN_CHECK(rank >= 0 && rank < size, op, ": cp rank ", rank, " is out of range for a group of ", size);
}

int64_t normalized_dim(const char* op, const Tensor& x, int64_t dim) {
  KILN_CHECK(x.defined(), op, ": the input is undefined");
  const int64_t rank = x.ndim();
  KILN_CHECK(dim >= -rank && dim < rank, op, ": dim ", dim, " is out of range for a tensor of shape ",
             shape_str(x.sizes()));
  return dim < 0 ? dim + rank : dim;
}

}  // namespace

ContextParallelChunks context_parallel_chunks(int rank, int size) {
  check_rank("context_parallel_chunks", rank, size);
  return {rank, 2 * static_cast<int64_t>(size) - 1 - rank};
}

void check_context_parallel_length(const char* op, int64_t sequence_length, int cp_size) {
  KILN_CHECK(sequence_length > 0 && sequence_length % (2 * static_cast<int64_t>(cp_size)) == 0, op,
             ": sequence length ", sequence_length, " is not divisible by 2 x cp = ", 2 * static_cast<int64_t>(cp_size),
             " (each of the ", cp_size, " cp ranks holds two chunks of T / (2 cp) tokens)");
}

Tensor context_parallel_shard(const Tensor& x, int64_t dim, int rank, int size) {
  const char* op = "context_parallel_shard";
  check_rank(op, rank, size);
  dim = normalized_dim(op, x, dim);
  check_context_parallel_length(op, x.size(dim), size);
  const int64_t chunk = x.size(dim) / (2 * static_cast<int64_t>(size));
  ContextParallelChunks held = context_parallel_chunks(rank, size);
  // x (..., T, ...) -> (..., 2 chunk, ...)
  return cat({x.narrow(dim, held.early * chunk, chunk), x.narrow(dim, held.late * chunk, chunk)}, dim);
}

Tensor context_parallel_shard(const Tensor& x, int64_t dim, const Communicator& cp) {
  return context_parallel_shard(x, dim, cp.rank(), cp.size());
}

Tensor context_parallel_positions(int64_t sequence_length, int rank, int size) {
  const char* op = "context_parallel_positions";
  check_rank(op, rank, size);
  check_context_parallel_length(op, sequence_length, size);
  const int64_t chunk = sequence_length / (2 * static_cast<int64_t>(size));
  ContextParallelChunks held = context_parallel_chunks(rank, size);
  std::vector<int64_t> positions;
  positions.reserve(static_cast<size_t>(2 * chunk));
  for (int64_t first : {held.early * chunk, held.late * chunk}) {
    for (int64_t t = 0; t < chunk; ++t) positions.push_back(first + t);
  }
  return from_vector(positions, {2 * chunk}, TensorOptions(DType::i64));
}

Tensor context_parallel_positions(int64_t sequence_length, const Communicator& cp) {
  return context_parallel_positions(sequence_length, cp.rank(), cp.size());
}

Tensor context_parallel_unshard(const Tensor& local, int64_t dim, Communicator& cp) {
  const char* op = "context_parallel_unshard";
  dim = normalized_dim(op, local, dim);
  KILN_CHECK(local.size(dim) > 0 && local.size(dim) % 2 == 0, op, ": dim ", dim, " of shape ",
             shape_str(local.sizes()), " must hold two equal chunks (an even, positive length) on each of the ",
             cp.size(), " ranks of ", cp.describe());
  NoGradGuard no_grad;
  const int64_t chunk = local.size(dim) / 2;
  // (..., T / cp, ...) -> (..., T, ...) in rank order: rank q's chunks q and 2 cp - 1 - q at 2 q chunk.
  Tensor by_rank = gather_along(local.detach(), dim, cp);
  const int size = cp.size();
  std::vector<Tensor> in_order;
  for (int64_t global = 0; global < 2 * static_cast<int64_t>(size); ++global) {
    const bool early = global < size;
    const int64_t owner = early ? global : 2 * static_cast<int64_t>(size) - 1 - global;
    in_order.push_back(by_rank.narrow(dim, (2 * owner + (early ? 0 : 1)) * chunk, chunk));
  }
  return cat(in_order, dim);
}

}  // namespace kiln::parallel

// Shared by the tensor-parallel tests: the world as the tensor-parallel group, seeded inputs,
// and the full tensor from every rank's slice (the way each rank checks against the whole
// computation it can do alone).
#pragma once

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "equivalence.h"
#include "parallel/tp_mappings.h"
#include "parallel_test.h"

namespace kiln::parallel::testing {

constexpr uint64_t kSeed = 1234;

inline Group world_ptr() { return world().communicator; }

inline Tensor random(const Shape& shape, uint64_t seed, DType dtype = DType::f32) {
  Generator generator(seed);
  return randn(shape, TensorOptions(dtype), &generator);
}

inline Tensor leaf(const Tensor& values) { return values.detach().clone().set_requires_grad(true); }

// The full tensor from every rank's slice along `dim`; `blocks` undoes ColumnParallelOptions
// blocks (rank-major [q0 k0 v0 | q1 k1 v1] back to [q0 q1 | k0 k1 | v0 v1]).
inline Tensor gathered(const Tensor& local, int64_t dim, Communicator& group, const std::vector<int64_t>& blocks = {}) {
  NoGradGuard no_grad;
  Tensor full = gather_along(local, dim, group);
  if (blocks.size() < 2) return full;
  const int n = group.size();
  std::vector<Tensor> ordered;
  for (int64_t block = 0, offset = 0; block < static_cast<int64_t>(blocks.size()); offset += blocks[block] / n, ++block) {
    for (int rank = 0; rank < n; ++rank) ordered.push_back(full.narrow(dim, rank * local.size(dim) + offset, blocks[block] / n));
  }
  return cat(ordered, dim);
}

// Step `step`'s rows [first, first + rows) of (rows, length) tokens below `vocab` (or of the
// targets, the next tokens): the same on every rank, different for every row and step.
inline Tensor token_rows(int64_t step, int64_t first, int64_t rows, int64_t length, int64_t vocab, bool targets) {
  std::vector<int64_t> values;
  for (int64_t b = first; b < first + rows; ++b) {
    for (int64_t t = 0; t < length; ++t) {
      const int64_t position = t + (targets ? 1 : 0);
      values.push_back((step * 7 + b * 5 + position * 3 + (b * position) % 5) % vocab);
    }
  }
  return from_vector(values, {rows, length}, TensorOptions(DType::i64));
}

inline void check_close(const Tensor& actual, const Tensor& expected, double tolerance, const std::string& what) {
  INFO(what << " on world rank " << world_group().rank());
  REQUIRE(actual.sizes() == expected.sizes());
  CHECK(relative_difference(actual, expected) <= tolerance);
}

}  // namespace kiln::parallel::testing

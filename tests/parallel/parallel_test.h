// Shared by the communication tests: the world they run in and the values each rank sends.
//
// The same executables run alone (world size 1) and under mpirun at 2 and 4 ranks. Every rank
// can compute what every other rank contributed from its rank number, so each result is
// checked against values computed locally. Tests that communicate must run on every rank in
// the same order, so they use CHECK (which continues) rather than REQUIRE around collectives.
#pragma once

#include <cstdint>
#include <vector>

#include "autograd/ops.h"
#include "parallel/communicator.h"
#include "parallel/init.h"

namespace kiln::parallel::testing {

const World& world();
inline Communicator& world_group() { return *world().communicator; }

// What rank `rank` contributes at element i: distinct per rank and per element, and exactly
// representable (with the sums and averages of up to 4 ranks) in every dtype down to bf16.
inline double contribution(int rank, int64_t i) { return (rank + 1) + 0.25 * static_cast<double>(i % 8); }

// contribution(rank, first .. first+count-1) as a tensor of `dtype`.
inline Tensor contributions(int rank, int64_t count, DType dtype, int64_t first = 0) {
  std::vector<double> values;
  for (int64_t i = 0; i < count; ++i) values.push_back(contribution(rank, first + i));
  return from_vector(values, {count}, TensorOptions(dtype));
}

inline std::vector<DType> all_dtypes() {
  return {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64};
}

// Whether this process can make CUDA tensors (the CUDA cases are skipped, with a warning,
// where it cannot).
bool cuda_usable();

}  // namespace kiln::parallel::testing

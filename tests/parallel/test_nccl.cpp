// The NCCL backend on CUDA tensors, where kiln has NCCL and each rank of the node has a GPU of
// its own (NCCL refuses two ranks on one GPU); elsewhere the skip is reported as a warning.
// Without NCCL in the build, making an NCCL communicator must fail clearly.
#include <catch2/catch.hpp>

#include "parallel/nccl_backend.h"
#include "parallel_test.h"

using namespace kiln;
using namespace kiln::parallel;
using namespace kiln::parallel::testing;
using Catch::Contains;

TEST_CASE("NCCL collectives on CUDA tensors match the locally computed values", "[nccl][cuda]") {
  if (!nccl_available()) {
    CHECK_THROWS_WITH(make_nccl_communicator(world().communicator, 0), Contains("built without NCCL"));
    return;
  }
  // Decided by rank-local facts that are the same on every rank, so all ranks skip together.
  if (!cuda_usable() || world().local_size != 1) {
    WARN("skipped: needs a CUDA device and one rank per node (ranks on this node: " << world().local_size << ")");
    return;
  }
  std::shared_ptr<Communicator> nccl = make_nccl_communicator(world().communicator, world().gpu());
  const Device gpu = Device::cuda(world().gpu());
  const int n = nccl->size();
  const int me = nccl->rank();
  CHECK(nccl->backend() == "nccl");
  CHECK(n == world().size);
  CHECK(me == world().rank);

  Tensor tensor = contributions(me, 37, DType::bf16).to(gpu);
  WorkHandle handle = nccl->all_reduce_async(tensor, ReduceOp::avg);
  handle.wait();
  std::vector<double> average(37, 0.0);
  for (int r = 0; r < n; ++r) {
    for (int64_t i = 0; i < 37; ++i) average[static_cast<size_t>(i)] += contribution(r, i) / n;
  }
  CHECK(tensor.to_vector<double>() == average);

  Tensor full_buffer = zeros({4 * n}, TensorOptions(gpu));
  full_buffer.narrow(0, 4 * me, 4).copy_(contributions(me, 4, DType::f32).to(gpu));
  nccl->all_gather(full_buffer.narrow(0, 4 * me, 4), full_buffer);
  std::vector<double> gathered;
  for (int r = 0; r < n; ++r) {
    for (int64_t i = 0; i < 4; ++i) gathered.push_back(contribution(r, i));
  }
  CHECK(full_buffer.to_vector<double>() == gathered);

  // Every rank now holds the same gathered buffer, so chunk r reduces to n times rank r's values.
  Tensor scattered = zeros({4}, TensorOptions(gpu));
  nccl->reduce_scatter(full_buffer, scattered);
  std::vector<double> own(4), root(4);
  for (int64_t i = 0; i < 4; ++i) {
    own[static_cast<size_t>(i)] = n * contribution(me, i);
    root[static_cast<size_t>(i)] = n * contribution(0, i);
  }
  CHECK(scattered.to_vector<double>() == own);
  nccl->broadcast(scattered, 0);
  nccl->barrier();
  CHECK(scattered.to_vector<double>() == root);

  Tensor rows = zeros({n, 3}, TensorOptions(gpu));
  std::vector<int64_t> one_each(static_cast<size_t>(n), 1);
  nccl->all_to_all_v(full({n, 3}, me, TensorOptions(gpu)), one_each, rows, one_each);
  std::vector<double> senders;
  for (int r = 0; r < n; ++r) senders.insert(senders.end(), 3, r);
  CHECK(rows.to_vector<double>() == senders);

  CHECK_THROWS_WITH(nccl->all_reduce(zeros({4})),
                    Contains("all_reduce on " + nccl->describe()) &&
                        Contains("tensor is on cpu; this communicator takes tensors on " + gpu.str()));

  std::shared_ptr<Communicator> parity = nccl->split(me % 2, me);
  CHECK(parity->backend() == "nccl");
  Tensor ones_tensor = ones({5}, TensorOptions(gpu));
  parity->all_reduce(ones_tensor);
  CHECK(ones_tensor.to_vector<double>() == std::vector<double>(5, parity->size()));
  CHECK(nccl->stats().bytes(Collective::all_reduce) == 2 * (n - 1) * 74 / n);
}

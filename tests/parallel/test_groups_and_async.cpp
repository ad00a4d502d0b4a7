// Sub-groups made by split, and async handles that complete while the caller computes.
#include <catch2/catch.hpp>

#include <thread>

#include "parallel_test.h"

using namespace kiln;
using namespace kiln::parallel;
using namespace kiln::parallel::testing;

TEST_CASE("split makes even and odd groups that reduce among themselves", "[groups]") {
  Communicator& world_comm = world_group();
  const int n = world_comm.size();
  const int me = world_comm.rank();
  std::shared_ptr<Communicator> parity = world_comm.split(me % 2, me);
  CHECK(parity->name() == (me % 2 == 0 ? "world.split(0)" : "world.split(1)"));
  CHECK(parity->size() == (n + 1 - me % 2) / 2);
  CHECK(parity->rank() == me / 2);
  CHECK(parity->world_rank() == me);
  CHECK(parity->timeout() == world_comm.timeout());

  Tensor tensor = contributions(me, 8, DType::f32);
  parity->all_reduce(tensor);
  std::vector<double> expected(8, 0.0);
  for (int r = me % 2; r < n; r += 2) {
    for (int64_t i = 0; i < 8; ++i) expected[static_cast<size_t>(i)] += contribution(r, i);
  }
  CHECK(tensor.to_vector<double>() == expected);

  // Group rank 0 of each group is its lowest world rank.
  Tensor root_value = full({2}, me);
  parity->broadcast(root_value, 0);
  CHECK(root_value.to_vector<double>() == std::vector<double>(2, me % 2));
}

TEST_CASE("split orders group ranks by key and names groups on request", "[groups]") {
  Communicator& world_comm = world_group();
  const int n = world_comm.size();
  std::shared_ptr<Communicator> reversed = world_comm.split(0, n - world_comm.rank(), "reversed");
  CHECK(reversed->name() == "reversed");
  CHECK(reversed->size() == n);
  CHECK(reversed->rank() == n - 1 - world_comm.rank());
  Tensor gathered = zeros({n});
  reversed->all_gather(full({1}, world_comm.rank()), gathered);
  std::vector<double> expected;
  for (int r = n - 1; r >= 0; --r) expected.push_back(r);
  CHECK(gathered.to_vector<double>() == expected);

  // A split of a split, and groups of one (every collective is then local).
  std::shared_ptr<Communicator> alone = reversed->split(world_comm.rank(), 0);
  CHECK(alone->size() == 1);
  CHECK(alone->name() == "reversed.split(" + std::to_string(world_comm.rank()) + ")");
  Tensor own = contributions(world_comm.rank(), 4, DType::f32);
  alone->all_reduce(own, ReduceOp::avg);
  CHECK(own.to_vector<double>() == contributions(world_comm.rank(), 4, DType::f32).to_vector<double>());
  CHECK(alone->stats().total_bytes() == 0);
}

TEST_CASE("an async all_reduce completes while the caller computes", "[async]") {
  Communicator& group = world_group();
  const int n = group.size();
  const int64_t count = 1 << 18;
  Tensor tensor = full({count}, group.rank() + 1.0);
  WorkHandle handle = group.all_reduce_async(tensor);
  // Compute without calling into the communicator: the handle must complete on its own, which
  // is what lets communication overlap the backward pass.
  Tensor a = randn({128, 128});
  Tensor product = zeros({128, 128});
  auto start = std::chrono::steady_clock::now();
  int rounds = 0;
  while (!handle.is_completed() && std::chrono::steady_clock::now() - start < std::chrono::seconds(60)) {
    product = matmul(a, a);
    ++rounds;
  }
  CHECK(handle.is_completed());
  INFO("matmuls done while the all-reduce ran: " << rounds);
  handle.wait();
  handle.wait();  // waiting twice is fine
  CHECK(tensor.to_vector<float>() == std::vector<float>(static_cast<size_t>(count), n * (n + 1) / 2.0f));
}

TEST_CASE("several async operations in flight are waited on in any order", "[async]") {
  Communicator& world_comm = world_group();
  const int n = world_comm.size();
  std::shared_ptr<Communicator> parity = world_comm.split(world_comm.rank() % 2, 0);
  std::vector<Tensor> tensors;
  std::vector<WorkHandle> handles;
  for (int k = 0; k < 6; ++k) {
    tensors.push_back(full({1000}, k + world_comm.rank()));
    // Alternate groups: each group's thread runs its own operations in issue order.
    Communicator& group = k % 2 == 0 ? world_comm : *parity;
    handles.push_back(group.all_reduce_async(tensors.back(), ReduceOp::max));
  }
  Tensor gathered = zeros({n});
  handles.push_back(world_comm.all_gather_async(full({1}, world_comm.rank()), gathered));
  for (auto it = handles.rbegin(); it != handles.rend(); ++it) it->wait();
  int parity_max = world_comm.rank() % 2 == 0 ? ((n - 1) / 2) * 2 : n - 1;
  for (int k = 0; k < 6; ++k) {
    double expected = k + (k % 2 == 0 ? n - 1 : parity_max);
    CHECK(tensors[static_cast<size_t>(k)].to_vector<double>() == std::vector<double>(1000, expected));
  }
  std::vector<double> ranks;
  for (int r = 0; r < n; ++r) ranks.push_back(r);
  CHECK(gathered.to_vector<double>() == ranks);
}

TEST_CASE("an async operation may be waited on from another thread", "[async]") {
  Communicator& group = world_group();
  Tensor tensor = full({64}, 1.0);
  WorkHandle handle = group.all_reduce_async(tensor);
  std::thread waiter([handle] { handle.wait(); });
  handle.wait();
  waiter.join();
  CHECK(tensor.to_vector<double>() == std::vector<double>(64, group.size()));
}

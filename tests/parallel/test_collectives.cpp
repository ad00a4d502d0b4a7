// Every collective's result against the values computed locally from the ranks' contributions,
// in every dtype, on the world group (size 1, 2 or 4 depending on how the test was launched).
#include <catch2/catch.hpp>

#include "parallel_test.h"

using namespace kiln;
using namespace kiln::parallel;
using namespace kiln::parallel::testing;

TEST_CASE("all_reduce sums, averages and takes the maximum in every dtype", "[collectives]") {
  Communicator& group = world_group();
  const int n = group.size();
  const int64_t count = 37;  // not a multiple of the group size
  for (DType dtype : all_dtypes()) {
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max}) {
      if (op == ReduceOp::avg && !is_floating(dtype)) continue;
      Tensor tensor = contributions(group.rank(), count, dtype);
      group.all_reduce(tensor, op);
      std::vector<double> expected;
      for (int64_t i = 0; i < count; ++i) {
        double sum = 0;
        for (int r = 0; r < n; ++r) sum += contribution(r, i);
        double value = op == ReduceOp::sum ? sum : op == ReduceOp::avg ? sum / n : contribution(n - 1, i);
        // Integer tensors hold the contributions truncated; their sum is the sum of those.
        if (!is_floating(dtype)) {
          value = 0;
          for (int r = 0; r < n; ++r) {
            double truncated = static_cast<double>(static_cast<int64_t>(contribution(r, i)));
            value = op == ReduceOp::max ? std::max(value, truncated) : value + truncated;
          }
        }
        expected.push_back(value);
      }
      INFO("dtype " << dtype_name(dtype) << ", op " << reduce_op_name(op));
      CHECK(tensor.to_vector<double>() == expected);
    }
  }
}

TEST_CASE("reduce_scatter gives rank r the reduction of chunk r", "[collectives]") {
  Communicator& group = world_group();
  const int n = group.size();
  const int64_t chunk = 5;
  for (DType dtype : {DType::f32, DType::bf16, DType::i64}) {
    Tensor input = contributions(group.rank(), n * chunk, dtype);
    Tensor output = zeros({chunk}, dtype);
    group.reduce_scatter(input, output, ReduceOp::sum);
    std::vector<double> expected;
    for (int64_t i = 0; i < chunk; ++i) {
      double sum = 0;
      for (int r = 0; r < n; ++r) sum += contributions(r, n * chunk, dtype).to_vector<double>()[group.rank() * chunk + i];
      expected.push_back(sum);
    }
    INFO("dtype " << dtype_name(dtype));
    CHECK(output.to_vector<double>() == expected);
  }
  // avg, and an output that is this rank's own chunk of the input (handled by a copy).
  Tensor input = contributions(group.rank(), n * chunk, DType::f64);
  Tensor own_chunk = input.narrow(0, group.rank() * chunk, chunk);
  group.reduce_scatter(input, own_chunk, ReduceOp::avg);
  for (int64_t i = 0; i < chunk; ++i) {
    double sum = 0;
    for (int r = 0; r < n; ++r) sum += contribution(r, group.rank() * chunk + i);
    CHECK(own_chunk.to_vector<double>()[static_cast<size_t>(i)] == Approx(sum / n));
  }
}

TEST_CASE("all_gather stacks every rank's input in rank order, also in place", "[collectives]") {
  Communicator& group = world_group();
  const int n = group.size();
  for (DType dtype : all_dtypes()) {
    Tensor input = contributions(group.rank(), 6, dtype).reshape({2, 3});
    Tensor output = zeros({2 * n, 3}, dtype);
    group.all_gather(input, output);
    std::vector<double> expected;
    for (int r = 0; r < n; ++r) {
      for (double v : contributions(r, 6, dtype).to_vector<double>()) expected.push_back(v);
    }
    INFO("dtype " << dtype_name(dtype));
    CHECK(output.to_vector<double>() == expected);
  }
  // ZeRO's pattern: the shard is already this rank's chunk of the full buffer.
  Tensor full = zeros({4 * n});
  full.narrow(0, 4 * group.rank(), 4).copy_(contributions(group.rank(), 4, DType::f32));
  group.all_gather(full.narrow(0, 4 * group.rank(), 4), full);
  std::vector<double> expected;
  for (int r = 0; r < n; ++r) {
    for (int64_t i = 0; i < 4; ++i) expected.push_back(contribution(r, i));
  }
  CHECK(full.to_vector<double>() == expected);
}

TEST_CASE("broadcast copies the root's tensor to every rank, from every root", "[collectives]") {
  Communicator& group = world_group();
  for (int root = 0; root < group.size(); ++root) {
    for (DType dtype : {DType::f32, DType::f16, DType::i32}) {
      Tensor tensor = group.rank() == root ? contributions(root, 9, dtype) : zeros({9}, dtype);
      group.broadcast(tensor, root);
      INFO("root " << root << ", dtype " << dtype_name(dtype));
      CHECK(tensor.to_vector<double>() == contributions(root, 9, dtype).to_vector<double>());
    }
  }
  Tensor flags = full({3}, group.rank() == 0 ? 1.0 : 0.0, DType::boolean);
  group.broadcast(flags, 0);
  CHECK(flags.to_vector<bool>() == std::vector<bool>{true, true, true});
}

TEST_CASE("send and recv pass tensors around a ring, in order", "[collectives]") {
  Communicator& group = world_group();
  const int n = group.size();
  if (n == 1) return;  // no peer; the single-process tests check the error
  const int next = (group.rank() + 1) % n;
  const int previous = (group.rank() + n - 1) % n;
  // Every rank sends before it receives: only nonblocking sends make this work.
  Tensor first = zeros({1000});
  Tensor second = zeros({3}, DType::i64);
  WorkHandle sent_first = group.send_async(contributions(group.rank(), 1000, DType::f32), next);
  WorkHandle sent_second = group.send_async(full({3}, group.rank(), DType::i64), next);
  WorkHandle received_first = group.recv_async(first, previous);
  WorkHandle received_second = group.recv_async(second, previous);
  received_second.wait();
  received_first.wait();
  sent_first.wait();
  sent_second.wait();
  CHECK(first.to_vector<double>() == contributions(previous, 1000, DType::f32).to_vector<double>());
  CHECK(second.to_vector<int64_t>() == std::vector<int64_t>(3, previous));

  // Blocking pairs: even ranks send first, odd ranks receive first.
  if (n % 2 == 0) {
    int partner = group.rank() ^ 1;
    Tensor back = zeros({4});
    if (group.rank() % 2 == 0) {
      group.send(contributions(group.rank(), 4, DType::f32), partner);
      group.recv(back, partner);
    } else {
      group.recv(back, partner);
      group.send(contributions(group.rank(), 4, DType::f32), partner);
    }
    CHECK(back.to_vector<double>() == contributions(partner, 4, DType::f32).to_vector<double>());
  }
}

TEST_CASE("all_to_all sends chunk j to rank j", "[collectives]") {
  Communicator& group = world_group();
  const int n = group.size();
  const int64_t chunk = 3;
  auto value = [](int source, int destination, int64_t i) { return 100.0 * source + 10.0 * destination + i; };
  for (DType dtype : {DType::f32, DType::i64}) {
    std::vector<double> sent, expected;
    for (int j = 0; j < n; ++j) {
      for (int64_t i = 0; i < chunk; ++i) {
        sent.push_back(value(group.rank(), j, i));
        expected.push_back(value(j, group.rank(), i));
      }
    }
    Tensor output = zeros({n * chunk}, dtype);
    group.all_to_all(from_vector(sent, {n * chunk}, TensorOptions(dtype)), output);
    INFO("dtype " << dtype_name(dtype));
    CHECK(output.to_vector<double>() == expected);
  }
}

TEST_CASE("all_to_all_v moves per-rank numbers of rows, including none", "[collectives]") {
  Communicator& group = world_group();
  const int n = group.size();
  const int me = group.rank();
  // Rows rank s sends to rank d: 0 to 2, so some pairs exchange nothing.
  auto rows = [](int source, int destination) { return static_cast<int64_t>((source + 2 * destination) % 3); };
  auto value = [](int source, int destination, int64_t row, int64_t column) {
    return 1000.0 * source + 100.0 * destination + 10.0 * row + column;
  };
  std::vector<int64_t> send_rows, recv_rows;
  std::vector<double> sent, expected;
  for (int j = 0; j < n; ++j) {
    send_rows.push_back(rows(me, j));
    recv_rows.push_back(rows(j, me));
    for (int64_t r = 0; r < rows(me, j); ++r) {
      for (int64_t c = 0; c < 2; ++c) sent.push_back(value(me, j, r, c));
    }
    for (int64_t r = 0; r < rows(j, me); ++r) {
      for (int64_t c = 0; c < 2; ++c) expected.push_back(value(j, me, r, c));
    }
  }
  int64_t sent_count = static_cast<int64_t>(sent.size()) / 2;
  int64_t received_count = static_cast<int64_t>(expected.size()) / 2;
  Tensor output = full({received_count, 2}, -1.0);
  group.all_to_all_v(from_vector(sent, {sent_count, 2}, TensorOptions(DType::f32)), send_rows, output, recv_rows);
  CHECK(output.to_vector<double>() == expected);
}

TEST_CASE("barrier returns on every rank", "[collectives]") {
  Communicator& group = world_group();
  group.barrier();
  group.barrier_async().wait();
  SUCCEED("every rank passed two barriers");
}

TEST_CASE("CUDA tensors go through the world communicator", "[collectives][cuda]") {
  if (!cuda_usable()) {
    WARN("skipped: no CUDA device");
    return;
  }
  Communicator& group = world_group();
  const int n = group.size();
  Tensor tensor = contributions(group.rank(), 16, DType::f32).to(Device::cuda());
  group.all_reduce(tensor, ReduceOp::sum);
  std::vector<double> expected(16, 0.0);
  for (int r = 0; r < n; ++r) {
    for (int64_t i = 0; i < 16; ++i) expected[static_cast<size_t>(i)] += contribution(r, i);
  }
  CHECK(tensor.to_vector<double>() == expected);
  Tensor gathered = zeros({4 * n}, TensorOptions(DType::bf16).device(Device::cuda()));
  WorkHandle handle = group.all_gather_async(contributions(group.rank(), 4, DType::bf16).to(Device::cuda()), gathered);
  handle.wait();
  std::vector<double> expected_gather;
  for (int r = 0; r < n; ++r) {
    for (int64_t i = 0; i < 4; ++i) expected_gather.push_back(contribution(r, i));
  }
  CHECK(gathered.to_vector<double>() == expected_gather);
}

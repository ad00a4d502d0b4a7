// Byte counters against the ring volumes documented in parallel/collective.h, and the errors
// for wrong tensors: each names the collective, the group and the rank, and nothing is sent.
#include <catch2/catch.hpp>

#include "parallel_test.h"

using namespace kiln;
using namespace kiln::parallel;
using namespace kiln::parallel::testing;
using Catch::Contains;

TEST_CASE("byte counters follow the ring volumes and reset", "[stats]") {
  Communicator& group = world_group();
  const int64_t n = group.size();
  const int me = group.rank();
  group.reset_stats();
  CHECK(group.stats().total_bytes() == 0);

  group.all_reduce(zeros({1000}));                    // S = 4000
  group.all_reduce(zeros({37}, DType::f64));          // S = 296: 2 (n-1) S / n rounds down
  group.reduce_scatter(zeros({n * 10}), zeros({10}));  // input 40 n bytes
  group.all_gather(zeros({10}), zeros({n * 10}));      // input 40 bytes
  group.broadcast(zeros({25}), 0);                     // 100 bytes
  group.all_to_all(zeros({n * 3}), zeros({n * 3}));    // input 12 n bytes
  std::vector<int64_t> one_row_each(static_cast<size_t>(n), 1);
  group.all_to_all_v(zeros({n, 4}), one_row_each, zeros({n, 4}), one_row_each);  // 16-byte rows
  group.barrier();

  CommunicationStats stats = group.stats();
  CHECK(stats.bytes(Collective::all_reduce) == 2 * (n - 1) * 4000 / n + 2 * (n - 1) * 296 / n);
  CHECK(stats.count(Collective::all_reduce) == 2);
  CHECK(stats.bytes(Collective::reduce_scatter) == (n - 1) * 40);
  CHECK(stats.bytes(Collective::all_gather) == (n - 1) * 40);
  CHECK(stats.bytes(Collective::broadcast) == (n == 1 || me == n - 1 ? 0 : 100));
  CHECK(stats.bytes(Collective::all_to_all) == (n - 1) * 12);
  CHECK(stats.bytes(Collective::all_to_all_v) == (n - 1) * 16);
  CHECK(stats.bytes(Collective::barrier) == 0);
  CHECK(stats.count(Collective::barrier) == 1);
  CHECK(stats.total_bytes() == stats.bytes(Collective::all_reduce) + stats.bytes(Collective::reduce_scatter) +
                                   stats.bytes(Collective::all_gather) + stats.bytes(Collective::broadcast) +
                                   stats.bytes(Collective::all_to_all) + stats.bytes(Collective::all_to_all_v));

  // Summed over the group, a broadcast moves (n-1) S: each non-root receives S once.
  Tensor broadcast_total = full({1}, static_cast<double>(stats.bytes(Collective::broadcast)), DType::i64);
  group.all_reduce(broadcast_total);
  CHECK(broadcast_total.item<int64_t>() == (n - 1) * 100);

  if (n > 1) {
    group.reset_stats();
    Tensor received = zeros({1000});
    WorkHandle sent = group.send_async(zeros({1000}), (me + 1) % n);
    group.recv(received, static_cast<int>((me + n - 1) % n));
    sent.wait();
    CHECK(group.stats().bytes(Collective::send) == 4000);
    CHECK(group.stats().bytes(Collective::recv) == 0);
    CHECK(group.stats().count(Collective::recv) == 1);
  }
  group.reset_stats();
  CHECK(group.stats().total_bytes() == 0);
  CHECK(group.stats().count(Collective::all_reduce) == 0);
}

TEST_CASE("wrong tensors are refused with the collective, group and rank named", "[errors]") {
  Communicator& group = world_group();
  const int n = group.size();
  const std::string where = group.describe();
  group.reset_stats();

  CHECK_THROWS_WITH(group.all_reduce(randn({4, 3}).t()),
                    Contains("all_reduce on " + where) && Contains("must be contiguous"));
  CHECK_THROWS_WITH(group.all_reduce(Tensor()), Contains("all_reduce on " + where) && Contains("undefined"));
  CHECK_THROWS_WITH(group.all_reduce(full({3}, 1.0, DType::boolean)), Contains("cannot reduce (sum) bool"));
  CHECK_THROWS_WITH(group.all_reduce(zeros({3}, DType::i32), ReduceOp::avg),
                    Contains("all_reduce on " + where) && Contains("avg needs a floating dtype, got i32"));
  CHECK_THROWS_WITH(group.all_gather(zeros({2}), zeros({2 * n}, DType::f64)),
                    Contains("all_gather on " + where) && Contains("input has dtype f32 but output has dtype f64"));
  CHECK_THROWS_WITH(group.all_gather(zeros({2}), zeros({2 * n + 1})),
                    Contains("all_gather on " + where) && Contains("expected group size x input elements"));
  CHECK_THROWS_WITH(group.reduce_scatter(zeros({2 * n + 1}), zeros({2})),
                    Contains("reduce_scatter on " + where) && Contains("expected group size x output elements"));
  CHECK_THROWS_WITH(group.all_to_all(zeros({2 * n}), zeros({2 * n + 2})),
                    Contains("all_to_all on " + where) && Contains("same number of elements"));
  std::vector<int64_t> rows(static_cast<size_t>(n), 1);
  CHECK_THROWS_WITH(group.all_to_all_v(zeros({n, 2}), std::vector<int64_t>(static_cast<size_t>(n + 1), 0), zeros({n, 2}), rows),
                    Contains("all_to_all_v on " + where) && Contains("one per rank"));
  CHECK_THROWS_WITH(group.all_to_all_v(zeros({n + 1, 2}), rows, zeros({n, 2}), rows),
                    Contains("send_rows") && Contains("but the tensor has " + std::to_string(n + 1)));
  CHECK_THROWS_WITH(group.all_to_all_v(zeros({n, 2}), rows, zeros({n, 3}), rows), Contains("rows (2) and output rows (3)"));
  CHECK_THROWS_WITH(group.broadcast(zeros({2}), n), Contains("broadcast on " + where) && Contains("root"));
  CHECK_THROWS_WITH(group.send(zeros({2}), group.rank()), Contains("send on " + where) && Contains("is this rank itself"));
  CHECK_THROWS_WITH(group.recv(zeros({2}), n), Contains("recv on " + where) && Contains("is not a rank of the group"));
  CHECK_THROWS_WITH(group.split(-1, 0), Contains("split on " + where) && Contains("color must be >= 0"));
  CHECK_THROWS_WITH(group.set_timeout(std::chrono::milliseconds(0)), Contains("timeout must be positive"));
  // Refused calls send nothing and count nothing.
  CHECK(group.stats().total_bytes() == 0);
  CHECK(group.stats().count(Collective::all_reduce) == 0);
}

TEST_CASE("a receive whose size differs from the send is an error on the receiver", "[errors]") {
  Communicator& group = world_group();
  if (group.size() < 2 || group.rank() > 1) return;  // ranks 0 and 1 of the world
  if (group.rank() == 0) {
    group.send(zeros({8}), 1);
    group.send(zeros({2}), 1);
  } else {
    CHECK_THROWS_WITH(group.recv(zeros({4}), 0), Contains("recv #") && Contains(group.describe()) &&
                                                     Contains("rank 0 sent more than the 4 elements"));
    CHECK_THROWS_WITH(group.recv(zeros({4}), 0), Contains("rank 0 sent 2 elements but this tensor holds 4"));
  }
}

namespace {

// A backend that takes only CUDA tensors (as NCCL does), to check the device error on any
// machine; it is rank 1 of 4 and never communicates.
class CudaOnlyGroup final : public Communicator {
 public:
  CudaOnlyGroup() : Communicator(1, 4, 1, "cuda-only", kDefaultTimeout) {}
  std::string backend() const override { return "test"; }
  [[noreturn]] void abort_job() override { std::abort(); }

 protected:
  WorkHandle run_all_reduce(const Tensor&, ReduceOp) override { return {}; }
  WorkHandle run_reduce_scatter(const Tensor&, const Tensor&, ReduceOp) override { return {}; }
  WorkHandle run_all_gather(const Tensor&, const Tensor&) override { return {}; }
  WorkHandle run_broadcast(const Tensor&, int) override { return {}; }
  WorkHandle run_send(const Tensor&, int) override { return {}; }
  WorkHandle run_recv(const Tensor&, int) override { return {}; }
  WorkHandle run_all_to_all(const Tensor&, const Tensor&) override { return {}; }
  WorkHandle run_all_to_all_v(const Tensor&, const std::vector<int64_t>&, const Tensor&,
                              const std::vector<int64_t>&) override {
    return {};
  }
  WorkHandle run_barrier() override { return {}; }
  std::shared_ptr<Communicator> run_split(int, int, const std::string&) override { return nullptr; }
  bool accepts(Device device) const override { return device.is_cuda(); }
  std::string accepted_devices() const override { return "cuda:0"; }
};

}  // namespace

TEST_CASE("a tensor on a device the backend does not take is refused", "[errors]") {
  CudaOnlyGroup group;
  CHECK_THROWS_WITH(group.all_reduce(zeros({4})),
                    Contains("all_reduce on group 'cuda-only' (rank 1 of 4, test)") &&
                        Contains("tensor is on cpu; this communicator takes tensors on cuda:0"));
  CHECK_THROWS_WITH(group.all_gather(zeros({1}), zeros({4})), Contains("all_gather") && Contains("input is on cpu"));
  CHECK(group.stats().count(Collective::all_reduce) == 0);

  if (!cuda_usable()) {
    WARN("skipped the mixed-device case: no CUDA device");
    return;
  }
  Communicator& world_comm = world_group();
  CHECK_THROWS_WITH(world_comm.all_gather(zeros({1}), zeros({world_comm.size()}, TensorOptions(Device::cuda()))),
                    Contains("all_gather on " + world_comm.describe()) &&
                        Contains("input is on cpu but output is on cuda:0"));
}

// parallel::init's report of the job, the single-process backend (a group of one, whatever
// the world size) and the watchdog's deadline logic, in-process with a callback that records
// instead of aborting. The watchdog ending a real job is tested by watchdog_helper.cpp.
#include <catch2/catch.hpp>

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <thread>

#include "parallel/local_communicator.h"
#include "parallel/watchdog.h"
#include "parallel_test.h"

using namespace kiln;
using namespace kiln::parallel;
using namespace kiln::parallel::testing;
using Catch::Contains;

TEST_CASE("init reports this rank's place in the job and its threads", "[init]") {
  const World& job = world();
  CHECK(job.rank == job.communicator->rank());
  CHECK(job.size == job.communicator->size());
  CHECK(job.communicator->name() == "world");
  // mpirun (which sets OMPI_COMM_WORLD_SIZE) means MPI; started directly, the single-process one.
  const bool launched = std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr;
  CHECK(job.communicator->backend() == (launched ? "mpi" : "single-process"));
  CHECK(job.local_size >= 1);
  CHECK(job.local_size <= job.size);
  CHECK(job.local_rank < job.local_size);
  CHECK(job.gpu() == job.local_rank);
  CHECK(job.threads == omp_get_max_threads());
  if (std::getenv("OMP_NUM_THREADS") == nullptr) {
    // The node's cores shared among its ranks, and never fewer than one thread.
    int cores = static_cast<int>(std::thread::hardware_concurrency());
    CHECK(job.threads >= 1);
    CHECK(job.threads <= std::max(1, cores / job.local_size));
  }
  CHECK_THROWS_WITH(init(), Contains("already initialized"));
}

TEST_CASE("the single-process backend copies or leaves tensors and counts no bytes", "[local]") {
  std::shared_ptr<Communicator> solo = make_local_communicator("solo");
  CHECK(solo->backend() == "single-process");
  CHECK(solo->rank() == 0);
  CHECK(solo->size() == 1);
  CHECK(solo->describe() == "group 'solo' (rank 0 of 1, single-process)");

  Tensor tensor = contributions(0, 5, DType::f32);
  uint64_t version = tensor.version();
  solo->all_reduce(tensor, ReduceOp::avg);
  CHECK(tensor.to_vector<double>() == contributions(0, 5, DType::f32).to_vector<double>());
  CHECK(tensor.version() > version);  // outputs count as written
  Tensor output = zeros({5});
  solo->reduce_scatter(tensor, output);
  CHECK(output.to_vector<double>() == tensor.to_vector<double>());
  output.zero_();
  solo->all_gather(tensor, output);
  CHECK(output.to_vector<double>() == tensor.to_vector<double>());
  output.zero_();
  solo->all_to_all(tensor, output);
  CHECK(output.to_vector<double>() == tensor.to_vector<double>());
  Tensor rows = zeros({5, 1});
  solo->all_to_all_v(tensor.reshape({5, 1}), {5}, rows, {5});
  CHECK(rows.to_vector<double>() == tensor.to_vector<double>());
  solo->broadcast(tensor, 0);
  CHECK(solo->all_reduce_async(tensor).is_completed());
  solo->barrier();
  CHECK_THROWS_WITH(solo->send(tensor, 0), Contains("send on group 'solo'") && Contains("is this rank itself"));
  CHECK_THROWS_WITH(solo->broadcast(tensor, 1), Contains("root 1 is not a rank of the group (0..0)"));

  CommunicationStats stats = solo->stats();
  CHECK(stats.total_bytes() == 0);
  CHECK(stats.count(Collective::all_reduce) == 2);
  CHECK(stats.count(Collective::barrier) == 1);

  std::shared_ptr<Communicator> child = solo->split(3, 0);
  CHECK(child->size() == 1);
  CHECK(child->name() == "solo.split(3)");
  CHECK(child->backend() == "single-process");
}

TEST_CASE("the single-process backend works on CUDA tensors", "[local][cuda]") {
  if (!cuda_usable()) {
    WARN("skipped: no CUDA device");
    return;
  }
  std::shared_ptr<Communicator> solo = make_local_communicator();
  Tensor input = contributions(0, 6, DType::f32).to(Device::cuda());
  Tensor output = zeros({6}, TensorOptions(Device::cuda()));
  solo->all_gather(input, output);
  CHECK(output.to_vector<double>() == contributions(0, 6, DType::f32).to_vector<double>());
}

namespace {

// Waits up to `limit` for `condition`.
template <typename Condition>
bool eventually(Condition condition, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  auto start = std::chrono::steady_clock::now();
  while (!condition()) {
    if (std::chrono::steady_clock::now() - start > limit) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

}  // namespace

TEST_CASE("the watchdog reports an operation that misses its deadline, once", "[watchdog]") {
  Watchdog watchdog;
  std::mutex mutex;
  std::vector<std::string> reports;
  auto record = [&](const std::string& message) {
    std::lock_guard lock(mutex);
    reports.push_back(message);
  };
  auto report_count = [&] {
    std::lock_guard lock(mutex);
    return reports.size();
  };

  watchdog.begin(3, "all_reduce #7 (sum, 16 x f32) on group 'dp' (rank 1 of 2, mpi)", std::chrono::milliseconds(50),
                 record);
  REQUIRE(eventually([&] { return report_count() == 1; }));
  CHECK(reports[0] ==
        "kiln watchdog: world rank 3: all_reduce #7 (sum, 16 x f32) on group 'dp' (rank 1 of 2, mpi) did not "
        "finish within 50 ms; aborting the job, since a hung collective cannot be recovered. Check that every rank "
        "of the group issues the same collectives in the same order.");
  CHECK(watchdog.watched() == 0);

  // Ended in time, or found finished at the deadline: no report.
  uint64_t token = watchdog.begin(0, "barrier #1", std::chrono::milliseconds(100), record);
  watchdog.end(token);
  std::atomic<bool> done{false};
  watchdog.begin(0, "all_gather #2", std::chrono::milliseconds(30), record, [&] { return done.load(); });
  done = true;
  // A later, shorter deadline is still honoured while a longer one is pending.
  watchdog.begin(0, "broadcast #3", std::chrono::milliseconds(2000), record);
  watchdog.begin(0, "send #4", std::chrono::milliseconds(20), record);
  REQUIRE(eventually([&] { return report_count() == 2; }));
  CHECK_THAT(reports[1], Contains("send #4") && Contains("within 20 ms"));
  REQUIRE(eventually([&] { return report_count() == 3; }));
  CHECK_THAT(reports[2], Contains("broadcast #3"));
  CHECK(watchdog.watched() == 0);
}

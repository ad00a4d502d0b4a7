// Communicator: one process group and the collectives its ranks run together.
//
// Every parallel scheme in kiln (DDP, ZeRO, tensor/pipeline/context/expert parallelism) is
// written against this interface; the backends are single-process (local_communicator.h), MPI
// (CPU tensors, and CUDA tensors staged through host memory) and NCCL (CUDA tensors). Groups
// are explicit objects made by split(), passed to the code that needs them: there is no global
// "current group".
//
// Contract of every collective:
// - Every rank of the group calls the same collectives in the same order, with matching sizes.
// - Tensors are contiguous, of one dtype and one device that the backend accepts; a wrong
//   tensor throws kiln::Error naming the collective, the group and the rank, before anything is
//   sent. Chunked collectives split tensors as flat arrays: chunk r is the r-th block of
//   numel / n elements (a gather of (m, k) inputs into an (n*m, k) output stacks them by rank).
// - Results overwrite outputs in place (bumping their version); collectives are not recorded by
//   autograd (the tensor-parallel mappings wrap them in autograd Functions).
// - At group size 1 each collective is a no-op or a local copy and returns a completed handle.
// - Each has an async form returning a WorkHandle (work.h); the plain form is async + wait.
// - A collective that does not finish within timeout() aborts the job (watchdog.h).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "autograd/tensor.h"
#include "parallel/collective.h"
#include "parallel/work.h"

namespace kiln::parallel {

// Ten minutes, as in PyTorch: long enough for a slow checkpoint write on one rank.
inline constexpr std::chrono::milliseconds kDefaultTimeout{600'000};

// Whether two tensors' memory overlaps (backends copy an input that aliases its output).
bool memory_overlaps(const Tensor& a, const Tensor& b);

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // The rank of this process in the world group, for messages about any group.
  int world_rank() const { return world_rank_; }
  const std::string& name() const { return name_; }
  virtual std::string backend() const = 0;
  // "group 'world' (rank 1 of 4, mpi)": how errors and the watchdog name this group.
  std::string describe() const;

  // tensor (any shape, in place): every rank ends with the reduction of all ranks' tensors.
  void all_reduce(const Tensor& tensor, ReduceOp op = ReduceOp::sum) { all_reduce_async(tensor, op).wait(); }
  WorkHandle all_reduce_async(const Tensor& tensor, ReduceOp op = ReduceOp::sum);
  // input (n*m) -> output (m): rank r gets the reduction of every rank's chunk r of input.
  void reduce_scatter(const Tensor& input, const Tensor& output, ReduceOp op = ReduceOp::sum) {
    reduce_scatter_async(input, output, op).wait();
  }
  WorkHandle reduce_scatter_async(const Tensor& input, const Tensor& output, ReduceOp op = ReduceOp::sum);
  // input (m) -> output (n*m): chunk r of output is rank r's input. input may be this rank's
  // own chunk of output (in place, as ZeRO gathers its shards).
  void all_gather(const Tensor& input, const Tensor& output) { all_gather_async(input, output).wait(); }
  WorkHandle all_gather_async(const Tensor& input, const Tensor& output);
  // tensor (in place): every rank ends with root's tensor.
  void broadcast(const Tensor& tensor, int root) { broadcast_async(tensor, root).wait(); }
  WorkHandle broadcast_async(const Tensor& tensor, int root);
  // Point to point: messages between two ranks arrive in the order they were sent; the
  // receiving tensor must have exactly the sent tensor's size and dtype.
  void send(const Tensor& tensor, int destination) { send_async(tensor, destination).wait(); }
  WorkHandle send_async(const Tensor& tensor, int destination);
  void recv(const Tensor& tensor, int source) { recv_async(tensor, source).wait(); }
  WorkHandle recv_async(const Tensor& tensor, int source);
  // input (n*m) -> output (n*m): chunk j of input goes to rank j, whose output chunk r holds it.
  void all_to_all(const Tensor& input, const Tensor& output) { all_to_all_async(input, output).wait(); }
  WorkHandle all_to_all_async(const Tensor& input, const Tensor& output);
  // input (sum(send_rows), ...) -> output (sum(recv_rows), ...), in rows of dim 0 (MoE token
  // dispatch): send_rows[j] rows go to rank j, recv_rows[j] rows come from rank j, in rank
  // order. Every rank's send_rows[r] must equal rank r's recv_rows[this rank].
  void all_to_all_v(const Tensor& input, const std::vector<int64_t>& send_rows, const Tensor& output,
                    const std::vector<int64_t>& recv_rows) {
    all_to_all_v_async(input, send_rows, output, recv_rows).wait();
  }
  WorkHandle all_to_all_v_async(const Tensor& input, const std::vector<int64_t>& send_rows, const Tensor& output,
                                const std::vector<int64_t>& recv_rows);
  void barrier() { barrier_async().wait(); }
  WorkHandle barrier_async();

  // Collective over this group: ranks passing the same color (>= 0) form a new group, ranked
  // by key (then by rank here). `name` defaults to "<this name>.split(<color>)". The new group
  // inherits the timeout and has its own byte counters.
  std::shared_ptr<Communicator> split(int color, int key, const std::string& name = "");

  CommunicationStats stats() const;
  void reset_stats();
  std::chrono::milliseconds timeout() const { return timeout_.load(); }
  void set_timeout(std::chrono::milliseconds timeout);

  // Ends every process of the job at once (MPI_Abort where MPI runs the job). It is what the
  // watchdog does with a hung collective, which no rank can recover from on its own.
  [[noreturn]] virtual void abort_job() = 0;

 protected:
  Communicator(int rank, int size, int world_rank, std::string name, std::chrono::milliseconds timeout);

  // The backend's half of each collective: called only at group size >= 2, after validation
  // and counting, with tensors the backend accepts.
  virtual WorkHandle run_all_reduce(const Tensor& tensor, ReduceOp op) = 0;
  virtual WorkHandle run_reduce_scatter(const Tensor& input, const Tensor& output, ReduceOp op) = 0;
  virtual WorkHandle run_all_gather(const Tensor& input, const Tensor& output) = 0;
  virtual WorkHandle run_broadcast(const Tensor& tensor, int root) = 0;
  virtual WorkHandle run_send(const Tensor& tensor, int destination) = 0;
  virtual WorkHandle run_recv(const Tensor& tensor, int source) = 0;
  virtual WorkHandle run_all_to_all(const Tensor& input, const Tensor& output) = 0;
  virtual WorkHandle run_all_to_all_v(const Tensor& input, const std::vector<int64_t>& send_rows,
                                      const Tensor& output, const std::vector<int64_t>& recv_rows) = 0;
  virtual WorkHandle run_barrier() = 0;
  // Called at every group size (a split is collective even when it makes groups of one).
  virtual std::shared_ptr<Communicator> run_split(int color, int key, const std::string& name) = 0;
  // Whether the backend takes tensors on `device`, and the words for the ones it takes.
  virtual bool accepts(Device device) const = 0;
  virtual std::string accepted_devices() const = 0;

  // "all_reduce on group 'world' (rank 1 of 4, mpi): ", the start of every error message.
  std::string error_prefix(Collective collective) const;
  // "all_reduce #12 (sum, 1024 x f32) on group ...": what the watchdog reports as hung.
  std::string operation_label(Collective collective, const std::string& detail);

 private:
  void check_tensor(Collective collective, const char* role, const Tensor& tensor) const;
  void check_pair(Collective collective, const Tensor& input, const Tensor& output) const;
  void check_reduction(Collective collective, const Tensor& tensor, ReduceOp op) const;
  void check_peer(Collective collective, const char* role, int peer) const;
  void count(Collective collective, int64_t bytes);

  int rank_;
  int size_;
  int world_rank_;
  std::string name_;
  // Read by communication threads while the owner may change it.
  std::atomic<std::chrono::milliseconds> timeout_;
  std::atomic<uint64_t> sequence_{0};
  mutable std::mutex stats_mutex_;
  CommunicationStats stats_;
};

}  // namespace kiln::parallel

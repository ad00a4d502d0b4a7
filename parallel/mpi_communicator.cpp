// MpiCommunicator: collectives over an MPI_Comm, run by one communication thread per group.
//
// Why a thread rather than MPI's nonblocking collectives: Open MPI progresses a nonblocking
// collective only while the process is inside an MPI call, so an MPI_Iallreduce would mostly
// run at wait() and overlap nothing; and its nonblocking algorithms (libnbc) are slower than
// the tuned blocking ones. Each communicator instead owns a thread that takes operations in
// issue order (the order MPI requires on a communicator) and runs the blocking collective,
// while the caller computes. Sends and receives are posted nonblocking and polled, so a rank's
// "send then receive" never deadlocks against its peer's identical pair, and a collective
// queued behind a pending receive still starts. This needs MPI_THREAD_MULTIPLE (groups run in
// parallel threads), which Debian's Open MPI 4.1 provides.
//
// Every operation is registered with the watchdog from the moment the thread starts it until
// MPI returns; the watchdog thread aborts the job (MPI_Abort, allowed from any thread under
// MPI_THREAD_MULTIPLE) if it does not return in time.
//
// CUDA tensors are staged through host memory: inputs are copied to the host by the calling
// thread (on its current stream) when the operation is issued, and results are copied back
// by the thread that waits, on its current stream.
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <set>
#include <thread>

#include "autograd/shape.h"
#include "parallel/mpi_detail.h"
#include "parallel/watchdog.h"

namespace kiln::parallel::mpi {
namespace {

// Messages between two ranks of a group match in the order they were sent; no tags needed.
constexpr int kTag = 0;
// Pending sends and receives progress only inside MPI calls, so they are polled; the interval
// doubles while nothing completes, which bounds the cost of polling on a shared core.
constexpr std::chrono::microseconds kFirstPoll{20};
constexpr std::chrono::microseconds kLongestPoll{1000};

[[noreturn]] void report_hang(const std::string& message) {
  std::fprintf(stderr, "%s\n", message.c_str());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, kWatchdogExitCode);
  std::abort();  // MPI_Abort does not return; this satisfies [[noreturn]]
}

std::string elements(const Tensor& tensor) {
  return detail::concat(tensor.numel(), " x ", dtype_name(tensor.dtype()));
}

struct Task {
  std::string operation;  // the watchdog's and the errors' name for it
  // A collective: the blocking MPI call, run on the communication thread.
  std::function<void()> run;
  // Point to point: posts the nonblocking call; `finish` checks its outcome once complete.
  std::function<MPI_Request()> post;
  std::function<void(int code, MPI_Status& status)> finish;
  std::shared_ptr<HostWork> work;
};

class MpiCommunicator;

// Live communicators, which finalize() must stop before MPI_Finalize.
std::mutex registry_mutex;
std::set<MpiCommunicator*> registry;

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, int rank, int size, int world_rank, const std::string& name,
                  std::chrono::milliseconds timeout)
      : Communicator(rank, size, world_rank, name, timeout), comm_(comm), thread_([this] { serve(); }) {
    std::lock_guard lock(registry_mutex);
    registry.insert(this);
  }

  ~MpiCommunicator() override {
    {
      std::lock_guard lock(registry_mutex);
      registry.erase(this);
    }
    shut_down();
  }

  // Lets the thread finish what was issued, then frees the MPI_Comm; later use throws.
  void shut_down() {
    std::call_once(shut_down_once_, [this] {
      {
        std::lock_guard lock(mutex_);
        stopping_ = true;
      }
      wake_.notify_all();
      thread_.join();
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) MPI_Comm_free(&comm_);
    });
  }

  std::string backend() const override { return "mpi"; }
  [[noreturn]] void abort_job() override {
    MPI_Abort(MPI_COMM_WORLD, kWatchdogExitCode);
    std::abort();  // MPI_Abort does not return; this satisfies [[noreturn]]
  }

 protected:
  bool accepts(Device) const override { return true; }
  std::string accepted_devices() const override { return "cpu or cuda (staged through host memory)"; }

  WorkHandle run_all_reduce(const Tensor& tensor, ReduceOp op) override {
    Tensor host = host_buffer(tensor, true);
    int count = checked_count(Collective::all_reduce, host.numel());
    Task task = make_task(Collective::all_reduce, detail::concat(reduce_op_name(op), ", ", elements(tensor)),
                          copy_back(host, tensor));
    task.run = [this, host, count, op, label = task.operation] {
      check(MPI_Allreduce(MPI_IN_PLACE, host.raw_data(), count, datatype(host.dtype()), reduction(op, host.dtype()),
                          comm_),
            label);
      if (op == ReduceOp::avg) divide(host, size());
    };
    return enqueue(std::move(task));
  }

  WorkHandle run_reduce_scatter(const Tensor& input, const Tensor& output, ReduceOp op) override {
    Tensor send = send_buffer(input, output);
    Tensor receive = host_buffer(output, false);
    int count = checked_count(Collective::reduce_scatter, input.numel()) / size();
    Task task = make_task(Collective::reduce_scatter, detail::concat(reduce_op_name(op), ", ", elements(input)),
                          copy_back(receive, output));
    task.run = [this, send, receive, count, op, label = task.operation] {
      check(MPI_Reduce_scatter_block(send.raw_data(), receive.raw_data(), count, datatype(send.dtype()),
                                     reduction(op, send.dtype()), comm_),
            label);
      if (op == ReduceOp::avg) divide(receive, size());
    };
    return enqueue(std::move(task));
  }

  WorkHandle run_all_gather(const Tensor& input, const Tensor& output) override {
    int count = checked_count(Collective::all_gather, output.numel()) / size();
    // ZeRO gathers a shard that is already this rank's chunk of the output: MPI_IN_PLACE.
    bool in_place = output.device().is_cpu() &&
                    input.raw_data() == static_cast<char*>(output.raw_data()) +
                                            static_cast<int64_t>(rank()) * count * dtype_size(input.dtype());
    Tensor send = in_place ? input : send_buffer(input, output);
    Tensor receive = host_buffer(output, false);
    Task task = make_task(Collective::all_gather, elements(input), copy_back(receive, output));
    task.run = [this, send, receive, count, in_place, label = task.operation] {
      MPI_Datatype type = datatype(send.dtype());
      check(MPI_Allgather(in_place ? MPI_IN_PLACE : send.raw_data(), count, type, receive.raw_data(), count, type,
                          comm_),
            label);
    };
    return enqueue(std::move(task));
  }

  WorkHandle run_broadcast(const Tensor& tensor, int root) override {
    Tensor host = host_buffer(tensor, rank() == root);
    int count = checked_count(Collective::broadcast, host.numel());
    Task task = make_task(Collective::broadcast, detail::concat("root ", root, ", ", elements(tensor)),
                          rank() == root ? std::function<void()>() : copy_back(host, tensor));
    task.run = [this, host, count, root, label = task.operation] {
      check(MPI_Bcast(host.raw_data(), count, datatype(host.dtype()), root, comm_), label);
    };
    return enqueue(std::move(task));
  }

  WorkHandle run_send(const Tensor& tensor, int destination) override {
    Tensor host = host_buffer(tensor, true);
    int count = checked_count(Collective::send, host.numel());
    Task task = make_task(Collective::send, detail::concat("to rank ", destination, ", ", elements(tensor)), {});
    task.post = [this, host, count, destination, label = task.operation] {
      MPI_Request request;
      check(MPI_Isend(host.raw_data(), count, datatype(host.dtype()), destination, kTag, comm_, &request), label);
      return request;
    };
    task.finish = [label = task.operation](int code, MPI_Status&) { check(code, label); };
    return enqueue(std::move(task));
  }

  WorkHandle run_recv(const Tensor& tensor, int source) override {
    Tensor host = host_buffer(tensor, false);
    int count = checked_count(Collective::recv, host.numel());
    Task task = make_task(Collective::recv, detail::concat("from rank ", source, ", ", elements(tensor)),
                          copy_back(host, tensor));
    task.post = [this, host, count, source, label = task.operation] {
      MPI_Request request;
      check(MPI_Irecv(host.raw_data(), count, datatype(host.dtype()), source, kTag, comm_, &request), label);
      return request;
    };
    task.finish = [count, source, dtype = host.dtype(), label = task.operation](int code, MPI_Status& status) {
      int error_class = MPI_SUCCESS;
      if (code != MPI_SUCCESS) MPI_Error_class(code, &error_class);
      KILN_CHECK(error_class != MPI_ERR_TRUNCATE, label, ": rank ", source, " sent more than the ", count,
                 " elements this tensor holds (send and recv sizes must match)");
      check(code, label);
      int received = 0;
      MPI_Get_count(&status, datatype(dtype), &received);
      KILN_CHECK(received == count, label, ": rank ", source, " sent ", received, " elements but this tensor holds ",
                 count, " (send and recv sizes must match)");
    };
    return enqueue(std::move(task));
  }

  WorkHandle run_all_to_all(const Tensor& input, const Tensor& output) override {
    Tensor send = send_buffer(input, output);
    Tensor receive = host_buffer(output, false);
    int chunk = checked_count(Collective::all_to_all, input.numel()) / size();
    Task task = make_task(Collective::all_to_all, elements(input), copy_back(receive, output));
    task.run = [this, send, receive, chunk, label = task.operation] {
      MPI_Datatype type = datatype(send.dtype());
      check(MPI_Alltoall(send.raw_data(), chunk, type, receive.raw_data(), chunk, type, comm_), label);
    };
    return enqueue(std::move(task));
  }

  WorkHandle run_all_to_all_v(const Tensor& input, const std::vector<int64_t>& send_rows, const Tensor& output,
                              const std::vector<int64_t>& recv_rows) override {
    checked_count(Collective::all_to_all_v, std::max(input.numel(), output.numel()));
    int64_t row = shape_numel(Shape(input.sizes().begin() + 1, input.sizes().end()));
    // Counts and displacements in elements, per rank; the totals fit in int (checked above).
    auto layout = [&](const std::vector<int64_t>& rows, std::vector<int>& counts, std::vector<int>& offsets) {
      int64_t offset = 0;
      for (int64_t rows_of_rank : rows) {
        counts.push_back(static_cast<int>(rows_of_rank * row));
        offsets.push_back(static_cast<int>(offset));
        offset += rows_of_rank * row;
      }
    };
    std::vector<int> send_counts, send_offsets, recv_counts, recv_offsets;
    layout(send_rows, send_counts, send_offsets);
    layout(recv_rows, recv_counts, recv_offsets);
    Tensor send = send_buffer(input, output);
    Tensor receive = host_buffer(output, false);
    Task task = make_task(Collective::all_to_all_v, detail::concat(input.size(0), " rows out, ", output.size(0),
                                                                   " rows in, ", dtype_name(input.dtype())),
                          copy_back(receive, output));
    task.run = [=, this, label = task.operation] {
      MPI_Datatype type = datatype(send.dtype());
      check(MPI_Alltoallv(send.raw_data(), send_counts.data(), send_offsets.data(), type, receive.raw_data(),
                          recv_counts.data(), recv_offsets.data(), type, comm_),
            label);
    };
    return enqueue(std::move(task));
  }

  WorkHandle run_barrier() override {
    Task task = make_task(Collective::barrier, "no data", {});
    task.run = [this, label = task.operation] { check(MPI_Barrier(comm_), label); };
    return enqueue(std::move(task));
  }

  std::shared_ptr<Communicator> run_split(int color, int key, const std::string& name) override {
    auto group = std::make_shared<MPI_Comm>(MPI_COMM_NULL);
    Task task;
    task.operation = detail::concat("split (color ", color, ", key ", key, ") on ", describe());
    task.work = std::make_shared<HostWork>();
    task.run = [this, group, color, key, label = task.operation] {
      check(MPI_Comm_split(comm_, color, key, group.get()), label);
    };
    enqueue(std::move(task)).wait();
    return make_communicator(*group, world_rank(), name, timeout());
  }

 private:
  struct Pending {
    MPI_Request request;
    Task task;
    uint64_t token;
  };

  int checked_count(Collective collective, int64_t numel) const {
    KILN_CHECK(numel <= INT_MAX, error_prefix(collective), numel,
               " elements exceed what one MPI call can address (INT_MAX); split the tensor");
    return static_cast<int>(numel);
  }

  Task make_task(Collective collective, const std::string& detail, std::function<void()> after_wait) {
    Task task;
    task.operation = operation_label(collective, detail);
    task.work = std::make_shared<HostWork>(std::move(after_wait));
    return task;
  }

  WorkHandle enqueue(Task task) {
    WorkHandle handle(task.work);
    {
      std::lock_guard lock(mutex_);
      KILN_CHECK(!stopping_, task.operation, ": the communicator was shut down (parallel::finalize)");
      queue_.push_back(std::move(task));
    }
    wake_.notify_one();
    return handle;
  }

  // The communication thread: runs queued operations in order, polls pending sends and
  // receives, and leaves once stopped with nothing left to do.
  void serve() {
    std::vector<Pending> pending;
    std::chrono::microseconds poll = kFirstPoll;
    std::unique_lock lock(mutex_);
    for (;;) {
      if (!queue_.empty()) {
        Task task = std::move(queue_.front());
        queue_.pop_front();
        lock.unlock();
        start(std::move(task), pending);
        lock.lock();
        continue;
      }
      if (pending.empty()) {
        if (stopping_) return;
        wake_.wait(lock);
        continue;
      }
      lock.unlock();
      bool progressed = test(pending);
      lock.lock();
      if (progressed) {
        poll = kFirstPoll;
      } else {
        wake_.wait_for(lock, poll);  // a newly queued operation wakes it at once
        poll = std::min(poll * 2, kLongestPoll);
      }
    }
  }

  void start(Task task, std::vector<Pending>& pending) {
    uint64_t token = process_watchdog().begin(world_rank(), task.operation, timeout(), report_hang);
    try {
      if (task.post) {
        MPI_Request request = task.post();
        pending.push_back(Pending{request, std::move(task), token});
        return;
      }
      task.run();
      process_watchdog().end(token);
      // The operation's tensors go before the waiter wakes, so memory it frees is free by then.
      task.run = nullptr;
      task.work->complete();
    } catch (...) {
      process_watchdog().end(token);
      task.work->fail(std::current_exception());
    }
  }

  // Completes the pending sends and receives that have finished; true if any had.
  bool test(std::vector<Pending>& pending) {
    bool progressed = false;
    for (auto it = pending.begin(); it != pending.end();) {
      int done = 0;
      MPI_Status status;
      int code = MPI_Test(&it->request, &done, &status);
      if (!done && code == MPI_SUCCESS) {
        ++it;
        continue;
      }
      process_watchdog().end(it->token);
      try {
        it->task.finish(code, status);
        it->task.post = nullptr;
        it->task.finish = nullptr;
        it->task.work->complete();
      } catch (...) {
        it->task.work->fail(std::current_exception());
      }
      it = pending.erase(it);
      progressed = true;
    }
    return progressed;
  }

  MPI_Comm comm_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Task> queue_;
  bool stopping_ = false;
  std::once_flag shut_down_once_;
  std::thread thread_;  // last: it starts running serve() as soon as it is constructed
};

}  // namespace

std::shared_ptr<Communicator> make_communicator(MPI_Comm comm, int world_rank, const std::string& name,
                                                std::chrono::milliseconds timeout) {
  check(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  int rank = 0;
  int size = 0;
  check(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
  check(MPI_Comm_size(comm, &size), "MPI_Comm_size");
  return std::make_shared<MpiCommunicator>(comm, rank, size, world_rank, name, timeout);
}

void shut_down_communicators() {
  std::lock_guard lock(registry_mutex);
  for (MpiCommunicator* communicator : registry) communicator->shut_down();
}

}  // namespace kiln::parallel::mpi

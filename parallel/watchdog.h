// Watchdog: turns a collective that never finishes into a loud, named failure.
//
// When one rank skips or reorders a collective, the others wait forever inside it: the job
// burns its allocation silently. Every communication a backend starts is registered here with
// its deadline (the communicator's timeout); one thread sleeps until the earliest deadline, and
// an operation still unfinished then is reported through its expiry callback. Backends pass a
// callback that prints the message to stderr and aborts the whole job (MPI_Abort): a hung
// collective cannot be cancelled, and the other ranks are stuck in it too. Tests pass one that
// records the message instead.
//
// The message names this process's world rank, the operation (collective, sequence number,
// size), its group with this rank's place in it, and the timeout:
//   kiln watchdog: world rank 0: all_reduce #3 (sum, 1024 x f32) on group 'world' (rank 0 of
//   2, mpi) did not finish within 1000 ms ...
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace kiln::parallel {

class Watchdog {
 public:
  using Expiry = std::function<void(const std::string& message)>;
  // Decides for an operation whose deadline has passed whether it has in fact finished (a CUDA
  // operation completes on its stream without telling the host).
  using Finished = std::function<bool()>;

  Watchdog();
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Starts watching `operation` of world rank `world_rank`; returns the token that end() takes.
  uint64_t begin(int world_rank, std::string operation, std::chrono::milliseconds timeout, Expiry on_expiry,
                 Finished finished = {});
  // The operation finished in time; unknown tokens (already reported) are ignored.
  void end(uint64_t token);
  // Operations being watched (for tests).
  size_t watched() const;

  // The report for an operation that missed its deadline.
  static std::string message(int world_rank, const std::string& operation, std::chrono::milliseconds timeout);

 private:
  struct Entry {
    std::chrono::steady_clock::time_point deadline;
    int world_rank;
    std::string operation;
    std::chrono::milliseconds timeout;
    Expiry on_expiry;
    Finished finished;
  };
  void run();
  static bool has_finished(const Entry& entry);

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::map<uint64_t, Entry> entries_;
  uint64_t next_token_ = 1;
  bool stopping_ = false;
  std::thread thread_;
};

// The watchdog every communicator of this process registers with, started on first use.
Watchdog& process_watchdog();

// The exit status of a job the watchdog ended.
inline constexpr int kWatchdogExitCode = 86;

}  // namespace kiln::parallel

// WorkHandle: the handle an async collective returns, so that communication overlaps compute.
//
// `auto handle = comm.all_reduce_async(grad); ...backward of the next layer...; handle.wait();`
// The tensors of an operation belong to it until wait() returns: do not read its outputs or
// write its inputs before then. A handle may be waited on any number of times and from any
// thread; dropping it without waiting lets the operation finish on its own, but its result is
// only defined after a wait().
#pragma once

#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>

namespace kiln::parallel {

// One operation in flight, implemented by each backend.
class Work {
 public:
  virtual ~Work() = default;
  // True once the operation has finished; never blocks.
  virtual bool is_completed() = 0;
  // Returns when the result may be used by the calling thread (CPU) or by later work on its
  // current stream (CUDA); rethrows the operation's error as kiln::Error.
  virtual void wait() = 0;
};

class WorkHandle {
 public:
  // An operation that is already complete (what every collective returns at group size 1).
  WorkHandle() = default;
  explicit WorkHandle(std::shared_ptr<Work> work) : work_(std::move(work)) {}

  void wait() const {
    if (work_) work_->wait();
  }
  bool is_completed() const { return !work_ || work_->is_completed(); }

 private:
  std::shared_ptr<Work> work_;
};

// A Work finished by a host thread (the MPI communication thread), which calls complete() or
// fail(). wait() blocks until then and afterwards runs `after_wait` once, in the waiting thread:
// that is where a result staged in host memory is copied back to the GPU, on the waiter's own
// stream, so the copy is ordered before whatever the waiter launches next.
class HostWork final : public Work {
 public:
  explicit HostWork(std::function<void()> after_wait = {}) : after_wait_(std::move(after_wait)) {}

  void complete();
  void fail(std::exception_ptr error);
  bool is_completed() override;
  void wait() override;

 private:
  std::mutex mutex_;
  std::condition_variable finished_;
  bool done_ = false;
  std::exception_ptr error_;
  std::function<void()> after_wait_;
};

}  // namespace kiln::parallel

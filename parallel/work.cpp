// HostWork: completion flag, error and the one-time after-wait step of a host-driven operation.
#include "parallel/work.h"

namespace kiln::parallel {

void HostWork::complete() {
  {
    std::lock_guard lock(mutex_);
    done_ = true;
  }
  finished_.notify_all();
}

void HostWork::fail(std::exception_ptr error) {
  {
    std::lock_guard lock(mutex_);
    error_ = std::move(error);
    done_ = true;
  }
  finished_.notify_all();
}

bool HostWork::is_completed() {
  std::lock_guard lock(mutex_);
  return done_;
}

void HostWork::wait() {
  std::unique_lock lock(mutex_);
  finished_.wait(lock, [this] { return done_; });
  if (error_) std::rethrow_exception(error_);
  // Run under the lock: a second waiting thread must not return before the step is done.
  if (after_wait_) {
    std::function<void()> step = std::move(after_wait_);
    after_wait_ = nullptr;
    step();
  }
}

}  // namespace kiln::parallel

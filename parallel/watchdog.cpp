// The watchdog thread: sleeps until the earliest deadline, reports what is still unfinished.
#include "parallel/watchdog.h"

#include <algorithm>
#include <vector>

#include "kernels/error.h"

namespace kiln::parallel {

Watchdog::Watchdog() : thread_([this] { run(); }) {}

Watchdog::~Watchdog() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

uint64_t Watchdog::begin(int world_rank, std::string operation, std::chrono::milliseconds timeout, Expiry on_expiry,
                         Finished finished) {
  uint64_t token;
  {
    std::lock_guard lock(mutex_);
    token = next_token_++;
    entries_.emplace(token, Entry{std::chrono::steady_clock::now() + timeout, world_rank, std::move(operation),
                                  timeout, std::move(on_expiry), std::move(finished)});
  }
  changed_.notify_all();
  return token;
}

void Watchdog::end(uint64_t token) {
  std::lock_guard lock(mutex_);
  entries_.erase(token);
}

size_t Watchdog::watched() const {
  std::lock_guard lock(mutex_);
  return entries_.size();
}

std::string Watchdog::message(int world_rank, const std::string& operation, std::chrono::milliseconds timeout) {
  return detail::concat("kiln watchdog: world rank ", world_rank, ": ", operation, " did not finish within ",
                        timeout.count(), " ms; aborting the job, since a hung collective cannot be recovered. "
                        "Check that every rank of the group issues the same collectives in the same order.");
}

// An operation whose state cannot even be read (a CUDA error) is reported like a hung one.
bool Watchdog::has_finished(const Entry& entry) {
  if (!entry.finished) return false;
  try {
    return entry.finished();
  } catch (const std::exception&) {
    return false;
  }
}

void Watchdog::run() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    if (entries_.empty()) {
      changed_.wait(lock);
      continue;
    }
    auto earliest = std::min_element(entries_.begin(), entries_.end(), [](const auto& a, const auto& b) {
      return a.second.deadline < b.second.deadline;
    });
    auto deadline = earliest->second.deadline;
    if (std::chrono::steady_clock::now() < deadline) {
      // Woken early by a new entry (maybe with an earlier deadline) or by stop: look again.
      changed_.wait_until(lock, deadline);
      continue;
    }
    Entry expired = std::move(earliest->second);
    entries_.erase(earliest);
    // Callbacks run unlocked: an expiry handler may never return (it aborts the job), and
    // `finished` may call into CUDA; neither may block begin() and end() on other threads.
    lock.unlock();
    if (!has_finished(expired)) expired.on_expiry(message(expired.world_rank, expired.operation, expired.timeout));
    lock.lock();
  }
}

Watchdog& process_watchdog() {
  // Deliberately never destroyed: communication threads may still end() entries while static
  // destructors run at exit.
  static Watchdog* watchdog = new Watchdog();
  return *watchdog;
}

}  // namespace kiln::parallel

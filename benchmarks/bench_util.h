// Timing helpers shared by the benchmarks: the median wall time of repeated runs after a
// warm-up, and Markdown table rows for docs/PERFORMANCE.md.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace kiln::bench {

// Median seconds per call of `body` over `repeats` timed calls after `warmup` untimed ones.
inline double median_seconds(const std::function<void()>& body, int repeats = 11, int warmup = 2) {
  for (int i = 0; i < warmup; ++i) body();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    auto start = std::chrono::steady_clock::now();
    body();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// The median seconds of `a` and of `b`, run alternately so that drift in the machine's state
// (other load, page cache, clock) falls on both alike: for comparing two ways of doing one thing.
inline std::pair<double, double> paired_median_seconds(const std::function<void()>& a, const std::function<void()>& b,
                                                       int repeats = 31, int warmup = 2) {
  for (int i = 0; i < warmup; ++i) {
    a();
    b();
  }
  std::vector<double> times_a, times_b;
  auto time = [](const std::function<void()>& body) {
    auto start = std::chrono::steady_clock::now();
    body();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  for (int i = 0; i < repeats; ++i) {
    times_a.push_back(time(a));
    times_b.push_back(time(b));
  }
  std::sort(times_a.begin(), times_a.end());
  std::sort(times_b.begin(), times_b.end());
  return {times_a[times_a.size() / 2], times_b[times_b.size() / 2]};
}

inline void row(const std::vector<std::string>& cells) {
  std::string line = "|";
  for (const std::string& cell : cells) line += " " + cell + " |";
  std::puts(line.c_str());
}

inline std::string format(const char* pattern, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), pattern, value);
  return buffer;
}

}  // namespace kiln::bench

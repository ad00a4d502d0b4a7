// Generator: an explicit, seedable source of Philox random streams.
//
// A generator is a (seed, offset) pair. Each random op reserves the counters it will use and
// advances the offset, so the same seed and the same sequence of ops give the same numbers on
// any thread count and any device, and a generator's state can be saved in a checkpoint.
#pragma once

#include <cstdint>
#include <mutex>

namespace kiln {

struct GeneratorState {
  uint64_t seed = 0;
  uint64_t offset = 0;
};

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : state_{seed, 0} {}
  Generator(const Generator& other) : state_(other.state()) {}
  Generator& operator=(const Generator& other);

  void manual_seed(uint64_t seed);
  GeneratorState state() const;
  void set_state(GeneratorState state);
  // Reserves `counters` Philox counters; returns {seed, first counter}.
  GeneratorState reserve(uint64_t counters);

 private:
  mutable std::mutex mutex_;
  GeneratorState state_;
};

// The process-wide generator used when an op is given none.
Generator& default_generator();
// Re-seeds the default generator.
void manual_seed(uint64_t seed);

}  // namespace kiln

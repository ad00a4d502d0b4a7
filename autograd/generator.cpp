// Generator state handling; the numbers themselves come from kernels/philox.h.
#include "autograd/generator.h"

namespace kiln {

Generator& Generator::operator=(const Generator& other) {
  if (this != &other) set_state(other.state());
  return *this;
}

void Generator::manual_seed(uint64_t seed) { set_state(GeneratorState{seed, 0}); }

GeneratorState Generator::state() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_;
}

void Generator::set_state(GeneratorState state) {
  std::lock_guard<std::mutex> lock(mutex_);
  state_ = state;
}

GeneratorState Generator::reserve(uint64_t counters) {
  std::lock_guard<std::mutex> lock(mutex_);
  GeneratorState taken = state_;
  state_.offset += counters;
  return taken;
}

Generator& default_generator() {
  static Generator generator(0);
  return generator;
}

void manual_seed(uint64_t seed) { default_generator().manual_seed(seed); }

}  // namespace kiln

// Philox4x32-10, the counter-based random number generator (Salmon et al., SC 2011).
//
// A (key, counter) pair maps to four independent 32-bit words with no state in between, so
// element i of a random tensor is a pure function of (seed, offset + i / 4): any thread on any
// device computes the same number for the same element, and ranks can take the same or a
// disjoint stream just by choosing seeds and offsets.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/dtype.h"

namespace kiln::kernels {

struct Philox4 {
  uint32_t word[4];
};

KILN_HOST_DEVICE inline Philox4 philox4x32(uint64_t seed, uint64_t counter) {
  constexpr uint32_t kMultiplier0 = 0xD2511F53u, kMultiplier1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t product0 = static_cast<uint64_t>(kMultiplier0) * c0;
    uint64_t product1 = static_cast<uint64_t>(kMultiplier1) * c2;
    uint32_t hi0 = static_cast<uint32_t>(product0 >> 32), lo0 = static_cast<uint32_t>(product0);
    uint32_t hi1 = static_cast<uint32_t>(product1 >> 32), lo1 = static_cast<uint32_t>(product1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Uniform float in [0, 1) from the top 24 bits of a word.
KILN_HOST_DEVICE inline float uniform_float(uint32_t word) {
  return static_cast<float>(word >> 8) * (1.0f / 16777216.0f);
}

// Uniform double in [0, 1) from 53 bits of two words.
KILN_HOST_DEVICE inline double uniform_double(uint32_t high, uint32_t low) {
  uint64_t bits = (static_cast<uint64_t>(high) << 21) ^ (low >> 11);
  return static_cast<double>(bits & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}

// Element i of a uniform [0,1) stream: f32 elements take one word (4 per counter), f64 two.
KILN_HOST_DEVICE inline double uniform_at(uint64_t seed, uint64_t offset, int64_t i, bool wide) {
  if (wide) {
    Philox4 r = philox4x32(seed, offset + static_cast<uint64_t>(i / 2));
    int lane = static_cast<int>(i % 2) * 2;
    return uniform_double(r.word[lane], r.word[lane + 1]);
  }
  Philox4 r = philox4x32(seed, offset + static_cast<uint64_t>(i / 4));
  return uniform_float(r.word[i % 4]);
}

// Element i of a standard normal stream (Box-Muller over the words of counter offset + i/4:
// lanes 0,1 make normals 0,1 and lanes 2,3 make normals 2,3).
KILN_HOST_DEVICE inline double normal_at(uint64_t seed, uint64_t offset, int64_t i) {
  Philox4 r = philox4x32(seed, offset + static_cast<uint64_t>(i / 4));
  int lane = static_cast<int>(i % 4);
  int pair = lane & 2;
  // 1 - u keeps the log argument in (0, 1].
  double u1 = 1.0 - (static_cast<double>(r.word[pair]) + 0.5) * (1.0 / 4294967296.0);
  double u2 = (static_cast<double>(r.word[pair + 1]) + 0.5) * (1.0 / 4294967296.0);
  double radius = std::sqrt(-2.0 * std::log(u1));
  double angle = 6.283185307179586 * u2;
  return (lane & 1) ? radius * std::sin(angle) : radius * std::cos(angle);
}

// Counters a stream of n elements consumes, so the next draw starts on fresh counters.
KILN_HOST_DEVICE inline uint64_t philox_counters_used(int64_t n, bool wide) {
  int64_t per_counter = wide ? 2 : 4;
  return static_cast<uint64_t>((n + per_counter - 1) / per_counter);
}

}  // namespace kiln::kernels

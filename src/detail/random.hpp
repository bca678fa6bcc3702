// SplitMix64: the seeded host-side stream behind every reproducible random choice of the library
// (sketch hashes, SRHT signs and samples, k-means seeding, synthetic data), the same on every
// machine and backend.
#pragma once

#include <cstdint>

#include "detail/hd.hpp"

namespace htfr::detail {

/// Advances `state` and returns the next 64 random bits.
HTFR_HD uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// The first output of a stream started at `key`: a stateless 64-bit hash.
HTFR_HD uint64_t mix64(uint64_t key) { return splitmix64(key); }

/// Uniform integer in [0, n) from 64 random bits (multiply-high, no modulo bias to speak of).
HTFR_HD int64_t uniform_below(uint64_t random, int64_t n) {
#if defined(__CUDA_ARCH__)
  return static_cast<int64_t>(__umul64hi(random, static_cast<uint64_t>(n)));
#else
  return static_cast<int64_t>((static_cast<unsigned __int128>(random) * uint64_t(n)) >> 64);
#endif
}

}  // namespace htfr::detail

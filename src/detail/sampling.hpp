// The shared pieces of next-token sampling for inference sessions: the parameters a sampling
// kernel takes by value and the counter-based uniform draw, the same on the host and the device.
#pragma once

#include <cstdint>

#include "detail/hd.hpp"
#include "detail/random.hpp"

namespace htfr::detail {

/// Bisection steps of the nucleus threshold (the threshold is then within 2^-40 of the exact
/// one on weights in [0, 1]).
inline constexpr int kNucleusSteps = 40;

struct SampleParams {
  float temperature = 0;  ///< 0: greedy
  float top_p = 1;
  int allow_unk = 0;      ///< the last class is unk
  uint64_t seed = 0;
};

/// Uniform in [0, 1) for draw `draw` of session `session`: a stateless hash of the three, so a
/// replayed step draws the same number.
HTFR_HD double sample_uniform(uint64_t seed, int64_t session, int64_t draw) {
  const uint64_t key = mix64(seed ^ mix64(static_cast<uint64_t>(session) * 0xD1B54A32D192ED03ull +
                                          static_cast<uint64_t>(draw)));
  return static_cast<double>(key >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace htfr::detail

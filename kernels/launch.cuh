// Launch arithmetic in one place: grid sizes, 64-bit grid-stride loops.
#pragma once

#include <cstdint>

namespace htfr::detail {

/// Blocks needed to cover `n` items with `threads` per block, capped for grid-stride loops.
inline unsigned grid_for(int64_t n, int threads, int64_t cap = 65535LL * 16) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks < 1) blocks = 1;
  if (blocks > cap) blocks = cap;
  return static_cast<unsigned>(blocks);
}

}  // namespace htfr::detail

#define HTFR_GRID_STRIDE(i, n)                                                    \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

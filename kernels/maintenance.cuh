// Device side of reseeding: one block per reseeded tensor writes its parameters in place.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "htfr/pool.hpp"

namespace htfr::detail {

/// For r < count: tensor index[r] of `pool` gets normal normals[r] (D), offset -normal.x[r],
/// bands [-band, band], temperature tau, controls with every column = targets[r] (M), zeroed
/// statistics and refreshed half copies. All arrays are device memory. Asynchronous.
void launch_reseed(const PoolView& pool, const int64_t* index, const float* normals,
                   const float* x, const float* targets, int64_t count, float band, float tau,
                   cudaStream_t stream);

}  // namespace htfr::detail

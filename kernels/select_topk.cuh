// Per-row top-K of the smallest |d| over all N tensors, from CUB block primitives.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace htfr::detail {

/// For each row r: d_i = dots[r, i] + offsets[i]; writes the K tensors of smallest |d_i| to
/// indices[r, 0..K) and their signed distances to distances[r, 0..K), ordered by increasing |d|,
/// ties broken by the smaller index. 1 <= K <= 256, K <= N. Asynchronous on `stream`.
void launch_select_topk(const float* dots, const float* offsets, int64_t rows, int64_t n,
                        int k, int32_t* indices, float* distances, cudaStream_t stream);

}  // namespace htfr::detail

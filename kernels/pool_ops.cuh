// Element-wise pool maintenance on the device: renormalising normals and refreshing the half
// copies used by the forward pass.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "htfr/config.hpp"

namespace htfr::detail {

/// rows (n x dim, row-major) <- rows / (||row|| + 1e-12). Asynchronous on `stream`.
void launch_normalize_rows(float* rows, int64_t n, int64_t dim, cudaStream_t stream);

/// dst[i] = half(src[i]) for i < count, `precision` bf16 or fp16. Asynchronous on `stream`.
void launch_to_half(const float* src, void* dst, int64_t count, Precision precision,
                    cudaStream_t stream);

/// dst[i] = value for i < count. Asynchronous on `stream`.
void launch_fill(float* dst, int64_t count, float value, cudaStream_t stream);

/// Sets *flag to 1 if any of data[0..count) is NaN or Inf (flag is not cleared first).
void launch_find_nonfinite(const float* data, int64_t count, int* flag, cudaStream_t stream);

/// Sets *flag to 1 if any of data[0..count) is negative (flag is not cleared first).
void launch_find_negative(const float* data, int64_t count, int* flag, cudaStream_t stream);

/// Sets *flag to 1 if any index[0..count) lies outside [0, limit).
void launch_find_out_of_range(const int32_t* index, int64_t count, int32_t limit, int* flag,
                              cudaStream_t stream);

}  // namespace htfr::detail

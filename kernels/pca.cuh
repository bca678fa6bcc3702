// Element-wise helpers of PCA/whitening on the device (the matrix products are cuBLAS calls).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace htfr::detail {

/// mean[j] = average over the rows of x[:, j] (x rows x dim), summed in row order.
void launch_column_mean(const float* x, int64_t rows, int64_t dim, float* mean,
                        cudaStream_t stream);

/// centered = x - mean (broadcast over rows).
void launch_center(const float* x, const float* mean, int64_t rows, int64_t dim,
                   float* centered, cudaStream_t stream);

/// y[r, j] -= bias[j] for y rows x dim.
void launch_subtract_bias(float* y, const float* bias, int64_t rows, int64_t dim,
                          cudaStream_t stream);

}  // namespace htfr::detail

// Element-wise PCA helpers: column means, centring and the bias of the affine map.
#include "detail/check.hpp"
#include "launch.cuh"
#include "pca.cuh"

namespace htfr::detail {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    column_mean_kernel(const float* x, int64_t rows, int64_t dim, float* mean) {
  HTFR_GRID_STRIDE(j, dim) {
    double acc = 0.0;
    for (int64_t r = 0; r < rows; ++r) acc += x[r * dim + j];
    mean[j] = static_cast<float>(acc / double(rows));
  }
}

__global__ void __launch_bounds__(kThreads)
    center_kernel(const float* x, const float* mean, int64_t rows, int64_t dim, float* out) {
  HTFR_GRID_STRIDE(t, rows * dim) out[t] = x[t] - mean[t % dim];
}

__global__ void __launch_bounds__(kThreads)
    subtract_bias_kernel(float* y, const float* bias, int64_t rows, int64_t dim) {
  HTFR_GRID_STRIDE(t, rows * dim) y[t] -= bias[t % dim];
}

}  // namespace

void launch_column_mean(const float* x, int64_t rows, int64_t dim, float* mean,
                        cudaStream_t stream) {
  if (dim == 0) return;
  column_mean_kernel<<<grid_for(dim, kThreads), kThreads, 0, stream>>>(x, rows, dim, mean);
  HTFR_LAUNCH_CHECK();
}

void launch_center(const float* x, const float* mean, int64_t rows, int64_t dim,
                   float* centered, cudaStream_t stream) {
  if (rows * dim == 0) return;
  center_kernel<<<grid_for(rows * dim, kThreads), kThreads, 0, stream>>>(x, mean, rows, dim,
                                                                         centered);
  HTFR_LAUNCH_CHECK();
}

void launch_subtract_bias(float* y, const float* bias, int64_t rows, int64_t dim,
                          cudaStream_t stream) {
  if (rows * dim == 0) return;
  subtract_bias_kernel<<<grid_for(rows * dim, kThreads), kThreads, 0, stream>>>(y, bias, rows,
                                                                                dim);
  HTFR_LAUNCH_CHECK();
}

}  // namespace htfr::detail

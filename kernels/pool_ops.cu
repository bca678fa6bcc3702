// Element-wise pool kernels: normal renormalisation, half-copy refresh, fills and input checks.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cub/block/block_reduce.cuh>

#include "detail/check.hpp"
#include "launch.cuh"
#include "pool_ops.cuh"

namespace htfr::detail {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) normalize_rows_kernel(float* rows, int64_t dim) {
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float scale;
  float* row = rows + static_cast<int64_t>(blockIdx.x) * dim;
  float acc = 0.0f;
  for (int64_t j = threadIdx.x; j < dim; j += kThreads) acc += row[j] * row[j];
  const float total = Reduce(tmp).Sum(acc);
  if (threadIdx.x == 0) scale = 1.0f / (sqrtf(total) + 1e-12f);
  __syncthreads();
  for (int64_t j = threadIdx.x; j < dim; j += kThreads) row[j] *= scale;
}

template <typename Half>
__global__ void __launch_bounds__(kThreads) to_half_kernel(const float* src, Half* dst,
                                                           int64_t count) {
  HTFR_GRID_STRIDE(i, count) {
    if constexpr (std::is_same_v<Half, __nv_bfloat16>) {
      dst[i] = __float2bfloat16_rn(src[i]);
    } else {
      dst[i] = __float2half_rn(src[i]);
    }
  }
}

__global__ void __launch_bounds__(kThreads) fill_kernel(float* dst, int64_t count, float value) {
  HTFR_GRID_STRIDE(i, count) dst[i] = value;
}

__global__ void __launch_bounds__(kThreads) nonfinite_kernel(const float* data, int64_t count,
                                                             int* flag) {
  bool bad = false;
  HTFR_GRID_STRIDE(i, count) bad |= !isfinite(data[i]);
  if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1;
}

__global__ void __launch_bounds__(kThreads) negative_kernel(const float* data, int64_t count,
                                                            int* flag) {
  bool bad = false;
  HTFR_GRID_STRIDE(i, count) bad |= data[i] < 0.0f;
  if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1;
}

__global__ void __launch_bounds__(kThreads) out_of_range_kernel(const int32_t* index,
                                                                int64_t count, int32_t limit,
                                                                int* flag) {
  bool bad = false;
  HTFR_GRID_STRIDE(i, count) bad |= index[i] < 0 || index[i] >= limit;
  if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1;
}

}  // namespace

void launch_normalize_rows(float* rows, int64_t n, int64_t dim, cudaStream_t stream) {
  if (n == 0 || dim == 0) return;
  normalize_rows_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(rows, dim);
  HTFR_LAUNCH_CHECK();
}

void launch_to_half(const float* src, void* dst, int64_t count, Precision precision,
                    cudaStream_t stream) {
  if (count == 0) return;
  if (precision == Precision::bf16) {
    to_half_kernel<<<grid_for(count, kThreads), kThreads, 0, stream>>>(
        src, static_cast<__nv_bfloat16*>(dst), count);
  } else {
    HTFR_REQUIRE(precision == Precision::fp16, InvalidArgument,
                 "half copies are bf16 or fp16, not " << to_string(precision));
    to_half_kernel<<<grid_for(count, kThreads), kThreads, 0, stream>>>(
        src, static_cast<__half*>(dst), count);
  }
  HTFR_LAUNCH_CHECK();
}

void launch_fill(float* dst, int64_t count, float value, cudaStream_t stream) {
  if (count == 0) return;
  fill_kernel<<<grid_for(count, kThreads), kThreads, 0, stream>>>(dst, count, value);
  HTFR_LAUNCH_CHECK();
}

void launch_find_nonfinite(const float* data, int64_t count, int* flag, cudaStream_t stream) {
  if (count == 0) return;
  nonfinite_kernel<<<grid_for(count, kThreads, 4096), kThreads, 0, stream>>>(data, count, flag);
  HTFR_LAUNCH_CHECK();
}

void launch_find_negative(const float* data, int64_t count, int* flag, cudaStream_t stream) {
  if (count == 0) return;
  negative_kernel<<<grid_for(count, kThreads, 4096), kThreads, 0, stream>>>(data, count, flag);
  HTFR_LAUNCH_CHECK();
}

void launch_find_out_of_range(const int32_t* index, int64_t count, int32_t limit, int* flag,
                              cudaStream_t stream) {
  if (count == 0) return;
  out_of_range_kernel<<<grid_for(count, kThreads, 4096), kThreads, 0, stream>>>(index, count,
                                                                                limit, flag);
  HTFR_LAUNCH_CHECK();
}

}  // namespace htfr::detail

// Reseeding kernel: the offset needs one dot product per tensor, so one block per tensor computes
// it and then writes the tensor's rows (fp32 masters and half copies).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cub/block/block_reduce.cuh>

#include "detail/check.hpp"
#include "maintenance.cuh"

namespace htfr::detail {

namespace {

constexpr int kThreads = 256;

__device__ void store_half(void* base, int64_t at, float v, Precision p) {
  if (p == Precision::bf16) {
    static_cast<__nv_bfloat16*>(base)[at] = __float2bfloat16_rn(v);
  } else if (p == Precision::fp16) {
    static_cast<__half*>(base)[at] = __float2half_rn(v);
  }
}

__global__ void __launch_bounds__(kThreads)
    reseed_kernel(PoolView pool, const int64_t* index, const float* normals, const float* x,
                  const float* targets, float band, float tau) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t r = blockIdx.x, i = index[r];
  const int64_t D = pool.input_dim, M = pool.output_dim;
  const float* n = normals + r * D;
  const float* xr = x + r * D;
  double acc = 0.0;
  for (int64_t j = threadIdx.x; j < D; j += kThreads) {
    acc += double(n[j]) * xr[j];
    pool.normals[i * D + j] = n[j];
    if (pool.normals_half) store_half(pool.normals_half, i * D + j, n[j], pool.half_precision);
  }
  const double dot = Reduce(tmp).Sum(acc);
  const float* t = targets + r * M;
  for (int64_t k = threadIdx.x; k < 3 * M; k += kThreads) {
    const float v = t[k % M];
    pool.controls[i * 3 * M + k] = v;
    if (pool.controls_half) store_half(pool.controls_half, i * 3 * M + k, v, pool.half_precision);
  }
  if (threadIdx.x == 0) {
    pool.offsets[i] = static_cast<float>(-dot);
    pool.dneg[i] = -band;
    pool.dpos[i] = band;
    pool.tau[i] = tau;
    pool.use_count[i] = 0.0f;
    pool.last_used[i] = 0.0f;
    pool.mean_abs_d[i] = 0.0f;
    pool.loss_trace[i] = 0.0f;
  }
}

}  // namespace

void launch_reseed(const PoolView& pool, const int64_t* index, const float* normals,
                   const float* x, const float* targets, int64_t count, float band, float tau,
                   cudaStream_t stream) {
  if (count == 0) return;
  reseed_kernel<<<static_cast<unsigned>(count), kThreads, 0, stream>>>(pool, index, normals, x,
                                                                      targets, band, tau);
  HTFR_LAUNCH_CHECK();
}

}  // namespace htfr::detail

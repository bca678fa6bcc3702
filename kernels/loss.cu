// Loss gradient: one block per row, block-wide max / sum reductions for the softmax.
#include <cub/block/block_reduce.cuh>
#include <cuda/functional>
#include <cuda/std/functional>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "detail/check.hpp"
#include "loss.cuh"

namespace htfr::detail {

namespace {

constexpr int kThreads = 256;
using Reduce = cub::BlockReduce<float, kThreads>;

__device__ __forceinline__ void store_gradient(const LossParams& p, float* g, int64_t at,
                                               float v) {
  g[at] = v;
  if (p.g_half == nullptr) return;
  if (p.half_precision == Precision::bf16) {
    static_cast<__nv_bfloat16*>(p.g_half)[at] = __float2bfloat16_rn(v);
  } else {
    static_cast<__half*>(p.g_half)[at] = __float2half_rn(v);
  }
}

/// Block-wide sum or max, the result broadcast to every thread.
template <typename Op>
__device__ float block_all(float v, Op op, typename Reduce::TempStorage& tmp, float* slot) {
  const float r = Reduce(tmp).Reduce(v, op);
  if (threadIdx.x == 0) *slot = r;
  __syncthreads();
  const float out = *slot;
  __syncthreads();
  return out;
}

__global__ void __launch_bounds__(kThreads)
    loss_gradient_kernel(LossParams p, int64_t m_total, const float* __restrict__ y,
                         const float* __restrict__ target, const int32_t* __restrict__ target_index,
                         float* __restrict__ g, float* __restrict__ row_loss,
                         float* __restrict__ gy) {
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float slot;
  const int64_t row = blockIdx.x;
  const float* yr = y + row * m_total;
  const float* tr = target ? target + row * m_total : nullptr;
  float loss = 0.0f, dot = 0.0f;
  if (p.loss == Loss::mse) {
    for (int64_t m = threadIdx.x; m < m_total; m += kThreads) {
      const float diff = yr[m] - tr[m];
      loss += 0.5f * diff * diff;
      const float gm = p.scale * diff;
      store_gradient(p, g, row * m_total + m, gm);
      dot += gm * yr[m];
    }
  } else {
    const bool ce = p.loss == Loss::cross_entropy || p.loss == Loss::mixed;
    const bool kl = p.loss == Loss::kl || p.loss == Loss::mixed;
    const float wce = p.loss == Loss::mixed ? p.ce_weight : 1.0f;
    const float wkl = p.loss == Loss::mixed ? p.kl_weight : 1.0f;
    float mx = -INFINITY;
    for (int64_t m = threadIdx.x; m < m_total; m += kThreads) mx = fmaxf(mx, yr[m]);
    mx = block_all(mx, cuda::maximum<>{}, tmp, &slot);
    float z = 0.0f, qsum = 0.0f;
    for (int64_t m = threadIdx.x; m < m_total; m += kThreads) {
      z += expf(yr[m] - mx);
      if (kl) qsum += tr[m];
    }
    z = block_all(z, cuda::std::plus<>{}, tmp, &slot);
    if (kl) qsum = block_all(qsum, cuda::std::plus<>{}, tmp, &slot);
    const float lse = mx + logf(z);
    const int32_t t = ce ? target_index[row] : -1;
    for (int64_t m = threadIdx.x; m < m_total; m += kThreads) {
      const float logp = yr[m] - lse;
      const float pm = expf(logp);
      float gm = 0.0f;
      if (ce) gm += wce * (pm - (m == t ? 1.0f : 0.0f));
      if (kl) {
        const float q = tr[m];
        gm += wkl * (pm * qsum - q);
        if (q > 0.0f) loss += wkl * q * (logf(q) - logp);
      }
      gm *= p.scale;
      store_gradient(p, g, row * m_total + m, gm);
      dot += gm * yr[m];
    }
    if (ce && threadIdx.x == 0) loss += wce * (lse - yr[t]);
  }
  loss = block_all(loss, cuda::std::plus<>{}, tmp, &slot);
  dot = block_all(dot, cuda::std::plus<>{}, tmp, &slot);
  if (threadIdx.x == 0) {
    row_loss[row] = loss;
    gy[row] = dot;
  }
}

}  // namespace

void launch_loss_gradient(const LossParams& params, int64_t rows, int64_t m, const float* y,
                          const float* target, const int32_t* target_index, float* g,
                          float* row_loss, float* gy, cudaStream_t stream) {
  if (rows == 0) return;
  HTFR_REQUIRE(rows < (int64_t{1} << 31), InvalidArgument, "too many rows for one launch");
  loss_gradient_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      params, m, y, target, target_index, g, row_loss, gy);
  HTFR_LAUNCH_CHECK();
}

}  // namespace htfr::detail

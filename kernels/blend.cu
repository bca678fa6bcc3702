// Row coefficients (one thread per row, the shared formulas) and the blend (one block per row and
// slice of M, vectorised reads of the two non-zero control columns of each active tensor).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "blend.cuh"
#include "detail/check.hpp"
#include "launch.cuh"

namespace htfr::detail {

namespace {

constexpr int kCoefThreads = 128;
constexpr int kBlendThreads = 256;

__global__ void __launch_bounds__(kCoefThreads)
    row_coefficients_kernel(FieldParams params, int64_t rows, int k, const int32_t* indices,
                            const float* distances, PoolView pool, ActiveCoef* coef) {
  HTFR_GRID_STRIDE(r, rows) {
    row_coefficients(params, k, distances + r * k, indices + r * k, pool.tau, pool.dneg,
                     pool.dpos, coef + r * k);
  }
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

/// VEC consecutive outputs per thread; the block covers kBlendThreads * VEC outputs of one row.
template <typename T, int VEC>
__global__ void __launch_bounds__(kBlendThreads)
    blend_kernel(int k, int64_t m_total, const int32_t* __restrict__ indices,
                 const ActiveCoef* __restrict__ coef, const T* __restrict__ controls,
                 float* __restrict__ y) {
  __shared__ int32_t s_idx[128];
  __shared__ float s_wa[128][3];
  const int64_t row = blockIdx.x;
  for (int j = threadIdx.x; j < k; j += kBlendThreads) {
    const ActiveCoef c = coef[row * k + j];
    s_idx[j] = indices[row * k + j];
    s_wa[j][0] = c.w * c.a[0];
    s_wa[j][1] = c.w * c.a[1];
    s_wa[j][2] = c.w * c.a[2];
  }
  __syncthreads();
  const int64_t m0 = (static_cast<int64_t>(blockIdx.y) * kBlendThreads + threadIdx.x) * VEC;
  if (m0 >= m_total) return;
  float acc[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) acc[v] = 0.0f;
  for (int j = 0; j < k; ++j) {
    const T* base = controls + static_cast<int64_t>(s_idx[j]) * 3 * m_total + m0;
#pragma unroll
    for (int col = 0; col < 3; ++col) {
      const float wa = s_wa[j][col];
      if (wa == 0.0f) continue;  // alpha has at most two non-zero entries
      const T* p = base + col * m_total;
      if constexpr (VEC == 1) {
        acc[0] += wa * to_float(p[0]);
      } else {
        // VEC consecutive elements in one aligned load (16 B for fp32, 8 B for halves).
        using Vec = std::conditional_t<sizeof(T) == 4, float4, uint2>;
        const Vec raw = *reinterpret_cast<const Vec*>(p);
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[v] += wa * to_float(e[v]);
      }
    }
  }
  float* out = y + row * m_total + m0;
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    if (VEC == 1 || m0 + v < m_total) out[v] = acc[v];
  }
}

template <typename T>
void launch_blend_typed(int64_t rows, int k, const int32_t* indices, const ActiveCoef* coef,
                        const T* controls, int64_t m, float* y, cudaStream_t stream) {
  // Vector loads need every column start aligned: M a multiple of 4 does it (slices are
  // 128-byte aligned).
  const bool vec = m % 4 == 0;
  const int per_block = kBlendThreads * (vec ? 4 : 1);
  const int64_t tiles = (m + per_block - 1) / per_block;
  HTFR_REQUIRE(tiles <= 65535, InvalidArgument, "output_dim " << m << " is too large to blend");
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(tiles));
  if (vec) {
    blend_kernel<T, 4><<<grid, kBlendThreads, 0, stream>>>(k, m, indices, coef, controls, y);
  } else {
    blend_kernel<T, 1><<<grid, kBlendThreads, 0, stream>>>(k, m, indices, coef, controls, y);
  }
  HTFR_LAUNCH_CHECK();
}

}  // namespace

void launch_row_coefficients(const FieldParams& params, int64_t rows, int k,
                             const int32_t* indices, const float* distances, const PoolView& pool,
                             ActiveCoef* coef, cudaStream_t stream) {
  if (rows == 0) return;
  row_coefficients_kernel<<<grid_for(rows, kCoefThreads), kCoefThreads, 0, stream>>>(
      params, rows, k, indices, distances, pool, coef);
  HTFR_LAUNCH_CHECK();
}

void launch_blend(int64_t rows, int k, const int32_t* indices, const ActiveCoef* coef,
                  const PoolView& pool, Precision precision, float* y, cudaStream_t stream) {
  if (rows == 0) return;
  HTFR_REQUIRE(k >= 1 && k <= 128, InvalidArgument, "blend needs 1 <= K <= 128, got " << k);
  HTFR_REQUIRE(rows < (int64_t{1} << 31), InvalidArgument, "too many rows for one launch");
  const int64_t m = pool.output_dim;
  if (precision == Precision::bf16) {
    launch_blend_typed(rows, k, indices, coef,
                       static_cast<const __nv_bfloat16*>(pool.controls_half), m, y, stream);
  } else if (precision == Precision::fp16) {
    launch_blend_typed(rows, k, indices, coef, static_cast<const __half*>(pool.controls_half), m,
                       y, stream);
  } else {
    launch_blend_typed(rows, k, indices, coef, pool.controls, m, y, stream);
  }
}

}  // namespace htfr::detail

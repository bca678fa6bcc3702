// The fused forward kernel: one block per row (or, for few rows, several blocks sharing a row's
// outputs); its first warp turns the row's
// selection into weights and interpolation coefficients (the shared formulas, normalised with
// butterfly reductions, so every lane holds the same sum), then every thread blends its outputs
// with vectorised reads of the two non-zero control columns of each active tensor.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "blend.cuh"
#include "detail/check.hpp"
#include "launch.cuh"

namespace htfr::detail {

namespace {

constexpr int kBlendThreads = 256;
// Selection entries per lane of the coefficient warp: 4 for K <= 128; the wider instance (more
// registers, so fewer resident blocks) only for K up to kMaxTopK.
constexpr int kNarrowPerLane = 4, kWidePerLane = 8;
static_assert(32 * kWidePerLane >= kMaxTopK, "one warp holds a row's whole selection");
constexpr int64_t kFewBlocks = 256;  // below this many row tiles, rows are split over blocks

/// Warp 0 of the block: coefficients of row `row` into shared memory (and `coef` if not null).
template <int kPerLane>
__device__ void row_coefficients_warp(const FieldParams& p, int64_t row, int k,
                                      const int32_t* __restrict__ indices,
                                      const float* __restrict__ distances, const PoolView& pool,
                                      ActiveCoef* coef, int32_t* s_idx, float (*s_wa)[3]) {
  const int lane = threadIdx.x;
  int32_t id[kPerLane];
  float d[kPerLane], tau[kPerLane];
  float shift = -INFINITY;
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) {
    const int j = lane + 32 * e;
    id[e] = j < k ? indices[row * k + j] : 0;
    d[e] = j < k ? distances[row * k + j] : 0.0f;
    tau[e] = j < k ? pool.tau[id[e]] : 1.0f;
    if (j < k && p.weighting == Weighting::softmax) shift = fmaxf(shift, -fabsf(d[e]) / tau[e]);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) shift = fmaxf(shift, __shfl_xor_sync(0xffffffffu, shift, o));
  float kv[kPerLane], kd[kPerLane], kt[kPerLane], sum = 0.0f;
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) {
    const int j = lane + 32 * e;
    kv[e] = j < k ? locality_kernel(p, d[e], tau[e], shift, &kd[e], &kt[e]) : 0.0f;
    sum += kv[e];
  }
  // Butterfly: each step adds a pair of equal partial sums in both lanes, so all lanes agree.
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  const float inv = 1.0f / sum;
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) {
    const int j = lane + 32 * e;
    if (j >= k) continue;
    ActiveCoef c;
    c.w = kv[e] * inv;
    c.w_dd = kd[e] * inv;
    c.w_dtau = kt[e] * inv;
    interpolation_coefficients(p.interpolation, d[e], pool.dneg[id[e]], pool.dpos[id[e]], c.a,
                               c.da);
    s_idx[j] = id[e];
    s_wa[j][0] = c.w * c.a[0];
    s_wa[j][1] = c.w * c.a[1];
    s_wa[j][2] = c.w * c.a[2];
    if (coef) coef[row * k + j] = c;
  }
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

/// VEC consecutive outputs per thread; the block covers kBlendThreads * VEC outputs of one row.
template <typename T, int VEC, int kPerLane>
__global__ void __launch_bounds__(kBlendThreads)
    blend_kernel(FieldParams params, int k, int64_t m_total, const int32_t* __restrict__ indices,
                 const float* __restrict__ distances, PoolView pool, const T* __restrict__ controls,
                 ActiveCoef* coef, float* __restrict__ y) {
  __shared__ int32_t s_idx[32 * kPerLane];
  __shared__ float s_wa[32 * kPerLane][3];
  const int64_t row = blockIdx.x;
  if (threadIdx.x < 32) {
    row_coefficients_warp<kPerLane>(params, row, k, indices, distances, pool,
                          blockIdx.y == 0 ? coef : nullptr, s_idx, s_wa);
  }
  __syncthreads();
  // Many rows: the whole row in one block, so its coefficients are computed once. Few rows:
  // gridDim.y blocks share the row's output tiles (each recomputes the coefficients).
  const int64_t tile_width = int64_t(kBlendThreads) * VEC;
  for (int64_t tile = blockIdx.y * tile_width; tile < m_total; tile += gridDim.y * tile_width) {
    const int64_t m0 = tile + int64_t(threadIdx.x) * VEC;
    if (m0 >= m_total) break;
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
}

template <typename T>
void launch_blend_typed(const FieldParams& params, int64_t rows, int k, const int32_t* indices,
                        const float* distances, const PoolView& pool, const T* controls,
                        ActiveCoef* coef, float* y, cudaStream_t stream) {
  const int64_t m = pool.output_dim;
  // Vector loads need every column start aligned: M a multiple of 4 does it (slices are
  // 128-byte aligned).
  // Few rows (decode steps): one-output tiles, spread over several blocks per row. Each output
  // is the same sum in the same order either way.
  const int64_t tiles1 = (m + kBlendThreads - 1) / kBlendThreads;
  const bool split = rows * ((m + 4 * kBlendThreads - 1) / (4 * kBlendThreads)) < kFewBlocks;
  const bool vec = m % 4 == 0 && !split;
  const unsigned splits =
      split ? static_cast<unsigned>(std::max<int64_t>(1, std::min(tiles1, kFewBlocks / rows))) : 1;
  const dim3 grid(static_cast<unsigned>(rows), splits);
  const bool wide = k > 32 * kNarrowPerLane;
  if (vec && !wide) {
    blend_kernel<T, 4, kNarrowPerLane><<<grid, kBlendThreads, 0, stream>>>(
        params, k, m, indices, distances, pool, controls, coef, y);
  } else if (vec) {
    blend_kernel<T, 4, kWidePerLane><<<grid, kBlendThreads, 0, stream>>>(
        params, k, m, indices, distances, pool, controls, coef, y);
  } else if (!wide) {
    blend_kernel<T, 1, kNarrowPerLane><<<grid, kBlendThreads, 0, stream>>>(
        params, k, m, indices, distances, pool, controls, coef, y);
  } else {
    blend_kernel<T, 1, kWidePerLane><<<grid, kBlendThreads, 0, stream>>>(
        params, k, m, indices, distances, pool, controls, coef, y);
  }
  HTFR_LAUNCH_CHECK();
}

}  // namespace

void launch_blend(const FieldParams& params, int64_t rows, int k, const int32_t* indices,
                  const float* distances, const PoolView& pool, Precision precision,
                  ActiveCoef* coef, float* y, cudaStream_t stream) {
  if (rows == 0) return;
  HTFR_REQUIRE(k >= 1 && k <= kMaxTopK, InvalidArgument,
               "blend needs 1 <= K <= " << kMaxTopK << ", got " << k);
  HTFR_REQUIRE(rows < (int64_t{1} << 31), InvalidArgument, "too many rows for one launch");
  if (precision == Precision::bf16) {
    launch_blend_typed(params, rows, k, indices, distances, pool,
                       static_cast<const __nv_bfloat16*>(pool.controls_half), coef, y, stream);
  } else if (precision == Precision::fp16) {
    launch_blend_typed(params, rows, k, indices, distances, pool,
                       static_cast<const __half*>(pool.controls_half), coef, y, stream);
  } else {
    launch_blend_typed(params, rows, k, indices, distances, pool, pool.controls, coef, y, stream);
  }
}

}  // namespace htfr::detail

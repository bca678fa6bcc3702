// The fused forward kernel: one warp per (row, output tile). The warp turns the row's selection
// into weights and interpolation coefficients (the shared formulas, one entry per lane,
// normalised with butterfly reductions, so every lane holds the same sum), then blends its tile
// with vectorised reads of the two control columns of each active tensor's segment, the
// coefficients broadcast by shuffles. Warps are numbered tile-major: the rows that run together
// share one tile, so that tile's control slices (all tensors: 3 x N x 512 bytes) stay in L2
// while the rows reuse them.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "blend.cuh"
#include "detail/check.hpp"
#include "launch.cuh"

namespace htfr::detail {

namespace {

constexpr int kBlendThreads = 256;
constexpr int kBlendWarps = kBlendThreads / 32;
// Selection entries per lane: 4 for K <= 128; the wider instance (more registers) only for K up
// to kMaxTopK.
constexpr int kNarrowPerLane = 4, kWidePerLane = 8;
static_assert(32 * kWidePerLane >= kMaxTopK, "one warp holds a row's whole selection");
// Fewer (row, tile) warps than this with 16-byte tiles (decode steps): one-output lanes instead,
// so more warps share the rows' loads.
constexpr int64_t kFewWarps = 1024;

/// A row's coefficients, one selection entry per lane and register slot e (entry lane + 32 e):
/// `col` is the first control column of the entry's segment (3 i + 0 or 3 i + 1), w0 / w1 the
/// weights w alpha of that column and the next. Writes `coef` when it is not null.
template <int kPerLane>
__device__ void row_coefficients_warp(const FieldParams& p, int64_t row, int k,
                                      const int32_t* __restrict__ indices,
                                      const float* __restrict__ distances, const PoolView& pool,
                                      ActiveCoef* coef, int32_t (&col)[kPerLane],
                                      float (&w0)[kPerLane], float (&w1)[kPerLane]) {
  const int lane = threadIdx.x & 31;
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
    col[e] = 0;
    w0[e] = w1[e] = 0.0f;
    if (j >= k) continue;
    ActiveCoef c;
    c.w = kv[e] * inv;
    c.w_dd = kd[e] * inv;
    c.w_dtau = kt[e] * inv;
    interpolation_coefficients(p.interpolation, d[e], pool.dneg[id[e]], pool.dpos[id[e]], c.a,
                               c.da);
    // alpha is zero outside the segment: columns (0, 1) on the negative side, (1, 2) otherwise.
    // (Selects, not c.a[first]: a runtime index would put c in local memory.)
    const bool negative = c.a[0] != 0.0f;
    col[e] = id[e] * 3 + (negative ? 0 : 1);
    w0[e] = c.w * (negative ? c.a[0] : c.a[1]);
    w1[e] = c.w * (negative ? c.a[1] : c.a[2]);
    if (coef) coef[row * k + j] = c;
  }
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

/// VEC consecutive controls, kept as loaded (16 bytes when VEC * sizeof(T) == 16) until used.
template <typename T, int VEC>
struct ControlVec {
  static constexpr bool kWide = VEC * sizeof(T) == 16;
  std::conditional_t<kWide, uint4, T[VEC]> raw;

  __device__ __forceinline__ void load(const T* p) {
    if constexpr (kWide) {
      raw = *reinterpret_cast<const uint4*>(p);
    } else {
#pragma unroll
      for (int v = 0; v < VEC; ++v) raw[v] = p[v];
    }
  }
  __device__ __forceinline__ void zero() {
    if constexpr (kWide) {
      raw = make_uint4(0, 0, 0, 0);
    } else {
#pragma unroll
      for (int v = 0; v < VEC; ++v) raw[v] = T(0.0f);
    }
  }
  __device__ __forceinline__ float operator[](int v) const {
    if constexpr (kWide) {
      return to_float(reinterpret_cast<const T*>(&raw)[v]);
    } else {
      return to_float(raw[v]);
    }
  }
};

/// VEC consecutive outputs per lane: a warp covers 32 * VEC outputs of one row. Every output is
/// the same sum in the same order (entries ascending, the segment's lower column first) whatever
/// VEC is. A column whose weight is zero is not read.
template <typename T, int VEC, int kPerLane>
__global__ void __launch_bounds__(kBlendThreads)
    blend_kernel(FieldParams params, int k, int64_t m_total, int64_t rows, int64_t tiles,
                 const int32_t* __restrict__ indices, const float* __restrict__ distances,
                 PoolView pool, const T* __restrict__ controls, ActiveCoef* coef,
                 float* __restrict__ y) {
  const int lane = threadIdx.x & 31;
  const int64_t items = rows * tiles;
  const int64_t first = int64_t(blockIdx.x) * kBlendWarps + (threadIdx.x >> 5);
  for (int64_t item = first; item < items; item += int64_t(gridDim.x) * kBlendWarps) {
    const int64_t tile = item / rows, row = item - tile * rows;
    int32_t col[kPerLane];
    float w0[kPerLane], w1[kPerLane];
    row_coefficients_warp<kPerLane>(params, row, k, indices, distances, pool,
                                    tile == 0 ? coef : nullptr, col, w0, w1);
    const int64_t m0 = (tile * 32 + lane) * VEC;
    const bool in = m0 < m_total;  // VEC divides m_total, so a lane is wholly in or out
    float acc[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[v] = 0.0f;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) {
      const int n_e = min(32, k - 32 * e);
      if (n_e <= 0) break;
      // Two entries at a time: their four loads are issued before any is used.
      constexpr int kUnroll = 2;
      for (int j0 = 0; j0 < n_e; j0 += kUnroll) {
        ControlVec<T, VEC> c0[kUnroll], c1[kUnroll];
        float a0[kUnroll], a1[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int src = j0 + u < n_e ? j0 + u : 0;
          const int32_t c = __shfl_sync(0xffffffffu, col[e], src);
          a0[u] = __shfl_sync(0xffffffffu, w0[e], src);
          a1[u] = __shfl_sync(0xffffffffu, w1[e], src);
          if (j0 + u >= n_e) a0[u] = a1[u] = 0.0f;
          const T* p = controls + int64_t(c) * m_total + m0;
          c0[u].zero();
          c1[u].zero();
          if (in && a0[u] != 0.0f) c0[u].load(p);
          if (in && a1[u] != 0.0f) c1[u].load(p + m_total);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
          for (int v = 0; v < VEC; ++v) {
            if (a0[u] != 0.0f) acc[v] += a0[u] * c0[u][v];
            if (a1[u] != 0.0f) acc[v] += a1[u] * c1[u][v];
          }
        }
      }
    }
    if (!in) continue;
    float* out = y + row * m_total + m0;
    if constexpr (VEC % 4 == 0) {
#pragma unroll
      for (int v = 0; v < VEC; v += 4) {
        *reinterpret_cast<float4*>(out + v) =
            make_float4(acc[v], acc[v + 1], acc[v + 2], acc[v + 3]);
      }
    } else {
#pragma unroll
      for (int v = 0; v < VEC; ++v) out[v] = acc[v];
    }
  }
}

template <typename T, int VEC>
void launch_blend_vec(const FieldParams& params, int64_t rows, int k, const int32_t* indices,
                      const float* distances, const PoolView& pool, const T* controls,
                      ActiveCoef* coef, float* y, cudaStream_t stream) {
  const int64_t m = pool.output_dim;
  const int64_t tiles = (m + 32 * VEC - 1) / (32 * VEC);
  const unsigned grid = grid_for(rows * tiles, kBlendWarps);
  if (k > 32 * kNarrowPerLane) {
    blend_kernel<T, VEC, kWidePerLane><<<grid, kBlendThreads, 0, stream>>>(
        params, k, m, rows, tiles, indices, distances, pool, controls, coef, y);
  } else {
    blend_kernel<T, VEC, kNarrowPerLane><<<grid, kBlendThreads, 0, stream>>>(
        params, k, m, rows, tiles, indices, distances, pool, controls, coef, y);
  }
  HTFR_LAUNCH_CHECK();
}

template <typename T>
void launch_blend_typed(const FieldParams& params, int64_t rows, int k, const int32_t* indices,
                        const float* distances, const PoolView& pool, const T* controls,
                        ActiveCoef* coef, float* y, cudaStream_t stream) {
  // 16-byte lanes need every column start 16-byte aligned: M a multiple of kVec does it (the
  // pool's slices are 128-byte aligned). Few rows (decode steps) take one-output lanes.
  constexpr int kVec = 16 / sizeof(T);
  const int64_t m = pool.output_dim;
  const bool vec = m % kVec == 0 && rows * ((m + 32 * kVec - 1) / (32 * kVec)) >= kFewWarps;
  if (vec) {
    launch_blend_vec<T, kVec>(params, rows, k, indices, distances, pool, controls, coef, y, stream);
  } else {
    launch_blend_vec<T, 1>(params, rows, k, indices, distances, pool, controls, coef, y, stream);
  }
}

}  // namespace

void launch_blend(const FieldParams& params, int64_t rows, int k, const int32_t* indices,
                  const float* distances, const PoolView& pool, Precision precision,
                  ActiveCoef* coef, float* y, cudaStream_t stream) {
  if (rows == 0) return;
  HTFR_REQUIRE(k >= 1 && k <= kMaxTopK, InvalidArgument,
               "blend needs 1 <= K <= " << kMaxTopK << ", got " << k);
  HTFR_REQUIRE(rows < (int64_t{1} << 31), InvalidArgument, "too many rows for one launch");
  HTFR_REQUIRE(pool.num_tensors <= (int64_t{1} << 31) / 3, InvalidArgument,
               "blend addresses control columns with 32-bit indices; N = " << pool.num_tensors
                                                                          << " is too large");
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

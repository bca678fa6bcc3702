// Training-step scatter without floating-point atomics: pairs are grouped by tensor with CUB's
// radix sort, and one block per touched tensor sums its rows in ascending order, so two runs on
// the same inputs give bit-identical parameters.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_run_length_encode.cuh>
#include <cub/device/device_scan.cuh>

#include "detail/check.hpp"
#include "half_pairs.cuh"
#include "launch.cuh"
#include "update.cuh"

namespace htfr::detail {

namespace {

constexpr int kThreads = 256;
using Reduce = cub::BlockReduce<float, kThreads>;

int key_bits(int64_t n) {
  int bits = 1;
  while ((int64_t{1} << bits) < n) ++bits;
  return bits;
}

__global__ void __launch_bounds__(kThreads) iota_kernel(int32_t* out, int64_t count) {
  HTFR_GRID_STRIDE(i, count) out[i] = static_cast<int32_t>(i);
}

__device__ __forceinline__ void store_half(void* base, int64_t at, float v, Precision p) {
  if (p == Precision::bf16) {
    static_cast<__nv_bfloat16*>(base)[at] = __float2bfloat16_rn(v);
  } else {
    static_cast<__half*>(base)[at] = __float2half_rn(v);
  }
}

/// Four values as T at `half + at` (8-byte aligned), one store.
template <typename T, int VEC>
__device__ __forceinline__ void store_half4(void* half, int64_t at, const float (&value)[VEC],
                                            bool streaming) {
  uint2 packed;
  packed.x = pack_pair<T>(value[0], value[1 % VEC]);
  packed.y = pack_pair<T>(value[2 % VEC], value[3 % VEC]);
  uint2* to = reinterpret_cast<uint2*>(static_cast<T*>(half) + at);
  if (streaming) {
    __stcs(to, packed);
  } else {
    *to = packed;
  }
}

/// Stores value[0..VEC) at row + m0 (fp32, and the half copy when present): one 16-byte and one
/// 8-byte store when VEC == 4 (the row length is then a multiple of 4), else element by element.
template <int VEC>
__device__ __forceinline__ void store_row(float* dst, void* half, Precision p, int64_t row,
                                          int64_t m0, int64_t len, const float (&value)[VEC],
                                          bool streaming = false) {
  if (VEC == 4 && m0 < len) {
    const float4 f = make_float4(value[0], value[1 % VEC], value[2 % VEC], value[3 % VEC]);
    if (streaming) {
      __stcs(reinterpret_cast<float4*>(dst + row + m0), f);
    } else {
      *reinterpret_cast<float4*>(dst + row + m0) = f;
    }
    if (half == nullptr) return;
    if (p == Precision::bf16) {
      store_half4<__nv_bfloat16>(half, row + m0, value, streaming);
    } else {
      store_half4<__half>(half, row + m0, value, streaming);
    }
    return;
  }
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    if (m0 + v >= len) break;
    dst[row + m0 + v] = value[v];
    if (half) store_half(half, row + m0 + v, value[v], p);
  }
}

__device__ __forceinline__ float load_f(const float* p, int64_t at) { return p[at]; }
__device__ __forceinline__ float load_f(const __nv_bfloat16* p, int64_t at) {
  return __bfloat162float(p[at]);
}
__device__ __forceinline__ float load_f(const __half* p, int64_t at) {
  return __half2float(p[at]);
}

/// Four consecutive values (at a multiple of 4, 8- or 16-byte aligned) as floats, one load.
__device__ __forceinline__ void load_row4(const float* p, float (&o)[4]) {
  const float4 q = *reinterpret_cast<const float4*>(p);
  o[0] = q.x;
  o[1] = q.y;
  o[2] = q.z;
  o[3] = q.w;
}
/// The same for a half type T, whose pairs are H2: one 8-byte load.
template <typename H2, typename T>
__device__ __forceinline__ void load_half_row4(const T* p, float (&o)[4]) {
  unpack_half4<H2>(*reinterpret_cast<const uint2*>(p), o);
}
__device__ __forceinline__ void load_row4(const __nv_bfloat16* p, float (&o)[4]) {
  load_half_row4<__nv_bfloat162>(p, o);
}
__device__ __forceinline__ void load_row4(const __half* p, float (&o)[4]) {
  load_half_row4<__half2>(p, o);
}

/// Values [at, at + VEC) of a row as floats, zero past `len`: one 8- or 16-byte load when VEC
/// is 4 (then len is a multiple of 4 and the row 16-byte aligned), else one value at a time.
template <int VEC, typename T>
__device__ __forceinline__ void load_slice(const T* row, int64_t at, int64_t len,
                                           float (&out)[VEC]) {
  if constexpr (VEC == 4) {
    if (at < len) {
      load_row4(row + at, out);
    } else {
#pragma unroll
      for (int v = 0; v < VEC; ++v) out[v] = 0.0f;
    }
  } else {
#pragma unroll
    for (int v = 0; v < VEC; ++v) out[v] = at + v < len ? load_f(row, at + v) : 0.0f;
  }
}

/// Pairs of one tensor staged in shared memory at a time.
constexpr int kStage = 128;

/// One block per touched tensor, one pass over its rows per chunk of kThreads * VEC outputs: the
/// chunk's old controls sit in registers, each row's gradient slice is read once, giving both the
/// control gradient (summed in registers, rows in ascending order) and the partial dot products
/// g_r . C_i[:, j] (warp-reduced, one slot per warp: no atomics). The tensor's pairs (row offset
/// and w * alpha) are staged in shared memory, so the only global load in the inner loop is the
/// gradient slice itself; tensors with more than kStage rows go round by round.
template <typename G, int VEC>
__global__ void __launch_bounds__(kThreads) control_update_kernel(UpdateArgs a, const G* g) {
  static_assert(kThreads / 32 == kDotParts, "one partial dot per warp");
  __shared__ int64_t s_row[kStage];
  __shared__ int32_t s_pair[kStage];
  __shared__ float s_wa[kStage][3];
  __shared__ float s_dot[kStage][kDotParts][3];
  const int64_t M = a.pool.output_dim;
  const int runs = *a.num_runs;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int run = blockIdx.x; run < runs; run += gridDim.x) {
    const int64_t i = a.run_tensor[run];
    const int32_t begin = a.run_offset[run], count = a.run_count[run];
    const bool one_round = count <= kStage;
    for (int64_t chunk = 0; chunk < M; chunk += int64_t(kThreads) * VEC) {
      const int64_t m0 = chunk + int64_t(threadIdx.x) * VEC;
      float c[3][VEC], grad[3][VEC];
#pragma unroll
      for (int j = 0; j < 3; ++j) {
        const float* col = a.pool.controls + (i * 3 + j) * M;
        if (VEC == 4 && m0 < M) {  // M % 4 == 0: one aligned 16-byte load
          const float4 q = __ldcs(reinterpret_cast<const float4*>(col + m0));
          c[j][0] = q.x;
          c[j][1 % VEC] = q.y;
          c[j][2 % VEC] = q.z;
          c[j][3 % VEC] = q.w;
        } else {
#pragma unroll
          for (int v = 0; v < VEC; ++v) c[j][v] = m0 + v < M ? col[m0 + v] : 0.0f;
        }
#pragma unroll
        for (int v = 0; v < VEC; ++v) grad[j][v] = 0.0f;
      }
      for (int base = 0; base < count; base += kStage) {
        const int n_round = min(kStage, count - base);
        if (!one_round || chunk == 0) {
          __syncthreads();  // the previous round's staging and dots are no longer read
          for (int t = threadIdx.x; t < n_round; t += kThreads) {
            const int32_t pair = a.sorted_pairs[begin + base + t];
            const ActiveCoef cf = a.coef[pair];
            s_pair[t] = pair;
            s_row[t] = int64_t(pair / a.k) * M;
            s_wa[t][0] = cf.w * cf.a[0];
            s_wa[t][1] = cf.w * cf.a[1];
            s_wa[t][2] = cf.w * cf.a[2];
          }
          __syncthreads();
        }
        const bool fresh = chunk == 0 || !one_round;
        // Four rows at a time: their gradient slices are loaded before any is used, so four
        // loads and four shuffle reductions are in flight together.
        constexpr int kUnroll = 4;
        for (int q0 = 0; q0 < n_round; q0 += kUnroll) {
          float gv[kUnroll][VEC];
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            const int q = min(q0 + u, n_round - 1);
            load_slice(g + s_row[q], m0, M, gv[u]);
          }
          float dot[kUnroll][3];
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            const int q = q0 + u;
            const bool valid = q < n_round;
#pragma unroll
            for (int j = 0; j < 3; ++j) {
              const float wa = valid ? s_wa[q][j] : 0.0f;
              dot[u][j] = 0.0f;
#pragma unroll
              for (int v = 0; v < VEC; ++v) {
                grad[j][v] += wa * gv[u][v];
                dot[u][j] += gv[u][v] * c[j][v];
              }
            }
          }
#pragma unroll
          for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
              for (int j = 0; j < 3; ++j) dot[u][j] += __shfl_down_sync(0xffffffffu, dot[u][j], o);
            }
          }
          if (lane == 0) {
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
              const int q = q0 + u;
              if (q >= n_round) break;
#pragma unroll
              for (int j = 0; j < 3; ++j) {
                s_dot[q][warp][j] = fresh ? dot[u][j] : s_dot[q][warp][j] + dot[u][j];
              }
            }
          }
        }
        if (!one_round) {
          // Several rounds: this round's partial dots go to global memory now (added per chunk).
          __syncthreads();
          for (int t = threadIdx.x; t < n_round * kDotParts * 3; t += kThreads) {
            float* slot = a.pair_dots + int64_t(s_pair[t / (kDotParts * 3)]) * kDotParts * 3 +
                          t % (kDotParts * 3);
            const float v = (&s_dot[0][0][0])[t];
            *slot = chunk == 0 ? v : *slot + v;
          }
        }
      }
#pragma unroll
      for (int j = 0; j < 3; ++j) {
        float value[VEC];
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          const int64_t at = (i * 3 + j) * M + m0 + v;
          const bool in = m0 + v < M;
          value[v] = c[j][v] + (in ? optimizer_delta(a.step, a.step.lr, grad[j][v],
                                                     a.m_controls ? a.m_controls + at : nullptr,
                                                     a.v_controls ? a.v_controls + at : nullptr)
                                   : 0.0f);
        }
        store_row(a.pool.controls, a.pool.controls_half, a.pool.half_precision,
                  (i * 3 + j) * M, m0, M, value, true);
      }
    }
    if (one_round) {
      __syncthreads();
      for (int t = threadIdx.x; t < count * kDotParts * 3; t += kThreads) {
        a.pair_dots[int64_t(s_pair[t / (kDotParts * 3)]) * kDotParts * 3 + t % (kDotParts * 3)] =
            (&s_dot[0][0][0])[t];
      }
    }
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kThreads) pair_gradient_kernel(UpdateArgs a) {
  HTFR_GRID_STRIDE(p, a.pairs) {
    float G[3] = {0.0f, 0.0f, 0.0f};
    const float* parts = a.pair_dots + p * kDotParts * 3;
    for (int w = 0; w < kDotParts; ++w) {
#pragma unroll
      for (int j = 0; j < 3; ++j) G[j] += parts[w * 3 + j];
    }
    a.pair_grad[p] = pair_gradient(a.coef[p], G, a.gy[p / a.k]);
  }
}

__global__ void __launch_bounds__(kThreads) input_grad_kernel(UpdateArgs a,
                                                              const int32_t* indices, float* dx) {
  const int64_t D = a.pool.input_dim;
  const int64_t r = blockIdx.x;
  for (int64_t j = threadIdx.x; j < D; j += kThreads) {
    float acc = 0.0f;
    for (int k = 0; k < a.k; ++k) {
      const int64_t p = r * a.k + k;
      acc += a.pair_grad[p].e_exact * a.pool.normals[int64_t(indices[p]) * D + j];
    }
    dx[r * D + j] = acc;
  }
}

/// Per-tensor sums over its rows for the scalar parameters and statistics.
struct PairSums {
  float grad_delta = 0, grad_tau = 0, sum_abs_d = 0, sum_loss = 0;
  float sum_pos = 0, sum_neg = 0, n_pos = 0, n_neg = 0;

  __device__ void add(float e, float g_tau, float d, float loss) {
    grad_delta += e;
    grad_tau += g_tau;
    sum_abs_d += fabsf(d);
    sum_loss += loss;
    if (d > 0.0f) {
      sum_pos += d;
      n_pos += 1.0f;
    }
    if (d < 0.0f) {
      sum_neg += d;
      n_neg += 1.0f;
    }
  }
};

struct PairSumsAdd {
  __device__ PairSums operator()(const PairSums& x, const PairSums& y) const {
    PairSums o;
    o.grad_delta = x.grad_delta + y.grad_delta;
    o.grad_tau = x.grad_tau + y.grad_tau;
    o.sum_abs_d = x.sum_abs_d + y.sum_abs_d;
    o.sum_loss = x.sum_loss + y.sum_loss;
    o.sum_pos = x.sum_pos + y.sum_pos;
    o.sum_neg = x.sum_neg + y.sum_neg;
    o.n_pos = x.n_pos + y.n_pos;
    o.n_neg = x.n_neg + y.n_neg;
    return o;
  }
};

using SumsReduce = cub::BlockReduce<PairSums, kThreads>;

/// The tensor's scalar parameters and statistics read by the geometry update, in the order the
/// last warp loads them into shared memory.
enum ScalarSlot { kOffset, kTau, kDpos, kDneg, kUseCount, kMeanAbsD, kLossTrace, kScalarSlots };

__device__ __forceinline__ const float* scalar_array(const PoolView& p, int slot) {
  switch (slot) {
    case kOffset: return p.offsets;
    case kTau: return p.tau;
    case kDpos: return p.dpos;
    case kDneg: return p.dneg;
    case kUseCount: return p.use_count;
    case kMeanAbsD: return p.mean_abs_d;
    default: return p.loss_trace;
  }
}

/// One block per touched tensor: the normal's gradient sum_r e_r x_r (rows in ascending order,
/// VEC consecutive coordinates per thread, the pairs' row offsets and e staged in shared memory),
/// optional clipping, the optimiser step, renormalisation; then the scalars from block-reduced
/// sums over the rows. Loads that do not depend on one another are issued together: the tensor's
/// scalars by the last warp while the pairs are staged, the per-pair values the sums need with
/// the staging, and each chunk's old normal before its gradient rows.
template <typename X, int VEC>
__global__ void __launch_bounds__(kThreads) geometry_update_kernel(UpdateArgs a, const X* x) {
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ typename SumsReduce::TempStorage sums_tmp;
  __shared__ float s_scale;
  __shared__ int64_t s_row[kStage];
  __shared__ float s_e[kStage], s_gtau[kStage], s_d[kStage], s_loss[kStage];
  __shared__ float s_scalar[kScalarSlots];
  const int64_t D = a.pool.input_dim, N = a.pool.num_tensors;
  const int runs = *a.num_runs;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int run = blockIdx.x; run < runs; run += gridDim.x) {
    const int64_t i = a.run_tensor[run];
    const int32_t begin = a.run_offset[run], count = a.run_count[run];
    const bool one_round = count <= kStage;
    if (warp == kThreads / 32 - 1 && lane < kScalarSlots) {
      s_scalar[lane] = scalar_array(a.pool, lane)[i];
    }
    auto e_of = [&](const PairGradient& pg) {
      return a.locality_gradient ? pg.e_exact : pg.e_paper;
    };
    auto stage = [&](int base, int n_round) {
      __syncthreads();
      for (int t = threadIdx.x; t < n_round; t += kThreads) {
        const int32_t pair = a.sorted_pairs[begin + base + t];
        const PairGradient pg = a.pair_grad[pair];
        s_row[t] = int64_t(pair / a.k) * D;
        s_e[t] = e_of(pg);
        s_gtau[t] = pg.g_tau;
        s_d[t] = a.distances[pair];
        s_loss[t] = a.row_loss[pair / a.k];
      }
      __syncthreads();
    };
    if (one_round) stage(0, count);
    // grad[v] = sum over the tensor's rows of e * x[row, j0 + v]; every thread calls it for every
    // chunk (it may stage, which synchronises the block). Rows go kGroup at a time, a short last
    // group repeating its last row with weight zero, so each group is one round of loads.
    auto chunk_grad = [&](int64_t j0, float (&grad)[VEC]) {
#pragma unroll
      for (int v = 0; v < VEC; ++v) grad[v] = 0.0f;
      for (int base = 0; base < count; base += kStage) {
        const int n_round = min(kStage, count - base);
        if (!one_round) stage(base, n_round);
        constexpr int kGroup = 4;
        for (int q = 0; q < n_round; q += kGroup) {
          float xv[kGroup][VEC];
#pragma unroll
          for (int u = 0; u < kGroup; ++u) {
            load_slice(x + s_row[min(q + u, n_round - 1)], j0, D, xv[u]);
          }
#pragma unroll
          for (int u = 0; u < kGroup; ++u) {
            const float e = q + u < n_round ? s_e[q + u] : 0.0f;
#pragma unroll
            for (int v = 0; v < VEC; ++v) grad[v] += e * xv[u][v];
          }
        }
      }
    };
    const int64_t step = int64_t(kThreads) * VEC;
    float clip_scale = 1.0f;
    if (a.step.geometry_clip > 0.0f) {
      float part = 0.0f;
      for (int64_t chunk = 0; chunk < D; chunk += step) {
        float grad[VEC];
        chunk_grad(chunk + int64_t(threadIdx.x) * VEC, grad);
#pragma unroll
        for (int v = 0; v < VEC; ++v) part += grad[v] * grad[v];
      }
      const float total = Reduce(tmp).Sum(part);
      if (threadIdx.x == 0) {
        const float norm = sqrtf(total);
        s_scale = norm > a.step.geometry_clip ? a.step.geometry_clip / norm : 1.0f;
      }
      __syncthreads();
      clip_scale = s_scale;
      __syncthreads();
    }
    float* n = a.pool.normals + i * D;
    float part = 0.0f;
    for (int64_t chunk = 0; chunk < D; chunk += step) {
      const int64_t j0 = chunk + int64_t(threadIdx.x) * VEC;
      float old[VEC];
      if (VEC == 4 && j0 < D) {
        const float4 q = __ldcs(reinterpret_cast<const float4*>(n + j0));
        old[0] = q.x;
        old[1 % VEC] = q.y;
        old[2 % VEC] = q.z;
        old[3 % VEC] = q.w;
      } else {
#pragma unroll
        for (int v = 0; v < VEC; ++v) old[v] = j0 + v < D ? n[j0 + v] : 0.0f;
      }
      float grad[VEC];
      chunk_grad(j0, grad);
      float value[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        const int64_t j = j0 + v;
        const int64_t at = i * D + j;
        value[v] = j < D ? old[v] + optimizer_delta(a.step, a.step.lr_geometry,
                                                   grad[v] * clip_scale,
                                                   a.m_normals ? a.m_normals + at : nullptr,
                                                   a.v_normals ? a.v_normals + at : nullptr)
                         : 0.0f;
        part += value[v] * value[v];
      }
      // Unnormalised for now; the half copy is written after renormalisation.
      store_row(a.pool.normals, static_cast<void*>(nullptr), a.pool.half_precision, i * D, j0, D,
                value);
    }
    const float total = Reduce(tmp).Sum(part);
    if (threadIdx.x == 0) s_scale = 1.0f / (sqrtf(total) + 1e-12f);
    __syncthreads();
    const float inv = s_scale;
    for (int64_t chunk = 0; chunk < D; chunk += step) {
      const int64_t j0 = chunk + int64_t(threadIdx.x) * VEC;
      float value[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) value[v] = j0 + v < D ? n[j0 + v] * inv : 0.0f;
      store_row(a.pool.normals, a.pool.normals_half, a.pool.half_precision, i * D, j0, D, value,
                true);
    }
    // The tensor's scalar sums, one pair per thread and a fixed-order block reduction; a tensor
    // staged in one round has its per-pair values in shared memory already.
    PairSums part_sums;
    for (int q = threadIdx.x; q < count; q += kThreads) {
      if (one_round) {
        part_sums.add(s_e[q], s_gtau[q], s_d[q], s_loss[q]);
      } else {
        const int32_t pair = a.sorted_pairs[begin + q];
        const PairGradient pg = a.pair_grad[pair];
        part_sums.add(e_of(pg), pg.g_tau, a.distances[pair], a.row_loss[pair / a.k]);
      }
    }
    const PairSums sums = SumsReduce(sums_tmp).Reduce(part_sums, PairSumsAdd{});
    if (threadIdx.x == 0) {
      const float grad_delta = sums.grad_delta, grad_tau = sums.grad_tau;
      const double sum_abs_d = sums.sum_abs_d, sum_loss = sums.sum_loss;
      const float sum_pos = sums.sum_pos, sum_neg = sums.sum_neg;
      const int n_pos = static_cast<int>(sums.n_pos), n_neg = static_cast<int>(sums.n_neg);
      const StepParams& s = a.step;
      a.pool.offsets[i] = s_scalar[kOffset] +
                          optimizer_delta(s, s.lr_geometry, static_cast<float>(grad_delta),
                                          a.m_scalars ? a.m_scalars + i : nullptr,
                                          a.v_scalars ? a.v_scalars + i : nullptr);
      if (s.lr_tau > 0.0f) {
        const float t = s_scalar[kTau] +
                        optimizer_delta(s, s.lr_tau, static_cast<float>(grad_tau),
                                        a.m_scalars ? a.m_scalars + N + i : nullptr,
                                        a.v_scalars ? a.v_scalars + N + i : nullptr);
        a.pool.tau[i] = fmaxf(t, s.tau_min);
      }
      a.pool.dpos[i] = adapt_band(s_scalar[kDpos], s.band_gamma, n_pos,
                                  n_pos ? float(sum_pos / n_pos) : 0.0f, s.band_min, true);
      a.pool.dneg[i] = adapt_band(s_scalar[kDneg], s.band_gamma, n_neg,
                                  n_neg ? float(sum_neg / n_neg) : 0.0f, s.band_min, false);
      const float old = s_scalar[kUseCount];
      a.pool.mean_abs_d[i] = static_cast<float>(
          (double(s_scalar[kMeanAbsD]) * old + sum_abs_d) / (double(old) + count));
      const float mean_loss = static_cast<float>(sum_loss / count);
      a.pool.loss_trace[i] =
          old == 0.0f ? mean_loss : 0.9f * s_scalar[kLossTrace] + 0.1f * mean_loss;
      a.pool.use_count[i] = old + static_cast<float>(count);
      a.pool.last_used[i] = s.step;
    }
    __syncthreads();
  }
}

unsigned run_grid(int64_t max_runs) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(max_runs, 65535)));
}

}  // namespace

std::size_t group_pairs_temp_bytes(int64_t pairs, int64_t n) {
  const int count = static_cast<int>(pairs);
  std::size_t sort = 0, rle = 0, scan = 0;
  HTFR_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort, static_cast<int32_t*>(nullptr),
                                                  static_cast<int32_t*>(nullptr),
                                                  static_cast<int32_t*>(nullptr),
                                                  static_cast<int32_t*>(nullptr), count, 0,
                                                  key_bits(n)));
  HTFR_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(
      nullptr, rle, static_cast<int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
      static_cast<int32_t*>(nullptr), static_cast<int32_t*>(nullptr), count));
  HTFR_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan, static_cast<int32_t*>(nullptr),
                                                static_cast<int32_t*>(nullptr), count));
  return std::max({sort, rle, scan});
}

void launch_group_pairs(const int32_t* indices, int64_t pairs, int64_t n, void* temp,
                        std::size_t temp_bytes, int32_t* pair_ids, int32_t* sorted_keys,
                        int32_t* sorted_pairs, int32_t* run_tensor, int32_t* run_count,
                        int32_t* run_offset, int32_t* num_runs, cudaStream_t stream) {
  HTFR_REQUIRE(pairs > 0 && pairs < (int64_t{1} << 31), InvalidArgument,
               "rows * K = " << pairs << " must be in [1, 2^31)");
  const int count = static_cast<int>(pairs);
  iota_kernel<<<grid_for(pairs, kThreads), kThreads, 0, stream>>>(pair_ids, pairs);
  HTFR_LAUNCH_CHECK();
  std::size_t bytes = temp_bytes;
  HTFR_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, bytes, indices, sorted_keys, pair_ids,
                                                  sorted_pairs, count, 0, key_bits(n), stream));
  // Runs past num_runs stay zero, so the scan below reads only initialised memory.
  HTFR_CUDA_CHECK(cudaMemsetAsync(run_count, 0, sizeof(int32_t) * pairs, stream));
  bytes = temp_bytes;
  HTFR_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(temp, bytes, sorted_keys, run_tensor,
                                                     run_count, num_runs, count, stream));
  bytes = temp_bytes;
  HTFR_CUDA_CHECK(
      cub::DeviceScan::ExclusiveSum(temp, bytes, run_count, run_offset, count, stream));
}

template <typename G>
void launch_control_update_typed(const UpdateArgs& args, const G* g, int64_t max_runs,
                                 cudaStream_t stream) {
  if (args.pool.output_dim % 4 == 0) {
    control_update_kernel<G, 4><<<run_grid(max_runs), kThreads, 0, stream>>>(args, g);
  } else {
    control_update_kernel<G, 1><<<run_grid(max_runs), kThreads, 0, stream>>>(args, g);
  }
  HTFR_LAUNCH_CHECK();
}

void launch_control_update(const UpdateArgs& args, int64_t max_runs, cudaStream_t stream) {
  if (args.g_half == nullptr) {
    launch_control_update_typed(args, args.g, max_runs, stream);
  } else if (args.pool.half_precision == Precision::bf16) {
    launch_control_update_typed(args, static_cast<const __nv_bfloat16*>(args.g_half), max_runs,
                                stream);
  } else {
    launch_control_update_typed(args, static_cast<const __half*>(args.g_half), max_runs, stream);
  }
}

void launch_pair_gradients(const UpdateArgs& args, cudaStream_t stream) {
  pair_gradient_kernel<<<grid_for(args.pairs, kThreads), kThreads, 0, stream>>>(args);
  HTFR_LAUNCH_CHECK();
}

void launch_input_grad(const UpdateArgs& args, const int32_t* indices, int64_t rows, float* dx,
                       cudaStream_t stream) {
  if (rows == 0) return;
  input_grad_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(args, indices, dx);
  HTFR_LAUNCH_CHECK();
}

template <typename X>
void launch_geometry_update_typed(const UpdateArgs& args, const X* x, int64_t max_runs,
                                  cudaStream_t stream) {
  // VEC 4 reads x four values at a time: the rows must be 16-byte aligned (x itself is the
  // caller's array when there is no half copy).
  if (args.pool.input_dim % 4 == 0 && reinterpret_cast<std::uintptr_t>(x) % 16 == 0) {
    geometry_update_kernel<X, 4><<<run_grid(max_runs), kThreads, 0, stream>>>(args, x);
  } else {
    geometry_update_kernel<X, 1><<<run_grid(max_runs), kThreads, 0, stream>>>(args, x);
  }
  HTFR_LAUNCH_CHECK();
}

void launch_geometry_update(const UpdateArgs& args, int64_t max_runs, cudaStream_t stream) {
  if (args.x_half == nullptr) {
    launch_geometry_update_typed(args, args.x, max_runs, stream);
  } else if (args.pool.half_precision == Precision::bf16) {
    launch_geometry_update_typed(args, static_cast<const __nv_bfloat16*>(args.x_half), max_runs,
                                 stream);
  } else {
    launch_geometry_update_typed(args, static_cast<const __half*>(args.x_half), max_runs, stream);
  }
}

}  // namespace htfr::detail

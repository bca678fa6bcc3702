// Row-level helper kernels of the HFT trainer and evaluator. Reductions use CUB block
// primitives in a fixed order, so results are reproducible run to run.
#include "hft_rows.cuh"

#include <cuda_fp16.h>

#include <cub/block/block_reduce.cuh>

#include "detail/check.hpp"
#include "launch.cuh"

namespace htfr::detail {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    gather_int_kernel(const int32_t* __restrict__ src, const int64_t* index, int64_t rows,
                      int32_t* __restrict__ dst) {
  HTFR_GRID_STRIDE(r, rows) dst[r] = src[index[r]];
}

__device__ float half_bits_to_float(uint16_t bits) {
  return __half2float(__ushort_as_half(bits));
}

__global__ void __launch_bounds__(kThreads)
    teacher_probs_kernel(const uint16_t* __restrict__ lp, int64_t width, const int64_t* index,
                         int64_t rows, float* __restrict__ probs) {
  HTFR_GRID_STRIDE(i, rows * width) {
    const int64_t r = i / width, c = i - r * width;
    probs[i] = expf(half_bits_to_float(lp[index[r] * width + c]));
  }
}

__global__ void __launch_bounds__(kThreads)
    history_write_kernel(const float* __restrict__ y, const int32_t* streams,
                         const int32_t* positions, int64_t rows, int64_t R, int64_t H,
                         float* __restrict__ ring) {
  HTFR_GRID_STRIDE(i, rows * H) {
    const int64_t r = i / H, h = i - r * H;
    ring[(static_cast<int64_t>(streams[r]) * R + positions[r] % R) * H + h] = y[i];
  }
}

__global__ void __launch_bounds__(kThreads)
    axpy_kernel(const float* __restrict__ a, float alpha, const float* __restrict__ b, int64_t n,
                float* __restrict__ out) {
  HTFR_GRID_STRIDE(i, n) out[i] = a[i] + alpha * b[i];
}

struct ArgMax {
  float value;
  int index;
};
struct ArgMaxOp {
  __device__ ArgMax operator()(const ArgMax& a, const ArgMax& b) const {
    if (a.value > b.value || (a.value == b.value && a.index < b.index)) return a;
    return b;
  }
};

__global__ void __launch_bounds__(kThreads)
    row_metrics_kernel(const float* __restrict__ logits, const uint16_t* __restrict__ lp,
                       const int64_t* index, const int32_t* target, int64_t width,
                       float* __restrict__ metrics) {
  using Reduce = cub::BlockReduce<float, kThreads>;
  using ArgReduce = cub::BlockReduce<ArgMax, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ typename ArgReduce::TempStorage arg_tmp;
  __shared__ float shared_max, shared_lse;
  const int64_t r = blockIdx.x;
  const float* z = logits + r * width;
  const uint16_t* q = lp + index[r] * width;
  ArgMax s_best{-INFINITY, 0}, t_best{-INFINITY, 0};
  float local_max = -INFINITY;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
    local_max = fmaxf(local_max, z[c]);
    s_best = ArgMaxOp()(s_best, ArgMax{z[c], static_cast<int>(c)});
    t_best = ArgMaxOp()(t_best, ArgMax{half_bits_to_float(q[c]), static_cast<int>(c)});
  }
  const float block_max = Reduce(tmp).Reduce(local_max, ::cuda::maximum<>{});
  if (threadIdx.x == 0) shared_max = block_max;
  __syncthreads();
  const ArgMax s_arg = ArgReduce(arg_tmp).Reduce(s_best, ArgMaxOp());
  __syncthreads();
  const ArgMax t_arg = ArgReduce(arg_tmp).Reduce(t_best, ArgMaxOp());
  float local_sum = 0;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) local_sum += expf(z[c] - shared_max);
  __syncthreads();
  const float sum = Reduce(tmp).Sum(local_sum);
  if (threadIdx.x == 0) shared_lse = shared_max + logf(sum);
  __syncthreads();
  const float lse = shared_lse;
  float local_kl = 0;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
    const float lq = half_bits_to_float(q[c]);
    const float pq = expf(lq);
    if (pq > 0) local_kl += pq * (lq - (z[c] - lse));
  }
  __syncthreads();
  const float kl = Reduce(tmp).Sum(local_kl);
  if (threadIdx.x == 0) {
    const int t = target[r];
    float* m = metrics + r * kRowMetrics;
    m[kStudentLogp] = z[t] - lse;
    m[kTeacherLogp] = half_bits_to_float(q[t]);
    m[kKl] = kl;
    m[kTop1] = s_arg.index == t_arg.index ? 1.0f : 0.0f;
    m[kTargetTop1] = s_arg.index == t ? 1.0f : 0.0f;
  }
}

__global__ void __launch_bounds__(kThreads)
    row_cosine_kernel(const float* __restrict__ y, const float* __restrict__ t, int64_t width,
                      float* __restrict__ cosine) {
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t r = blockIdx.x;
  float yy = 0, tt = 0, yt = 0;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
    const float a = y[r * width + c], b = t[r * width + c];
    yy += a * a;
    tt += b * b;
    yt += a * b;
  }
  const float syy = Reduce(tmp).Sum(yy);
  __syncthreads();
  const float stt = Reduce(tmp).Sum(tt);
  __syncthreads();
  const float syt = Reduce(tmp).Sum(yt);
  if (threadIdx.x == 0) cosine[r] = (syy > 0 && stt > 0) ? syt / sqrtf(syy * stt) : 0.0f;
}

__global__ void __launch_bounds__(kThreads)
    row_norm_kernel(const float* __restrict__ v, int64_t width, float scale,
                    float* __restrict__ norm) {
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t r = blockIdx.x;
  float ss = 0;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
    const float a = v[r * width + c];
    ss += a * a;
  }
  const float total = Reduce(tmp).Sum(ss);
  if (threadIdx.x == 0) norm[r] = scale * sqrtf(total);
}

__global__ void __launch_bounds__(kThreads)
    centred_logprobs_kernel(const uint16_t* __restrict__ lp, int64_t width, const int64_t* index,
                            float floor, float* __restrict__ out) {
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float shared_mean;
  const int64_t r = blockIdx.x;
  const uint16_t* q = lp + index[r] * width;
  float local = 0;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x)
    local += fmaxf(half_bits_to_float(q[c]), floor);
  const float sum = Reduce(tmp).Sum(local);
  if (threadIdx.x == 0) shared_mean = sum / static_cast<float>(width);
  __syncthreads();
  const float mean = shared_mean;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x)
    out[r * width + c] = fmaxf(half_bits_to_float(q[c]), floor) - mean;
}

}  // namespace

void launch_gather_int(const int32_t* src, const int64_t* index, int64_t rows, int32_t* dst,
                       cudaStream_t stream) {
  if (rows == 0) return;
  gather_int_kernel<<<grid_for(rows, kThreads), kThreads, 0, stream>>>(src, index, rows, dst);
  HTFR_LAUNCH_CHECK();
}

void launch_teacher_probs(const uint16_t* logprobs, int64_t width, const int64_t* index,
                          int64_t rows, float* probs, cudaStream_t stream) {
  if (rows * width == 0) return;
  teacher_probs_kernel<<<grid_for(rows * width, kThreads), kThreads, 0, stream>>>(
      logprobs, width, index, rows, probs);
  HTFR_LAUNCH_CHECK();
}

void launch_history_write(const float* y, const int32_t* streams, const int32_t* positions,
                          int64_t rows, int64_t R, int64_t H, float* ring, cudaStream_t stream) {
  if (rows * H == 0 || R == 0) return;
  history_write_kernel<<<grid_for(rows * H, kThreads), kThreads, 0, stream>>>(
      y, streams, positions, rows, R, H, ring);
  HTFR_LAUNCH_CHECK();
}

void launch_axpy(const float* a, float alpha, const float* b, int64_t n, float* out,
                 cudaStream_t stream) {
  if (n == 0) return;
  axpy_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(a, alpha, b, n, out);
  HTFR_LAUNCH_CHECK();
}

void launch_row_metrics(const float* logits, const uint16_t* logprobs, const int64_t* index,
                        const int32_t* target, int64_t rows, int64_t width, float* metrics,
                        cudaStream_t stream) {
  if (rows == 0) return;
  row_metrics_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      logits, logprobs, index, target, width, metrics);
  HTFR_LAUNCH_CHECK();
}

void launch_row_cosine(const float* y, const float* t, int64_t rows, int64_t width, float* cosine,
                       cudaStream_t stream) {
  if (rows == 0) return;
  row_cosine_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(y, t, width, cosine);
  HTFR_LAUNCH_CHECK();
}

void launch_row_norm(const float* v, int64_t rows, int64_t width, float scale, float* norm,
                     cudaStream_t stream) {
  if (rows == 0) return;
  row_norm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(v, width, scale, norm);
  HTFR_LAUNCH_CHECK();
}

void launch_centred_logprobs(const uint16_t* logprobs, int64_t width, const int64_t* index,
                             int64_t rows, float floor, float* out, cudaStream_t stream) {
  if (rows == 0 || width == 0) return;
  centred_logprobs_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      logprobs, width, index, floor, out);
  HTFR_LAUNCH_CHECK();
}

}  // namespace htfr::detail

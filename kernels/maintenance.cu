// Reseeding kernel: the offset needs one dot product per tensor, so one block per tensor computes
// it and then writes the tensor's rows (fp32 masters and half copies).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cub/block/block_reduce.cuh>
#include <cub/device/device_radix_sort.cuh>

#include "detail/device.hpp"
#include "launch.cuh"

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
  if (i < 0) return;  // nothing to reseed for this row (uniform over the block)
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

__global__ void __launch_bounds__(kThreads)
    decay_kernel(const float* use_count, float* last, float* decayed, int64_t n, float decay) {
  HTFR_GRID_STRIDE(i, n) {
    decayed[i] = decay * decayed[i] + (use_count[i] - last[i]);
    last[i] = use_count[i];
  }
}

__global__ void __launch_bounds__(kThreads) iota_kernel(int32_t* v, int64_t n) {
  HTFR_GRID_STRIDE(i, n) v[i] = static_cast<int32_t>(i);
}

__global__ void __launch_bounds__(kThreads)
    push_kernel(QueueView q, const int32_t* order, int64_t head, const float* x,
                const float* target, const int32_t* target_index, float class_value,
                const float* loss) {
  const int64_t r = blockIdx.x, row = order[r];
  const int64_t slot = (head + r) % q.capacity;
  for (int64_t j = threadIdx.x; j < q.input_dim; j += kThreads)
    q.x[slot * q.input_dim + j] = x[row * q.input_dim + j];
  for (int64_t m = threadIdx.x; m < q.output_dim; m += kThreads) {
    q.target[slot * q.output_dim + m] =
        target ? target[row * q.output_dim + m] : (m == target_index[row] ? class_value : 0.0f);
  }
  if (threadIdx.x == 0) q.loss[slot] = loss[row];
}

__global__ void __launch_bounds__(kThreads)
    take_kernel(QueueView q, const int32_t* slots, const int32_t* least, int64_t* tensor,
                float* xs, float* ts, float* decayed, float* last, unsigned long long* taken) {
  const int64_t r = blockIdx.x, slot = slots[r];
  const bool valid = isfinite(q.loss[slot]);
  __syncthreads();  // every thread has read the loss before it is overwritten
  if (!valid) {
    if (threadIdx.x == 0) tensor[r] = -1;
    return;
  }
  for (int64_t j = threadIdx.x; j < q.input_dim; j += kThreads)
    xs[r * q.input_dim + j] = q.x[slot * q.input_dim + j];
  for (int64_t m = threadIdx.x; m < q.output_dim; m += kThreads)
    ts[r * q.output_dim + m] = q.target[slot * q.output_dim + m];
  if (threadIdx.x == 0) {
    const int64_t i = least[r];
    tensor[r] = i;
    q.loss[slot] = -INFINITY;
    decayed[i] = 0.0f;
    last[i] = 0.0f;
    atomicAdd(taken, 1ull);  // an integer count: the same whatever the order
  }
}

}  // namespace

void launch_decay_usage(const float* use_count, float* last, float* decayed, int64_t n,
                        float decay, cudaStream_t stream) {
  if (n == 0) return;
  decay_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(use_count, last, decayed, n,
                                                              decay);
  HTFR_LAUNCH_CHECK();
}

std::size_t sorted_order_workspace_bytes(int64_t n) {
  std::size_t temp = 0;
  HTFR_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, temp, static_cast<const float*>(nullptr), static_cast<float*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), static_cast<int>(n)));
  return align128(n * sizeof(float)) + align128(n * sizeof(int32_t)) + align128(temp);
}

void launch_sorted_order(const float* keys, int64_t n, bool descending, int32_t* order,
                         void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
  if (n == 0) return;
  Carver carve(workspace);
  float* keys_out = carve.take<float>(n);
  int32_t* iota = carve.take<int32_t>(n);
  void* temp = carve.take<char>(0);
  std::size_t temp_bytes = workspace_bytes - carve.used();
  iota_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(iota, n);
  HTFR_LAUNCH_CHECK();
  if (descending) {
    HTFR_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(
        temp, temp_bytes, keys, keys_out, iota, order, static_cast<int>(n), 0, 32, stream));
  } else {
    HTFR_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys, keys_out, iota, order,
                                                    static_cast<int>(n), 0, 32, stream));
  }
}

void launch_push_rows(const QueueView& q, const int32_t* order, int64_t count, int64_t head,
                      const float* x, const float* target, const int32_t* target_index,
                      float class_value, const float* loss, cudaStream_t stream) {
  if (count == 0) return;
  push_kernel<<<static_cast<unsigned>(count), kThreads, 0, stream>>>(
      q, order, head, x, target, target_index, class_value, loss);
  HTFR_LAUNCH_CHECK();
}

void launch_take_rows(const QueueView& q, const int32_t* slots, const int32_t* least,
                      int64_t count, int64_t* tensor, float* xs, float* ts, float* decayed,
                      float* last, unsigned long long* taken, cudaStream_t stream) {
  if (count == 0) return;
  take_kernel<<<static_cast<unsigned>(count), kThreads, 0, stream>>>(q, slots, least, tensor, xs,
                                                                     ts, decayed, last, taken);
  HTFR_LAUNCH_CHECK();
}

void launch_reseed(const PoolView& pool, const int64_t* index, const float* normals,
                   const float* x, const float* targets, int64_t count, float band, float tau,
                   cudaStream_t stream) {
  if (count == 0) return;
  reseed_kernel<<<static_cast<unsigned>(count), kThreads, 0, stream>>>(pool, index, normals, x,
                                                                      targets, band, tau);
  HTFR_LAUNCH_CHECK();
}

}  // namespace htfr::detail

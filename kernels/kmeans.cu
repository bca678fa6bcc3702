// k-means and per-cluster geometry kernels. Every reduction has a fixed order (strided per
// thread, then a CUB block reduction; segmented sums walk a cluster's rows in ascending order),
// and the only atomics are integer counters, so results are bit-identical run to run.
#include <algorithm>
#include <cub/block/block_reduce.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "detail/check.hpp"
#include "kmeans.cuh"
#include "launch.cuh"

namespace htfr::detail {

namespace {

constexpr int kThreads = 256;
using DoubleReduce = cub::BlockReduce<double, kThreads>;

int key_bits(int64_t n) {
  int bits = 1;
  while ((int64_t{1} << bits) < n) ++bits;
  return bits;
}

/// Blocks for one-block-per-item kernels (grid x is limited to 2^31 - 1).
unsigned item_grid(int64_t items) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(items, INT32_MAX)));
}

__global__ void __launch_bounds__(kThreads)
    row_sq_norms_kernel(const float* x, int64_t rows, int64_t dim, float* out) {
  __shared__ typename DoubleReduce::TempStorage tmp;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* row = x + r * dim;
    double acc = 0.0;
    for (int64_t j = threadIdx.x; j < dim; j += kThreads) acc += double(row[j]) * row[j];
    const double total = DoubleReduce(tmp).Sum(acc);
    if (threadIdx.x == 0) out[r] = static_cast<float>(total);
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kThreads)
    gather_rows_kernel(const float* x, int64_t dim, const int64_t* index, int64_t count,
                       float* out) {
  HTFR_GRID_STRIDE(t, count * dim) {
    const int64_t q = t / dim, j = t % dim;
    out[t] = x[index[q] * dim + j];
  }
}

/// (distance, index) with lexicographic minimum: associative and commutative, so the block
/// reduction's result does not depend on its order.
struct Nearest {
  float dist;
  int32_t index;
};

struct NearestMin {
  __device__ Nearest operator()(const Nearest& a, const Nearest& b) const {
    if (b.dist < a.dist || (b.dist == a.dist && b.index < a.index)) return b;
    return a;
  }
};

using NearestReduce = cub::BlockReduce<Nearest, kThreads>;

__global__ void __launch_bounds__(kThreads)
    argmin_tile_kernel(const float* dots, int64_t rows, int64_t k, const float* x_norm,
                       const float* c_norm, int32_t* assignment, float* min_dist,
                       int32_t* changed) {
  __shared__ typename NearestReduce::TempStorage tmp;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* row = dots + r * k;
    const float xn = x_norm[r];
    Nearest best{INFINITY, INT32_MAX};
    for (int64_t j = threadIdx.x; j < k; j += kThreads) {
      const float d = fmaxf(xn - 2.0f * row[j] + c_norm[j], 0.0f);
      if (d < best.dist || best.index == INT32_MAX) best = Nearest{d, static_cast<int32_t>(j)};
    }
    const Nearest total = NearestReduce(tmp).Reduce(best, NearestMin{});
    if (threadIdx.x == 0) {
      if (assignment[r] != total.index) atomicAdd(changed, 1);
      assignment[r] = total.index;
      min_dist[r] = total.dist;
    }
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kThreads)
    sum_fixed_order_kernel(const float* v, int64_t n, double* out) {
  __shared__ typename DoubleReduce::TempStorage tmp;
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) acc += v[i];
  const double total = DoubleReduce(tmp).Sum(acc);
  if (threadIdx.x == 0) *out = total;
}

__global__ void __launch_bounds__(kThreads) iota_kernel(int32_t* out, int64_t count) {
  HTFR_GRID_STRIDE(i, count) out[i] = static_cast<int32_t>(i);
}

__global__ void __launch_bounds__(kThreads)
    histogram_kernel(const int32_t* assignment, int64_t rows, int32_t* sizes) {
  HTFR_GRID_STRIDE(r, rows) atomicAdd(sizes + assignment[r], 1);
}

/// Rows of one cluster staged in shared memory at a time.
constexpr int kStage = kThreads;

/// Grid: x = cluster, y = chunk of kThreads coordinates. Each thread owns one coordinate and
/// walks the cluster's rows in ascending order.
__global__ void __launch_bounds__(kThreads)
    segmented_sum_kernel(const float* x, int64_t dim, const int32_t* sorted_rows,
                         const int32_t* offsets, const int32_t* sizes, int64_t k,
                         const float* weights, const float* center, bool mean, float* out) {
  __shared__ int64_t s_row[kStage];
  __shared__ float s_w[kStage];
  const int64_t j = int64_t(blockIdx.y) * kThreads + threadIdx.x;
  for (int64_t c = blockIdx.x; c < k; c += gridDim.x) {
    const int32_t begin = offsets[c], count = sizes[c];
    if (count == 0) continue;  // uniform across the block
    const float shift = center != nullptr && j < dim ? center[c * dim + j] : 0.0f;
    double acc = 0.0;
    for (int base = 0; base < count; base += kStage) {
      const int n_round = min(kStage, count - base);
      __syncthreads();
      if (threadIdx.x < n_round) {
        const int32_t r = sorted_rows[begin + base + threadIdx.x];
        s_row[threadIdx.x] = int64_t(r) * dim;
        s_w[threadIdx.x] = weights != nullptr ? weights[r] : 1.0f;
      }
      __syncthreads();
      if (j < dim) {
        for (int q = 0; q < n_round; ++q) acc += double(s_w[q]) * (double(x[s_row[q] + j]) - shift);
      }
    }
    if (j < dim) out[c * dim + j] = static_cast<float>(mean ? acc / double(count) : acc);
  }
}

__global__ void __launch_bounds__(kThreads)
    project_rows_kernel(const float* x, int64_t rows, int64_t dim, const int32_t* assignment,
                        const float* center, const float* dir, float* proj) {
  __shared__ typename DoubleReduce::TempStorage tmp;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t c = assignment[r];
    const float* xr = x + r * dim;
    const float* mu = center + c * dim;
    const float* v = dir + c * dim;
    double acc = 0.0;
    for (int64_t j = threadIdx.x; j < dim; j += kThreads)
      acc += (double(xr[j]) - double(mu[j])) * double(v[j]);
    const double total = DoubleReduce(tmp).Sum(acc);
    if (threadIdx.x == 0) proj[r] = static_cast<float>(total);
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kThreads)
    direction_start_kernel(float* w, int64_t k, int64_t dim, uint64_t seed) {
  HTFR_GRID_STRIDE(t, k * dim) w[t] = direction_start(seed, t / dim, t % dim);
}

/// Largest |value| with the smallest coordinate on ties (order-independent, like NearestMin).
struct Largest {
  float magnitude;
  int64_t index;
};

struct LargestMax {
  __device__ Largest operator()(const Largest& a, const Largest& b) const {
    if (b.magnitude > a.magnitude || (b.magnitude == a.magnitude && b.index < a.index)) return b;
    return a;
  }
};

using LargestReduce = cub::BlockReduce<Largest, kThreads>;

__global__ void __launch_bounds__(kThreads)
    normalize_directions_kernel(const float* w, int64_t k, int64_t dim, float* dir) {
  __shared__ typename DoubleReduce::TempStorage tmp;
  __shared__ typename LargestReduce::TempStorage tmp_largest;
  __shared__ float s_scale;
  for (int64_t c = blockIdx.x; c < k; c += gridDim.x) {
    const float* wc = w + c * dim;
    double acc = 0.0;
    Largest largest{-1.0f, INT64_MAX};
    for (int64_t j = threadIdx.x; j < dim; j += kThreads) {
      const float v = wc[j];
      acc += double(v) * v;
      if (fabsf(v) > largest.magnitude) largest = Largest{fabsf(v), j};
    }
    const double total = DoubleReduce(tmp).Sum(acc);
    const Largest top = LargestReduce(tmp_largest).Reduce(largest, LargestMax{});
    if (threadIdx.x == 0) {
      const double norm = sqrt(total);
      const bool usable = norm > 0.0 && isfinite(norm);
      s_scale = usable ? static_cast<float>((wc[top.index] < 0.0f ? -1.0 : 1.0) / norm) : 0.0f;
    }
    __syncthreads();
    const float scale = s_scale;
    if (scale != 0.0f) {
      for (int64_t j = threadIdx.x; j < dim; j += kThreads) dir[c * dim + j] = wc[j] * scale;
    }
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kThreads)
    cluster_spread_kernel(const float* proj, const int32_t* sorted_rows, const int32_t* offsets,
                          const int32_t* sizes, int64_t k, float* spread) {
  __shared__ typename DoubleReduce::TempStorage tmp;
  for (int64_t c = blockIdx.x; c < k; c += gridDim.x) {
    const int32_t begin = offsets[c], count = sizes[c];
    double acc = 0.0;
    for (int32_t q = threadIdx.x; q < count; q += kThreads) {
      const double p = proj[sorted_rows[begin + q]];
      acc += p * p;
    }
    const double total = DoubleReduce(tmp).Sum(acc);
    if (threadIdx.x == 0) spread[c] = count > 0 ? static_cast<float>(sqrt(total / count)) : 0.0f;
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kThreads)
    write_scalars_kernel(PoolView pool, const float* mean, const float* spread,
                         GeometryParams params) {
  __shared__ typename DoubleReduce::TempStorage tmp;
  const int64_t dim = pool.input_dim;
  for (int64_t c = blockIdx.x; c < pool.num_tensors; c += gridDim.x) {
    double acc = 0.0;
    for (int64_t j = threadIdx.x; j < dim; j += kThreads)
      acc += double(pool.normals[c * dim + j]) * mean[c * dim + j];
    const double total = DoubleReduce(tmp).Sum(acc);
    if (threadIdx.x == 0) {
      const float band = band_from_spread(params, spread[c]);
      pool.offsets[c] = static_cast<float>(-total);
      pool.dneg[c] = -band;
      pool.dpos[c] = band;
      pool.tau[c] = tau_from_spread(params, spread[c]);
      pool.use_count[c] = 0.0f;
      pool.last_used[c] = 0.0f;
      pool.mean_abs_d[c] = 0.0f;
      pool.loss_trace[c] = 0.0f;
    }
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kThreads)
    write_controls_kernel(PoolView pool, const float* target_mean) {
  const int64_t m = pool.output_dim;
  HTFR_GRID_STRIDE(t, pool.num_tensors * 3 * m) {
    const int64_t i = t / (3 * m), entry = t % m;  // every column j of C_i gets the same mean
    pool.controls[t] = target_mean[i * m + entry];
  }
}

}  // namespace

void launch_row_sq_norms(const float* x, int64_t rows, int64_t dim, float* out,
                         cudaStream_t stream) {
  if (rows == 0) return;
  row_sq_norms_kernel<<<item_grid(rows), kThreads, 0, stream>>>(x, rows, dim, out);
  HTFR_LAUNCH_CHECK();
}

void launch_gather_rows(const float* x, int64_t dim, const int64_t* index, int64_t count,
                        float* out, cudaStream_t stream) {
  if (count * dim == 0) return;
  gather_rows_kernel<<<grid_for(count * dim, kThreads), kThreads, 0, stream>>>(x, dim, index, count,
                                                                               out);
  HTFR_LAUNCH_CHECK();
}

void launch_argmin_tile(const float* dots, int64_t rows, int64_t k, const float* x_norm,
                        const float* c_norm, int32_t* assignment, float* min_dist, int32_t* changed,
                        cudaStream_t stream) {
  if (rows == 0) return;
  argmin_tile_kernel<<<item_grid(rows), kThreads, 0, stream>>>(dots, rows, k, x_norm, c_norm,
                                                               assignment, min_dist, changed);
  HTFR_LAUNCH_CHECK();
}

void launch_sum_fixed_order(const float* v, int64_t n, double* out, cudaStream_t stream) {
  sum_fixed_order_kernel<<<1, kThreads, 0, stream>>>(v, n, out);
  HTFR_LAUNCH_CHECK();
}

std::size_t group_rows_temp_bytes(int64_t rows, int64_t k) {
  std::size_t sort = 0, scan = 0;
  HTFR_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, sort, static_cast<int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
      static_cast<int32_t*>(nullptr), static_cast<int32_t*>(nullptr), static_cast<int>(rows), 0,
      key_bits(k)));
  HTFR_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan, static_cast<int32_t*>(nullptr),
                                                static_cast<int32_t*>(nullptr),
                                                static_cast<int>(k)));
  return std::max<std::size_t>({sort, scan, 1});
}

void launch_group_rows(const int32_t* assignment, int64_t rows, int64_t k, void* temp,
                       std::size_t temp_bytes, int32_t* row_ids, int32_t* sorted_keys,
                       int32_t* sorted_rows, int32_t* sizes, int32_t* offsets,
                       cudaStream_t stream) {
  HTFR_REQUIRE(rows > 0 && rows <= INT32_MAX && k > 0 && k <= INT32_MAX, InvalidArgument,
               "grouping needs 1 <= rows, k < 2^31; got rows=" << rows << " k=" << k);
  HTFR_CUDA_CHECK(cudaMemsetAsync(sizes, 0, sizeof(int32_t) * k, stream));
  histogram_kernel<<<grid_for(rows, kThreads), kThreads, 0, stream>>>(assignment, rows, sizes);
  HTFR_LAUNCH_CHECK();
  iota_kernel<<<grid_for(rows, kThreads), kThreads, 0, stream>>>(row_ids, rows);
  HTFR_LAUNCH_CHECK();
  std::size_t bytes = temp_bytes;
  HTFR_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, bytes, assignment, sorted_keys, row_ids,
                                                  sorted_rows, static_cast<int>(rows), 0,
                                                  key_bits(k), stream));
  bytes = temp_bytes;
  HTFR_CUDA_CHECK(
      cub::DeviceScan::ExclusiveSum(temp, bytes, sizes, offsets, static_cast<int>(k), stream));
}

void launch_segmented_sum(const float* x, int64_t dim, const int32_t* sorted_rows,
                          const int32_t* offsets, const int32_t* sizes, int64_t k,
                          const float* weights, const float* center, bool mean, float* out,
                          cudaStream_t stream) {
  if (k == 0 || dim == 0) return;
  const int64_t chunks = (dim + kThreads - 1) / kThreads;
  HTFR_REQUIRE(chunks <= 65535, InvalidArgument,
               "segmented sums support dim <= " << 65535 * kThreads << ", got " << dim);
  const dim3 grid(item_grid(k), static_cast<unsigned>(chunks));
  segmented_sum_kernel<<<grid, kThreads, 0, stream>>>(x, dim, sorted_rows, offsets, sizes, k,
                                                      weights, center, mean, out);
  HTFR_LAUNCH_CHECK();
}

void launch_project_rows(const float* x, int64_t rows, int64_t dim, const int32_t* assignment,
                         const float* center, const float* dir, float* proj, cudaStream_t stream) {
  if (rows == 0) return;
  project_rows_kernel<<<item_grid(rows), kThreads, 0, stream>>>(x, rows, dim, assignment, center,
                                                                dir, proj);
  HTFR_LAUNCH_CHECK();
}

void launch_direction_start(float* w, int64_t k, int64_t dim, uint64_t seed, cudaStream_t stream) {
  if (k * dim == 0) return;
  direction_start_kernel<<<grid_for(k * dim, kThreads), kThreads, 0, stream>>>(w, k, dim, seed);
  HTFR_LAUNCH_CHECK();
}

void launch_normalize_directions(const float* w, int64_t k, int64_t dim, float* dir,
                                 cudaStream_t stream) {
  if (k == 0) return;
  normalize_directions_kernel<<<item_grid(k), kThreads, 0, stream>>>(w, k, dim, dir);
  HTFR_LAUNCH_CHECK();
}

void launch_cluster_spread(const float* proj, const int32_t* sorted_rows, const int32_t* offsets,
                           const int32_t* sizes, int64_t k, float* spread, cudaStream_t stream) {
  if (k == 0) return;
  cluster_spread_kernel<<<item_grid(k), kThreads, 0, stream>>>(proj, sorted_rows, offsets, sizes, k,
                                                               spread);
  HTFR_LAUNCH_CHECK();
}

void launch_write_geometry(const PoolView& pool, const float* mean, const float* spread,
                           const float* target_mean, const GeometryParams& params,
                           cudaStream_t stream) {
  if (pool.num_tensors == 0) return;
  write_scalars_kernel<<<item_grid(pool.num_tensors), kThreads, 0, stream>>>(pool, mean, spread,
                                                                             params);
  HTFR_LAUNCH_CHECK();
  const int64_t count = pool.num_tensors * 3 * pool.output_dim;
  write_controls_kernel<<<grid_for(count, kThreads), kThreads, 0, stream>>>(pool, target_mean);
  HTFR_LAUNCH_CHECK();
}

}  // namespace htfr::detail

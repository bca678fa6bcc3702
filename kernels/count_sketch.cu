// CountSketch kernels. The dense form keeps a row's outputs in shared memory and streams the row
// through in chunks, each chunk's inputs pre-sorted by bucket, so every global access is
// coalesced; the first input of each bucket's run in a chunk adds the run's sum. Outputs too wide
// for shared memory fall back to a gather: each output sums its inputs in increasing order.
// Either way each output is summed in input order, exactly as the CPU reference does. The sparse form sorts each tile of a row's entries by bucket with a stable
// block radix sort and lets the first entry of each run add the run's sum, so the order of
// additions never depends on scheduling.
#include <cub/block/block_radix_sort.cuh>

#include "count_sketch.cuh"
#include "detail/check.hpp"
#include "launch.cuh"

namespace htfr::detail {

namespace {

constexpr int kThreads = 256;
constexpr int kSparseItems = 4;
constexpr int kSparseTile = kThreads * kSparseItems;

__global__ void __launch_bounds__(kThreads)
    dense_kernel(CountSketchView cs, const float* x, float* y, int64_t rows) {
  HTFR_GRID_STRIDE(t, rows * cs.output_dim) {
    const int64_t row = t / cs.output_dim, b = t - row * cs.output_dim;
    const float* xr = x + row * cs.input_dim;
    float acc = 0.0f;
    for (int64_t m = cs.member_start[b]; m < cs.member_start[b + 1]; ++m) {
      const int32_t j = cs.members[m];
      acc += float(cs.sign[j]) * xr[j];
    }
    y[t] = acc;
  }
}

constexpr int kSmemThreads = 1024;
constexpr int kChunkPerThread = static_cast<int>(kCountSketchChunk / kSmemThreads);

// One block per row. Shared memory holds the row's output_dim sums and one chunk: its inputs and
// its (bucket, entry) list sorted by bucket. The next chunk is fetched into registers while the
// current one is summed. The first entry of each bucket's run adds the run to the bucket's sum one
// value at a time, in input order.
__global__ void __launch_bounds__(kSmemThreads)
    dense_smem_kernel(CountSketchView cs, const float* x, float* y) {
  extern __shared__ float smem[];
  float* acc = smem;
  float* xs = acc + cs.output_dim;
  int32_t* keys = reinterpret_cast<int32_t*>(xs + kCountSketchChunk);
  int32_t* entries = keys + kCountSketchChunk;
  const int64_t row = blockIdx.x;
  const float* xr = x + row * cs.input_dim;
  for (int64_t b = threadIdx.x; b < cs.output_dim; b += kSmemThreads) acc[b] = 0.0f;
  const int64_t chunks = (cs.input_dim + kCountSketchChunk - 1) / kCountSketchChunk;
  float next_x[kChunkPerThread];
  int32_t next_key[kChunkPerThread], next_entry[kChunkPerThread];
  const auto fetch = [&](int64_t c) {
#pragma unroll
    for (int k = 0; k < kChunkPerThread; ++k) {
      const int64_t j = c * kCountSketchChunk + threadIdx.x + k * kSmemThreads;
      const bool in = j < cs.input_dim;
      next_x[k] = in ? xr[j] : 0.0f;
      next_key[k] = in ? cs.chunk_bucket[j] : -1;
      next_entry[k] = in ? cs.chunk_entry[j] : 0;
    }
  };
  fetch(0);
  for (int64_t c = 0; c < chunks; ++c) {
    __syncthreads();  // the previous chunk is consumed (and acc is zeroed)
#pragma unroll
    for (int k = 0; k < kChunkPerThread; ++k) {
      const int p = threadIdx.x + k * kSmemThreads;
      xs[p] = next_x[k];
      keys[p] = next_key[k];
      entries[p] = next_entry[k];
    }
    __syncthreads();
    if (c + 1 < chunks) fetch(c + 1);  // in flight while this chunk is summed
    const int count = static_cast<int>(min(kCountSketchChunk, cs.input_dim - c * kCountSketchChunk));
#pragma unroll
    for (int k = 0; k < kChunkPerThread; ++k) {
      const int p = threadIdx.x + k * kSmemThreads;
      if (p >= count) continue;
      const int32_t b = keys[p];
      if (p > 0 && keys[p - 1] == b) continue;  // not the first entry of its run
      float sum = acc[b];
      for (int q = p; q < count && keys[q] == b; ++q) {
        const int32_t e = entries[q];
        sum += e > 0 ? xs[e - 1] : -xs[-e - 1];
      }
      acc[b] = sum;  // one writer per bucket per chunk; chunks are ordered by the barriers
    }
  }
  __syncthreads();
  for (int64_t b = threadIdx.x; b < cs.output_dim; b += kSmemThreads)
    y[row * cs.output_dim + b] = acc[b];
}

__global__ void __launch_bounds__(kThreads)
    adjoint_kernel(CountSketchView cs, const float* y, float* x, int64_t rows) {
  HTFR_GRID_STRIDE(t, rows * cs.input_dim) {
    const int64_t row = t / cs.input_dim, j = t - row * cs.input_dim;
    x[t] = float(cs.sign[j]) * y[row * cs.output_dim + cs.bucket[j]];
  }
}

// One block per row; y's row is zeroed by the caller.
__global__ void __launch_bounds__(kThreads)
    sparse_kernel(CountSketchView cs, const int64_t* row_offsets, const int32_t* indices,
                  const float* values, float* y) {
  using Sort = cub::BlockRadixSort<uint32_t, kThreads, kSparseItems, float>;
  __shared__ typename Sort::TempStorage sort_storage;
  __shared__ uint32_t keys_sorted[kSparseTile];
  __shared__ float vals_sorted[kSparseTile];
  const int64_t row = blockIdx.x;
  const int64_t begin = row_offsets[row], end = row_offsets[row + 1];
  float* yr = y + row * cs.output_dim;
  const uint32_t pad_key = static_cast<uint32_t>(cs.output_dim);  // sorts after every bucket
  int key_bits = 1;
  while ((int64_t{1} << key_bits) <= cs.output_dim) ++key_bits;
  for (int64_t tile = begin; tile < end; tile += kSparseTile) {
    uint32_t keys[kSparseItems];
    float vals[kSparseItems];
#pragma unroll
    for (int k = 0; k < kSparseItems; ++k) {
      const int64_t e = tile + threadIdx.x * kSparseItems + k;  // blocked: keeps entry order
      if (e < end) {
        const int32_t j = indices[e];
        keys[k] = static_cast<uint32_t>(cs.bucket[j]);
        vals[k] = float(cs.sign[j]) * values[e];
      } else {
        keys[k] = pad_key;
        vals[k] = 0.0f;
      }
    }
    Sort(sort_storage).Sort(keys, vals, 0, key_bits);  // stable: equal keys keep entry order
#pragma unroll
    for (int k = 0; k < kSparseItems; ++k) {
      keys_sorted[threadIdx.x * kSparseItems + k] = keys[k];
      vals_sorted[threadIdx.x * kSparseItems + k] = vals[k];
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kSparseItems; ++k) {
      const int p = threadIdx.x * kSparseItems + k;
      const uint32_t key = keys_sorted[p];
      if (key == pad_key || (p > 0 && keys_sorted[p - 1] == key)) continue;
      float run = 0.0f;
      for (int q = p; q < kSparseTile && keys_sorted[q] == key; ++q) run += vals_sorted[q];
      yr[key] += run;  // one writer per bucket per tile; tiles are ordered by the barrier
    }
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kThreads)
    check_offsets_kernel(const int64_t* offsets, int64_t rows, int64_t nnz, int* flag) {
  bool bad = false;
  HTFR_GRID_STRIDE(r, rows) bad |= offsets[r + 1] < offsets[r];
  if (blockIdx.x == 0 && threadIdx.x == 0) bad |= offsets[0] != 0 || offsets[rows] != nnz;
  if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1;
}

}  // namespace

void launch_count_sketch(const CountSketchView& cs, const float* x, float* y, int64_t rows,
                         cudaStream_t stream) {
  const int64_t n = rows * cs.output_dim;
  if (n == 0) return;
  const std::size_t smem = (cs.output_dim + 3 * kCountSketchChunk) * sizeof(float);
  int device = 0, optin = 0;
  HTFR_CUDA_CHECK(cudaGetDevice(&device));
  HTFR_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (cs.chunk_bucket != nullptr && smem <= static_cast<std::size_t>(optin) && rows <= INT32_MAX) {
    HTFR_CUDA_CHECK(cudaFuncSetAttribute(dense_smem_kernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)));
    dense_smem_kernel<<<static_cast<unsigned>(rows), kSmemThreads, smem, stream>>>(cs, x, y);
  } else {
    dense_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(cs, x, y, rows);
  }
  HTFR_LAUNCH_CHECK();
}

void launch_count_sketch_sparse(const CountSketchView& cs, const int64_t* row_offsets,
                                const int32_t* indices, const float* values, float* y,
                                int64_t rows, cudaStream_t stream) {
  if (rows == 0 || cs.output_dim == 0) return;
  HTFR_CUDA_CHECK(cudaMemsetAsync(y, 0, rows * cs.output_dim * sizeof(float), stream));
  sparse_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(cs, row_offsets, indices,
                                                                      values, y);
  HTFR_LAUNCH_CHECK();
}

void launch_count_sketch_adjoint(const CountSketchView& cs, const float* y, float* x,
                                 int64_t rows, cudaStream_t stream) {
  const int64_t n = rows * cs.input_dim;
  if (n == 0) return;
  adjoint_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(cs, y, x, rows);
  HTFR_LAUNCH_CHECK();
}

void launch_check_row_offsets(const int64_t* row_offsets, int64_t rows, int64_t nnz, int* flag,
                              cudaStream_t stream) {
  check_offsets_kernel<<<grid_for(rows, kThreads, 4096), kThreads, 0, stream>>>(row_offsets,
                                                                                 rows, nnz, flag);
  HTFR_LAUNCH_CHECK();
}

}  // namespace htfr::detail

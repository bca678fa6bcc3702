// Top-K selection by smallest |d|: one block per row streams the row's distances in tiles,
// compacts the candidates that beat the current K-th best into a shared buffer (BlockScan keeps
// them in index order), and sorts the buffer with BlockRadixSort only when it would overflow.
// With random data the threshold tightens fast, so most rows need two or three sorts.
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_scan.cuh>

#include "detail/check.hpp"
#include "select_topk.cuh"

namespace htfr::detail {

namespace {

constexpr int kThreads = 256;
constexpr int kLoadItems = 4;                         // per thread per tile
constexpr int kTile = kThreads * kLoadItems;          // 1024 distances per tile
constexpr int kSortItems = 8;                         // per thread per sort
constexpr int kCapacity = kThreads * kSortItems;      // 2048 buffered candidates
constexpr uint32_t kPadKey = 0x7FFFFFFFu;             // above every |float| incl. Inf and NaN
constexpr int kKeyBits = 31;                          // |d| has a zero sign bit
static_assert(kCapacity >= 128 + kTile, "the buffer must hold K carried plus one tile");

using Sort = cub::BlockRadixSort<uint32_t, kThreads, kSortItems, int32_t>;
using Scan = cub::BlockScan<int, kThreads>;

struct SharedStorage {
  union {
    typename Sort::TempStorage sort;
    typename Scan::TempStorage scan;
  } temp;
  uint32_t keys[kCapacity];
  int32_t vals[kCapacity];
};

/// Sorts buffer[0..count) by (key, position) and leaves the sorted sequence in the buffer.
__device__ void sort_buffer(SharedStorage& s, int count) {
  uint32_t keys[kSortItems];
  int32_t vals[kSortItems];
#pragma unroll
  for (int j = 0; j < kSortItems; ++j) {
    const int pos = threadIdx.x * kSortItems + j;
    keys[j] = pos < count ? s.keys[pos] : kPadKey;
    vals[j] = pos < count ? s.vals[pos] : INT32_MAX;
  }
  __syncthreads();  // everyone has read the buffer before the sort's temp storage is reused
  Sort(s.temp.sort).Sort(keys, vals, 0, kKeyBits);
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kSortItems; ++j) {
    const int pos = threadIdx.x * kSortItems + j;
    s.keys[pos] = keys[j];
    s.vals[pos] = vals[j];
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads) select_topk_kernel(const float* __restrict__ dots,
                                                              const float* __restrict__ offsets,
                                                              int64_t n, int k,
                                                              int32_t* __restrict__ indices,
                                                              float* __restrict__ distances) {
  __shared__ SharedStorage s;
  const int64_t row = blockIdx.x;
  const float* d = dots + row * n;
  int count = 0;                  // candidates in the buffer (same value in every thread)
  uint32_t threshold = kPadKey;   // a candidate must have key < threshold

  for (int64_t base = 0; base < n; base += kTile) {
    uint32_t keys[kLoadItems];
    int flags[kLoadItems];
#pragma unroll
    for (int j = 0; j < kLoadItems; ++j) {
      const int64_t i = base + threadIdx.x * kLoadItems + j;
      keys[j] = i < n ? __float_as_uint(fabsf(d[i] + offsets[i])) : kPadKey;
    }
    int pos[kLoadItems], total = 0;
    for (;;) {
#pragma unroll
      for (int j = 0; j < kLoadItems; ++j) flags[j] = keys[j] < threshold ? 1 : 0;
      Scan(s.temp.scan).ExclusiveSum(flags, pos, total);
      __syncthreads();
      if (count + total <= kCapacity) break;
      // Overflow: keep the best K of the buffer and tighten the threshold, then re-filter.
      sort_buffer(s, count);
      count = k;
      threshold = s.keys[k - 1];
    }
#pragma unroll
    for (int j = 0; j < kLoadItems; ++j) {
      if (flags[j]) {
        s.keys[count + pos[j]] = keys[j];
        s.vals[count + pos[j]] = static_cast<int32_t>(base + threadIdx.x * kLoadItems + j);
      }
    }
    count += total;
    __syncthreads();
  }
  sort_buffer(s, count);
  for (int j = threadIdx.x; j < k; j += kThreads) {
    const int32_t i = s.vals[j];
    indices[row * k + j] = i;
    distances[row * k + j] = d[i] + offsets[i];
  }
}

}  // namespace

void launch_select_topk(const float* dots, const float* offsets, int64_t rows, int64_t n, int k,
                        int32_t* indices, float* distances, cudaStream_t stream) {
  HTFR_REQUIRE(k >= 1 && k <= 128 && k <= n, InvalidArgument,
               "top-K selection needs 1 <= K <= min(N, 128); got K=" << k << " N=" << n);
  if (rows == 0) return;
  HTFR_REQUIRE(rows < (int64_t{1} << 31), InvalidArgument, "too many rows for one launch");
  select_topk_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(dots, offsets, n, k,
                                                                           indices, distances);
  HTFR_LAUNCH_CHECK();
}

}  // namespace htfr::detail

// Top-K selection by smallest |d|: one block per row streams the row's distances in tiles,
// compacts the candidates that beat the current K-th best into a shared buffer (BlockScan keeps
// them in index order), and sorts the buffer with BlockRadixSort after the first tile, when it
// would overflow, and at the end. The threshold from the first tile filters out most later
// distances, so a typical row needs one 1024-key sort and one small final sort.
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_scan.cuh>

#include "detail/check.hpp"
#include "select_topk.cuh"

namespace htfr::detail {

namespace {

constexpr int kThreads = 256;
constexpr int kLoadItems = 4;                         // per thread per tile
constexpr int kTile = kThreads * kLoadItems;          // 1024 distances per tile
constexpr int kMaxSortItems = 8;                      // per thread in the largest sort
constexpr int kCapacity = kThreads * kMaxSortItems;   // 2048 buffered candidates
constexpr uint32_t kPadKey = 0x7FFFFFFFu;             // above every |float| incl. Inf and NaN
constexpr int kKeyBits = 31;                          // |d| has a zero sign bit
static_assert(kCapacity >= 128 + kTile, "the buffer must hold K carried plus one tile");

template <int ITEMS>
using Sort = cub::BlockRadixSort<uint32_t, kThreads, ITEMS, int32_t>;
using Scan = cub::BlockScan<int, kThreads>;

struct SharedStorage {
  union {
    typename Sort<1>::TempStorage sort1;
    typename Sort<2>::TempStorage sort2;
    typename Sort<4>::TempStorage sort4;
    typename Sort<8>::TempStorage sort8;
    typename Scan::TempStorage scan;
  } temp;
  uint32_t keys[kCapacity];
  int32_t vals[kCapacity];
};

template <int ITEMS>
__device__ typename Sort<ITEMS>::TempStorage& sort_storage(SharedStorage& s) {
  if constexpr (ITEMS == 1) return s.temp.sort1;
  else if constexpr (ITEMS == 2) return s.temp.sort2;
  else if constexpr (ITEMS == 4) return s.temp.sort4;
  else return s.temp.sort8;
}

/// Sorts buffer[0..count) (count <= kThreads * ITEMS) by (key, position), in place.
template <int ITEMS>
__device__ void sort_buffer_sized(SharedStorage& s, int count) {
  uint32_t keys[ITEMS];
  int32_t vals[ITEMS];
#pragma unroll
  for (int j = 0; j < ITEMS; ++j) {
    const int pos = threadIdx.x * ITEMS + j;
    keys[j] = pos < count ? s.keys[pos] : kPadKey;
    vals[j] = pos < count ? s.vals[pos] : INT32_MAX;
  }
  __syncthreads();  // everyone has read the buffer before the sort's temp storage is reused
  Sort<ITEMS>(sort_storage<ITEMS>(s)).Sort(keys, vals, 0, kKeyBits);
  __syncthreads();
#pragma unroll
  for (int j = 0; j < ITEMS; ++j) {
    const int pos = threadIdx.x * ITEMS + j;
    s.keys[pos] = keys[j];
    s.vals[pos] = vals[j];
  }
  __syncthreads();
}

/// The smallest sort that holds `count` candidates: most sorts after the first are small.
__device__ void sort_buffer(SharedStorage& s, int count) {
  if (count <= kThreads) sort_buffer_sized<1>(s, count);
  else if (count <= 2 * kThreads) sort_buffer_sized<2>(s, count);
  else if (count <= 4 * kThreads) sort_buffer_sized<4>(s, count);
  else sort_buffer_sized<8>(s, count);
}

/// VEC4: n is a multiple of 4, so each thread reads its four distances and offsets as one
/// 16-byte load each.
template <bool VEC4>
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
    const int64_t first = base + threadIdx.x * kLoadItems;
    if (VEC4 && first + kLoadItems <= n) {
      const float4 dv = *reinterpret_cast<const float4*>(d + first);
      const float4 ov = *reinterpret_cast<const float4*>(offsets + first);
      keys[0] = __float_as_uint(fabsf(dv.x + ov.x));
      keys[1] = __float_as_uint(fabsf(dv.y + ov.y));
      keys[2] = __float_as_uint(fabsf(dv.z + ov.z));
      keys[3] = __float_as_uint(fabsf(dv.w + ov.w));
    } else {
#pragma unroll
      for (int j = 0; j < kLoadItems; ++j) {
        const int64_t i = first + j;
        keys[j] = i < n ? __float_as_uint(fabsf(d[i] + offsets[i])) : kPadKey;
      }
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
        s.vals[count + pos[j]] = static_cast<int32_t>(first + j);
      }
    }
    count += total;
    __syncthreads();
    if (threshold == kPadKey && count >= k && base + kTile < n) {
      // After the first tile: a threshold from its K best filters out most of what follows.
      sort_buffer(s, count);
      count = k;
      threshold = s.keys[k - 1];
    }
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
  const unsigned grid = static_cast<unsigned>(rows);
  if (n % 4 == 0) {
    select_topk_kernel<true><<<grid, kThreads, 0, stream>>>(dots, offsets, n, k, indices,
                                                            distances);
  } else {
    select_topk_kernel<false><<<grid, kThreads, 0, stream>>>(dots, offsets, n, k, indices,
                                                             distances);
  }
  HTFR_LAUNCH_CHECK();
}

}  // namespace htfr::detail

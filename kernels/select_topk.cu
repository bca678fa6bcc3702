// Top-K selection by smallest |d|, one block per row (or per slice of a row when there are few
// rows). The row is read in segments of 8,192 distances held in registers. For each segment a
// threshold T is found with 16 block-wide counting barriers: a value that at least K of the
// threads' own minima do not exceed, within 2^-8 of the smallest such value, so at least K
// distances of the segment are <= T and, unless the segment's best K share threads, about K pass.
// The distances <= T (and better than the K carried from earlier segments) are compacted into
// shared memory, and the carried K plus these few candidates are ranked by (|d|, index), each
// candidate counting those before it. Rows whose candidates would overflow the buffer (many equal
// distances) take the general path: tiles of 1,024 distances filtered against the K-th best so
// far, with BlockRadixSort on the buffer.
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_scan.cuh>

#include <algorithm>

#include "detail/check.hpp"
#include "detail/device.hpp"
#include "htfr/config.hpp"
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
constexpr int kMaxK = static_cast<int>(kMaxTopK);
static_assert(kCapacity >= kMaxK + kTile, "the buffer must hold K carried plus one tile");

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

/// Leaves the top K of distances [begin, end) of one row (begin a multiple of kTile) sorted by
/// (|d|, index) in s.keys / s.vals [0, K), padded with kPadKey when the range holds fewer. VEC4:
/// the row length is a multiple of 4, so each thread reads its four distances and offsets as one
/// 16-byte load each.
template <bool VEC4>
__device__ void select_range(SharedStorage& s, const float* __restrict__ d,
                             const float* __restrict__ offsets, int64_t begin, int64_t end,
                             int k) {
  int count = 0;                  // candidates in the buffer (same value in every thread)
  uint32_t threshold = kPadKey;   // a candidate must have key < threshold

  for (int64_t base = begin; base < end; base += kTile) {
    uint32_t keys[kLoadItems];
    int flags[kLoadItems];
    const int64_t first = base + threadIdx.x * kLoadItems;
    if (VEC4 && first + kLoadItems <= end) {
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
        keys[j] = i < end ? __float_as_uint(fabsf(d[i] + offsets[i])) : kPadKey;
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
    if (threshold == kPadKey && count >= k && base + kTile < end) {
      // After the first tile: a threshold from its K best filters out most of what follows.
      sort_buffer(s, count);
      count = k;
      threshold = s.keys[k - 1];
    }
  }
  sort_buffer(s, count);
}

constexpr int kSegmentLoads = 8;                          // 16-byte loads per thread
constexpr int kSegmentItems = 4 * kSegmentLoads;           // distances per thread
constexpr int kSegment = kThreads * kSegmentItems;         // 8,192 distances per segment
constexpr int kFastCapacity = 512;                         // carried K + a segment's candidates
constexpr int kRanked = 1024;                              // where ranked candidates go
static_assert(kRanked >= kFastCapacity && kRanked + kMaxK <= kCapacity, "buffers overlap");
static_assert(kMaxK <= kThreads, "a segment's threshold needs K threads");
constexpr uint32_t kAboveAll = 0xFFFFFFFFu;                // above every key, kPadKey included

/// A value v such that at least k threads of the block hold m <= v (k <= kThreads), within
/// 2^-8 (relative) of the smallest such value: bit by bit from the top, one counting barrier per
/// bit, down to the exponent and the top 7 bits of the mantissa (16 barriers).
__device__ uint32_t kth_smallest_of_threads(uint32_t m, int k) {
  constexpr int kLowBit = 15;
  uint32_t v = 0;
  for (int b = 30; b >= kLowBit; --b) {
    const uint32_t trial = v | ((1u << b) - 1u);
    if (__syncthreads_count(m <= trial) < k) v |= 1u << b;
  }
  return v | ((1u << kLowBit) - 1u);
}

/// Leaves the top K of distances [begin, end) of one row sorted by (|d|, index) in s.keys /
/// s.vals [0, K) (padded with kPadKey when the range holds fewer) and returns true; returns false
/// (with nothing guaranteed) when a segment's candidates overflow the buffer. Distance i of a
/// segment sits in thread (i / 4) % kThreads, so every load is a coalesced 16-byte access when
/// VEC4 (the row length is a multiple of 4).
template <bool VEC4>
__device__ bool select_range_segments(SharedStorage& s, const float* __restrict__ d,
                                      const float* __restrict__ offsets, int64_t begin,
                                      int64_t end, int k) {
  int carried = 0;                  // entries in s.keys / s.vals [0, carried), sorted
  uint32_t carried_kth = kAboveAll;  // a later distance must beat the K-th carried one
  for (int64_t base = begin; base < end; base += kSegment) {
    const int len = static_cast<int>(end - base < kSegment ? end - base : kSegment);
    const float* ds = d + base;
    const float* os = offsets + base;
    uint32_t keys[kSegmentItems];
    uint32_t low = kPadKey;
#pragma unroll
    for (int j = 0; j < kSegmentLoads; ++j) {
      const int first = (j * kThreads + static_cast<int>(threadIdx.x)) * 4;
      if (VEC4 && first + 4 <= len) {
        const float4 dv = *reinterpret_cast<const float4*>(ds + first);
        const float4 ov = *reinterpret_cast<const float4*>(os + first);
        keys[4 * j + 0] = __float_as_uint(fabsf(dv.x + ov.x));
        keys[4 * j + 1] = __float_as_uint(fabsf(dv.y + ov.y));
        keys[4 * j + 2] = __float_as_uint(fabsf(dv.z + ov.z));
        keys[4 * j + 3] = __float_as_uint(fabsf(dv.w + ov.w));
      } else {
#pragma unroll
        for (int v = 0; v < 4; ++v) {
          keys[4 * j + v] = first + v < len ? __float_as_uint(fabsf(ds[first + v] + os[first + v]))
                                            : kPadKey;
        }
      }
#pragma unroll
      for (int v = 0; v < 4; ++v) low = min(low, keys[4 * j + v]);
    }
    // Threads without a distance in range hold kPadKey; then every distance passes.
    const uint32_t threshold = kth_smallest_of_threads(low, k);
    auto passes = [&](int j, int v) {
      const int i = (j * kThreads + static_cast<int>(threadIdx.x)) * 4 + v;
      return i < len && keys[4 * j + v] <= threshold && keys[4 * j + v] < carried_kth;
    };
    int mine = 0;
#pragma unroll
    for (int j = 0; j < kSegmentLoads; ++j) {
#pragma unroll
      for (int v = 0; v < 4; ++v) mine += passes(j, v) ? 1 : 0;
    }
    int at = 0, total = 0;
    Scan(s.temp.scan).ExclusiveSum(mine, at, total);
    if (carried + total > kFastCapacity) return false;  // uniform: total is the block's sum
    at += carried;
#pragma unroll
    for (int j = 0; j < kSegmentLoads; ++j) {
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        if (passes(j, v)) {
          s.keys[at] = keys[4 * j + v];
          s.vals[at] = static_cast<int32_t>(base + (j * kThreads + threadIdx.x) * 4 + v);
          ++at;
        }
      }
    }
    __syncthreads();
    // Rank every candidate by (key, index); the best K go to kRanked + rank, then back to 0.
    const int count = carried + total;
    for (int e = threadIdx.x; e < count; e += kThreads) {
      const uint32_t key = s.keys[e];
      const int32_t val = s.vals[e];
      int rank = 0;
      for (int q = 0; q < count; ++q) {
        const uint32_t other = s.keys[q];
        rank += (other < key || (other == key && s.vals[q] < val)) ? 1 : 0;
      }
      if (rank < k) {
        s.keys[kRanked + rank] = key;
        s.vals[kRanked + rank] = val;
      }
    }
    __syncthreads();
    carried = min(k, count);
    for (int e = threadIdx.x; e < carried; e += kThreads) {
      s.keys[e] = s.keys[kRanked + e];
      s.vals[e] = s.vals[kRanked + e];
    }
    __syncthreads();
    if (carried == k) carried_kth = s.keys[k - 1];
  }
  for (int e = carried + threadIdx.x; e < k; e += kThreads) {
    s.keys[e] = kPadKey;
    s.vals[e] = INT32_MAX;
  }
  __syncthreads();
  return true;
}

/// The top K of [begin, end): by segments, or along tiles when a segment overflows the buffer.
template <bool VEC4>
__device__ void select_any(SharedStorage& s, const float* __restrict__ d,
                           const float* __restrict__ offsets, int64_t begin, int64_t end, int k) {
  if (!select_range_segments<VEC4>(s, d, offsets, begin, end, k)) {
    __syncthreads();
    select_range<VEC4>(s, d, offsets, begin, end, k);
  }
}

/// Writes the sorted buffer's first K as the row's selection.
__device__ void write_selection(const SharedStorage& s, const float* __restrict__ d,
                                const float* __restrict__ offsets, int64_t row, int k,
                                int32_t* __restrict__ indices, float* __restrict__ distances) {
  for (int j = threadIdx.x; j < k; j += kThreads) {
    const int32_t i = s.vals[j];
    indices[row * k + j] = i;
    distances[row * k + j] = d[i] + offsets[i];
  }
}

/// One block per row over the whole row.
template <bool VEC4>
__global__ void __launch_bounds__(kThreads) select_topk_kernel(const float* __restrict__ dots,
                                                              const float* __restrict__ offsets,
                                                              int64_t n, int k,
                                                              int32_t* __restrict__ indices,
                                                              float* __restrict__ distances) {
  __shared__ SharedStorage s;
  const int64_t row = blockIdx.x;
  const float* d = dots + row * n;
  select_any<VEC4>(s, d, offsets, 0, n, k);
  write_selection(s, d, offsets, row, k, indices, distances);
}

/// Few rows: block (row, slice) selects the top K of its slice of `len` distances into
/// part_keys / part_vals [(row * slices + slice) * K ...].
template <bool VEC4>
__global__ void __launch_bounds__(kThreads)
    select_slices_kernel(const float* __restrict__ dots, const float* __restrict__ offsets,
                         int64_t n, int k, int64_t len, uint32_t* __restrict__ part_keys,
                         int32_t* __restrict__ part_vals) {
  __shared__ SharedStorage s;
  const int64_t row = blockIdx.x, slice = blockIdx.y;
  const int64_t begin = slice * len, end = begin + len < n ? begin + len : n;
  select_any<VEC4>(s, dots + row * n, offsets, begin, end, k);
  const int64_t at = (row * gridDim.y + slice) * k;
  for (int j = threadIdx.x; j < k; j += kThreads) {
    part_keys[at + j] = s.keys[j];
    part_vals[at + j] = s.vals[j];
  }
}

/// Merges a row's slice selections. They are laid out slice by slice (index order), each sorted,
/// and the radix sort is stable, so ties still go to the smaller index: the result equals
/// select_topk_kernel's.
__global__ void __launch_bounds__(kThreads)
    merge_slices_kernel(const float* __restrict__ dots, const float* __restrict__ offsets,
                        int64_t n, int k, int slices, const uint32_t* __restrict__ part_keys,
                        const int32_t* __restrict__ part_vals, int32_t* __restrict__ indices,
                        float* __restrict__ distances) {
  __shared__ SharedStorage s;
  const int64_t row = blockIdx.x;
  const int count = slices * k;
  for (int j = threadIdx.x; j < count; j += kThreads) {
    s.keys[j] = part_keys[row * count + j];
    s.vals[j] = part_vals[row * count + j];
  }
  __syncthreads();
  sort_buffer(s, count);
  write_selection(s, dots + row * n, offsets, row, k, indices, distances);
}

/// Rows at or above this count keep one block each: they already fill the GPU.
constexpr int64_t kSplitBelowRows = 64;

}  // namespace

void launch_select_topk(const float* dots, const float* offsets, int64_t rows, int64_t n, int k,
                        int32_t* indices, float* distances, cudaStream_t stream) {
  HTFR_REQUIRE(k >= 1 && k <= kMaxK && k <= n, InvalidArgument,
               "top-K selection needs 1 <= K <= min(N, " << kMaxK << "); got K=" << k << " N=" << n);
  if (rows == 0) return;
  HTFR_REQUIRE(rows < (int64_t{1} << 31), InvalidArgument, "too many rows for one launch");
  const unsigned grid = static_cast<unsigned>(rows);
  // Few rows: split each row into slices of whole tiles, so that more blocks share the work,
  // then merge the slices' selections (at most kCapacity candidates per row).
  int64_t slices = std::min<int64_t>((n + kTile - 1) / kTile, kCapacity / k);
  if (rows < kSplitBelowRows && slices >= 2) {
    const int64_t len = ((n + slices - 1) / slices + kTile - 1) / kTile * kTile;
    slices = (n + len - 1) / len;
    const std::size_t parts = static_cast<std::size_t>(rows * slices * k);
    StreamScratch scratch(parts * (sizeof(uint32_t) + sizeof(int32_t)), stream);
    uint32_t* part_keys = scratch.as<uint32_t>();
    int32_t* part_vals = reinterpret_cast<int32_t*>(part_keys + parts);
    const dim3 split_grid(grid, static_cast<unsigned>(slices));
    if (n % 4 == 0) {
      select_slices_kernel<true><<<split_grid, kThreads, 0, stream>>>(dots, offsets, n, k, len,
                                                                      part_keys, part_vals);
    } else {
      select_slices_kernel<false><<<split_grid, kThreads, 0, stream>>>(dots, offsets, n, k, len,
                                                                       part_keys, part_vals);
    }
    HTFR_LAUNCH_CHECK();
    merge_slices_kernel<<<grid, kThreads, 0, stream>>>(dots, offsets, n, k,
                                                       static_cast<int>(slices), part_keys,
                                                       part_vals, indices, distances);
    HTFR_LAUNCH_CHECK();
    return;
  }
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

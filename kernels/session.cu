// Inference-session kernels. Sampling runs one block per session; its reductions and scans are
// CUB block primitives in a fixed order, so a replayed step samples the same token.
#include "session.cuh"

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <climits>

#include "detail/check.hpp"
#include "launch.cuh"

namespace htfr::detail {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    advance_kernel(const int32_t* __restrict__ tokens, int64_t sessions,
                   const int32_t* __restrict__ map, int64_t teacher_vocab, int32_t unk,
                   int32_t* __restrict__ ring, int64_t ring_size, int32_t* __restrict__ count,
                   int32_t* __restrict__ position) {
  HTFR_GRID_STRIDE(s, sessions) {
    const int32_t t = tokens[s];
    const int32_t cls = t >= 0 && t < teacher_vocab ? map[t] : unk;
    const int32_t p = count[s];
    ring[s * ring_size + p % ring_size] = cls;
    position[s] = p;
    count[s] = p + 1;
  }
}

struct Best {
  float value;
  int index;
};

/// The larger value; the lower index on ties.
struct BestOp {
  __device__ Best operator()(const Best& a, const Best& b) const {
    return (b.value > a.value || (b.value == a.value && b.index < a.index)) ? b : a;
  }
};

__global__ void __launch_bounds__(kThreads)
    sample_kernel(const float* __restrict__ logits, int64_t V, SampleParams p,
                  const int32_t* __restrict__ count, const int32_t* __restrict__ class_token,
                  int32_t* __restrict__ next, int32_t* __restrict__ next_class) {
  using BestReduce = cub::BlockReduce<Best, kThreads>;
  using SumReduce = cub::BlockReduce<float, kThreads>;
  using Scan = cub::BlockScan<float, kThreads>;
  __shared__ union {
    typename BestReduce::TempStorage best;
    typename SumReduce::TempStorage sum;
    typename Scan::TempStorage scan;
  } temp;
  __shared__ float shared_sum;
  __shared__ int chosen;
  const int64_t s = blockIdx.x;
  const float* z = logits + s * V;
  const int64_t classes = p.allow_unk ? V : V - 1;  // the classes that may be drawn

  Best best{-INFINITY, INT_MAX};
  for (int64_t c = threadIdx.x; c < classes; c += kThreads)
    best = BestOp()(best, Best{z[c], static_cast<int>(c)});
  best = BestReduce(temp.best).Reduce(best, BestOp());
  if (threadIdx.x == 0) chosen = best.index, shared_sum = best.value;
  __syncthreads();
  const float zmax = shared_sum;
  const int argmax = chosen;

  if (p.temperature > 0) {
    // Each thread owns a contiguous chunk of classes, so the block scan runs in class order.
    const int64_t chunk = (classes + kThreads - 1) / kThreads;
    const int64_t lo = threadIdx.x * chunk, hi = lo + chunk < classes ? lo + chunk : classes;
    const float inv_t = 1.0f / p.temperature;
    const auto weight = [&](int64_t c) { return expf((z[c] - zmax) * inv_t); };  // in [0, 1]
    const auto mass_above = [&](float threshold) {
      float local = 0;
      for (int64_t c = lo; c < hi; ++c) {
        const float w = weight(c);
        if (w >= threshold) local += w;
      }
      return local;
    };
    const auto block_sum = [&](float local) {
      __syncthreads();
      const float sum = SumReduce(temp.sum).Sum(local);
      if (threadIdx.x == 0) shared_sum = sum;
      __syncthreads();
      return shared_sum;
    };
    float threshold = 0.0f;
    if (p.top_p < 1.0f) {
      // The largest threshold whose classes still hold top_p of the mass.
      const float need = p.top_p * block_sum(mass_above(0.0f));
      float a = 0.0f, b = 2.0f;
      for (int it = 0; it < kNucleusSteps; ++it) {
        const float mid = 0.5f * (a + b);
        if (block_sum(mass_above(mid)) >= need) a = mid;
        else b = mid;
      }
      threshold = a;
    }
    const float local = mass_above(threshold);
    float prefix = 0.0f, kept = 0.0f;
    __syncthreads();  // every thread has read `argmax`
    if (threadIdx.x == 0) chosen = INT_MAX;  // claimed below by the thread holding the draw
    __syncthreads();
    Scan(temp.scan).ExclusiveSum(local, prefix, kept);
    const float target = static_cast<float>(sample_uniform(p.seed, s, count[s])) * kept;
    if (local > 0.0f && prefix <= target && target < prefix + local) {
      float acc = prefix;
      for (int64_t c = lo; c < hi; ++c) {
        const float w = weight(c);
        if (w < threshold) continue;
        acc += w;
        if (acc > target) {
          atomicMin(&chosen, static_cast<int>(c));
          break;
        }
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    if (chosen == INT_MAX) chosen = argmax;  // rounding left the draw unclaimed
    if (next_class) next_class[s] = chosen;
    if (next) next[s] = class_token[chosen];
  }
}

}  // namespace

void launch_session_advance(const int32_t* tokens, int64_t sessions, const int32_t* compact_map,
                            int64_t teacher_vocab, int32_t unk, int32_t* ring, int64_t ring_size,
                            int32_t* count, int32_t* position, cudaStream_t stream) {
  if (sessions == 0) return;
  advance_kernel<<<grid_for(sessions, kThreads), kThreads, 0, stream>>>(
      tokens, sessions, compact_map, teacher_vocab, unk, ring, ring_size, count, position);
  HTFR_LAUNCH_CHECK();
}

void launch_session_sample(const float* logits, int64_t sessions, int64_t V, SampleParams p,
                           const int32_t* count, const int32_t* class_token, int32_t* next,
                           int32_t* next_class, cudaStream_t stream) {
  if (sessions == 0) return;
  HTFR_REQUIRE(sessions <= 2147483647LL, InvalidArgument, "sample: too many sessions");
  sample_kernel<<<static_cast<unsigned>(sessions), kThreads, 0, stream>>>(
      logits, V, p, count, class_token, next, next_class);
  HTFR_LAUNCH_CHECK();
}

}  // namespace htfr::detail

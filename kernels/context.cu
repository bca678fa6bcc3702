// CUDA kernels of the HFT context builder. Each output element is one evaluation of the shared
// formulas; the Bloom buckets are set by a second kernel that only ever writes the same value, so
// the result does not depend on the order of the writes.
#include "context.cuh"

#include "detail/check.hpp"
#include "launch.cuh"

namespace htfr::detail {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    stage1_dense_kernel(ContextParams c, const float* __restrict__ table, ContextRows rows,
                        float* __restrict__ raw) {
  const int64_t r = blockIdx.y;
  const int64_t s = rows.stream[r], p = rows.position[r];
  const TokenView toks = token_view(rows, s);
  const float* hist = rows.history ? rows.history + s * c.R * c.H : nullptr;
  float* out = raw + r * c.stage1_dim;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < c.stage1_dim;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)
    out[i] = stage1_dense_value(c, table, toks, hist, p, i);
}

// One block per row; threads walk the (end position, order, hash) triples of the window.
__global__ void __launch_bounds__(kThreads)
    stage1_bloom_kernel(ContextParams c, ContextRows rows, float* __restrict__ raw) {
  const int64_t r = blockIdx.x;
  const int64_t s = rows.stream[r], p = rows.position[r];
  const TokenView toks = token_view(rows, s);
  float* out = raw + r * c.stage1_dim + c.bloom_offset;
  const float bit = c.bloom_weight * c.scale;
  const int64_t start = window_start(c, p);
  const int64_t items = (p - start + 1) * c.num_orders;
  for (int64_t t = threadIdx.x; t < items; t += blockDim.x) {
    const int64_t q = start + t / c.num_orders;
    const int n = c.orders[t % c.num_orders];
    if (q - n + 1 < start) continue;
    const uint64_t h = ngram_hash(c.hash_seed, n, toks, q);
    for (int64_t k = 0; k < c.bloom_hashes; ++k) out[bloom_bucket(h, k, c.bloom_size)] = bit;
  }
}

__global__ void __launch_bounds__(kThreads)
    stage2_kernel(ContextParams c, const float* __restrict__ table, ContextRows rows,
                  const float* __restrict__ emb, float* __restrict__ raw) {
  const int64_t r = blockIdx.y;
  const int64_t s = rows.stream[r], p = rows.position[r];
  const TokenView toks = token_view(rows, s);
  const float* e = emb ? emb + r * c.H : nullptr;
  float* out = raw + r * c.stage2_dim;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < c.stage2_dim;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)
    out[i] = stage2_value(c, table, toks, e, p, i);
}

__global__ void __launch_bounds__(kThreads)
    stage2_grad_kernel(const float* __restrict__ g, int64_t rows, int64_t D2, int64_t H,
                       float factor, float* __restrict__ out) {
  HTFR_GRID_STRIDE(i, rows * H) {
    const int64_t r = i / H, h = i - r * H;
    out[i] = g[r * D2 + h] * factor;
  }
}

unsigned column_blocks(int64_t width) {
  const int64_t b = (width + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 64 ? b : 64);
}

}  // namespace

void launch_context_stage1(const ContextParams& c, const float* table, const ContextRows& rows,
                           float* raw, cudaStream_t stream) {
  if (rows.rows == 0) return;
  HTFR_REQUIRE(rows.rows <= 65535, InvalidArgument,
               "context: at most 65,535 rows per call on the CUDA backend, got " << rows.rows);
  stage1_dense_kernel<<<dim3(column_blocks(c.stage1_dim), static_cast<unsigned>(rows.rows)),
                        kThreads, 0, stream>>>(c, table, rows, raw);
  HTFR_LAUNCH_CHECK();
  if (c.bloom_size > 0 && c.num_orders > 0) {
    stage1_bloom_kernel<<<static_cast<unsigned>(rows.rows), kThreads, 0, stream>>>(c, rows, raw);
    HTFR_LAUNCH_CHECK();
  }
}

void launch_context_stage2(const ContextParams& c, const float* table, const ContextRows& rows,
                           const float* embedding_rows, float* raw, cudaStream_t stream) {
  if (rows.rows == 0) return;
  HTFR_REQUIRE(rows.rows <= 65535, InvalidArgument,
               "context: at most 65,535 rows per call on the CUDA backend, got " << rows.rows);
  stage2_kernel<<<dim3(column_blocks(c.stage2_dim), static_cast<unsigned>(rows.rows)), kThreads, 0,
                  stream>>>(c, table, rows, embedding_rows, raw);
  HTFR_LAUNCH_CHECK();
}

void launch_context_stage2_grad(const float* grad_raw, int64_t rows, int64_t stage2_dim, int64_t H,
                                float factor, float* grad_embedding, cudaStream_t stream) {
  if (rows == 0) return;
  stage2_grad_kernel<<<grid_for(rows * H, kThreads), kThreads, 0, stream>>>(
      grad_raw, rows, stage2_dim, H, factor, grad_embedding);
  HTFR_LAUNCH_CHECK();
}

}  // namespace htfr::detail

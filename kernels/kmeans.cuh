// Device side of k-means and of the per-cluster geometry behind init_pool_from_data: squared
// norms, the per-row argmin over a distance tile, deterministic grouping of rows by cluster and
// fixed-order segmented sums (no floating-point atomics anywhere).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "detail/field_math.hpp"
#include "htfr/pool.hpp"

namespace htfr::detail {

/// Mixed into the caller's seed for the start vectors, so they are independent of the seeding
/// draws made from the same seed.
inline constexpr uint64_t kDirectionStream = 0xD1EC7104D1EC7104ull;

/// Entry `coord` of cluster `cluster`'s power-iteration start vector: uniform in (-1, 1) on the
/// odd multiples of 2^-23, from a hash of (seed, cluster, coord). Exact in float, so both backends
/// start from the same vector.
HTFR_HD float direction_start(uint64_t seed, int64_t cluster, int64_t coord) {
  uint64_t z = seed ^ (static_cast<uint64_t>(cluster) * 0x9E3779B97F4A7C15ull) ^
               (static_cast<uint64_t>(coord) * 0xD1B54A32D192ED03ull);
  for (int round = 0; round < 2; ++round) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
  }
  // An odd multiple of 2^-23 minus 1: exact in float and never zero.
  return static_cast<float>(static_cast<int64_t>(2 * (z >> 41) + 1) - 8388608) *
         (1.0f / 8388608.0f);
}

/// out[r] = ||x_r||^2 for x (rows x dim), one block per row, fixed reduction order.
void launch_row_sq_norms(const float* x, int64_t rows, int64_t dim, float* out,
                         cudaStream_t stream);

/// out (count x dim) = x[index[q], :] for q < count.
void launch_gather_rows(const float* x, int64_t dim, const int64_t* index, int64_t count,
                        float* out, cudaStream_t stream);

/// For each of `rows` rows of a distance tile: dots (rows x k, row-major) holds x_r . c_j; the
/// squared distance is x_norm[r] - 2 dots + c_norm[j] (clamped at 0). Writes the nearest cluster
/// (ties to the smaller index) to assignment[r] and its distance to min_dist[r], and adds 1 to
/// *changed (an integer counter) when assignment[r] was different before.
void launch_argmin_tile(const float* dots, int64_t rows, int64_t k, const float* x_norm,
                        const float* c_norm, int32_t* assignment, float* min_dist, int32_t* changed,
                        cudaStream_t stream);

/// *out = sum of v[0..n) in float64, one block in a fixed order (deterministic).
void launch_sum_fixed_order(const float* v, int64_t n, double* out, cudaStream_t stream);

/// Scratch bytes of launch_group_rows.
std::size_t group_rows_temp_bytes(int64_t rows, int64_t k);

/// Groups rows by cluster: sizes[c] = rows with assignment c, offsets = exclusive scan of sizes,
/// sorted_rows = row ids ordered by (cluster, row) (a stable radix sort). row_ids and
/// sorted_keys are `rows`-long scratch. Asynchronous.
void launch_group_rows(const int32_t* assignment, int64_t rows, int64_t k, void* temp,
                       std::size_t temp_bytes, int32_t* row_ids, int32_t* sorted_keys,
                       int32_t* sorted_rows, int32_t* sizes, int32_t* offsets, cudaStream_t stream);

/// out[c, j] = scale_c * sum over rows r of cluster c, in ascending row order and float64, of
/// w_r (x[r, j] - center[c, j]); w_r = weights[r] (1 when null), center 0 when null, scale_c =
/// 1 / sizes[c] when `mean` else 1. x is rows x dim (any row count: only the grouped rows are
/// read). Clusters of size 0 are left as they are.
void launch_segmented_sum(const float* x, int64_t dim, const int32_t* sorted_rows,
                          const int32_t* offsets, const int32_t* sizes, int64_t k,
                          const float* weights, const float* center, bool mean, float* out,
                          cudaStream_t stream);

/// proj[r] = (x_r - center[a_r]) . dir[a_r] with a_r = assignment[r], float64 accumulation.
void launch_project_rows(const float* x, int64_t rows, int64_t dim, const int32_t* assignment,
                         const float* center, const float* dir, float* proj, cudaStream_t stream);

/// w[c, j] = direction_start(seed, c, j) for k x dim.
void launch_direction_start(float* w, int64_t k, int64_t dim, uint64_t seed, cudaStream_t stream);

/// Per cluster: when ||w_c|| is positive and finite, dir_c = +-w_c / ||w_c||, the sign making
/// the largest-magnitude entry (first one on ties) positive; otherwise dir_c is left unchanged.
void launch_normalize_directions(const float* w, int64_t k, int64_t dim, float* dir,
                                 cudaStream_t stream);

/// spread[c] = sqrt(sum over the cluster's rows of proj^2 / sizes[c]) (fixed order, float64).
void launch_cluster_spread(const float* proj, const int32_t* sorted_rows, const int32_t* offsets,
                           const int32_t* sizes, int64_t k, float* spread, cudaStream_t stream);

/// What the final pool writes need besides the arrays.
struct GeometryParams {
  float band_scale = 2.0f;
  float band_min = 1e-3f;
  float tau = 0.0f;
  float tau_scale = 1.0f;
  float tau_min = 1e-3f;
};

/// Band edge and temperature of one tensor from its projected spread (see DataInitOptions).
HTFR_HD float band_from_spread(const GeometryParams& p, float spread) {
  const float b = p.band_scale * spread;
  return b > p.band_min ? b : p.band_min;
}
HTFR_HD float tau_from_spread(const GeometryParams& p, float spread) {
  if (p.tau > 0.0f) return p.tau;
  const float t = p.tau_scale * spread;
  return t > p.tau_min ? t : p.tau_min;
}

/// Writes the pool's scalars and controls from the per-cluster results: offsets = -n . mean
/// (pool.normals already hold the directions), bands and tau from spread, every control column
/// = target_mean (k x M), statistics zero. Asynchronous.
void launch_write_geometry(const PoolView& pool, const float* mean, const float* spread,
                           const float* target_mean, const GeometryParams& params,
                           cudaStream_t stream);

}  // namespace htfr::detail

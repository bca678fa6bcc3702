// Data-driven initialisation of a HyperTensor pool (white paper §4): k-means on a sample of
// inputs, then one HyperTensor per cluster whose hyperplane passes through the cluster mean along
// the cluster's principal direction, with bands and temperature from the projected spread and
// controls from the cluster's mean target. Both backends run the same algorithm; the CPU backend
// is the reference (float64 accumulation), the CUDA backend the product.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "htfr/config.hpp"
#include "htfr/pool.hpp"

namespace htfr {

/// How k-means picks its k starting centroids. Every choice is made on the host from a seeded
/// splitmix64 stream over row indices, so both backends start from the same rows for a seed.
///
///  random_rows       k distinct rows, the first k of a seeded random permutation of the rows.
///                    O(k) work and memory: the only choice that scales to k = 131,072 (where
///                    k-means++ would need k sequential passes over the data, and k-means|| would
///                    oversample beyond a sample of a few hundred thousand rows anyway).
///  kmeans_plus_plus  greedy k-means++ (D^2 sampling; each step draws 2 + floor(ln k) candidates
///                    and keeps the one that lowers the potential most) on a seeded subsample of
///                    `seeding_sample_rows` rows, in float64 on the host (a CUDA call copies the
///                    subsample to the host first). Costs about k (2 + ln k) sample dim
///                    multiply-adds: for small k, where one seed per true cluster matters.
///  automatic         kmeans_plus_plus when that cost stays below 2^33 multiply-adds (a few
///                    seconds on one core), random_rows otherwise.
enum class KMeansSeeding { automatic, random_rows, kmeans_plus_plus };

/// Knobs of kmeans(). The defaults suit initialisation (a few Lloyd iterations are enough).
struct KMeansOptions {
  uint64_t seed = 0;
  /// Lloyd iterations (assignment + update), at least 1. With `stop_when_stable` the loop ends
  /// early once an iteration changes no assignment.
  int iterations = 20;
  bool stop_when_stable = true;
  KMeansSeeding seeding = KMeansSeeding::automatic;
  /// Subsample size of kmeans_plus_plus (raised to k when smaller, capped at rows).
  int64_t seeding_sample_rows = 4096;
  /// Operand precision of the CUDA distance GEMM: fp32 (default) or tf32 (TF32 tensor cores,
  /// about 7x faster on an H100 at the large shapes; distances then carry ~1e-3 relative error,
  /// which can flip near-ties). Ignored by the CPU backend. bf16/fp16 are rejected.
  Precision precision = Precision::fp32;
  /// Upper bound on the bytes of one row tile of the CUDA distance matrix (tile_rows x k fp32):
  /// rows are processed in tiles so rows x k never has to fit in memory.
  std::size_t max_tile_bytes = std::size_t{2} << 30;
  /// Check x for NaN/Inf first (NonFiniteInput). The CUDA check reads one flag back.
  bool check_finite = true;
};

/// Host-side result of kmeans().
///  centroids      k x dim, row-major: centroid j is the mean of the rows assigned to j
///  assignment     rows, cluster of each row (from the last assignment step, after empty-cluster
///                 repair)
///  cluster_sizes  k, rows per cluster; every cluster holds at least one row
///  inertia        one entry per iteration run: sum over rows of the squared distance to the
///                 nearest centroid at that iteration's assignment step. Non-increasing (up to
///                 rounding).
struct KMeansResult {
  int64_t k = 0;
  int64_t dim = 0;
  std::vector<float> centroids;
  std::vector<int32_t> assignment;
  std::vector<int64_t> cluster_sizes;
  std::vector<double> inertia;
  int iterations_run = 0;
  /// Empty clusters repaired over all iterations (see kmeans()).
  int64_t empty_clusters_repaired = 0;
};

/// Lloyd's k-means of `rows` rows of x (rows x dim, row-major fp32): host memory for
/// Backend::cpu, device memory of `device` for Backend::cuda.
///
/// Each iteration assigns every row to its nearest centroid (squared Euclidean distance, ties to
/// the smaller index), repairs empty clusters, then moves every centroid to the mean of its rows.
/// Empty-cluster repair is deterministic: empty clusters, in ascending order, each take the
/// farthest remaining row from its centroid (ties to the smaller row index) among clusters that
/// keep at least one row. Since k <= rows this always succeeds, so no cluster is ever empty.
///
/// CUDA: distances as ||x||^2 - 2 x.c + ||c||^2 with the x.c term a cuBLAS GEMM per row tile
/// (options.max_tile_bytes bounds the tile); argmin per row; centroid sums by grouping rows per
/// cluster with a radix sort and summing each cluster's rows in ascending row order in float64.
/// No floating-point atomics: two runs with the same inputs and seed are bit-identical. Device
/// memory beyond x: k x dim floats (centroids) + the distance tile + ~40 bytes per row (including
/// the radix sort's scratch) + ~20 bytes per cluster; at k = 131,072, dim = 16,384,
/// rows = 262,144 that is 8 GiB + 2 GiB + ~10 MiB (x itself is 16 GiB). Per iteration the GEMM
/// costs 2 rows k dim flops (1.1 PFLOP at that shape). CPU: direct float64 loops (rows x k x dim
/// per iteration): the reference for small problems.
///
/// Synchronises `stream` (results are on the host). Throws InvalidArgument (k < 1, k > rows,
/// rows < 1, dim < 1, rows or k >= 2^31, null x, bad options), NonFiniteInput (NaN/Inf in x),
/// WrongDevice, NoDevice, OutOfMemory.
KMeansResult kmeans(Backend backend, const float* x, int64_t rows, int64_t dim, int64_t k,
                    const KMeansOptions& options, cudaStream_t stream, int device = 0);

/// Knobs of init_pool_from_data(). With sigma_i the standard deviation of the cluster's rows
/// projected on its normal (population form, divided by the cluster size):
///  dpos_i = -dneg_i = max(band_min, band_scale * sigma_i)
///  tau_i  = tau when tau > 0, else max(tau_min, tau_scale * sigma_i)
struct DataInitOptions {
  KMeansOptions kmeans;
  /// Power-iteration steps for each cluster's principal direction (>= 1).
  int power_iterations = 32;
  float band_scale = 2.0f;
  float band_min = 1e-3f;
  float tau = 0.0f;
  float tau_scale = 1.0f;
  float tau_min = 1e-3f;
};

/// What init_pool_from_data() found, per cluster i (= HyperTensor i).
///  spread         sigma_i, the projected standard deviation used for bands and temperature
///  cluster_sizes  rows in cluster i
/// The principal directions are the pool's normals (read them with pool.download()).
struct DataInitReport {
  std::vector<int32_t> assignment;
  std::vector<int64_t> cluster_sizes;
  std::vector<float> spread;
  std::vector<double> inertia;
  int iterations_run = 0;
};

/// Initialises every HyperTensor of `pool` from data: k-means with k = pool.num_tensors() on x
/// (rows x dim), then for cluster i with mean mu_i:
///  normal_i   the principal direction of the cluster's covariance: `power_iterations` steps of
///             v <- sum_r (x_r - mu_i) ((x_r - mu_i) . v), normalised, from a seeded start vector
///             with entries uniform in (-1, 1) (a hash of seed, i and the coordinate, the same on
///             both backends). A step that yields a zero vector (a one-row cluster, or no spread)
///             leaves v as it is, so such clusters keep the normalised start vector. The sign is
///             fixed so the largest-magnitude entry is positive.
///  offset_i   -normal_i . mu_i (the hyperplane passes through the cluster mean)
///  bands, tau from sigma_i (see DataInitOptions)
///  controls   C_i[:, j] = the mean of targets over the cluster's rows, for j = 0, 1, 2
///  statistics zero; half copies refreshed.
/// x and targets (rows x target_dim, e.g. one-hot labels or log-probabilities converted by the
/// caller) live where the pool does: host memory for a CPU pool, device memory of the pool's GPU
/// for a CUDA pool. dim must equal pool.input_dim(), target_dim pool.output_dim().
///
/// Every argument (and, with options.kmeans.check_finite, every value of x and targets) is
/// checked before the pool is touched, so a call that throws leaves the pool unchanged (a CUDA
/// fault part-way is the exception). Synchronises `stream`. Besides kmeans()'s memory, the CUDA
/// path needs ~16 bytes per row and k x (dim + target_dim) floats of scratch. Throws as kmeans()
/// does, plus InvalidArgument for an empty pool, shape mismatches or bad options.
DataInitReport init_pool_from_data(HyperTensorPool& pool, const float* x, int64_t rows, int64_t dim,
                                   const float* targets, int64_t target_dim,
                                   const DataInitOptions& options, cudaStream_t stream);

}  // namespace htfr

// k-means and data-driven pool initialisation: argument checks, seeding (shared by both
// backends), the CPU reference in float64, and the CUDA driver around kernels/kmeans.cu.
#include "htfr/init.hpp"

#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <unordered_map>

#include "../kernels/kmeans.cuh"
#include "../kernels/pool_ops.cuh"
#include "detail/random.hpp"
#include "detail/check.hpp"
#include "detail/device.hpp"
#include "detail/handles.hpp"
#include "detail/nvtx.hpp"

namespace htfr {

namespace {

// Mixed into the caller's seed for the seeding draws (detail::kDirectionStream is the other
// stream of the same seed).
constexpr uint64_t kSeedingStream = 0x5EED5EED00000001ull;
// automatic seeding uses k-means++ up to this many host multiply-adds.
constexpr double kPlusPlusBudget = 8589934592.0;  // 2^33

using detail::splitmix64;
using detail::uniform_below;

// Uniform double in [0, 1).
double uniform_unit(uint64_t& state) {
  return static_cast<double>(splitmix64(state) >> 11) * (1.0 / 9007199254740992.0);
}

// The first `count` entries of a seeded random permutation of [0, rows): Fisher-Yates with the
// displaced entries in a hash map, so memory is O(count) however many rows there are.
std::vector<int64_t> permutation_prefix(int64_t rows, int64_t count, uint64_t& state) {
  std::unordered_map<int64_t, int64_t> moved;
  const auto at = [&](int64_t i) {
    const auto it = moved.find(i);
    return it == moved.end() ? i : it->second;
  };
  std::vector<int64_t> out(static_cast<std::size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const int64_t j = i + uniform_below(splitmix64(state), rows - i);
    const int64_t value_i = at(i);
    out[i] = at(j);
    moved[j] = value_i;
  }
  return out;
}

int64_t seeding_sample_size(const KMeansOptions& o, int64_t rows, int64_t k) {
  return std::min(rows, std::max(o.seeding_sample_rows, k));
}

int greedy_trials(int64_t k) { return 2 + static_cast<int>(std::floor(std::log(double(k)))); }

KMeansSeeding resolve_seeding(const KMeansOptions& o, int64_t rows, int64_t dim, int64_t k) {
  if (o.seeding != KMeansSeeding::automatic) return o.seeding;
  const double cost =
      double(k) * greedy_trials(k) * double(seeding_sample_size(o, rows, k)) * double(dim);
  return cost <= kPlusPlusBudget ? KMeansSeeding::kmeans_plus_plus : KMeansSeeding::random_rows;
}

// Greedy k-means++ on `s` sample rows (s x dim, host): returns k indices into the sample.
std::vector<int64_t> greedy_kmeans_plus_plus(const float* sample, int64_t s, int64_t dim, int64_t k,
                                             uint64_t& state) {
  const auto sq_dist = [&](int64_t a, int64_t b) {
    double acc = 0.0;
    for (int64_t j = 0; j < dim; ++j) {
      const double d = double(sample[a * dim + j]) - double(sample[b * dim + j]);
      acc += d * d;
    }
    return acc;
  };
  std::vector<int64_t> chosen;
  chosen.reserve(static_cast<std::size_t>(k));
  chosen.push_back(uniform_below(splitmix64(state), s));
  std::vector<double> closest(static_cast<std::size_t>(s)), trial(closest.size()),
      best(closest.size());
  double potential = 0.0;
  for (int64_t i = 0; i < s; ++i) {
    closest[i] = sq_dist(i, chosen[0]);
    potential += closest[i];
  }
  const int trials = greedy_trials(k);
  for (int64_t c = 1; c < k; ++c) {
    double best_potential = std::numeric_limits<double>::infinity();
    int64_t best_index = 0;
    for (int t = 0; t < trials; ++t) {
      int64_t candidate = 0;
      if (potential > 0.0) {  // D^2 sampling: the first row where the running sum passes target
        const double target = uniform_unit(state) * potential;
        double running = 0.0;
        candidate = s - 1;
        for (int64_t i = 0; i < s; ++i) {
          running += closest[i];
          if (running > target) {
            candidate = i;
            break;
          }
        }
      } else {  // every sample row already coincides with a centroid
        candidate = uniform_below(splitmix64(state), s);
      }
      double p = 0.0;
      for (int64_t i = 0; i < s; ++i) {
        trial[i] = std::min(closest[i], sq_dist(i, candidate));
        p += trial[i];
      }
      if (p < best_potential) {
        best_potential = p;
        best_index = candidate;
        best.swap(trial);
      }
    }
    chosen.push_back(best_index);
    closest.swap(best);
    potential = best_potential;
  }
  return chosen;
}

void check_kmeans_args(Backend backend, const float* x, int64_t rows, int64_t dim, int64_t k,
                       const KMeansOptions& o, int device) {
  HTFR_REQUIRE(rows >= 1 && rows <= INT32_MAX, InvalidArgument,
               "k-means needs 1 <= rows < 2^31, got rows=" << rows);
  HTFR_REQUIRE(dim >= 1 && dim <= INT32_MAX, InvalidArgument,
               "k-means needs 1 <= dim < 2^31, got dim=" << dim);
  HTFR_REQUIRE(k >= 1 && k <= rows, InvalidArgument,
               "k-means needs 1 <= k <= rows, got k=" << k << " for rows=" << rows);
  HTFR_REQUIRE(x != nullptr, InvalidArgument, "x is null");
  HTFR_REQUIRE(o.iterations >= 1, InvalidArgument,
               "KMeansOptions::iterations must be >= 1, got " << o.iterations);
  HTFR_REQUIRE(o.seeding_sample_rows >= 1, InvalidArgument,
               "KMeansOptions::seeding_sample_rows must be >= 1, got " << o.seeding_sample_rows);
  HTFR_REQUIRE(o.precision == Precision::fp32 || o.precision == Precision::tf32, InvalidArgument,
               "k-means distances run in fp32 or tf32, not " << to_string(o.precision));
  HTFR_REQUIRE(o.max_tile_bytes >= sizeof(float), InvalidArgument,
               "KMeansOptions::max_tile_bytes must hold at least one distance");
  if (backend == Backend::cuda) detail::require_cuda_device(device);
  detail::require_memory(x, backend, device, "x");
}

bool host_all_finite(const float* v, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    if (!std::isfinite(v[i])) return false;
  return true;
}

// True when every value of the device array is finite. Synchronises `stream`.
bool device_all_finite(const float* v, int64_t count, cudaStream_t stream) {
  detail::StreamScratch flag(sizeof(int), stream);
  HTFR_CUDA_CHECK(cudaMemsetAsync(flag.as<int>(), 0, sizeof(int), stream));
  detail::launch_find_nonfinite(v, count, flag.as<int>(), stream);
  int found = 0;
  HTFR_CUDA_CHECK(
      cudaMemcpyAsync(&found, flag.as<int>(), sizeof(int), cudaMemcpyDeviceToHost, stream));
  HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
  return found == 0;
}

void require_finite(Backend backend, const float* v, int64_t count, const char* name,
                    cudaStream_t stream) {
  const bool ok =
      backend == Backend::cpu ? host_all_finite(v, count) : device_all_finite(v, count, stream);
  HTFR_REQUIRE(ok, NonFiniteInput, name << " holds NaN or Inf");
}

// The k starting rows, chosen on the host from the seed (the same on both backends). The
// k-means++ subsample of a CUDA x is gathered on the device and copied back; synchronises.
std::vector<int64_t> choose_seed_rows(Backend backend, const float* x, int64_t rows, int64_t dim,
                                      int64_t k, const KMeansOptions& o, cudaStream_t stream) {
  uint64_t state = o.seed ^ kSeedingStream;
  if (resolve_seeding(o, rows, dim, k) == KMeansSeeding::random_rows)
    return permutation_prefix(rows, k, state);
  const int64_t s = seeding_sample_size(o, rows, k);
  const std::vector<int64_t> sample_rows = permutation_prefix(rows, s, state);
  std::vector<float> sample(static_cast<std::size_t>(s * dim));
  if (backend == Backend::cpu) {
    for (int64_t q = 0; q < s; ++q)
      std::memcpy(&sample[q * dim], x + sample_rows[q] * dim, dim * sizeof(float));
  } else {
    detail::StreamScratch index(s * sizeof(int64_t), stream);
    detail::StreamScratch gathered(s * dim * sizeof(float), stream);
    HTFR_CUDA_CHECK(cudaMemcpyAsync(index.as<int64_t>(), sample_rows.data(), s * sizeof(int64_t),
                                    cudaMemcpyHostToDevice, stream));
    detail::launch_gather_rows(x, dim, index.as<int64_t>(), s, gathered.as<float>(), stream);
    HTFR_CUDA_CHECK(cudaMemcpyAsync(sample.data(), gathered.as<float>(),
                                    sample.size() * sizeof(float), cudaMemcpyDeviceToHost, stream));
    HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  const std::vector<int64_t> picks = greedy_kmeans_plus_plus(sample.data(), s, dim, k, state);
  std::vector<int64_t> seeds(picks.size());
  for (std::size_t i = 0; i < picks.size(); ++i) seeds[i] = sample_rows[picks[i]];
  return seeds;
}

// Empty-cluster repair (see kmeans()): every empty cluster, in ascending order, takes the row
// farthest from its centroid (ties to the smaller row) among clusters that keep a row. Returns
// the number of clusters repaired; `assignment` and `sizes` are updated.
template <typename Dist>
int64_t repair_empty_clusters(std::vector<int32_t>& assignment, const std::vector<Dist>& dist,
                              std::vector<int64_t>& sizes) {
  std::vector<int64_t> empty;
  for (std::size_t c = 0; c < sizes.size(); ++c)
    if (sizes[c] == 0) empty.push_back(static_cast<int64_t>(c));
  if (empty.empty()) return 0;
  std::vector<int64_t> order(assignment.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return dist[a] > dist[b]; });
  // Sum over non-empty clusters of (size - 1) = rows - non-empty >= k - non-empty = empty
  // clusters, so the scan below never runs off the end.
  std::size_t next = 0;
  for (const int64_t c : empty) {
    while (sizes[assignment[order[next]]] < 2) ++next;
    const int64_t r = order[next++];
    --sizes[assignment[r]];
    assignment[r] = static_cast<int32_t>(c);
    sizes[c] = 1;
  }
  return static_cast<int64_t>(empty.size());
}

// ------------------------------------------------------------------------------------------------
// CPU reference

KMeansResult kmeans_cpu(const float* x, int64_t rows, int64_t dim, int64_t k,
                        const KMeansOptions& o, const std::vector<int64_t>& seeds) {
  KMeansResult res;
  res.k = k;
  res.dim = dim;
  res.centroids.resize(static_cast<std::size_t>(k * dim));
  for (int64_t c = 0; c < k; ++c)
    std::memcpy(&res.centroids[c * dim], x + seeds[c] * dim, dim * sizeof(float));
  res.assignment.assign(static_cast<std::size_t>(rows), -1);
  res.cluster_sizes.assign(static_cast<std::size_t>(k), 0);
  std::vector<double> dist(static_cast<std::size_t>(rows)), sums(res.centroids.size());
  for (int it = 0; it < o.iterations; ++it) {
    int64_t changed = 0;
    double inertia = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * dim;
      double best = std::numeric_limits<double>::infinity();
      int32_t best_c = 0;
      for (int64_t c = 0; c < k; ++c) {
        const float* cc = &res.centroids[c * dim];
        double acc = 0.0;
        for (int64_t j = 0; j < dim; ++j) {
          const double d = double(xr[j]) - double(cc[j]);
          acc += d * d;
        }
        if (acc < best) {
          best = acc;
          best_c = static_cast<int32_t>(c);
        }
      }
      changed += res.assignment[r] != best_c;
      res.assignment[r] = best_c;
      dist[r] = best;
      inertia += best;
    }
    res.inertia.push_back(inertia);
    std::fill(res.cluster_sizes.begin(), res.cluster_sizes.end(), 0);
    for (const int32_t a : res.assignment) ++res.cluster_sizes[a];
    const int64_t repaired = repair_empty_clusters(res.assignment, dist, res.cluster_sizes);
    res.empty_clusters_repaired += repaired;
    // Means in ascending row order, float64, as the CUDA segmented sums do.
    std::fill(sums.begin(), sums.end(), 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      double* s = &sums[res.assignment[r] * dim];
      for (int64_t j = 0; j < dim; ++j) s[j] += double(x[r * dim + j]);
    }
    for (int64_t c = 0; c < k; ++c)
      for (int64_t j = 0; j < dim; ++j)
        res.centroids[c * dim + j] =
            static_cast<float>(sums[c * dim + j] / double(res.cluster_sizes[c]));
    res.iterations_run = it + 1;
    if (o.stop_when_stable && changed == 0 && repaired == 0) break;
  }
  return res;
}

// Rows of each cluster in ascending order: rows_of[offset[c] .. offset[c] + sizes[c]).
void group_rows_cpu(const std::vector<int32_t>& assignment, const std::vector<int64_t>& sizes,
                    std::vector<int64_t>& offset, std::vector<int64_t>& rows_of) {
  offset.assign(sizes.size(), 0);
  for (std::size_t c = 1; c < sizes.size(); ++c) offset[c] = offset[c - 1] + sizes[c - 1];
  std::vector<int64_t> fill = offset;
  rows_of.resize(assignment.size());
  for (std::size_t r = 0; r < assignment.size(); ++r)
    rows_of[fill[assignment[r]]++] = static_cast<int64_t>(r);
}

// dir <- +-w / ||w|| with the largest-magnitude entry positive, unless ||w|| is 0 or not finite.
void normalize_direction_cpu(const std::vector<float>& w, float* dir) {
  double acc = 0.0;
  std::size_t top = 0;
  for (std::size_t j = 0; j < w.size(); ++j) {
    acc += double(w[j]) * w[j];
    if (std::fabs(w[j]) > std::fabs(w[top])) top = j;
  }
  const double norm = std::sqrt(acc);
  if (!(norm > 0.0) || !std::isfinite(norm)) return;
  const float scale = static_cast<float>((w[top] < 0.0f ? -1.0 : 1.0) / norm);
  for (std::size_t j = 0; j < w.size(); ++j) dir[j] = w[j] * scale;
}

// The per-cluster geometry of init_pool_from_data on the CPU, written straight into the pool.
// Intermediate values are rounded to float where the CUDA path stores them.
void init_geometry_cpu(const PoolView& pool, const float* x, const float* targets,
                       const KMeansResult& km, const DataInitOptions& o,
                       const detail::GeometryParams& params, std::vector<float>& spread) {
  const int64_t k = km.k, dim = km.dim, m = pool.output_dim;
  std::vector<int64_t> offset, rows_of;
  group_rows_cpu(km.assignment, km.cluster_sizes, offset, rows_of);
  const uint64_t seed = o.kmeans.seed ^ detail::kDirectionStream;
  std::vector<float> w(static_cast<std::size_t>(dim)), proj;
  std::vector<double> acc(static_cast<std::size_t>(std::max(dim, m)));
  spread.assign(static_cast<std::size_t>(k), 0.0f);
  for (int64_t c = 0; c < k; ++c) {
    const float* mu = &km.centroids[c * dim];
    const int64_t* members = &rows_of[offset[c]];
    const int64_t n = km.cluster_sizes[c];
    float* dir = pool.normals + c * dim;
    const auto project = [&]() {
      proj.assign(static_cast<std::size_t>(n), 0.0f);
      for (int64_t q = 0; q < n; ++q) {
        const float* xr = x + members[q] * dim;
        double p = 0.0;
        for (int64_t j = 0; j < dim; ++j) p += (double(xr[j]) - double(mu[j])) * double(dir[j]);
        proj[q] = static_cast<float>(p);
      }
    };
    for (int64_t j = 0; j < dim; ++j) w[j] = detail::direction_start(seed, c, j);
    normalize_direction_cpu(w, dir);
    for (int step = 0; step < o.power_iterations; ++step) {
      project();
      std::fill(acc.begin(), acc.begin() + dim, 0.0);
      for (int64_t q = 0; q < n; ++q) {
        const float* xr = x + members[q] * dim;
        for (int64_t j = 0; j < dim; ++j)
          acc[j] += double(proj[q]) * (double(xr[j]) - double(mu[j]));
      }
      for (int64_t j = 0; j < dim; ++j) w[j] = static_cast<float>(acc[j]);
      normalize_direction_cpu(w, dir);
    }
    project();
    double sq = 0.0;
    for (const float p : proj) sq += double(p) * p;
    spread[c] = n > 0 ? static_cast<float>(std::sqrt(sq / double(n))) : 0.0f;
    double dot = 0.0;
    for (int64_t j = 0; j < dim; ++j) dot += double(dir[j]) * mu[j];
    const float band = detail::band_from_spread(params, spread[c]);
    pool.offsets[c] = static_cast<float>(-dot);
    pool.dneg[c] = -band;
    pool.dpos[c] = band;
    pool.tau[c] = detail::tau_from_spread(params, spread[c]);
    pool.use_count[c] = pool.last_used[c] = pool.mean_abs_d[c] = pool.loss_trace[c] = 0.0f;
    std::fill(acc.begin(), acc.begin() + m, 0.0);
    for (int64_t q = 0; q < n; ++q)
      for (int64_t j = 0; j < m; ++j) acc[j] += double(targets[members[q] * m + j]);
    for (int col = 0; col < 3; ++col)
      for (int64_t j = 0; j < m; ++j)
        pool.controls[(c * 3 + col) * m + j] = static_cast<float>(acc[j] / double(n));
  }
}

// ------------------------------------------------------------------------------------------------
// CUDA driver

// Device state of one k-means run. After run() the centroids are the means of the final
// assignment and the grouping (sorted_rows, sizes, offsets) describes it, so the geometry pass
// can reuse both. All memory is stream-ordered scratch on `stream`.
class CudaKMeans {
 public:
  CudaKMeans(int64_t rows, int64_t dim, int64_t k, int64_t tile_rows, cudaStream_t stream)
      : rows_(rows),
        dim_(dim),
        k_(k),
        tile_rows_(tile_rows),
        stream_(stream),
        temp_bytes_(detail::group_rows_temp_bytes(rows, k)),
        centroids_(k * dim * sizeof(float), stream),
        c_norm_(k * sizeof(float), stream),
        x_norm_(rows * sizeof(float), stream),
        dots_(tile_rows * k * sizeof(float), stream),
        assignment_(rows * sizeof(int32_t), stream),
        min_dist_(rows * sizeof(float), stream),
        row_ids_(rows * sizeof(int32_t), stream),
        sorted_keys_(rows * sizeof(int32_t), stream),
        sorted_rows_(rows * sizeof(int32_t), stream),
        sizes_(k * sizeof(int32_t), stream),
        offsets_(k * sizeof(int32_t), stream),
        temp_(temp_bytes_, stream),
        seed_index_(k * sizeof(int64_t), stream),
        changed_(sizeof(int32_t), stream),
        inertia_(sizeof(double), stream) {}

  // Runs Lloyd's iterations from the seed rows; centroids are copied back only when asked.
  KMeansResult run(const float* x, const std::vector<int64_t>& seeds, const KMeansOptions& o,
                   bool download_centroids) {
    KMeansResult res;
    res.k = k_;
    res.dim = dim_;
    HTFR_CUDA_CHECK(cudaMemcpyAsync(seed_index_.as<int64_t>(), seeds.data(), k_ * sizeof(int64_t),
                                    cudaMemcpyHostToDevice, stream_));
    detail::launch_gather_rows(x, dim_, seed_index_.as<int64_t>(), k_, centroids(), stream_);
    detail::launch_row_sq_norms(x, rows_, dim_, x_norm_.as<float>(), stream_);
    HTFR_CUDA_CHECK(cudaMemsetAsync(assignment(), 0xFF, rows_ * sizeof(int32_t), stream_));
    detail::CublasHandle blas;
    HTFR_CUBLAS_CHECK(cublasSetStream(blas.handle, stream_));
    const cublasComputeType_t compute =
        o.precision == Precision::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    std::vector<int32_t> sizes32(static_cast<std::size_t>(k_));
    std::vector<int64_t> sizes(sizes32.size());
    for (int it = 0; it < o.iterations; ++it) {
      detail::launch_row_sq_norms(centroids(), k_, dim_, c_norm_.as<float>(), stream_);
      HTFR_CUDA_CHECK(cudaMemsetAsync(changed_.as<int32_t>(), 0, sizeof(int32_t), stream_));
      for (int64_t r0 = 0; r0 < rows_; r0 += tile_rows_) {
        const int64_t n = std::min(tile_rows_, rows_ - r0);
        const float one = 1.0f, zero = 0.0f;
        // Column-major view: centroids are dim x k (lda = dim), the tile is dim x n, and the
        // k x n result is the row-major n x k tile the argmin reads.
        HTFR_CUBLAS_CHECK(cublasGemmEx(
            blas.handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(k_), static_cast<int>(n),
            static_cast<int>(dim_), &one, centroids(), CUDA_R_32F, static_cast<int>(dim_),
            x + r0 * dim_, CUDA_R_32F, static_cast<int>(dim_), &zero, dots_.as<float>(), CUDA_R_32F,
            static_cast<int>(k_), compute, CUBLAS_GEMM_DEFAULT));
        detail::launch_argmin_tile(dots_.as<float>(), n, k_, x_norm_.as<float>() + r0,
                                   c_norm_.as<float>(), assignment() + r0,
                                   min_dist_.as<float>() + r0, changed_.as<int32_t>(), stream_);
      }
      detail::launch_sum_fixed_order(min_dist_.as<float>(), rows_, inertia_.as<double>(), stream_);
      group();
      int32_t changed = 0;
      double inertia = 0.0;
      HTFR_CUDA_CHECK(cudaMemcpyAsync(&changed, changed_.as<int32_t>(), sizeof(int32_t),
                                      cudaMemcpyDeviceToHost, stream_));
      HTFR_CUDA_CHECK(cudaMemcpyAsync(&inertia, inertia_.as<double>(), sizeof(double),
                                      cudaMemcpyDeviceToHost, stream_));
      HTFR_CUDA_CHECK(cudaMemcpyAsync(sizes32.data(), sizes_.as<int32_t>(), k_ * sizeof(int32_t),
                                      cudaMemcpyDeviceToHost, stream_));
      HTFR_CUDA_CHECK(cudaStreamSynchronize(stream_));
      res.inertia.push_back(inertia);
      std::copy(sizes32.begin(), sizes32.end(), sizes.begin());
      int64_t repaired = 0;
      if (std::find(sizes.begin(), sizes.end(), int64_t{0}) != sizes.end()) {
        std::vector<int32_t> assign_h(static_cast<std::size_t>(rows_));
        std::vector<float> dist_h(assign_h.size());
        HTFR_CUDA_CHECK(cudaMemcpyAsync(assign_h.data(), assignment(), rows_ * sizeof(int32_t),
                                        cudaMemcpyDeviceToHost, stream_));
        HTFR_CUDA_CHECK(cudaMemcpyAsync(dist_h.data(), min_dist_.as<float>(), rows_ * sizeof(float),
                                        cudaMemcpyDeviceToHost, stream_));
        HTFR_CUDA_CHECK(cudaStreamSynchronize(stream_));
        repaired = repair_empty_clusters(assign_h, dist_h, sizes);
        HTFR_CUDA_CHECK(cudaMemcpyAsync(assignment(), assign_h.data(), rows_ * sizeof(int32_t),
                                        cudaMemcpyHostToDevice, stream_));
        group();
        // The upload above reads pageable memory that goes out of scope here.
        HTFR_CUDA_CHECK(cudaStreamSynchronize(stream_));
      }
      res.empty_clusters_repaired += repaired;
      detail::launch_segmented_sum(x, dim_, sorted_rows(), offsets(), group_sizes(), k_, nullptr,
                                   nullptr, true, centroids(), stream_);
      res.iterations_run = it + 1;
      if (o.stop_when_stable && changed == 0 && repaired == 0) break;
    }
    res.cluster_sizes = sizes;
    res.assignment.resize(static_cast<std::size_t>(rows_));
    HTFR_CUDA_CHECK(cudaMemcpyAsync(res.assignment.data(), assignment(), rows_ * sizeof(int32_t),
                                    cudaMemcpyDeviceToHost, stream_));
    if (download_centroids) {
      res.centroids.resize(static_cast<std::size_t>(k_ * dim_));
      HTFR_CUDA_CHECK(cudaMemcpyAsync(res.centroids.data(), centroids(),
                                      res.centroids.size() * sizeof(float), cudaMemcpyDeviceToHost,
                                      stream_));
    }
    HTFR_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return res;
  }

  float* centroids() const { return centroids_.as<float>(); }
  int32_t* assignment() const { return assignment_.as<int32_t>(); }
  const int32_t* sorted_rows() const { return sorted_rows_.as<int32_t>(); }
  const int32_t* group_sizes() const { return sizes_.as<int32_t>(); }
  const int32_t* offsets() const { return offsets_.as<int32_t>(); }

 private:
  void group() {
    detail::launch_group_rows(assignment(), rows_, k_, temp_.as<void>(), temp_bytes_,
                              row_ids_.as<int32_t>(), sorted_keys_.as<int32_t>(),
                              sorted_rows_.as<int32_t>(), sizes_.as<int32_t>(),
                              offsets_.as<int32_t>(), stream_);
  }

  int64_t rows_, dim_, k_, tile_rows_;
  cudaStream_t stream_;
  std::size_t temp_bytes_;
  detail::StreamScratch centroids_, c_norm_, x_norm_, dots_, assignment_, min_dist_, row_ids_,
      sorted_keys_, sorted_rows_, sizes_, offsets_, temp_, seed_index_, changed_, inertia_;
};

int64_t tile_rows_for(const KMeansOptions& o, int64_t rows, int64_t k) {
  const int64_t fit =
      static_cast<int64_t>(o.max_tile_bytes / (static_cast<std::size_t>(k) * sizeof(float)));
  return std::max<int64_t>(1, std::min(rows, fit));
}

detail::GeometryParams geometry_params(const DataInitOptions& o) {
  detail::GeometryParams p;
  p.band_scale = o.band_scale;
  p.band_min = o.band_min;
  p.tau = o.tau;
  p.tau_scale = o.tau_scale;
  p.tau_min = o.tau_min;
  return p;
}

void check_init_options(const DataInitOptions& o) {
  HTFR_REQUIRE(o.power_iterations >= 1, InvalidArgument,
               "DataInitOptions::power_iterations must be >= 1, got " << o.power_iterations);
  HTFR_REQUIRE(std::isfinite(o.band_scale) && o.band_scale >= 0.0f, InvalidArgument,
               "DataInitOptions::band_scale must be finite and >= 0, got " << o.band_scale);
  HTFR_REQUIRE(std::isfinite(o.band_min) && o.band_min > 0.0f, InvalidArgument,
               "DataInitOptions::band_min must be finite and > 0, got " << o.band_min);
  HTFR_REQUIRE(std::isfinite(o.tau) && o.tau >= 0.0f, InvalidArgument,
               "DataInitOptions::tau must be finite and >= 0, got " << o.tau);
  HTFR_REQUIRE(std::isfinite(o.tau_scale) && o.tau_scale >= 0.0f, InvalidArgument,
               "DataInitOptions::tau_scale must be finite and >= 0, got " << o.tau_scale);
  HTFR_REQUIRE(std::isfinite(o.tau_min) && o.tau_min > 0.0f, InvalidArgument,
               "DataInitOptions::tau_min must be finite and > 0, got " << o.tau_min);
}

}  // namespace

KMeansResult kmeans(Backend backend, const float* x, int64_t rows, int64_t dim, int64_t k,
                    const KMeansOptions& options, cudaStream_t stream, int device) {
  HTFR_NVTX_RANGE("htfr::kmeans");
  check_kmeans_args(backend, x, rows, dim, k, options, device);
  if (backend == Backend::cpu) {
    if (options.check_finite) require_finite(backend, x, rows * dim, "x", stream);
    return kmeans_cpu(x, rows, dim, k, options,
                      choose_seed_rows(backend, x, rows, dim, k, options, stream));
  }
  detail::DeviceGuard guard(device);
  if (options.check_finite) require_finite(backend, x, rows * dim, "x", stream);
  const std::vector<int64_t> seeds = choose_seed_rows(backend, x, rows, dim, k, options, stream);
  CudaKMeans run(rows, dim, k, tile_rows_for(options, rows, k), stream);
  return run.run(x, seeds, options, true);
}

DataInitReport init_pool_from_data(HyperTensorPool& pool, const float* x, int64_t rows, int64_t dim,
                                   const float* targets, int64_t target_dim,
                                   const DataInitOptions& options, cudaStream_t stream) {
  HTFR_NVTX_RANGE("htfr::init_pool_from_data");
  HTFR_REQUIRE(!pool.empty(), InvalidArgument, "init_pool_from_data() on an empty pool");
  HTFR_REQUIRE(dim == pool.input_dim(), InvalidArgument,
               "x has dim " << dim << " but the pool's input_dim is " << pool.input_dim());
  HTFR_REQUIRE(target_dim == pool.output_dim(), InvalidArgument,
               "targets have " << target_dim << " columns but the pool's output_dim is "
                               << pool.output_dim());
  HTFR_REQUIRE(targets != nullptr, InvalidArgument, "targets is null");
  check_init_options(options);
  const Backend backend = pool.backend();
  const int device = pool.device();
  const int64_t k = pool.num_tensors();
  check_kmeans_args(backend, x, rows, dim, k, options.kmeans, device);
  detail::require_memory(targets, backend, device, "targets");
  const detail::GeometryParams params = geometry_params(options);
  const PoolView view = pool.view();
  DataInitReport report;

  if (backend == Backend::cpu) {
    if (options.kmeans.check_finite) {
      require_finite(backend, x, rows * dim, "x", stream);
      require_finite(backend, targets, rows * target_dim, "targets", stream);
    }
    const KMeansResult km =
        kmeans_cpu(x, rows, dim, k, options.kmeans,
                   choose_seed_rows(backend, x, rows, dim, k, options.kmeans, stream));
    init_geometry_cpu(view, x, targets, km, options, params, report.spread);
    report.assignment = km.assignment;
    report.cluster_sizes = km.cluster_sizes;
    report.inertia = km.inertia;
    report.iterations_run = km.iterations_run;
    return report;
  }

  detail::DeviceGuard guard(device);
  if (options.kmeans.check_finite) {
    require_finite(backend, x, rows * dim, "x", stream);
    require_finite(backend, targets, rows * target_dim, "targets", stream);
  }
  const std::vector<int64_t> seeds =
      choose_seed_rows(backend, x, rows, dim, k, options.kmeans, stream);
  CudaKMeans km(rows, dim, k, tile_rows_for(options.kmeans, rows, k), stream);
  const KMeansResult clusters = km.run(x, seeds, options.kmeans, false);
  // Every scratch array exists before the first write to the pool.
  detail::StreamScratch w(k * dim * sizeof(float), stream);
  detail::StreamScratch proj(rows * sizeof(float), stream);
  detail::StreamScratch spread(k * sizeof(float), stream);
  detail::StreamScratch target_mean(k * target_dim * sizeof(float), stream);
  detail::launch_segmented_sum(targets, target_dim, km.sorted_rows(), km.offsets(),
                               km.group_sizes(), k, nullptr, nullptr, true, target_mean.as<float>(),
                               stream);
  // Power iteration with the pool's normals as the iterate.
  detail::launch_direction_start(w.as<float>(), k, dim,
                                 options.kmeans.seed ^ detail::kDirectionStream, stream);
  detail::launch_normalize_directions(w.as<float>(), k, dim, view.normals, stream);
  for (int step = 0; step < options.power_iterations; ++step) {
    detail::launch_project_rows(x, rows, dim, km.assignment(), km.centroids(), view.normals,
                                proj.as<float>(), stream);
    detail::launch_segmented_sum(x, dim, km.sorted_rows(), km.offsets(), km.group_sizes(), k,
                                 proj.as<float>(), km.centroids(), false, w.as<float>(), stream);
    detail::launch_normalize_directions(w.as<float>(), k, dim, view.normals, stream);
  }
  detail::launch_project_rows(x, rows, dim, km.assignment(), km.centroids(), view.normals,
                              proj.as<float>(), stream);
  detail::launch_cluster_spread(proj.as<float>(), km.sorted_rows(), km.offsets(), km.group_sizes(),
                                k, spread.as<float>(), stream);
  detail::launch_write_geometry(view, km.centroids(), spread.as<float>(), target_mean.as<float>(),
                                params, stream);
  pool.refresh_half(stream);
  report.spread.resize(static_cast<std::size_t>(k));
  HTFR_CUDA_CHECK(cudaMemcpyAsync(report.spread.data(), spread.as<float>(), k * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream));
  HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
  report.assignment = clusters.assignment;
  report.cluster_sizes = clusters.cluster_sizes;
  report.inertia = clusters.inertia;
  report.iterations_run = clusters.iterations_run;
  return report;
}

}  // namespace htfr

// Data-driven initialisation: k-means recovers separated blobs, repairs empty clusters and is
// deterministic; init_pool_from_data puts each hyperplane through its cluster mean along the
// principal direction, so a top-1 forward at a cluster mean predicts that cluster's mean target;
// CUDA against the CPU reference; typed errors that leave the pool unchanged.
#include <gtest/gtest.h>
#include <htfr/error.hpp>
#include <htfr/init.hpp>
#include <htfr/model.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <vector>

#include "../kernels/kmeans.cuh"
#include "test_util.hpp"

namespace htfr::test {
namespace {

// Blobs with one dominant axis each: row = center_b + axis_scale * s * u_b + noise, with s and
// the noise standard normal, u_b a random unit axis. Blob b has 17 + 6 b rows (odd counts,
// different sizes). Centers lie ~center_scale * sqrt(2 dim) apart, far beyond a blob's extent
// (~3 axis_scale along u_b), so the blobs are the k-means optimum.
struct Blobs {
  int64_t count = 0, dim = 0, rows = 0;
  std::vector<float> x;             // rows x dim
  std::vector<int> label;           // rows
  std::vector<float> axis;          // count x dim, unit
  std::vector<double> mean;         // count x dim, the blob's sample mean
  std::vector<float> target;        // rows x target_dim
  std::vector<double> mean_target;  // count x target_dim
  int64_t target_dim = 0;
};

Blobs make_blobs(int64_t count, int64_t dim, uint64_t seed, float axis_scale = 8.0f,
                 float noise = 0.25f, float center_scale = 20.0f, int64_t target_dim = 3) {
  Blobs b;
  b.count = count;
  b.dim = dim;
  b.target_dim = target_dim;
  const auto centers = random_normal(static_cast<std::size_t>(count * dim), seed, center_scale);
  b.axis = random_normal(static_cast<std::size_t>(count * dim), seed + 1);
  for (int64_t c = 0; c < count; ++c) {
    double n2 = 0.0;
    for (int64_t j = 0; j < dim; ++j) n2 += double(b.axis[c * dim + j]) * b.axis[c * dim + j];
    for (int64_t j = 0; j < dim; ++j) b.axis[c * dim + j] /= static_cast<float>(std::sqrt(n2));
  }
  const auto blob_targets = random_normal(static_cast<std::size_t>(count * target_dim), seed + 2);
  std::mt19937_64 rng(seed + 3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t c = 0; c < count; ++c) {
    const int64_t n = 17 + 6 * c;
    for (int64_t q = 0; q < n; ++q) {
      const float s = normal(rng);
      for (int64_t j = 0; j < dim; ++j)
        b.x.push_back(centers[c * dim + j] + axis_scale * s * b.axis[c * dim + j] +
                      noise * normal(rng));
      for (int64_t t = 0; t < target_dim; ++t)
        b.target.push_back(blob_targets[c * target_dim + t] + 0.1f * normal(rng));
      b.label.push_back(static_cast<int>(c));
    }
  }
  b.rows = static_cast<int64_t>(b.label.size());
  b.mean.assign(static_cast<std::size_t>(count * dim), 0.0);
  b.mean_target.assign(static_cast<std::size_t>(count * target_dim), 0.0);
  std::vector<int64_t> sizes(static_cast<std::size_t>(count), 0);
  for (int64_t r = 0; r < b.rows; ++r) {
    const int c = b.label[r];
    ++sizes[c];
    for (int64_t j = 0; j < dim; ++j) b.mean[c * dim + j] += b.x[r * dim + j];
    for (int64_t t = 0; t < target_dim; ++t)
      b.mean_target[c * target_dim + t] += b.target[r * target_dim + t];
  }
  for (int64_t c = 0; c < count; ++c) {
    for (int64_t j = 0; j < dim; ++j) b.mean[c * dim + j] /= double(sizes[c]);
    for (int64_t t = 0; t < target_dim; ++t) b.mean_target[c * target_dim + t] /= double(sizes[c]);
  }
  return b;
}

// The blobs are recovered when each blob's rows share one cluster and different blobs have
// different clusters (cluster ids are arbitrary).
::testing::AssertionResult recovers_blobs(const std::vector<int32_t>& assignment, const Blobs& b) {
  std::map<int, int32_t> cluster_of_blob;
  for (int64_t r = 0; r < b.rows; ++r) {
    const auto [it, fresh] = cluster_of_blob.emplace(b.label[r], assignment[r]);
    if (!fresh && it->second != assignment[r])
      return ::testing::AssertionFailure()
             << "blob " << b.label[r] << " is split over clusters " << it->second << " and "
             << assignment[r] << " (row " << r << ")";
  }
  std::set<int32_t> distinct;
  for (const auto& [blob, cluster] : cluster_of_blob) distinct.insert(cluster);
  if (static_cast<int64_t>(distinct.size()) != b.count)
    return ::testing::AssertionFailure()
           << b.count << " blobs share only " << distinct.size() << " clusters";
  return ::testing::AssertionSuccess();
}

// Non-increasing up to a relative slack for rounding in the distances.
::testing::AssertionResult non_increasing(const std::vector<double>& v, double rtol) {
  for (std::size_t i = 1; i < v.size(); ++i) {
    if (v[i] > v[i - 1] * (1.0 + rtol))
      return ::testing::AssertionFailure()
             << "inertia rises from " << v[i - 1] << " to " << v[i] << " at iteration " << i;
  }
  return ::testing::AssertionSuccess();
}

// Centroid c recomputed from the assignment, in float64.
std::vector<double> means_of(const float* x, int64_t rows, int64_t dim, int64_t k,
                             const std::vector<int32_t>& assignment) {
  std::vector<double> mean(static_cast<std::size_t>(k * dim), 0.0);
  std::vector<int64_t> size(static_cast<std::size_t>(k), 0);
  for (int64_t r = 0; r < rows; ++r) {
    ++size[assignment[r]];
    for (int64_t j = 0; j < dim; ++j) mean[assignment[r] * dim + j] += x[r * dim + j];
  }
  for (int64_t c = 0; c < k; ++c)
    for (int64_t j = 0; j < dim; ++j) mean[c * dim + j] /= double(std::max<int64_t>(size[c], 1));
  return mean;
}

std::vector<float> to_float(const std::vector<double>& v) { return {v.begin(), v.end()}; }

double dot_row(const float* a, const double* b, int64_t dim) {
  double acc = 0.0;
  for (int64_t j = 0; j < dim; ++j) acc += double(a[j]) * b[j];
  return acc;
}

double norm_row(const float* a, int64_t dim) {
  double acc = 0.0;
  for (int64_t j = 0; j < dim; ++j) acc += double(a[j]) * a[j];
  return std::sqrt(acc);
}

// Cluster of each blob, from a recovering assignment.
std::vector<int32_t> cluster_of_blobs(const std::vector<int32_t>& assignment, const Blobs& b) {
  std::vector<int32_t> out(static_cast<std::size_t>(b.count), -1);
  for (int64_t r = 0; r < b.rows; ++r) out[b.label[r]] = assignment[r];
  return out;
}

bool same_parameters(const PoolParameters& a, const PoolParameters& b) {
  return a.normals == b.normals && a.offsets == b.offsets && a.dneg == b.dneg && a.dpos == b.dpos &&
         a.tau == b.tau && a.controls == b.controls && a.use_count == b.use_count &&
         a.last_used == b.last_used && a.mean_abs_d == b.mean_abs_d && a.loss_trace == b.loss_trace;
}

KMeansOptions blob_options(KMeansSeeding seeding = KMeansSeeding::kmeans_plus_plus) {
  KMeansOptions o;
  o.seed = 5;
  o.iterations = 25;
  o.seeding = seeding;
  return o;
}

// -------------------------------------------------------------------------------------------
// k-means on the CPU

TEST(KMeansCpu, RecoversSeparatedBlobs) {
  const Blobs b = make_blobs(12, 40, 101);
  const KMeansResult r =
      kmeans(Backend::cpu, b.x.data(), b.rows, b.dim, 12, blob_options(), nullptr);
  EXPECT_TRUE(recovers_blobs(r.assignment, b));
  EXPECT_TRUE(non_increasing(r.inertia, 1e-9));
  ASSERT_EQ(r.inertia.size(), static_cast<std::size_t>(r.iterations_run));
  EXPECT_LT(r.iterations_run, 25) << "separated blobs converge well before the limit";
  // Centroids are the blob means: float64 sums rounded once to float.
  const auto blob_cluster = cluster_of_blobs(r.assignment, b);
  for (int64_t c = 0; c < b.count; ++c) {
    const int32_t k = blob_cluster[c];
    EXPECT_EQ(r.cluster_sizes[k], 17 + 6 * c);
    for (int64_t j = 0; j < b.dim; ++j)
      EXPECT_NEAR(r.centroids[k * b.dim + j], b.mean[c * b.dim + j],
                  1e-6 * (1.0 + std::fabs(b.mean[c * b.dim + j])));
  }
  // Without early stopping every iteration runs; once stable the inertia repeats exactly.
  KMeansOptions fixed = blob_options();
  fixed.iterations = 6;
  fixed.stop_when_stable = false;
  const KMeansResult f = kmeans(Backend::cpu, b.x.data(), b.rows, b.dim, 12, fixed, nullptr);
  EXPECT_EQ(f.iterations_run, 6);
  ASSERT_EQ(f.inertia.size(), 6u);
  EXPECT_EQ(f.inertia[5], r.inertia.back());
  EXPECT_EQ(f.assignment, r.assignment);
}

TEST(KMeansCpu, AutomaticSeedingPicksKMeansPlusPlusForSmallProblems) {
  const Blobs b = make_blobs(12, 40, 102);
  KMeansOptions o = blob_options(KMeansSeeding::automatic);
  const KMeansResult r = kmeans(Backend::cpu, b.x.data(), b.rows, b.dim, 12, o, nullptr);
  EXPECT_TRUE(recovers_blobs(r.assignment, b));
}

TEST(KMeansCpu, RandomRowSeedingDescendsAndKeepsEveryClusterNonEmpty) {
  const Blobs b = make_blobs(12, 40, 103);
  for (const int64_t k : {int64_t{1}, int64_t{7}, int64_t{12}, int64_t{30}}) {
    const KMeansResult r = kmeans(Backend::cpu, b.x.data(), b.rows, b.dim, k,
                                  blob_options(KMeansSeeding::random_rows), nullptr);
    EXPECT_TRUE(non_increasing(r.inertia, 1e-9)) << "k " << k;
    int64_t total = 0;
    for (const int64_t s : r.cluster_sizes) {
      EXPECT_GE(s, 1) << "k " << k;
      total += s;
    }
    EXPECT_EQ(total, b.rows);
    // Centroids are the means of the returned assignment.
    const auto mean = means_of(b.x.data(), b.rows, b.dim, k, r.assignment);
    EXPECT_TRUE(all_close(r.centroids, to_float(mean), 1e-5, 1e-6)) << "k " << k;
  }
}

TEST(KMeansCpu, OneClusterIsTheMeanAndKEqualsRowsIsExact) {
  const Blobs b = make_blobs(3, 5, 104);
  const KMeansResult one =
      kmeans(Backend::cpu, b.x.data(), b.rows, b.dim, 1, blob_options(), nullptr);
  const auto mean = means_of(b.x.data(), b.rows, b.dim, 1, std::vector<int32_t>(b.rows, 0));
  EXPECT_TRUE(all_close(one.centroids, to_float(mean), 1e-5, 1e-6));
  EXPECT_EQ(one.cluster_sizes[0], b.rows);

  const KMeansResult all = kmeans(Backend::cpu, b.x.data(), b.rows, b.dim, b.rows,
                                  blob_options(KMeansSeeding::random_rows), nullptr);
  std::set<int32_t> clusters(all.assignment.begin(), all.assignment.end());
  EXPECT_EQ(static_cast<int64_t>(clusters.size()), b.rows);
  EXPECT_EQ(all.inertia.front(), 0.0);  // every centroid starts on its own row
}

TEST(KMeansCpu, RepairsEmptyClustersFromDuplicateRows) {
  // Two distinct points, five copies each, k = 4: after the first assignment (ties to the
  // smaller index) at most two clusters hold rows; the others must take rows from them.
  const int64_t dim = 3;
  std::vector<float> x;
  for (int r = 0; r < 10; ++r)
    for (int64_t j = 0; j < dim; ++j) x.push_back(r % 2 ? 1.0f : -1.0f);
  const KMeansResult r =
      kmeans(Backend::cpu, x.data(), 10, dim, 4, blob_options(KMeansSeeding::random_rows), nullptr);
  EXPECT_GE(r.empty_clusters_repaired, 2);
  for (const int64_t s : r.cluster_sizes) EXPECT_GE(s, 1);
  const auto mean = means_of(x.data(), 10, dim, 4, r.assignment);
  EXPECT_TRUE(all_close(r.centroids, to_float(mean), 0.0, 0.0));
}

TEST(KMeansCpu, IsDeterministicForASeedAndDependsOnIt) {
  const Blobs b = make_blobs(12, 40, 105);
  KMeansOptions o = blob_options(KMeansSeeding::random_rows);
  o.iterations = 4;
  const KMeansResult a = kmeans(Backend::cpu, b.x.data(), b.rows, b.dim, 20, o, nullptr);
  const KMeansResult a2 = kmeans(Backend::cpu, b.x.data(), b.rows, b.dim, 20, o, nullptr);
  EXPECT_EQ(a.assignment, a2.assignment);
  EXPECT_EQ(a.centroids, a2.centroids);
  EXPECT_EQ(a.inertia, a2.inertia);
  o.seed += 1;
  const KMeansResult c = kmeans(Backend::cpu, b.x.data(), b.rows, b.dim, 20, o, nullptr);
  EXPECT_NE(a.inertia.front(), c.inertia.front()) << "a different seed starts elsewhere";
}

TEST(KMeansCpu, RejectsBadInputs) {
  const Blobs b = make_blobs(2, 4, 106);
  const KMeansOptions o = blob_options();
  const float* x = b.x.data();
  EXPECT_THROW(kmeans(Backend::cpu, x, b.rows, b.dim, 0, o, nullptr), InvalidArgument);
  EXPECT_THROW(kmeans(Backend::cpu, x, b.rows, b.dim, b.rows + 1, o, nullptr), InvalidArgument);
  EXPECT_THROW(kmeans(Backend::cpu, x, 0, b.dim, 1, o, nullptr), InvalidArgument);
  EXPECT_THROW(kmeans(Backend::cpu, x, b.rows, 0, 1, o, nullptr), InvalidArgument);
  EXPECT_THROW(kmeans(Backend::cpu, nullptr, b.rows, b.dim, 2, o, nullptr), InvalidArgument);
  KMeansOptions bad = o;
  bad.iterations = 0;
  EXPECT_THROW(kmeans(Backend::cpu, x, b.rows, b.dim, 2, bad, nullptr), InvalidArgument);
  bad = o;
  bad.precision = Precision::bf16;
  EXPECT_THROW(kmeans(Backend::cpu, x, b.rows, b.dim, 2, bad, nullptr), InvalidArgument);
  bad = o;
  bad.seeding_sample_rows = 0;
  EXPECT_THROW(kmeans(Backend::cpu, x, b.rows, b.dim, 2, bad, nullptr), InvalidArgument);
  bad = o;
  bad.max_tile_bytes = 0;
  EXPECT_THROW(kmeans(Backend::cpu, x, b.rows, b.dim, 2, bad, nullptr), InvalidArgument);
  std::vector<float> nan_x = b.x;
  nan_x[5] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(kmeans(Backend::cpu, nan_x.data(), b.rows, b.dim, 2, o, nullptr), NonFiniteInput);
  nan_x[5] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(kmeans(Backend::cpu, nan_x.data(), b.rows, b.dim, 2, o, nullptr), NonFiniteInput);
}

// -------------------------------------------------------------------------------------------
// init_pool_from_data on the CPU

DataInitOptions init_options() {
  DataInitOptions o;
  o.kmeans = blob_options();
  return o;
}

// The per-tensor contract of init_pool_from_data, checked against the blobs' own statistics.
void expect_blob_geometry(const PoolParameters& p, const DataInitReport& rep, const Blobs& b,
                          const DataInitOptions& o) {
  const int64_t dim = b.dim, m = b.target_dim;
  ASSERT_TRUE(recovers_blobs(rep.assignment, b));
  const auto tensor_of = cluster_of_blobs(rep.assignment, b);
  for (int64_t c = 0; c < b.count; ++c) {
    const int64_t i = tensor_of[c];
    const float* n = &p.normals[i * dim];
    const double* mu = &b.mean[c * dim];
    EXPECT_NEAR(norm_row(n, dim), 1.0, 1e-6) << "tensor " << i;
    // Hyperplane through the mean: |d| is float rounding of offsets of size |n . mu| <~ 100.
    EXPECT_NEAR(dot_row(n, mu, dim) + p.offsets[i], 0.0, 1e-4) << "tensor " << i;
    // The principal direction is the blob's axis (variance 64 against 0.0625 for the rest).
    std::vector<double> axis(b.axis.begin() + c * dim, b.axis.begin() + (c + 1) * dim);
    EXPECT_GT(std::fabs(dot_row(n, axis.data(), dim)), 0.99) << "tensor " << i;
    // Spread: the standard deviation of the rows projected on the normal, from the data.
    double sq = 0.0;
    int64_t size = 0;
    for (int64_t r = 0; r < b.rows; ++r) {
      if (b.label[r] != c) continue;
      double proj = 0.0;
      for (int64_t j = 0; j < dim; ++j) proj += (double(b.x[r * dim + j]) - mu[j]) * n[j];
      sq += proj * proj;
      ++size;
    }
    const double sigma = std::sqrt(sq / double(size));
    EXPECT_EQ(rep.cluster_sizes[i], size);
    EXPECT_NEAR(rep.spread[i], sigma, 1e-4 * sigma) << "tensor " << i;
    const double band = std::max<double>(o.band_min, o.band_scale * rep.spread[i]);
    EXPECT_LT(p.dneg[i], 0.0f);
    EXPECT_GT(p.dpos[i], 0.0f);
    EXPECT_NEAR(p.dpos[i], band, 1e-6 * band);
    EXPECT_NEAR(p.dneg[i], -band, 1e-6 * band);
    const double tau =
        o.tau > 0.0f ? o.tau : std::max<double>(o.tau_min, o.tau_scale * rep.spread[i]);
    EXPECT_NEAR(p.tau[i], tau, 1e-6 * tau);
    for (int col = 0; col < 3; ++col)
      for (int64_t t = 0; t < m; ++t)
        EXPECT_NEAR(p.controls[(i * 3 + col) * m + t], b.mean_target[c * m + t], 1e-5)
            << "tensor " << i << " column " << col;
    EXPECT_EQ(p.use_count[i], 0.0f);
    EXPECT_EQ(p.last_used[i], 0.0f);
    EXPECT_EQ(p.mean_abs_d[i], 0.0f);
    EXPECT_EQ(p.loss_trace[i], 0.0f);
  }
}

TEST(InitPoolCpu, HyperplanesPassThroughClusterMeansAlongThePrincipalAxis) {
  const Blobs b = make_blobs(12, 40, 201);
  auto pool = HyperTensorPool::create(Backend::cpu, 12, b.dim, b.target_dim);
  pool.init_random(9, 0.3f, 1.0f, 0.5f, 0.5f);  // anything: every field is overwritten
  const DataInitOptions o = init_options();
  const DataInitReport rep = init_pool_from_data(pool, b.x.data(), b.rows, b.dim, b.target.data(),
                                                 b.target_dim, o, nullptr);
  expect_blob_geometry(pool.download(), rep, b, o);
}

TEST(InitPoolCpu, FixedTemperatureOption) {
  const Blobs b = make_blobs(4, 10, 202);
  auto pool = HyperTensorPool::create(Backend::cpu, 4, b.dim, b.target_dim);
  DataInitOptions o = init_options();
  o.tau = 0.75f;
  o.band_scale = 3.0f;
  const DataInitReport rep = init_pool_from_data(pool, b.x.data(), b.rows, b.dim, b.target.data(),
                                                 b.target_dim, o, nullptr);
  expect_blob_geometry(pool.download(), rep, b, o);
}

TEST(InitPoolCpu, TopOneForwardAtAClusterMeanPredictsItsMeanTarget) {
  const Blobs b = make_blobs(12, 40, 203);
  auto pool = HyperTensorPool::create(Backend::cpu, 12, b.dim, b.target_dim);
  init_pool_from_data(pool, b.x.data(), b.rows, b.dim, b.target.data(), b.target_dim,
                      init_options(), nullptr);
  HtfrConfig cfg;
  cfg.input_dim = b.dim;
  cfg.output_dim = b.target_dim;
  cfg.num_tensors = 12;
  cfg.top_k = 1;
  HtfrModel model(cfg, std::move(pool));
  const std::vector<float> means = to_float(b.mean);
  std::vector<float> y(static_cast<std::size_t>(b.count * b.target_dim));
  model.forward(means.data(), b.count, y.data());
  // Every control column holds the mean target, so any alpha gives it; float rounding only.
  EXPECT_TRUE(all_close(y, to_float(b.mean_target), 1e-5, 1e-5));
}

TEST(InitPoolCpu, OneRowClustersKeepTheSeededStartDirection) {
  // rows == N: every cluster is one row, with no spread: the normal is the normalised start
  // vector, the bands and temperature their minimums, the controls the row's target.
  const int64_t n = 5, dim = 7, m = 2;
  const auto x = random_normal(n * dim, 301, 10.0f);
  const auto t = random_normal(n * m, 302);
  auto pool = HyperTensorPool::create(Backend::cpu, n, dim, m);
  DataInitOptions o = init_options();
  o.kmeans.seeding = KMeansSeeding::random_rows;
  const DataInitReport rep = init_pool_from_data(pool, x.data(), n, dim, t.data(), m, o, nullptr);
  const PoolParameters p = pool.download();
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(rep.cluster_sizes[i], 1);
    EXPECT_EQ(rep.spread[i], 0.0f);
    EXPECT_NEAR(norm_row(&p.normals[i * dim], dim), 1.0, 1e-6);
    EXPECT_EQ(p.dpos[i], o.band_min);
    EXPECT_EQ(p.dneg[i], -o.band_min);
    EXPECT_EQ(p.tau[i], o.tau_min);
  }
  for (int64_t r = 0; r < n; ++r) {
    const int64_t i = rep.assignment[r];
    // The normal is +- the normalised start vector.
    std::vector<double> start(static_cast<std::size_t>(dim));
    double norm = 0.0;
    for (int64_t j = 0; j < dim; ++j) {
      start[j] = detail::direction_start(o.kmeans.seed ^ detail::kDirectionStream, i, j);
      norm += start[j] * start[j];
    }
    EXPECT_NEAR(std::fabs(dot_row(&p.normals[i * dim], start.data(), dim)) / std::sqrt(norm), 1.0,
                1e-6);
    std::vector<double> xr(x.begin() + r * dim, x.begin() + (r + 1) * dim);
    EXPECT_NEAR(dot_row(&p.normals[i * dim], xr.data(), dim) + p.offsets[i], 0.0, 1e-4);
    for (int col = 0; col < 3; ++col)
      for (int64_t j = 0; j < m; ++j) EXPECT_EQ(p.controls[(i * 3 + col) * m + j], t[r * m + j]);
  }
}

TEST(InitPoolCpu, RejectsBadInputsAndLeavesThePoolUnchanged) {
  const Blobs b = make_blobs(3, 6, 204);
  auto pool = HyperTensorPool::create(Backend::cpu, 3, b.dim, b.target_dim);
  pool.init_random(1, 0.3f, 1.0f, 0.5f, 0.5f);
  const PoolParameters before = pool.download();
  const DataInitOptions o = init_options();
  const float* x = b.x.data();
  const float* t = b.target.data();
  const int64_t d = b.dim, m = b.target_dim, rows = b.rows;
  EXPECT_THROW(init_pool_from_data(pool, x, rows, d + 1, t, m, o, nullptr), InvalidArgument);
  EXPECT_THROW(init_pool_from_data(pool, x, rows, d, t, m + 1, o, nullptr), InvalidArgument);
  EXPECT_THROW(init_pool_from_data(pool, x, 2, d, t, m, o, nullptr), InvalidArgument);  // N > rows
  EXPECT_THROW(init_pool_from_data(pool, x, 0, d, t, m, o, nullptr), InvalidArgument);
  EXPECT_THROW(init_pool_from_data(pool, nullptr, rows, d, t, m, o, nullptr), InvalidArgument);
  EXPECT_THROW(init_pool_from_data(pool, x, rows, d, nullptr, m, o, nullptr), InvalidArgument);
  DataInitOptions bad = o;
  bad.power_iterations = 0;
  EXPECT_THROW(init_pool_from_data(pool, x, rows, d, t, m, bad, nullptr), InvalidArgument);
  bad = o;
  bad.band_min = 0.0f;
  EXPECT_THROW(init_pool_from_data(pool, x, rows, d, t, m, bad, nullptr), InvalidArgument);
  bad = o;
  bad.tau = -1.0f;
  EXPECT_THROW(init_pool_from_data(pool, x, rows, d, t, m, bad, nullptr), InvalidArgument);
  bad = o;
  bad.kmeans.iterations = 0;
  EXPECT_THROW(init_pool_from_data(pool, x, rows, d, t, m, bad, nullptr), InvalidArgument);
  std::vector<float> nan_x = b.x, nan_t = b.target;
  nan_x.back() = std::numeric_limits<float>::quiet_NaN();
  nan_t.front() = -std::numeric_limits<float>::infinity();
  EXPECT_THROW(init_pool_from_data(pool, nan_x.data(), rows, d, t, m, o, nullptr), NonFiniteInput);
  EXPECT_THROW(init_pool_from_data(pool, x, rows, d, nan_t.data(), m, o, nullptr), NonFiniteInput);
  EXPECT_TRUE(same_parameters(pool.download(), before));
  HyperTensorPool empty;
  EXPECT_THROW(init_pool_from_data(empty, x, rows, d, t, m, o, nullptr), InvalidArgument);
}

// -------------------------------------------------------------------------------------------
// CUDA against the CPU reference

struct CudaCase {
  Precision precision;
  std::size_t tile_rows;  ///< 0: one tile; else the tile is forced to this many rows
  KMeansSeeding seeding;
};

class KMeansCuda : public ::testing::TestWithParam<CudaCase> {};

TEST_P(KMeansCuda, MatchesCpuOnSeparatedBlobs) {
  HTFR_SKIP_WITHOUT_GPU();
  const CudaCase cc = GetParam();
  const Blobs b = make_blobs(12, 40, 401);
  const int64_t k = 12;
  KMeansOptions o = blob_options(cc.seeding);
  if (cc.tile_rows > 0) o.max_tile_bytes = cc.tile_rows * k * sizeof(float);
  o.precision = cc.precision;
  const KMeansResult cpu = kmeans(Backend::cpu, b.x.data(), b.rows, b.dim, k, o, nullptr);
  Stream stream;
  DeviceArray<float> dx(b.x);
  const KMeansResult gpu = kmeans(Backend::cuda, dx.get(), b.rows, b.dim, k, o, stream.s);
  EXPECT_TRUE(recovers_blobs(gpu.assignment, b));
  EXPECT_EQ(gpu.assignment, cpu.assignment);
  EXPECT_EQ(gpu.cluster_sizes, cpu.cluster_sizes);
  // Same groups, summed in the same row order in float64: the centroids agree to rounding.
  EXPECT_TRUE(all_close(gpu.centroids, cpu.centroids, 1e-5, 1e-6));
  ASSERT_EQ(gpu.inertia.size(), cpu.inertia.size());
  // GPU inertia uses ||x||^2 - 2 x.c + ||c||^2 in fp32 (tf32: 10-bit mantissa products) on rows
  // of norm ~130, so it carries an absolute error ~ eps * ||x||^2 per row.
  const double row_err = (cc.precision == Precision::tf32 ? 2e-3 : 2e-6) * 20000.0;
  for (std::size_t i = 0; i < cpu.inertia.size(); ++i)
    EXPECT_NEAR(gpu.inertia[i], cpu.inertia[i], row_err * b.rows) << "iteration " << i;
  EXPECT_TRUE(non_increasing(gpu.inertia, cc.precision == Precision::tf32 ? 1e-2 : 1e-3));
}

INSTANTIATE_TEST_SUITE_P(
    PrecisionTilesSeeding, KMeansCuda,
    ::testing::Values(CudaCase{Precision::fp32, 0, KMeansSeeding::kmeans_plus_plus},
                      CudaCase{Precision::fp32, 7, KMeansSeeding::kmeans_plus_plus},
                      CudaCase{Precision::fp32, 1, KMeansSeeding::automatic},
                      CudaCase{Precision::tf32, 0, KMeansSeeding::kmeans_plus_plus},
                      CudaCase{Precision::tf32, 13, KMeansSeeding::kmeans_plus_plus}));

TEST(KMeansCudaDeterminism, TwoRunsAreBitIdentical) {
  HTFR_SKIP_WITHOUT_GPU();
  // Overlapping clusters (k > blobs, random rows): many near-ties, tiles with a tail.
  const Blobs b = make_blobs(6, 33, 402, 8.0f, 2.0f, 3.0f);
  KMeansOptions o = blob_options(KMeansSeeding::random_rows);
  o.iterations = 6;
  o.stop_when_stable = false;
  o.max_tile_bytes = 50 * 40 * sizeof(float);
  Stream stream;
  DeviceArray<float> dx(b.x);
  const KMeansResult a = kmeans(Backend::cuda, dx.get(), b.rows, b.dim, 40, o, stream.s);
  const KMeansResult c = kmeans(Backend::cuda, dx.get(), b.rows, b.dim, 40, o, stream.s);
  EXPECT_EQ(a.assignment, c.assignment);
  EXPECT_EQ(a.centroids, c.centroids);
  EXPECT_EQ(a.inertia, c.inertia);
  EXPECT_EQ(a.cluster_sizes, c.cluster_sizes);
  EXPECT_EQ(a.iterations_run, 6);
  for (const int64_t s : a.cluster_sizes) EXPECT_GE(s, 1);
  EXPECT_TRUE(non_increasing(a.inertia, 1e-4));
  // The centroids are the means of the returned assignment.
  const auto mean = means_of(b.x.data(), b.rows, b.dim, 40, a.assignment);
  EXPECT_TRUE(all_close(a.centroids, to_float(mean), 1e-5, 1e-6));
}

TEST(KMeansCudaDeterminism, RepairsEmptyClustersLikeTheCpu) {
  HTFR_SKIP_WITHOUT_GPU();
  const int64_t dim = 3;
  std::vector<float> x;
  for (int r = 0; r < 10; ++r)
    for (int64_t j = 0; j < dim; ++j) x.push_back(r % 2 ? 1.0f : -1.0f);
  const KMeansOptions o = blob_options(KMeansSeeding::random_rows);
  const KMeansResult cpu = kmeans(Backend::cpu, x.data(), 10, dim, 4, o, nullptr);
  Stream stream;
  DeviceArray<float> dx(x);
  const KMeansResult gpu = kmeans(Backend::cuda, dx.get(), 10, dim, 4, o, stream.s);
  EXPECT_EQ(gpu.empty_clusters_repaired, cpu.empty_clusters_repaired);
  EXPECT_EQ(gpu.assignment, cpu.assignment);
  EXPECT_EQ(gpu.centroids, cpu.centroids);
}

TEST(KMeansCudaDeterminism, RejectsWrongMemoryAndNaN) {
  HTFR_SKIP_WITHOUT_GPU();
  const Blobs b = make_blobs(2, 4, 403);
  const KMeansOptions o = blob_options();
  Stream stream;
  DeviceArray<float> dx(b.x);
  EXPECT_THROW(kmeans(Backend::cuda, b.x.data(), b.rows, b.dim, 2, o, stream.s), WrongDevice);
  EXPECT_THROW(kmeans(Backend::cpu, dx.get(), b.rows, b.dim, 2, o, stream.s), WrongDevice);
  EXPECT_THROW(kmeans(Backend::cuda, dx.get(), b.rows, b.dim, 0, o, stream.s), InvalidArgument);
  EXPECT_THROW(kmeans(Backend::cuda, dx.get(), b.rows, b.dim, b.rows + 1, o, stream.s),
               InvalidArgument);
  std::vector<float> nan_x = b.x;
  nan_x[3] = std::numeric_limits<float>::quiet_NaN();
  DeviceArray<float> dnan(nan_x);
  EXPECT_THROW(kmeans(Backend::cuda, dnan.get(), b.rows, b.dim, 2, o, stream.s), NonFiniteInput);
}

// Parameters of a CUDA pool against the CPU reference. Normals: both backends accumulate in
// float64 and round the iterate to float each step, so they differ by a few float ulps
// amplified by at most 1 / (relative eigengap) ~ 1: atol 1e-5. Offsets are dots of size ~100:
// atol 1e-4. Bands, tau and spread follow the normals: rtol 1e-5. Controls are float64 means of
// the same rows in the same order: rounding only.
void expect_pools_match(const PoolParameters& gpu, const PoolParameters& cpu) {
  EXPECT_TRUE(all_close(gpu.normals, cpu.normals, 1e-5, 0.0));
  EXPECT_TRUE(all_close(gpu.offsets, cpu.offsets, 1e-4, 1e-6));
  EXPECT_TRUE(all_close(gpu.dneg, cpu.dneg, 1e-6, 1e-5));
  EXPECT_TRUE(all_close(gpu.dpos, cpu.dpos, 1e-6, 1e-5));
  EXPECT_TRUE(all_close(gpu.tau, cpu.tau, 1e-6, 1e-5));
  EXPECT_TRUE(all_close(gpu.controls, cpu.controls, 1e-6, 1e-6));
  EXPECT_EQ(gpu.use_count, cpu.use_count);
  EXPECT_EQ(gpu.last_used, cpu.last_used);
  EXPECT_EQ(gpu.mean_abs_d, cpu.mean_abs_d);
  EXPECT_EQ(gpu.loss_trace, cpu.loss_trace);
}

class InitPoolCuda : public ::testing::TestWithParam<Precision> {};

TEST_P(InitPoolCuda, MatchesCpuAndPredictsClusterTargets) {
  HTFR_SKIP_WITHOUT_GPU();
  const Precision half = GetParam();
  const Blobs b = make_blobs(12, 40, 501);
  const DataInitOptions o = init_options();
  auto cpu_pool = HyperTensorPool::create(Backend::cpu, 12, b.dim, b.target_dim);
  const DataInitReport cpu_rep = init_pool_from_data(cpu_pool, b.x.data(), b.rows, b.dim,
                                                     b.target.data(), b.target_dim, o, nullptr);
  Stream stream;
  auto gpu_pool = HyperTensorPool::create(Backend::cuda, 12, b.dim, b.target_dim, half);
  gpu_pool.init_random(3, 0.3f, 1.0f, 0.5f, 0.5f, stream.s);
  DeviceArray<float> dx(b.x), dt(b.target);
  const DataInitReport gpu_rep =
      init_pool_from_data(gpu_pool, dx.get(), b.rows, b.dim, dt.get(), b.target_dim, o, stream.s);
  EXPECT_EQ(gpu_rep.assignment, cpu_rep.assignment);
  EXPECT_EQ(gpu_rep.cluster_sizes, cpu_rep.cluster_sizes);
  EXPECT_TRUE(all_close(gpu_rep.spread, cpu_rep.spread, 1e-6, 1e-5));
  const PoolParameters gp = gpu_pool.download(stream.s);
  expect_pools_match(gp, cpu_pool.download());
  expect_blob_geometry(gp, gpu_rep, b, o);

  // The half copy of the normals was refreshed: bf16 keeps 8 significant bits (rtol 2^-8).
  if (half == Precision::bf16) {
    const PoolView v = gpu_pool.view();
    std::vector<uint16_t> bits(gp.normals.size());
    ASSERT_EQ(cudaMemcpy(bits.data(), v.normals_half, bits.size() * sizeof(uint16_t),
                         cudaMemcpyDeviceToHost),
              cudaSuccess);
    std::vector<float> widened(bits.size());
    for (std::size_t i = 0; i < bits.size(); ++i) {
      const uint32_t word = uint32_t{bits[i]} << 16;
      std::memcpy(&widened[i], &word, sizeof(float));
    }
    EXPECT_TRUE(all_close(widened, gp.normals, 0.0, 1.0 / 256.0));
  }

  // Top-1 forward on the GPU with fp32 distances at the blob means: the own hyperplane is at
  // |d| ~ 1e-5, every other one much farther, and every control column holds the cluster's mean
  // target, so only float rounding remains.
  HtfrConfig cfg;
  cfg.input_dim = b.dim;
  cfg.output_dim = b.target_dim;
  cfg.num_tensors = 12;
  cfg.top_k = 1;
  HtfrModel model(cfg, std::move(gpu_pool));
  DeviceArray<float> dmeans(to_float(b.mean));
  DeviceArray<float> dy(static_cast<std::size_t>(b.count * b.target_dim));
  model.forward(dmeans.get(), b.count, dy.get(), stream.s);
  ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
  EXPECT_TRUE(all_close(dy.download(), to_float(b.mean_target), 1e-5, 1e-5));
}

INSTANTIATE_TEST_SUITE_P(HalfCopies, InitPoolCuda,
                         ::testing::Values(Precision::fp32, Precision::bf16));

TEST(InitPoolCudaEdges, OneRowClustersMatchCpu) {
  HTFR_SKIP_WITHOUT_GPU();
  const int64_t n = 9, dim = 37, m = 5;
  const auto x = random_normal(n * dim, 601, 10.0f);
  const auto t = random_normal(n * m, 602);
  DataInitOptions o = init_options();
  o.kmeans.seeding = KMeansSeeding::random_rows;
  auto cpu_pool = HyperTensorPool::create(Backend::cpu, n, dim, m);
  const DataInitReport cpu_rep =
      init_pool_from_data(cpu_pool, x.data(), n, dim, t.data(), m, o, nullptr);
  Stream stream;
  auto gpu_pool = HyperTensorPool::create(Backend::cuda, n, dim, m);
  DeviceArray<float> dx(x), dt(t);
  const DataInitReport gpu_rep =
      init_pool_from_data(gpu_pool, dx.get(), n, dim, dt.get(), m, o, stream.s);
  EXPECT_EQ(gpu_rep.assignment, cpu_rep.assignment);
  EXPECT_EQ(gpu_rep.spread, cpu_rep.spread);
  expect_pools_match(gpu_pool.download(stream.s), cpu_pool.download());
}

TEST(InitPoolCudaEdges, RejectsBadInputsAndLeavesThePoolUnchanged) {
  HTFR_SKIP_WITHOUT_GPU();
  const Blobs b = make_blobs(3, 6, 603);
  Stream stream;
  auto pool = HyperTensorPool::create(Backend::cuda, 3, b.dim, b.target_dim);
  pool.init_random(1, 0.3f, 1.0f, 0.5f, 0.5f, stream.s);
  const PoolParameters before = pool.download(stream.s);
  const DataInitOptions o = init_options();
  DeviceArray<float> dx(b.x), dt(b.target);
  const int64_t d = b.dim, m = b.target_dim, rows = b.rows;
  EXPECT_THROW(init_pool_from_data(pool, b.x.data(), rows, d, dt.get(), m, o, stream.s),
               WrongDevice);
  EXPECT_THROW(init_pool_from_data(pool, dx.get(), rows, d, b.target.data(), m, o, stream.s),
               WrongDevice);
  EXPECT_THROW(init_pool_from_data(pool, dx.get(), rows, d + 1, dt.get(), m, o, stream.s),
               InvalidArgument);
  EXPECT_THROW(init_pool_from_data(pool, dx.get(), 2, d, dt.get(), m, o, stream.s),
               InvalidArgument);
  std::vector<float> nan_x = b.x, nan_t = b.target;
  nan_x[7] = std::numeric_limits<float>::quiet_NaN();
  nan_t[2] = std::numeric_limits<float>::infinity();
  DeviceArray<float> dnan_x(nan_x), dnan_t(nan_t);
  EXPECT_THROW(init_pool_from_data(pool, dnan_x.get(), rows, d, dt.get(), m, o, stream.s),
               NonFiniteInput);
  EXPECT_THROW(init_pool_from_data(pool, dx.get(), rows, d, dnan_t.get(), m, o, stream.s),
               NonFiniteInput);
  EXPECT_TRUE(same_parameters(pool.download(stream.s), before));
  // A CPU pool rejects device memory.
  auto cpu_pool = HyperTensorPool::create(Backend::cpu, 3, b.dim, b.target_dim);
  EXPECT_THROW(init_pool_from_data(cpu_pool, dx.get(), rows, d, b.target.data(), m, o, nullptr),
               WrongDevice);
}

}  // namespace
}  // namespace htfr::test

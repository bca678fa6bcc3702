// Deterministic synthetic tasks (a smooth regression field and clustered classification), so that
// demos, tests and benchmarks train on the same reproducible data without any files.
#pragma once

#include <cstdint>
#include <vector>

#include "htfr/config.hpp"

namespace htfr {

/// Data streams of a synthetic task. Row r of stream s is a pure function of (task seed, s, r):
/// any chunking of a stream yields the same rows, and different streams are independent draws,
/// so a training set and a test set never share a row.
inline constexpr uint64_t kTrainStream = 0;
inline constexpr uint64_t kTestStream = 1;

/// Shape of a smooth field regression task R^D -> R^M. Inputs are x ~ N(0, I_D). From `seed` are
/// drawn P unit directions p_q (shared by all outputs) and, per output m, direction q and wave h,
/// a frequency f_{m,q,h} uniform in [frequency / 4, frequency], a phase phi_{m,q,h} uniform in
/// [0, 2 pi) and a sign s_{m,q,h} = +-1. With the raw field
///   u_m(x) = sum_{q,h} s_{m,q,h} sin(f_{m,q,h} p_q.x + phi_{m,q,h}),
/// the target is y_m(x) = amplitude (u_m(x) - mu_m) / sigma_m, where mu_m and sigma_m are the
/// mean and standard deviation of u_m over x ~ N(0, I_D), computed in closed form: every output
/// has mean 0 and standard deviation `amplitude` exactly, so predicting 0 is the best constant
/// prediction and its RMSE is `amplitude`. Frequencies are in radians per standard deviation of
/// the input along p_q (p_q.x ~ N(0, 1)).
/// With P = 1 the field is a single-index model: it varies along one direction of R^D, which the
/// model has to find among D. Larger P makes the target a sum of ridge functions along several
/// directions, which a convex blend of one-direction interpolants fits far less well.
struct SmoothFieldSpec {
  int64_t input_dim = 64;      ///< D >= 1
  int64_t output_dim = 8;      ///< M >= 1
  int64_t num_directions = 1;  ///< P >= 1
  int64_t num_waves = 3;       ///< W >= 1, sinusoids per output and direction
  float frequency = 1.5f;      ///< > 0, the highest frequency
  float amplitude = 1.0f;      ///< > 0
  uint64_t seed = 1;
};

/// Rows of a regression task, row-major: x is rows x D, y is rows x M.
struct RegressionData {
  int64_t rows = 0;
  std::vector<float> x, y;
};

/// A smooth field task: fixed function, seeded input streams. Immutable after construction, so
/// one instance may be shared between threads.
class SmoothFieldTask {
 public:
  /// Draws the directions, phases and signs. Throws InvalidArgument naming a field that is out of
  /// range.
  explicit SmoothFieldTask(const SmoothFieldSpec& spec);

  /// y (rows x M) = the field at x (rows x D). Host pointers; rows >= 0.
  void evaluate(const float* x, int64_t rows, float* y) const;

  /// Writes rows [first_row, first_row + rows) of `stream` into x (rows x D) and y (rows x M),
  /// host pointers. Throws InvalidArgument for rows < 0, first_row < 0 or a null pointer with
  /// rows > 0.
  void fill(uint64_t stream, int64_t first_row, int64_t rows, float* x, float* y) const;

  /// The same rows, returned in new vectors.
  RegressionData sample(uint64_t stream, int64_t first_row, int64_t rows) const;

  const SmoothFieldSpec& spec() const { return spec_; }
  /// P x D unit directions p_q, row-major.
  const std::vector<float>& directions() const { return directions_; }

 private:
  SmoothFieldSpec spec_;
  std::vector<float> directions_;   // P x D
  std::vector<float> frequencies_;  // M x P x W
  std::vector<float> phases_;       // M x P x W
  std::vector<float> signs_;        // M x P x W, +-1
  std::vector<double> mean_;        // M, mu_m
  std::vector<double> scale_;       // M, amplitude / sigma_m
};

/// Shape of a clustered classification task: C class centroids mu_c ~ N(0, centroid_scale^2 I_D)
/// drawn from `seed`; a row picks its class c uniformly and x = mu_c + N(0, noise^2 I_D).
/// With D large the centroids are about centroid_scale * sqrt(2 D) apart and a row lies about
/// noise * sqrt(D) from its centroid.
struct ClusterSpec {
  int64_t input_dim = 64;       ///< D >= 1
  int64_t num_classes = 256;    ///< C >= 2
  float centroid_scale = 1.0f;  ///< > 0
  float noise = 0.25f;          ///< >= 0
  uint64_t seed = 2;
};

/// Rows of a classification task: x is rows x D row-major, label[r] in [0, C).
struct ClassificationData {
  int64_t rows = 0;
  std::vector<float> x;
  std::vector<int32_t> label;
};

/// A clustered classification task: fixed centroids, seeded row streams. Immutable after
/// construction.
class ClusterTask {
 public:
  /// Draws the centroids. Throws InvalidArgument naming a field that is out of range.
  explicit ClusterTask(const ClusterSpec& spec);

  /// Writes rows [first_row, first_row + rows) of `stream` into x (rows x D) and label (rows),
  /// host pointers. Throws InvalidArgument for rows < 0, first_row < 0 or a null pointer with
  /// rows > 0.
  void fill(uint64_t stream, int64_t first_row, int64_t rows, float* x, int32_t* label) const;

  /// The same rows, returned in new vectors.
  ClassificationData sample(uint64_t stream, int64_t first_row, int64_t rows) const;

  const ClusterSpec& spec() const { return spec_; }
  /// C x D centroids, row-major.
  const std::vector<float>& centroids() const { return centroids_; }

 private:
  ClusterSpec spec_;
  std::vector<float> centroids_;  // C x D
};

/// The model configurations the two tasks were tuned with, by measurement on the CPU backend
/// (tests/test_learning.cpp records the figures). Smooth field: N = 64, K = 8, MSE, mean
/// reduction, Adam lr 0.02, lr_geometry 0.002. Clustered classes: N = 256, K = 16, cross-entropy,
/// mean reduction, Adam lr 0.05, lr_geometry 0.001. Everything else at its default.
HtfrConfig smooth_field_config(const SmoothFieldSpec& spec);
HtfrConfig cluster_task_config(const ClusterSpec& spec);

}  // namespace htfr

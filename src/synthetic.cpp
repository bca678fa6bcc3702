// Synthetic tasks: a counter-based generator (SplitMix64 + Box-Muller) keyed by (seed, stream,
// row), so every row is reproducible on any platform and independent of how a stream is chunked.
#include "htfr/synthetic.hpp"

#include <cmath>

#include "detail/check.hpp"
#include "detail/random.hpp"

namespace htfr {

namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;

using detail::mix64;

/// A SplitMix64 sequence with normal and uniform draws computed in double precision.
class Rng {
 public:
  explicit Rng(uint64_t key) : state_(key) {}

  uint64_t next() { return detail::splitmix64(state_); }

  /// Uniform in (0, 1]: 53 random bits, never 0 so that log() is finite.
  double uniform() { return (double(next() >> 11) + 1.0) * 0x1.0p-53; }

  /// Standard normal (Box-Muller; the second value of each pair is cached).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double r = std::sqrt(-2.0 * std::log(uniform()));
    const double t = kTwoPi * uniform();
    spare_ = r * std::sin(t);
    has_spare_ = true;
    return r * std::cos(t);
  }

 private:
  uint64_t state_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

/// Key of the task's own parameters (directions, centroids), kept apart from every data stream.
uint64_t parameter_key(uint64_t seed) { return mix64(mix64(seed) ^ 0xA5A5A5A5A5A5A5A5ull); }

/// Key of row `row` of data stream `stream`.
uint64_t row_key(uint64_t seed, uint64_t stream, int64_t row) {
  return mix64(mix64(mix64(seed) + stream) ^ static_cast<uint64_t>(row));
}

void check_rows(int64_t first_row, int64_t rows, const void* a, const char* a_name, const void* b,
                const char* b_name) {
  HTFR_REQUIRE(rows >= 0, InvalidArgument, "rows must be >= 0, got " << rows);
  HTFR_REQUIRE(first_row >= 0, InvalidArgument, "first_row must be >= 0, got " << first_row);
  HTFR_REQUIRE(rows == 0 || a != nullptr, InvalidArgument, a_name << " is null");
  HTFR_REQUIRE(rows == 0 || b != nullptr, InvalidArgument, b_name << " is null");
}

}  // namespace

SmoothFieldTask::SmoothFieldTask(const SmoothFieldSpec& spec) : spec_(spec) {
  HTFR_REQUIRE(spec.input_dim >= 1, InvalidArgument,
               "SmoothFieldSpec::input_dim must be >= 1, got " << spec.input_dim);
  HTFR_REQUIRE(spec.output_dim >= 1, InvalidArgument,
               "SmoothFieldSpec::output_dim must be >= 1, got " << spec.output_dim);
  HTFR_REQUIRE(spec.num_directions >= 1, InvalidArgument,
               "SmoothFieldSpec::num_directions must be >= 1, got " << spec.num_directions);
  HTFR_REQUIRE(spec.num_waves >= 1, InvalidArgument,
               "SmoothFieldSpec::num_waves must be >= 1, got " << spec.num_waves);
  HTFR_REQUIRE(std::isfinite(spec.frequency) && spec.frequency > 0.0f, InvalidArgument,
               "SmoothFieldSpec::frequency must be finite and > 0, got " << spec.frequency);
  HTFR_REQUIRE(std::isfinite(spec.amplitude) && spec.amplitude > 0.0f, InvalidArgument,
               "SmoothFieldSpec::amplitude must be finite and > 0, got " << spec.amplitude);
  const int64_t D = spec.input_dim, M = spec.output_dim, P = spec.num_directions;
  const int64_t W = spec.num_waves;
  Rng rng(parameter_key(spec.seed));
  directions_.resize(static_cast<std::size_t>(P * D));
  std::vector<double> p(static_cast<std::size_t>(D));
  for (int64_t q = 0; q < P; ++q) {
    double norm = 0.0;
    for (double& v : p) {
      v = rng.normal();
      norm += v * v;
    }
    norm = std::sqrt(norm);
    for (int64_t j = 0; j < D; ++j) directions_[q * D + j] = static_cast<float>(p[j] / norm);
  }
  const auto waves = static_cast<std::size_t>(M * P * W);
  frequencies_.resize(waves);
  phases_.resize(waves);
  signs_.resize(waves);
  for (std::size_t i = 0; i < waves; ++i) {
    frequencies_[i] = static_cast<float>(spec.frequency * (0.25 + 0.75 * rng.uniform()));
    phases_[i] = static_cast<float>(kTwoPi * rng.uniform());
    signs_[i] = (rng.next() >> 63) ? 1.0f : -1.0f;
  }
  // Moments of u_m = sum_i s_i sin(a_i), a_i = f_i t_{q(i)} + phi_i, where t_q = p_q . x are
  // jointly Gaussian with Cov(t_q, t_r) = p_q . p_r: E sin(a) = sin(phi) e^{-f^2 / 2}, and
  // E sin(a_i) sin(a_j) = (E cos(a_i - a_j) - E cos(a_i + a_j)) / 2 with E cos(c) =
  // cos(E c) e^{-Var(c) / 2}, Var(a_i -+ a_j) = f_i^2 + f_j^2 -+ 2 f_i f_j (p_qi . p_qj).
  std::vector<double> rho(static_cast<std::size_t>(P * P));
  for (int64_t q = 0; q < P; ++q) {
    for (int64_t r = 0; r < P; ++r) {
      double acc = 0.0;
      for (int64_t j = 0; j < D; ++j) {
        acc += double(directions_[q * D + j]) * directions_[r * D + j];
      }
      rho[q * P + r] = acc;
    }
  }
  mean_.resize(static_cast<std::size_t>(M));
  scale_.resize(static_cast<std::size_t>(M));
  const int64_t per_output = P * W;
  for (int64_t m = 0; m < M; ++m) {
    const int64_t base = m * per_output;
    double mean = 0.0, second = 0.0;
    for (int64_t i = 0; i < per_output; ++i) {
      const double fi = frequencies_[base + i], phi_i = phases_[base + i];
      const double si = signs_[base + i];
      mean += si * std::sin(phi_i) * std::exp(-0.5 * fi * fi);
      for (int64_t j = 0; j < per_output; ++j) {
        const double fj = frequencies_[base + j], phi_j = phases_[base + j];
        const double sj = signs_[base + j];
        const double cross = 2.0 * fi * fj * rho[(i / W) * P + (j / W)];
        const double diff = std::cos(phi_i - phi_j) * std::exp(-0.5 * (fi * fi + fj * fj - cross));
        const double sum = std::cos(phi_i + phi_j) * std::exp(-0.5 * (fi * fi + fj * fj + cross));
        second += si * sj * 0.5 * (diff - sum);
      }
    }
    const double variance = second - mean * mean;
    mean_[m] = mean;
    scale_[m] = double(spec.amplitude) / std::sqrt(variance > 1e-24 ? variance : 1.0);
  }
}

void SmoothFieldTask::evaluate(const float* x, int64_t rows, float* y) const {
  HTFR_REQUIRE(rows >= 0, InvalidArgument, "rows must be >= 0, got " << rows);
  HTFR_REQUIRE(rows == 0 || (x != nullptr && y != nullptr), InvalidArgument,
               (x == nullptr ? "x" : "y") << " is null");
  const int64_t D = spec_.input_dim, M = spec_.output_dim, P = spec_.num_directions;
  const int64_t W = spec_.num_waves;
  std::vector<double> proj(static_cast<std::size_t>(P));
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * D;
    for (int64_t q = 0; q < P; ++q) {
      const float* dir = directions_.data() + q * D;
      double acc = 0.0;
      for (int64_t j = 0; j < D; ++j) acc += double(dir[j]) * xr[j];
      proj[q] = acc;
    }
    for (int64_t m = 0; m < M; ++m) {
      double acc = 0.0;
      for (int64_t q = 0; q < P; ++q) {
        for (int64_t h = 0; h < W; ++h) {
          const int64_t i = (m * P + q) * W + h;
          acc +=
              double(signs_[i]) * std::sin(double(frequencies_[i]) * proj[q] + double(phases_[i]));
        }
      }
      y[r * M + m] = static_cast<float>(scale_[m] * (acc - mean_[m]));
    }
  }
}

void SmoothFieldTask::fill(uint64_t stream, int64_t first_row, int64_t rows, float* x,
                           float* y) const {
  check_rows(first_row, rows, x, "x", y, "y");
  const int64_t D = spec_.input_dim;
  for (int64_t r = 0; r < rows; ++r) {
    Rng rng(row_key(spec_.seed, stream, first_row + r));
    for (int64_t j = 0; j < D; ++j) x[r * D + j] = static_cast<float>(rng.normal());
  }
  evaluate(x, rows, y);
}

RegressionData SmoothFieldTask::sample(uint64_t stream, int64_t first_row, int64_t rows) const {
  HTFR_REQUIRE(rows >= 0, InvalidArgument, "rows must be >= 0, got " << rows);
  RegressionData data;
  data.rows = rows;
  data.x.resize(static_cast<std::size_t>(rows * spec_.input_dim));
  data.y.resize(static_cast<std::size_t>(rows * spec_.output_dim));
  fill(stream, first_row, rows, data.x.data(), data.y.data());
  return data;
}

ClusterTask::ClusterTask(const ClusterSpec& spec) : spec_(spec) {
  HTFR_REQUIRE(spec.input_dim >= 1, InvalidArgument,
               "ClusterSpec::input_dim must be >= 1, got " << spec.input_dim);
  HTFR_REQUIRE(spec.num_classes >= 2 && spec.num_classes <= (int64_t{1} << 31) - 1, InvalidArgument,
               "ClusterSpec::num_classes must be in [2, 2^31), got " << spec.num_classes);
  HTFR_REQUIRE(std::isfinite(spec.centroid_scale) && spec.centroid_scale > 0.0f, InvalidArgument,
               "ClusterSpec::centroid_scale must be finite and > 0, got " << spec.centroid_scale);
  HTFR_REQUIRE(std::isfinite(spec.noise) && spec.noise >= 0.0f, InvalidArgument,
               "ClusterSpec::noise must be finite and >= 0, got " << spec.noise);
  Rng rng(parameter_key(spec.seed));
  centroids_.resize(static_cast<std::size_t>(spec.num_classes * spec.input_dim));
  for (float& v : centroids_) v = static_cast<float>(spec.centroid_scale * rng.normal());
}

void ClusterTask::fill(uint64_t stream, int64_t first_row, int64_t rows, float* x,
                       int32_t* label) const {
  check_rows(first_row, rows, x, "x", label, "label");
  const int64_t D = spec_.input_dim;
  const auto C = static_cast<uint64_t>(spec_.num_classes);
  for (int64_t r = 0; r < rows; ++r) {
    Rng rng(row_key(spec_.seed, stream, first_row + r));
    // Multiply-shift maps 32 random bits onto [0, C) with a bias below C / 2^32.
    const auto c = static_cast<int64_t>(((rng.next() >> 32) * C) >> 32);
    label[r] = static_cast<int32_t>(c);
    const float* mu = centroids_.data() + c * D;
    for (int64_t j = 0; j < D; ++j) {
      x[r * D + j] = static_cast<float>(double(mu[j]) + double(spec_.noise) * rng.normal());
    }
  }
}

ClassificationData ClusterTask::sample(uint64_t stream, int64_t first_row, int64_t rows) const {
  HTFR_REQUIRE(rows >= 0, InvalidArgument, "rows must be >= 0, got " << rows);
  ClassificationData data;
  data.rows = rows;
  data.x.resize(static_cast<std::size_t>(rows * spec_.input_dim));
  data.label.resize(static_cast<std::size_t>(rows));
  fill(stream, first_row, rows, data.x.data(), data.label.data());
  return data;
}

HtfrConfig smooth_field_config(const SmoothFieldSpec& spec) {
  HtfrConfig cfg;
  cfg.input_dim = spec.input_dim;
  cfg.output_dim = spec.output_dim;
  cfg.num_tensors = 64;
  cfg.top_k = 8;
  cfg.loss = Loss::mse;
  cfg.reduction = Reduction::mean;
  cfg.optimizer = Optimizer::adam;
  cfg.lr = 0.02f;
  cfg.lr_geometry = 0.002f;
  return cfg;
}

HtfrConfig cluster_task_config(const ClusterSpec& spec) {
  HtfrConfig cfg;
  cfg.input_dim = spec.input_dim;
  cfg.output_dim = spec.num_classes;
  cfg.num_tensors = 256;
  cfg.top_k = 16;
  cfg.loss = Loss::cross_entropy;
  cfg.reduction = Reduction::mean;
  cfg.optimizer = Optimizer::adam;
  cfg.lr = 0.05f;
  cfg.lr_geometry = 0.001f;
  return cfg;
}

}  // namespace htfr

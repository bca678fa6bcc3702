// The CPU reference backend: plain loops with float64 accumulation, the oracle every CUDA kernel
// is tested against and the backend for machines without a GPU.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "detail/backend.hpp"
#include "detail/check.hpp"
#include "detail/field_math.hpp"

namespace htfr::detail {

namespace {

/// Selection of one batch: K active tensors per row with their signed distances.
struct Selection {
  int64_t rows = 0, k = 0;
  std::vector<int32_t> idx;
  std::vector<float> dist;
  std::vector<ActiveCoef> coef;
};

class CpuBackend final : public ModelBackend {
 public:
  CpuBackend(const HtfrConfig& config, HyperTensorPool&& pool)
      : ModelBackend(config, std::move(pool)) {}

  void select(const float* x, int64_t rows, int32_t* indices, float* distances,
              cudaStream_t) override {
    check_values(x, rows * config_.input_dim, "x");
    const Selection s = run_selection(x, rows);
    std::copy(s.idx.begin(), s.idx.end(), indices);
    std::copy(s.dist.begin(), s.dist.end(), distances);
  }

  void forward(const float* x, int64_t rows, float* y, cudaStream_t) override {
    check_values(x, rows * config_.input_dim, "x");
    const Selection s = run_selection(x, rows);
    blend(s, y);
  }

  void train_step(const Batch& batch, const StepOutputs& out, cudaStream_t) override {
    const HtfrConfig& c = config_;
    const int64_t B = batch.rows, D = c.input_dim, M = c.output_dim, K = c.top_k;
    check_values(batch.x, B * D, "x");
    if (batch.target) check_values(batch.target, B * M, "target");
    if (batch.target && c.loss != Loss::mse && c.check_finite) {
      for (int64_t i = 0; i < B * M; ++i) {
        HTFR_REQUIRE(batch.target[i] >= 0.0f, InvalidArgument,
                     "target[" << i << "] = " << batch.target[i]
                               << " is a negative teacher probability; nothing was changed");
      }
    }
    if (batch.target_index) {
      for (int64_t r = 0; r < B; ++r) {
        HTFR_REQUIRE(batch.target_index[r] >= 0 && batch.target_index[r] < M, InvalidArgument,
                     "target_index[" << r << "] = " << batch.target_index[r]
                                     << " is outside [0, " << M << ")");
      }
    }
    const PoolView p = pool_.view();
    const Selection s = run_selection(batch.x, B);
    std::vector<float> y(static_cast<std::size_t>(B * M));
    blend(s, y.data());

    // Loss gradient g (scaled for the batch reduction), row losses and g . yhat.
    std::vector<float> g(y.size()), row_loss(B), gy(B);
    const float scale = c.reduction == Reduction::mean ? 1.0f / static_cast<float>(B) : 1.0f;
    for (int64_t r = 0; r < B; ++r) {
      row_loss[r] = loss_row(&y[r * M], batch, r, &g[r * M]);
      double acc = 0.0;
      for (int64_t m = 0; m < M; ++m) {
        g[r * M + m] *= scale;
        acc += double(g[r * M + m]) * y[r * M + m];
      }
      gy[r] = static_cast<float>(acc);
    }

    // Per pair: G_j = g . C_i[:, j], then the distance and temperature gradients.
    std::vector<PairGradient> pg(static_cast<std::size_t>(B * K));
    for (int64_t r = 0; r < B; ++r) {
      for (int64_t k = 0; k < K; ++k) {
        const int64_t i = s.idx[r * K + k];
        float G[3];
        for (int j = 0; j < 3; ++j) {
          const float* col = p.controls + (i * 3 + j) * M;
          double acc = 0.0;
          for (int64_t m = 0; m < M; ++m) acc += double(g[r * M + m]) * col[m];
          G[j] = static_cast<float>(acc);
        }
        pg[r * K + k] = pair_gradient(s.coef[r * K + k], G, gy[r]);
      }
    }
    if (out.input_grad) {
      for (int64_t r = 0; r < B; ++r) {
        for (int64_t j = 0; j < D; ++j) {
          double acc = 0.0;
          for (int64_t k = 0; k < K; ++k) {
            acc += double(pg[r * K + k].e_exact) * p.normals[int64_t(s.idx[r * K + k]) * D + j];
          }
          out.input_grad[r * D + j] = static_cast<float>(acc);
        }
      }
    }
    if (out.prediction) std::copy(y.begin(), y.end(), out.prediction);
    if (out.row_loss) std::copy(row_loss.begin(), row_loss.end(), out.row_loss);

    // Group the pairs by tensor, rows in increasing order (the order the GPU reduces in).
    std::vector<int64_t> order(static_cast<std::size_t>(B * K));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return s.idx[a] < s.idx[b]; });
    const StepParams sp = step_params(c, step_);
    ensure_adam_state();
    std::vector<double> grad_c(static_cast<std::size_t>(3 * M)), grad_n(static_cast<std::size_t>(D));
    for (std::size_t begin = 0; begin < order.size();) {
      const int64_t i = s.idx[order[begin]];
      std::size_t end = begin;
      while (end < order.size() && s.idx[order[end]] == i) ++end;
      std::fill(grad_c.begin(), grad_c.end(), 0.0);
      std::fill(grad_n.begin(), grad_n.end(), 0.0);
      double grad_delta = 0, grad_tau = 0, sum_abs_d = 0, sum_loss = 0, sum_pos = 0, sum_neg = 0;
      int n_pos = 0, n_neg = 0;
      for (std::size_t q = begin; q < end; ++q) {
        const int64_t pair = order[q], r = pair / K;
        const ActiveCoef& cf = s.coef[pair];
        const float e = c.locality_gradient ? pg[pair].e_exact : pg[pair].e_paper;
        for (int j = 0; j < 3; ++j) {
          const float wa = cf.w * cf.a[j];
          if (wa == 0.0f) continue;
          for (int64_t m = 0; m < M; ++m) grad_c[j * M + m] += double(wa) * g[r * M + m];
        }
        for (int64_t j = 0; j < D; ++j) grad_n[j] += double(e) * batch.x[r * D + j];
        grad_delta += e;
        grad_tau += pg[pair].g_tau;
        const float d = s.dist[pair];
        sum_abs_d += std::fabs(d);
        sum_loss += row_loss[r];
        if (d > 0) { sum_pos += d; ++n_pos; }
        if (d < 0) { sum_neg += d; ++n_neg; }
      }
      apply_tensor_update(sp, i, grad_c, grad_n, grad_delta, grad_tau);
      const int count = static_cast<int>(end - begin);
      p.dpos[i] = adapt_band(p.dpos[i], sp.band_gamma, n_pos,
                             n_pos ? float(sum_pos / n_pos) : 0.0f, sp.band_min, true);
      p.dneg[i] = adapt_band(p.dneg[i], sp.band_gamma, n_neg,
                             n_neg ? float(sum_neg / n_neg) : 0.0f, sp.band_min, false);
      const float old = p.use_count[i];
      p.mean_abs_d[i] = static_cast<float>((double(p.mean_abs_d[i]) * old + sum_abs_d) /
                                           (double(old) + count));
      const float mean_loss = static_cast<float>(sum_loss / count);
      p.loss_trace[i] = old == 0.0f ? mean_loss : 0.9f * p.loss_trace[i] + 0.1f * mean_loss;
      p.use_count[i] = old + static_cast<float>(count);
      p.last_used[i] = sp.step;
      begin = end;
    }
    ++step_;
  }

 private:
  void check_values(const float* data, int64_t count, const char* name) const {
    if (!config_.check_finite) return;
    for (int64_t i = 0; i < count; ++i) {
      HTFR_REQUIRE(std::isfinite(data[i]), NonFiniteInput,
                   name << "[" << i << "] = " << data[i] << " is not finite; nothing was changed");
    }
  }

  Selection run_selection(const float* x, int64_t rows) const {
    const PoolView p = pool_.view();
    const int64_t N = p.num_tensors, D = p.input_dim, K = config_.top_k;
    Selection s;
    s.rows = rows;
    s.k = K;
    s.idx.resize(static_cast<std::size_t>(rows * K));
    s.dist.resize(s.idx.size());
    s.coef.resize(s.idx.size());
    std::vector<float> d(static_cast<std::size_t>(N));
    std::vector<int32_t> order(static_cast<std::size_t>(N));
    const FieldParams fp = field_params(config_);
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * D;
      for (int64_t i = 0; i < N; ++i) {
        const float* n = p.normals + i * D;
        double acc = 0.0;
        for (int64_t j = 0; j < D; ++j) acc += double(n[j]) * xr[j];
        d[i] = static_cast<float>(acc) + p.offsets[i];
      }
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int32_t a, int32_t b) {
        const float da = std::fabs(d[a]), db = std::fabs(d[b]);
        return da < db || (da == db && a < b);
      });
      for (int64_t k = 0; k < K; ++k) {
        s.idx[r * K + k] = order[k];
        s.dist[r * K + k] = d[order[k]];
      }
      row_coefficients(fp, static_cast<int>(K), &s.dist[r * K], &s.idx[r * K], p.tau, p.dneg,
                       p.dpos, &s.coef[r * K]);
    }
    return s;
  }

  void blend(const Selection& s, float* y) const {
    const PoolView p = pool_.view();
    const int64_t M = p.output_dim, K = s.k;
    std::vector<double> acc(static_cast<std::size_t>(M));
    for (int64_t r = 0; r < s.rows; ++r) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t k = 0; k < K; ++k) {
        const ActiveCoef& cf = s.coef[r * K + k];
        const int64_t i = s.idx[r * K + k];
        for (int j = 0; j < 3; ++j) {
          const float wa = cf.w * cf.a[j];
          if (wa == 0.0f) continue;
          const float* col = p.controls + (i * 3 + j) * M;
          for (int64_t m = 0; m < M; ++m) acc[m] += double(wa) * col[m];
        }
      }
      for (int64_t m = 0; m < M; ++m) y[r * M + m] = static_cast<float>(acc[m]);
    }
  }

  /// Loss of row r and its gradient dL/dyhat (unscaled) into g[0..M).
  float loss_row(const float* y, const Batch& batch, int64_t r, float* g) const {
    const HtfrConfig& c = config_;
    const int64_t M = c.output_dim;
    if (c.loss == Loss::mse) {
      double loss = 0.0;
      for (int64_t m = 0; m < M; ++m) {
        const float diff = y[m] - batch.target[r * M + m];
        g[m] = diff;
        loss += 0.5 * double(diff) * diff;
      }
      return static_cast<float>(loss);
    }
    double mx = -INFINITY, z = 0.0;
    for (int64_t m = 0; m < M; ++m) mx = std::max(mx, double(y[m]));
    for (int64_t m = 0; m < M; ++m) z += std::exp(double(y[m]) - mx);
    const double lse = mx + std::log(z);
    const bool ce = c.loss == Loss::cross_entropy || c.loss == Loss::mixed;
    const bool kl = c.loss == Loss::kl || c.loss == Loss::mixed;
    const double wce = c.loss == Loss::mixed ? c.ce_weight : 1.0;
    const double wkl = c.loss == Loss::mixed ? c.kl_weight : 1.0;
    double loss = 0.0, qsum = 0.0;
    if (kl) {
      for (int64_t m = 0; m < M; ++m) {
        const double q = batch.target[r * M + m];
        qsum += q;
        if (q > 0) loss += wkl * q * (std::log(q) - (double(y[m]) - lse));
      }
    }
    const int32_t t = ce ? batch.target_index[r] : -1;
    if (ce) loss += wce * (lse - y[t]);
    for (int64_t m = 0; m < M; ++m) {
      const double pm = std::exp(double(y[m]) - lse);
      double gm = 0.0;
      if (ce) gm += wce * (pm - (m == t ? 1.0 : 0.0));
      if (kl) gm += wkl * (pm * qsum - batch.target[r * M + m]);
      g[m] = static_cast<float>(gm);
    }
    return static_cast<float>(loss);
  }

  std::vector<float> optimizer_state(cudaStream_t) const override {
    std::vector<float> out;
    if (config_.optimizer != Optimizer::adam) return out;
    const auto N = static_cast<std::size_t>(config_.num_tensors);
    const std::size_t sizes[6] = {N * 3 * config_.output_dim, N * 3 * config_.output_dim,
                                  N * config_.input_dim,      N * config_.input_dim,
                                  2 * N,                      2 * N};
    const std::vector<float>* parts[6] = {&m_controls_, &v_controls_, &m_normals_,
                                          &v_normals_,  &m_scalars_,  &v_scalars_};
    for (int i = 0; i < 6; ++i) {
      if (parts[i]->empty())
        out.insert(out.end(), sizes[i], 0.0f);
      else
        out.insert(out.end(), parts[i]->begin(), parts[i]->end());
    }
    return out;
  }

  void set_optimizer_state(const std::vector<float>& state, cudaStream_t) override {
    if (config_.optimizer != Optimizer::adam) return;
    ensure_adam_state();
    std::vector<float>* parts[6] = {&m_controls_, &v_controls_, &m_normals_,
                                    &v_normals_,  &m_scalars_,  &v_scalars_};
    std::size_t at = 0;
    for (auto* part : parts) {
      std::copy(state.begin() + at, state.begin() + at + part->size(), part->begin());
      at += part->size();
    }
  }

  void ensure_adam_state() {
    if (config_.optimizer != Optimizer::adam || !m_controls_.empty()) return;
    const auto N = static_cast<std::size_t>(config_.num_tensors);
    m_controls_.assign(N * 3 * config_.output_dim, 0.0f);
    v_controls_ = m_controls_;
    m_normals_.assign(N * config_.input_dim, 0.0f);
    v_normals_ = m_normals_;
    m_scalars_.assign(2 * N, 0.0f);  // offsets, then temperatures
    v_scalars_ = m_scalars_;
  }

  void apply_tensor_update(const StepParams& sp, int64_t i, const std::vector<double>& grad_c,
                           std::vector<double>& grad_n, double grad_delta, double grad_tau) {
    const PoolView p = pool_.view();
    const int64_t D = p.input_dim, M = p.output_dim, N = p.num_tensors;
    const bool adam = sp.optimizer == Optimizer::adam;
    float dummy_m = 0, dummy_v = 0;
    auto mom = [&](std::vector<float>& v, int64_t at) { return adam ? &v[at] : &dummy_m; };
    auto var = [&](std::vector<float>& v, int64_t at) { return adam ? &v[at] : &dummy_v; };
    for (int64_t jm = 0; jm < 3 * M; ++jm) {
      const int64_t at = i * 3 * M + jm;
      p.controls[at] += optimizer_delta(sp, sp.lr, static_cast<float>(grad_c[jm]),
                                        mom(m_controls_, at), var(v_controls_, at));
    }
    if (sp.geometry_clip > 0.0f) {
      double norm = 0.0;
      for (double v : grad_n) norm += v * v;
      norm = std::sqrt(norm);
      if (norm > sp.geometry_clip) {
        for (double& v : grad_n) v *= sp.geometry_clip / norm;
      }
    }
    float* n = p.normals + i * D;
    double norm = 0.0;
    for (int64_t j = 0; j < D; ++j) {
      n[j] += optimizer_delta(sp, sp.lr_geometry, static_cast<float>(grad_n[j]),
                              mom(m_normals_, i * D + j), var(v_normals_, i * D + j));
      norm += double(n[j]) * n[j];
    }
    const float inv = static_cast<float>(1.0 / (std::sqrt(norm) + 1e-12));
    for (int64_t j = 0; j < D; ++j) n[j] *= inv;
    p.offsets[i] += optimizer_delta(sp, sp.lr_geometry, static_cast<float>(grad_delta),
                                    mom(m_scalars_, i), var(v_scalars_, i));
    if (sp.lr_tau > 0.0f) {
      const float t = p.tau[i] + optimizer_delta(sp, sp.lr_tau, static_cast<float>(grad_tau),
                                                 mom(m_scalars_, N + i), var(v_scalars_, N + i));
      p.tau[i] = std::max(t, sp.tau_min);
    }
  }

  std::vector<float> m_controls_, v_controls_, m_normals_, v_normals_, m_scalars_, v_scalars_;
};

}  // namespace

std::unique_ptr<ModelBackend> make_cpu_backend(const HtfrConfig& config, HyperTensorPool&& pool) {
  return std::make_unique<CpuBackend>(config, std::move(pool));
}

}  // namespace htfr::detail

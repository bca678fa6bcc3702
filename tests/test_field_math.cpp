// Specifies the shared host/device formulas (src/detail/field_math.hpp) on their own, so that a
// wrong formula is caught here and not mistaken for a backend bug.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "detail/backend.hpp"
#include "detail/field_math.hpp"
#include "test_util.hpp"

namespace htfr::test {
namespace {

using detail::ActiveCoef;
using detail::FieldParams;
using detail::PairGradient;
using detail::StepParams;

// ---------------------------------------------------------------------------------------------
// Interpolation coefficients alpha(d)
// ---------------------------------------------------------------------------------------------

struct Alpha {
  std::array<float, 3> a, da;
};

Alpha alpha(Interpolation mode, float d, float dneg, float dpos) {
  Alpha out;
  detail::interpolation_coefficients(mode, d, dneg, dpos, out.a.data(), out.da.data());
  return out;
}

/// The documented curve along one half-band, as a function of t = d / edge in [0, 1]: t for
/// linear, the smoothstep 3t^2 - 2t^3 for hermite.
double shape(Interpolation mode, double t) {
  return mode == Interpolation::linear ? t : t * t * (3.0 - 2.0 * t);
}

struct Bands {
  float dneg, dpos;
  const char* name;
};

// Symmetric, wide-positive and wide-negative bands; all edges are exact in float.
const Bands kBands[] = {
    {-1.0f, 1.0f, "symmetric"}, {-0.375f, 2.5f, "wide_positive"}, {-3.0f, 0.625f, "wide_negative"}};

class InterpolationCoefficients
    : public ::testing::TestWithParam<std::tuple<Interpolation, Bands>> {
 protected:
  Interpolation mode() const { return std::get<0>(GetParam()); }
  float dneg() const { return std::get<1>(GetParam()).dneg; }
  float dpos() const { return std::get<1>(GetParam()).dpos; }
  Alpha at(float d) const { return alpha(mode(), d, dneg(), dpos()); }

  /// 61 points spanning 1.5x the band on both sides, plus 0 and both edges exactly.
  std::vector<float> sample_points() const {
    std::vector<float> d;
    const int n = 61;
    for (int i = 0; i < n; ++i) {
      d.push_back(1.5f * dneg() + (1.5f * (dpos() - dneg())) * float(i) / float(n - 1));
    }
    d.push_back(0.0f);
    d.push_back(dneg());
    d.push_back(dpos());
    return d;
  }
};

TEST_P(InterpolationCoefficients, PartitionOfUnityOnBothSides) {
  for (float d : sample_points()) {
    const Alpha c = at(d);
    EXPECT_NEAR(c.a[0] + c.a[1] + c.a[2], 1.0f, 1e-6f) << "d = " << d;
    for (int j = 0; j < 3; ++j) {
      EXPECT_GE(c.a[j], 0.0f) << "d = " << d << " j = " << j;
      EXPECT_LE(c.a[j], 1.0f) << "d = " << d << " j = " << j;
    }
    // Only the two controls of the half-band d falls in take part.
    if (d > 0.0f) {
      EXPECT_EQ(c.a[0], 0.0f) << "d = " << d;
    }
    if (d < 0.0f) {
      EXPECT_EQ(c.a[2], 0.0f) << "d = " << d;
    }
  }
}

TEST_P(InterpolationCoefficients, MatchesTheDocumentedCurveInsideTheBand) {
  // White paper §1 with the corrected sign a_neg = d'/dneg (alpha = (1, 0, 0) at d = dneg).
  for (float d : sample_points()) {
    const double dc = std::clamp(double(d), double(dneg()), double(dpos()));
    const bool positive = dc >= 0.0;
    const double h = shape(mode(), dc / (positive ? dpos() : dneg()));
    const std::vector<float> expected = positive ? std::vector<float>{0.0f, float(1 - h), float(h)}
                                                 : std::vector<float>{float(h), float(1 - h), 0.0f};
    const Alpha c = at(d);
    EXPECT_TRUE(all_close({c.a.begin(), c.a.end()}, expected, 1e-6, 1e-6)) << "d = " << d;
  }
}

TEST_P(InterpolationCoefficients, ClipsOutsideTheBandWithZeroDerivative) {
  const std::vector<float> below = {dneg(), 1.01f * dneg(), 2.0f * dneg(), -1e6f};
  const std::vector<float> above = {dpos(), 1.01f * dpos(), 2.0f * dpos(), 1e6f};
  const std::vector<float> zero3 = {0.0f, 0.0f, 0.0f};
  for (float d : below) {
    const Alpha c = at(d);
    EXPECT_TRUE(all_close({c.a.begin(), c.a.end()}, {1.0f, 0.0f, 0.0f}, 0.0, 0.0)) << "d = " << d;
    EXPECT_TRUE(all_close({c.da.begin(), c.da.end()}, zero3, 0.0, 0.0)) << "d = " << d;
  }
  for (float d : above) {
    const Alpha c = at(d);
    EXPECT_TRUE(all_close({c.a.begin(), c.a.end()}, {0.0f, 0.0f, 1.0f}, 0.0, 0.0)) << "d = " << d;
    EXPECT_TRUE(all_close({c.da.begin(), c.da.end()}, zero3, 0.0, 0.0)) << "d = " << d;
  }
  for (float d : {0.0f, -0.0f}) {
    const Alpha c = at(d);
    EXPECT_TRUE(all_close({c.a.begin(), c.a.end()}, {0.0f, 1.0f, 0.0f}, 0.0, 0.0)) << "d = " << d;
    // The derivative is defined as 0 at the centre (a kink for linear, a flat point for hermite).
    EXPECT_TRUE(all_close({c.da.begin(), c.da.end()}, zero3, 0.0, 0.0)) << "d = " << d;
  }
}

TEST_P(InterpolationCoefficients, DerivativeMatchesCentralDifferencesInsideEachHalfBand) {
  // Step h = 2^-8 |edge|. For a in [0, 1] evaluated in float the rounding error of a difference
  // is ~1.2e-7, giving ~1.2e-7 / h = 3e-5 / |edge| in the quotient; the truncation error of the
  // central difference is h^2 |a'''| / 6 <= h^2 (12 / |edge|^3) / 6 = 3e-5 / |edge| (hermite;
  // exactly 0 for linear). h balances the two. Points stay >= 0.05 |edge| >> h away from the
  // kinks at 0 and at the edge, so the stencil never straddles one. The quotient divides by the
  // actual gap between the two float arguments, so rounding d +- h costs nothing.
  for (float edge : {dneg(), dpos()}) {
    const float h = std::ldexp(std::fabs(edge), -8);
    std::vector<float> analytic, numeric;
    for (int i = 1; i < 20; ++i) {
      const float d = edge * (0.05f * float(i));
      const float dp = d + h, dm = d - h;
      const Alpha cp = at(dp), cm = at(dm), c = at(d);
      for (int j = 0; j < 3; ++j) {
        analytic.push_back(c.da[j]);
        numeric.push_back(float((double(cp.a[j]) - cm.a[j]) / (double(dp) - dm)));
      }
    }
    EXPECT_TRUE(all_close(analytic, numeric, 1.5e-4 / std::fabs(edge), 0.0)) << "edge " << edge;
  }
}

TEST_P(InterpolationCoefficients, ValueIsContinuousAcrossTheJoints) {
  // Both modes are C0: just left and right of 0 and of each edge the coefficients differ by at
  // most what the steepest slope (1.5 / |edge| for hermite) makes over 2 eps.
  const float eps = 1e-5f;
  const double tol = 2.0 * eps * 1.5 / std::min(-dneg(), dpos()) + 1e-6;
  for (float joint : {dneg(), 0.0f, dpos()}) {
    const Alpha l = at(joint - eps), r = at(joint + eps);
    EXPECT_TRUE(all_close({l.a.begin(), l.a.end()}, {r.a.begin(), r.a.end()}, tol, 0.0))
        << "value jumps at " << joint;
  }
}

TEST_P(InterpolationCoefficients, SlopeIsContinuousForHermiteAndJumpsForLinear) {
  const float eps = 1e-5f;
  if (mode() == Interpolation::hermite) {
    // Left and right slopes agree up to the change a C1 curve can make over 2 eps
    // (|a''| <= 6 / edge^2, attained at 0), doubled for rounding; a jump would be
    // >= 1 / max|edge| = 0.33 for these bands.
    const double min_edge = std::min(-dneg(), dpos());
    const double tol = 2.0 * (2.0 * eps * 6.0 / (min_edge * min_edge)) + 1e-6;
    for (float joint : {dneg(), 0.0f, dpos()}) {
      const Alpha l = at(joint - eps), r = at(joint + eps);
      EXPECT_TRUE(all_close({l.da.begin(), l.da.end()}, {r.da.begin(), r.da.end()}, tol, 0.0))
          << "slope jumps at " << joint;
    }
    return;
  }
  // Linear, as expected of piecewise-linear barycentric coordinates: the slope changes from
  // (1/dneg, -1/dneg, 0) to (0, -1/dpos, 1/dpos) across d = 0, and drops to 0 across the edges.
  const Alpha l = at(-eps), r = at(eps);
  EXPECT_TRUE(all_close({l.da.begin(), l.da.end()}, {1 / dneg(), -1 / dneg(), 0.0f}, 0.0, 1e-6));
  EXPECT_TRUE(all_close({r.da.begin(), r.da.end()}, {0.0f, -1 / dpos(), 1 / dpos()}, 0.0, 1e-6));
  const double jump = double(r.da[1]) - l.da[1];
  EXPECT_NEAR(jump, -(1.0 / dpos() - 1.0 / dneg()), 1e-5);
  EXPECT_LT(jump, -0.3);  // a real discontinuity, not rounding
  EXPECT_NEAR(at(dpos() - eps).da[2], 1 / dpos(), 1e-6);
  EXPECT_EQ(at(dpos() + eps).da[2], 0.0f);
  EXPECT_NEAR(at(dneg() + eps).da[0], 1 / dneg(), 1e-6);
  EXPECT_EQ(at(dneg() - eps).da[0], 0.0f);
}

INSTANTIATE_TEST_SUITE_P(FieldMath, InterpolationCoefficients,
                         ::testing::Combine(::testing::Values(Interpolation::linear,
                                                              Interpolation::hermite),
                                            ::testing::ValuesIn(kBands)),
                         [](const auto& info) {
                           return std::string(to_string(std::get<0>(info.param))) + "_" +
                                  std::get<1>(info.param).name;
                         });

// ---------------------------------------------------------------------------------------------
// Locality weights and the per-row coefficients
// ---------------------------------------------------------------------------------------------

/// One active row: K distances d[k] of tensors idx[k] out of N = 2K + 1 (a permutation, so the
/// indirection is exercised), with per-tensor bands, temperatures and M x 3 controls.
struct Row {
  int K = 0, N = 0, M = 0;
  std::vector<float> d;
  std::vector<int32_t> idx;
  std::vector<float> tau, dneg, dpos, controls;  // controls[(i * 3 + j) * M + m]
};

/// Rounds to a multiple of 2^-12 so that v +- 2^-8 is exact in float.
float grid(double v) { return float(std::round(v * 4096.0) / 4096.0); }

/// A random row. With `smooth`, every |d| is >= 0.25 and >= 0.02 away from each kink of the
/// row's functions (0, its band edges, its temperature for the compact kernels), so a finite
/// difference with step <= 2^-8 never straddles one; distances are redrawn until that holds.
Row make_row(int K, uint64_t seed, bool smooth, int M = 1) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  Row r;
  r.K = K;
  r.N = 2 * K + 1;
  r.M = M;
  for (int i = 0; i < r.N; ++i) {
    r.tau.push_back(grid(0.4 + 0.8 * u01(rng)));
    r.dneg.push_back(grid(-0.5 - u01(rng)));
    r.dpos.push_back(grid(0.5 + u01(rng)));
  }
  r.controls = random_normal(std::size_t(r.N) * 3 * M, seed + 1);
  std::vector<int32_t> perm(r.N);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  r.idx.assign(perm.begin(), perm.begin() + K);
  for (int k = 0; k < K; ++k) {
    const int i = r.idx[k];
    double d = 0;
    for (;;) {
      d = -2.0 + 4.0 * u01(rng);
      if (!smooth) break;
      const double kinks[] = {0.0, r.dneg[i], r.dpos[i], r.tau[i], -r.tau[i]};
      bool ok = std::fabs(d) >= 0.25;
      for (double x : kinks) ok = ok && std::fabs(d - x) >= 0.02;
      if (ok) break;
    }
    r.d.push_back(grid(d));
  }
  return r;
}

std::vector<ActiveCoef> coefficients(const FieldParams& p, const Row& r) {
  std::vector<ActiveCoef> c(r.K);
  detail::row_coefficients(p, r.K, r.d.data(), r.idx.data(), r.tau.data(), r.dneg.data(),
                           r.dpos.data(), c.data());
  return c;
}

/// yhat (M values) = sum_k w_k C_i alpha_k, accumulated in double from row_coefficients.
std::vector<double> blend(const FieldParams& p, const Row& r) {
  const std::vector<ActiveCoef> c = coefficients(p, r);
  std::vector<double> y(r.M, 0.0);
  for (int k = 0; k < r.K; ++k) {
    for (int j = 0; j < 3; ++j) {
      for (int m = 0; m < r.M; ++m) {
        y[m] += double(c[k].w) * c[k].a[j] * r.controls[(r.idx[k] * 3 + j) * r.M + m];
      }
    }
  }
  return y;
}

/// L_k = C_i alpha_k and dL_k/dd = C_i dalpha_k for active pair k, in double.
std::vector<double> local_value(const Row& r, const ActiveCoef& c, int k, bool derivative) {
  std::vector<double> out(r.M, 0.0);
  for (int j = 0; j < 3; ++j) {
    for (int m = 0; m < r.M; ++m) {
      out[m] += double(derivative ? c.da[j] : c.a[j]) * r.controls[(r.idx[k] * 3 + j) * r.M + m];
    }
  }
  return out;
}

/// Independent transcription of the kernels documented in config.hpp, normalised, in double.
std::vector<double> documented_weights(const FieldParams& p, const Row& r) {
  std::vector<double> w(r.K);
  for (int k = 0; k < r.K; ++k) {
    const double ad = std::fabs(double(r.d[k])), tau = r.tau[r.idx[k]], u = ad / tau;
    switch (p.weighting) {
      case Weighting::softmax:
        w[k] = std::exp(-u);
        break;
      case Weighting::inverse_distance:
        w[k] = 1.0 / (ad + p.inverse_distance_eps);
        break;
      case Weighting::triangular:
        w[k] = std::max(0.0, 1.0 - u) + p.kernel_floor;
        break;
      case Weighting::epanechnikov:
        w[k] = std::max(0.0, 1.0 - u * u) + p.kernel_floor;
        break;
    }
  }
  const double sum = std::accumulate(w.begin(), w.end(), 0.0);
  for (double& v : w) v /= sum;
  return w;
}

class RowCoefficients : public ::testing::TestWithParam<std::tuple<Weighting, int>> {
 protected:
  FieldParams params() const {
    FieldParams p;
    p.weighting = std::get<0>(GetParam());
    p.interpolation = Interpolation::linear;
    return p;
  }
  int K() const { return std::get<1>(GetParam()); }
};

TEST_P(RowCoefficients, WeightsAreNonNegativeAndSumToOne) {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    const Row r = make_row(K(), seed, /*smooth=*/false);
    const std::vector<ActiveCoef> c = coefficients(params(), r);
    double sum = 0;
    for (int k = 0; k < K(); ++k) {
      EXPECT_GE(c[k].w, 0.0f) << "seed " << seed << " k " << k;
      sum += c[k].w;
    }
    EXPECT_NEAR(sum, 1.0, 1e-6) << "seed " << seed;
    if (K() == 1) {
      EXPECT_NEAR(c[0].w, 1.0f, 1e-7f);
    }
  }
}

TEST_P(RowCoefficients, WeightsMatchTheDocumentedKernels) {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    const Row r = make_row(K(), seed, /*smooth=*/false);
    const std::vector<ActiveCoef> c = coefficients(params(), r);
    std::vector<float> w(K()), expected(K());
    const std::vector<double> ref = documented_weights(params(), r);
    for (int k = 0; k < K(); ++k) {
      w[k] = c[k].w;
      expected[k] = float(ref[k]);
    }
    // float exp and a float sum of <= 13 terms: a few ulps relative.
    EXPECT_TRUE(all_close(w, expected, 1e-7, 2e-6)) << "seed " << seed;
  }
}

TEST_P(RowCoefficients, LocalityKernelDerivativesMatchFiniteDifferences) {
  const FieldParams p = params();
  const float h = std::ldexp(1.0f, -10);
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    const Row r = make_row(K(), seed, /*smooth=*/true);
    for (int k = 0; k < K(); ++k) {
      const float d = r.d[k], tau = r.tau[r.idx[k]], shift = 0.25f;
      float kd, kt, unused;
      detail::locality_kernel(p, d, tau, shift, &kd, &kt);
      auto kernel = [&](float dd, float tt) {
        return double(detail::locality_kernel(p, dd, tt, shift, &unused, &unused));
      };
      const double fd_d = (kernel(d + h, tau) - kernel(d - h, tau)) / (2.0 * h);
      const double fd_t = (kernel(d, tau + h) - kernel(d, tau - h)) / (2.0 * h);
      // Kernels are O(1..4) with float rounding ~4e-7: ~2e-4 from rounding, less from truncation.
      EXPECT_NEAR(kd, fd_d, 5e-4 + 2e-3 * std::fabs(fd_d)) << "seed " << seed << " k " << k;
      EXPECT_NEAR(kt, fd_t, 5e-4 + 2e-3 * std::fabs(fd_t)) << "seed " << seed << " k " << k;
    }
  }
}

TEST_P(RowCoefficients, DistanceAndTemperatureSensitivitiesMatchFiniteDifferences) {
  // For yhat = sum_k w_k L_k (scalar controls, M = 1):
  //   dyhat/dd_k   = w_k dL_k/dd + (L_k - yhat) w_dd_k
  //   dyhat/dtau_i = (L_k - yhat) w_dtau_k          (alpha does not depend on tau)
  // checked against central differences of yhat evaluated through row_coefficients itself.
  // Step 2^-8: yhat is O(1) with ~1e-7 rounding (=> ~1.3e-5 error in the quotient); truncation
  // h^2 f''' / 6 stays below ~1e-4 relative since every |d| >= 0.25 and tau >= 0.4.
  const FieldParams base = params();
  for (Interpolation mode : {Interpolation::linear, Interpolation::hermite}) {
    FieldParams p = base;
    p.interpolation = mode;
    for (uint64_t seed = 1; seed <= 5; ++seed) {
      const Row r = make_row(K(), seed, /*smooth=*/true);
      const std::vector<ActiveCoef> c = coefficients(p, r);
      const double yhat = blend(p, r)[0];
      const float h = std::ldexp(1.0f, -8);
      std::vector<float> analytic_d, numeric_d, analytic_t, numeric_t;
      for (int k = 0; k < K(); ++k) {
        const double L = local_value(r, c[k], k, false)[0];
        const double dL = local_value(r, c[k], k, true)[0];
        analytic_d.push_back(float(c[k].w * dL + (L - yhat) * c[k].w_dd));
        analytic_t.push_back(float((L - yhat) * c[k].w_dtau));
        Row plus = r, minus = r;
        plus.d[k] += h;
        minus.d[k] -= h;
        numeric_d.push_back(float((blend(p, plus)[0] - blend(p, minus)[0]) / (2.0 * h)));
        plus = r;
        minus = r;
        plus.tau[r.idx[k]] += h;
        minus.tau[r.idx[k]] -= h;
        numeric_t.push_back(float((blend(p, plus)[0] - blend(p, minus)[0]) / (2.0 * h)));
      }
      const std::string where = std::string(to_string(mode)) + " seed " + std::to_string(seed);
      EXPECT_TRUE(all_close(analytic_d, numeric_d, 1e-4, 2e-3)) << where;
      EXPECT_TRUE(all_close(analytic_t, numeric_t, 1e-4, 2e-3)) << where;
      if (p.weighting == Weighting::inverse_distance) {
        for (int k = 0; k < K(); ++k) EXPECT_EQ(c[k].w_dtau, 0.0f) << where;
      }
    }
  }
}

TEST_P(RowCoefficients, PairGradientMatchesFiniteDifferencesOfAnMseLoss) {
  // F(d, tau) = 0.5 ||yhat - y||^2 over M = 3 outputs, g = yhat - y. pair_gradient must give
  //   e_exact = dF/dd_k, g_tau = dF/dtau_i, e_paper = w_k g . (C_i dalpha_k).
  const int M = 3;
  for (Interpolation mode : {Interpolation::linear, Interpolation::hermite}) {
    FieldParams p = params();
    p.interpolation = mode;
    for (uint64_t seed = 11; seed <= 15; ++seed) {
      const Row r = make_row(K(), seed, /*smooth=*/true, M);
      const std::vector<float> y = random_normal(M, seed + 100);
      auto loss = [&](const Row& row) {
        const std::vector<double> yh = blend(p, row);
        double f = 0;
        for (int m = 0; m < M; ++m) f += 0.5 * (yh[m] - y[m]) * (yh[m] - y[m]);
        return f;
      };
      const std::vector<ActiveCoef> c = coefficients(p, r);
      const std::vector<double> yhat = blend(p, r);
      std::vector<float> g(M);
      double gy = 0;
      for (int m = 0; m < M; ++m) {
        g[m] = float(yhat[m] - y[m]);
        gy += double(g[m]) * yhat[m];
      }
      const float h = std::ldexp(1.0f, -8);
      std::vector<float> e_exact, e_paper, g_tau, fd_d, fd_t, paper_ref;
      for (int k = 0; k < K(); ++k) {
        float G[3];
        for (int j = 0; j < 3; ++j) {
          double acc = 0;
          for (int m = 0; m < M; ++m) acc += double(g[m]) * r.controls[(r.idx[k] * 3 + j) * M + m];
          G[j] = float(acc);
        }
        const PairGradient pg = detail::pair_gradient(c[k], G, float(gy));
        e_exact.push_back(pg.e_exact);
        e_paper.push_back(pg.e_paper);
        g_tau.push_back(pg.g_tau);
        const std::vector<double> dL = local_value(r, c[k], k, true);
        double gdl = 0;
        for (int m = 0; m < M; ++m) gdl += double(g[m]) * dL[m];
        paper_ref.push_back(float(c[k].w * gdl));
        Row plus = r, minus = r;
        plus.d[k] += h;
        minus.d[k] -= h;
        fd_d.push_back(float((loss(plus) - loss(minus)) / (2.0 * h)));
        plus = r;
        minus = r;
        plus.tau[r.idx[k]] += h;
        minus.tau[r.idx[k]] -= h;
        fd_t.push_back(float((loss(plus) - loss(minus)) / (2.0 * h)));
      }
      const std::string where = std::string(to_string(mode)) + " seed " + std::to_string(seed);
      EXPECT_TRUE(all_close(e_exact, fd_d, 2e-4, 2e-3)) << where;
      EXPECT_TRUE(all_close(g_tau, fd_t, 2e-4, 2e-3)) << where;
      EXPECT_TRUE(all_close(e_paper, paper_ref, 1e-6, 1e-5)) << where;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    FieldMath, RowCoefficients,
    ::testing::Combine(::testing::Values(Weighting::softmax, Weighting::inverse_distance,
                                         Weighting::triangular, Weighting::epanechnikov),
                       ::testing::Values(1, 2, 5, 13)),
    [](const auto& info) {
      return std::string(to_string(std::get<0>(info.param))) + "_K" +
             std::to_string(std::get<1>(info.param));
    });

TEST(FieldMath, SoftmaxWeightsAreExpOfMinusDistanceOverTauNormalised) {
  // A hand-computed row: d = (0.5, -1, 0.25), tau = (0.5, 1, 0.25) => exp(-1) each, uniform;
  // then tau = (1, 1, 1) => exp(-0.5), exp(-1), exp(-0.25) normalised.
  FieldParams p;
  p.weighting = Weighting::softmax;
  const float d[3] = {0.5f, -1.0f, 0.25f}, dneg[3] = {-1, -1, -1}, dpos[3] = {1, 1, 1};
  const int32_t idx[3] = {0, 1, 2};
  ActiveCoef c[3];
  const float tau_equal[3] = {0.5f, 1.0f, 0.25f};
  detail::row_coefficients(p, 3, d, idx, tau_equal, dneg, dpos, c);
  for (int k = 0; k < 3; ++k) EXPECT_NEAR(c[k].w, 1.0f / 3.0f, 1e-7f);
  const float tau_one[3] = {1.0f, 1.0f, 1.0f};
  detail::row_coefficients(p, 3, d, idx, tau_one, dneg, dpos, c);
  const double e[3] = {std::exp(-0.5), std::exp(-1.0), std::exp(-0.25)};
  const double z = e[0] + e[1] + e[2];
  for (int k = 0; k < 3; ++k) EXPECT_NEAR(c[k].w, e[k] / z, 1e-7) << k;
}

TEST(FieldMath, SoftmaxStaysFiniteWhenEveryExponentUnderflows) {
  // |d| / tau = 500..520: exp(-|d|/tau) is 0 in float, so the weights are only defined through
  // the shift by the row's largest exponent: w_k = exp(-(u_k - u_min)) / sum.
  FieldParams p;
  p.weighting = Weighting::softmax;
  const float d[3] = {50.0f, -51.0f, 52.0f}, tau[3] = {0.1f, 0.1f, 0.1f};
  const float dneg[3] = {-1, -1, -1}, dpos[3] = {1, 1, 1};
  const int32_t idx[3] = {0, 1, 2};
  ActiveCoef c[3];
  detail::row_coefficients(p, 3, d, idx, tau, dneg, dpos, c);
  double u[3], z = 0;
  for (int k = 0; k < 3; ++k) u[k] = std::fabs(double(d[k])) / double(tau[k]);
  for (int k = 0; k < 3; ++k) z += std::exp(-(u[k] - u[0]));
  for (int k = 0; k < 3; ++k) {
    ASSERT_TRUE(std::isfinite(c[k].w) && std::isfinite(c[k].w_dd) && std::isfinite(c[k].w_dtau));
    EXPECT_NEAR(c[k].w, std::exp(-(u[k] - u[0])) / z, 1e-5) << k;
  }
}

TEST(FieldMath, CompactKernelsFallBackToUniformOutsideTheirBandwidth) {
  // Every |d| >= tau: only kernel_floor remains, so the weights are uniform and their gradients 0.
  for (Weighting w : {Weighting::triangular, Weighting::epanechnikov}) {
    FieldParams p;
    p.weighting = w;
    const float d[5] = {0.5f, -0.7f, 1.5f, -0.5f, 3.0f};
    const float tau[5] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
    const float dneg[5] = {-1, -1, -1, -1, -1}, dpos[5] = {1, 1, 1, 1, 1};
    const int32_t idx[5] = {4, 3, 2, 1, 0};
    ActiveCoef c[5];
    detail::row_coefficients(p, 5, d, idx, tau, dneg, dpos, c);
    for (int k = 0; k < 5; ++k) {
      EXPECT_NEAR(c[k].w, 0.2f, 1e-7f) << to_string(w) << " k " << k;
      EXPECT_EQ(c[k].w_dd, 0.0f) << to_string(w) << " k " << k;
      EXPECT_EQ(c[k].w_dtau, 0.0f) << to_string(w) << " k " << k;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Optimiser and band adaptation
// ---------------------------------------------------------------------------------------------

StepParams adam_params(float lr, int step) {
  StepParams s;
  s.optimizer = Optimizer::adam;
  s.lr = lr;
  s.bias1 = float(1.0 - std::pow(double(s.beta1), step));
  s.bias2 = float(1.0 - std::pow(double(s.beta2), step));
  return s;
}

TEST(FieldMath, SgdDeltaIsMinusLrTimesGradient) {
  StepParams s;
  s.optimizer = Optimizer::sgd;
  float m = 7.0f, v = 9.0f;
  for (float grad : {-3.0f, -1e-3f, 0.0f, 0.25f, 40.0f}) {
    EXPECT_EQ(detail::optimizer_delta(s, 0.05f, grad, &m, &v), -0.05f * grad) << grad;
  }
  EXPECT_EQ(m, 7.0f);  // SGD leaves the Adam moments alone
  EXPECT_EQ(v, 9.0f);
}

TEST(FieldMath, StepParamsBiasCorrectionForTheFirstStep) {
  HtfrConfig c;
  c.optimizer = Optimizer::adam;
  const StepParams s = detail::step_params(c, 0);
  EXPECT_FLOAT_EQ(s.bias1, 1.0f - c.adam_beta1);
  EXPECT_FLOAT_EQ(s.bias2, 1.0f - c.adam_beta2);
  EXPECT_EQ(s.step, 1.0f);
  const StepParams s5 = detail::step_params(c, 4);
  EXPECT_FLOAT_EQ(s5.bias1, float(1.0 - std::pow(double(c.adam_beta1), 5)));
  EXPECT_EQ(s5.step, 5.0f);
}

TEST(FieldMath, AdamFirstStepHasMagnitudeLr) {
  // With m = v = 0 and bias corrections 1 - beta: mhat = g, vhat = g^2, so the step is
  // -lr g / (|g| + eps): magnitude lr up to eps / |g| <= 1e-5 for |g| >= 1e-3.
  const float lr = 0.01f;
  for (float grad : {-50.0f, -0.3f, -1e-3f, 1e-3f, 0.7f, 123.0f}) {
    const StepParams s = adam_params(lr, 1);
    float m = 0, v = 0;
    const float delta = detail::optimizer_delta(s, lr, grad, &m, &v);
    EXPECT_NEAR(delta, grad > 0 ? -lr : lr, lr * 2e-5) << grad;
    EXPECT_FLOAT_EQ(m, (1.0f - s.beta1) * grad);
    EXPECT_FLOAT_EQ(v, (1.0f - s.beta2) * grad * grad);
  }
  float m = 0, v = 0;
  EXPECT_EQ(detail::optimizer_delta(adam_params(lr, 1), lr, 0.0f, &m, &v), 0.0f);
}

TEST(FieldMath, AdamStepStaysLrUnderAConstantGradient) {
  // With bias correction, mhat = g and vhat = g^2 exactly for a constant g at every step t.
  const float lr = 0.02f, grad = -0.4f;
  float m = 0, v = 0;
  for (int t = 1; t <= 25; ++t) {
    const float delta = detail::optimizer_delta(adam_params(lr, t), lr, grad, &m, &v);
    EXPECT_NEAR(delta, lr, lr * 1e-4) << "step " << t;
  }
}

TEST(FieldMath, AdaptBandSingleStepIsTheWhitePaperEma) {
  const float gamma = 0.1f, band_min = 1e-3f;
  EXPECT_NEAR(detail::adapt_band(1.0f, gamma, 1, 0.4f, band_min, true), 0.9f * 1.0f + 0.1f * 0.4f,
              1e-7f);
  EXPECT_NEAR(detail::adapt_band(-0.8f, gamma, 1, -2.0f, band_min, false),
              0.9f * -0.8f + 0.1f * -2.0f, 1e-7f);
}

TEST(FieldMath, AdaptBandCountStepsEqualRepeatedSingleSteps) {
  const float gamma = 0.07f;
  float iterated = 0.9f;
  for (int i = 0; i < 5; ++i) iterated = (1 - gamma) * iterated + gamma * 0.3f;
  EXPECT_NEAR(detail::adapt_band(0.9f, gamma, 5, 0.3f, 1e-3f, true), iterated, 1e-6f);
}

TEST(FieldMath, AdaptBandLeavesTheBandAloneWithoutRowsOrRate) {
  EXPECT_EQ(detail::adapt_band(0.9f, 0.1f, 0, 0.3f, 1e-3f, true), 0.9f);
  EXPECT_EQ(detail::adapt_band(-0.9f, 0.0f, 4, -0.3f, 1e-3f, false), -0.9f);
}

TEST(FieldMath, AdaptBandClampsAtBandMin) {
  // (1 - 0.5) * 0.01 + 0.5 * 1e-4 = 5.05e-3 < band_min = 0.02.
  EXPECT_EQ(detail::adapt_band(0.01f, 0.5f, 1, 1e-4f, 0.02f, true), 0.02f);
  EXPECT_EQ(detail::adapt_band(-0.01f, 0.5f, 1, -1e-4f, 0.02f, false), -0.02f);
  // Above band_min nothing is clamped.
  EXPECT_NEAR(detail::adapt_band(0.01f, 0.5f, 1, 1e-4f, 1e-3f, true), 5.05e-3f, 1e-8f);
}

}  // namespace
}  // namespace htfr::test

// The per-tensor and per-row formulas of the HyperTensor field, written once for host and device
// so the CPU reference and the CUDA kernels cannot drift apart.
#pragma once

#include <cmath>
#include <cstdint>

#include "htfr/config.hpp"

#include "detail/hd.hpp"

namespace htfr::detail {

/// What the per-row coefficient pass needs from the config, small enough to pass by value.
struct FieldParams {
  Weighting weighting = Weighting::softmax;
  Interpolation interpolation = Interpolation::linear;
  float inverse_distance_eps = 1e-6f;
  float kernel_floor = 1e-6f;
};

inline FieldParams field_params(const HtfrConfig& c) {
  return {c.weighting, c.interpolation, c.inverse_distance_eps, c.kernel_floor};
}

/// Barycentric coefficients alpha(d) and d alpha / d d for one tensor.
/// Linear (white paper §1, with a_neg = d'/dneg so that alpha = (1, 0, 0) at the negative band
/// edge; §1's "-d'/dneg" contradicts the derivative of §3.2): the derivative is taken strictly
/// inside a half-band and is 0 at d = 0, at the edges and outside, as in §8.
/// Hermite: the same with t replaced by the smoothstep t^2 (3 - 2t), which has zero slope at 0 and
/// at the band edges, so value and slope are continuous everywhere.
HTFR_HD void interpolation_coefficients(Interpolation mode, float d, float dneg, float dpos,
                                        float a[3], float da[3]) {
  const float dc = fminf(fmaxf(d, dneg), dpos);
  const bool positive = dc >= 0.0f;
  const float edge = positive ? dpos : dneg;
  const float t = dc / edge;
  const bool inside = positive ? (d > 0.0f && d < dpos) : (d < 0.0f && d > dneg);
  float h = t, dh = inside ? 1.0f / edge : 0.0f;
  if (mode == Interpolation::hermite) {
    h = t * t * (3.0f - 2.0f * t);
    dh = inside ? 6.0f * t * (1.0f - t) / edge : 0.0f;
  }
  // The outer entry on d's side takes h, the other outer entry 0. Written as selects: an index
  // chosen at run time would put a and da in a kernel's local memory.
  a[0] = positive ? 0.0f : h;
  a[1] = 1.0f - h;
  a[2] = positive ? h : 0.0f;
  da[0] = positive ? 0.0f : dh;
  da[1] = -dh;
  da[2] = positive ? dh : 0.0f;
}

/// Unnormalised locality kernel k(d, tau) and its partial derivatives. For softmax the caller
/// passes `shift` = max over the active set of -|d|/tau, which cancels in the normalisation.
HTFR_HD float locality_kernel(const FieldParams& p, float d, float tau, float shift, float* dk_dd,
                              float* dk_dtau) {
  const float ad = fabsf(d);
  const float sgn = d > 0.0f ? 1.0f : (d < 0.0f ? -1.0f : 0.0f);
  switch (p.weighting) {
    case Weighting::softmax: {
      const float k = expf(-ad / tau - shift);
      *dk_dd = -k * sgn / tau;
      *dk_dtau = k * ad / (tau * tau);
      return k;
    }
    case Weighting::inverse_distance: {
      const float r = 1.0f / (ad + p.inverse_distance_eps);
      *dk_dd = -sgn * r * r;
      *dk_dtau = 0.0f;
      return r;
    }
    case Weighting::triangular: {
      const bool in = ad < tau;
      *dk_dd = in ? -sgn / tau : 0.0f;
      *dk_dtau = in ? ad / (tau * tau) : 0.0f;
      return (in ? 1.0f - ad / tau : 0.0f) + p.kernel_floor;
    }
    case Weighting::epanechnikov:
    default: {
      const float u = d / tau;
      const bool in = ad < tau;
      *dk_dd = in ? -2.0f * u / tau : 0.0f;
      *dk_dtau = in ? 2.0f * u * u / tau : 0.0f;
      return (in ? 1.0f - u * u : 0.0f) + p.kernel_floor;
    }
  }
}

/// Coefficients of one active (row, k) pair.
///  w                 locality weight (sums to 1 over the row)
///  w_dd, w_dtau      (dk/dd) / S and (dk/dtau) / S, S = sum of k over the row: the gradient of
///                    the loss through the weights is q * w_dd, q = g . (L_i - yhat)
///  a, da             interpolation coefficients and their derivative in d
struct ActiveCoef {
  float w, w_dd, w_dtau;
  float a[3];
  float da[3];
};

/// Fills out[0..K) for one row from its active distances d[0..K) and tensor indices idx[0..K).
/// The CPU backend's row loop; the CUDA blend kernel evaluates the same per-entry formulas
/// (locality_kernel, interpolation_coefficients) one entry per lane and normalises with warp
/// reductions, so its sums differ from this loop only in rounding order.
HTFR_HD void row_coefficients(const FieldParams& p, int K, const float* d, const int32_t* idx,
                              const float* tau, const float* dneg, const float* dpos,
                              ActiveCoef* out) {
  float shift = -INFINITY;
  if (p.weighting == Weighting::softmax) {
    for (int k = 0; k < K; ++k) shift = fmaxf(shift, -fabsf(d[k]) / tau[idx[k]]);
  }
  float sum = 0.0f;
  for (int k = 0; k < K; ++k) {
    const int32_t i = idx[k];
    float kd, kt;
    const float kv = locality_kernel(p, d[k], tau[i], shift, &kd, &kt);
    out[k].w = kv;
    out[k].w_dd = kd;
    out[k].w_dtau = kt;
    sum += kv;
    interpolation_coefficients(p.interpolation, d[k], dneg[i], dpos[i], out[k].a, out[k].da);
  }
  const float inv = 1.0f / sum;
  for (int k = 0; k < K; ++k) {
    out[k].w *= inv;
    out[k].w_dd *= inv;
    out[k].w_dtau *= inv;
  }
}

/// Gradients of one active pair given G_j = g . C_i[:, j] and gy = g . yhat.
///  e_exact  dL/dd_i including the path through the weights (used for dL/dx)
///  e_paper  w * g . dL_i/dd_i, the white paper's distance sensitivity
///  g_tau    dL/dtau_i
struct PairGradient {
  float e_exact, e_paper, g_tau;
};

HTFR_HD PairGradient pair_gradient(const ActiveCoef& c, const float G[3], float gy) {
  const float r = c.da[0] * G[0] + c.da[1] * G[1] + c.da[2] * G[2];
  const float gl = c.a[0] * G[0] + c.a[1] * G[1] + c.a[2] * G[2];
  const float q = gl - gy;
  PairGradient out;
  out.e_paper = c.w * r;
  out.e_exact = out.e_paper + q * c.w_dd;
  out.g_tau = q * c.w_dtau;
  return out;
}

/// Optimiser settings for one update, passed by value to kernels.
struct StepParams {
  Optimizer optimizer = Optimizer::sgd;
  float lr = 0, lr_geometry = 0, lr_tau = 0;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float bias1 = 1, bias2 = 1;  ///< 1 - beta^t for the step being taken
  float band_gamma = 0, band_min = 1e-3f, tau_min = 1e-3f, geometry_clip = 0;
  float step = 0;              ///< the step number being taken (1-based), for last_used
};

/// Change to apply to a parameter with gradient `grad` (summed over the batch) at rate `lr`,
/// updating the Adam moments m, v when the optimiser is Adam (SGD reads neither: they may be
/// null).
HTFR_HD float optimizer_delta(const StepParams& s, float lr, float grad, float* m, float* v) {
  if (s.optimizer == Optimizer::adam) {
    *m = s.beta1 * *m + (1.0f - s.beta1) * grad;
    *v = s.beta2 * *v + (1.0f - s.beta2) * grad * grad;
    const float mh = *m / s.bias1;
    const float vh = *v / s.bias2;
    return -lr * mh / (sqrtf(vh) + s.eps);
  }
  return -lr * grad;
}

/// Band adaptation for one side: `count` rows of this tensor fell on the side with mean distance
/// `mean_d`; the band moves as `count` steps of the white paper's (1 - gamma) EMA would.
HTFR_HD float adapt_band(float band, float gamma, int count, float mean_d, float band_min,
                         bool positive) {
  if (gamma <= 0.0f || count == 0) return band;
  const float keep = powf(1.0f - gamma, static_cast<float>(count));
  const float out = keep * band + (1.0f - keep) * mean_d;
  return positive ? fmaxf(out, band_min) : fminf(out, -band_min);
}

}  // namespace htfr::detail

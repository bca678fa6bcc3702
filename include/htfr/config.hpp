// Every knob of an HTFR model in one plain struct, so a training job can build, log and compare
// configurations without touching the backends.
#pragma once

#include <cstdint>
#include <string>

namespace htfr {

/// Where a pool lives and which implementation runs on it.
enum class Backend { cpu, cuda };

/// Storage precision of the optional forward-pass copies of normals and controls. fp32 master
/// parameters always exist; `tf32` keeps fp32 storage but lets the distance GEMM use TF32 tensor
/// cores.
enum class Precision { fp32, tf32, bf16, fp16 };

/// Locality weights over the active set (white paper §2, §7). With u = |d| / tau:
/// softmax exp(-u); inverse_distance 1 / (|d| + eps); triangular max(0, 1 - u);
/// epanechnikov max(0, 1 - u^2). The two compact kernels add `kernel_floor` to every weight so an
/// active set entirely outside its bandwidths falls back to uniform weights instead of 0/0.
enum class Weighting { softmax, inverse_distance, triangular, epanechnikov };

/// Interpolation along the signed distance: piecewise linear (white paper §1) or cubic Hermite
/// (smoothstep; C1 in value and slope, partition of unity on both sides of 0).
enum class Interpolation { linear, hermite };

/// Training loss per row.
///  mse:           0.5 * ||y - yhat||^2                          (target: B x M values)
///  cross_entropy: -log softmax(yhat)[t]                         (target: B class indices)
///  kl:            KL(q || softmax(yhat)), q a teacher distribution (target: B x M probabilities)
///  mixed:         ce_weight * cross_entropy + kl_weight * kl     (both targets)
enum class Loss { mse, cross_entropy, kl, mixed };

/// Update rule for the parameters touched by a batch.
enum class Optimizer { sgd, adam };

/// How the per-row gradients of a batch are combined: summed (the white paper's online rule
/// repeated) or averaged over the batch.
enum class Reduction { sum, mean };

/// Configuration of an HtfrModel. Defaults follow the white paper where it gives one.
struct HtfrConfig {
  int64_t input_dim = 0;    ///< D
  int64_t output_dim = 0;   ///< M
  int64_t num_tensors = 0;  ///< N
  int64_t top_k = 4;        ///< K, 1 <= K <= min(N, kMaxTopK)

  Weighting weighting = Weighting::softmax;
  Interpolation interpolation = Interpolation::linear;
  float inverse_distance_eps = 1e-6f;
  float kernel_floor = 1e-6f;

  Loss loss = Loss::mse;
  float ce_weight = 1.0f;  ///< weight of cross-entropy in Loss::mixed
  float kl_weight = 1.0f;  ///< weight of KL in Loss::mixed
  Reduction reduction = Reduction::sum;

  Optimizer optimizer = Optimizer::sgd;
  float lr = 0.05f;           ///< eta: controls
  float lr_geometry = 0.005f; ///< eta_g: normals and offsets
  float lr_tau = 0.0f;        ///< temperature learning rate (0 = fixed temperatures)
  float band_gamma = 0.0f;    ///< band adaptation rate gamma (0 = fixed bands)
  float band_min = 1e-3f;     ///< bands never shrink below this magnitude
  float tau_min = 1e-3f;      ///< temperatures never fall below this
  /// Clip the norm of each tensor's normal gradient (summed over the batch, before the optimiser
  /// step) to this value (0 = no clipping).
  float geometry_clip = 0.0f;
  /// false: geometry follows the white paper §3.2 (distance sensitivity of L_i only);
  /// true: also the gradient through the locality weights (the exact gradient of the loss).
  bool locality_gradient = false;
  float adam_beta1 = 0.9f;
  float adam_beta2 = 0.999f;
  float adam_eps = 1e-8f;

  /// Operand precision of the distance GEMM and blend reads on the CUDA backend (the CPU backend
  /// always computes in fp32/fp64).
  Precision precision = Precision::fp32;
  /// Check inputs and targets for NaN/Inf (and teacher probabilities for negative values) before
  /// using them. On the CUDA backend this reads a few flags back, so forward/train_step
  /// synchronise the stream once when it is on. Class indices are always range-checked.
  bool check_finite = true;

  /// Throws InvalidArgument naming the first field that is out of range.
  void validate() const;
};

/// Largest K the kernels support.
inline constexpr int64_t kMaxTopK = 256;

const char* to_string(Backend v);
const char* to_string(Precision v);
const char* to_string(Weighting v);
const char* to_string(Interpolation v);
const char* to_string(Loss v);
const char* to_string(Optimizer v);

}  // namespace htfr

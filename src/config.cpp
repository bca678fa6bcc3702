// Validation and names of the configuration enums.
#include "htfr/config.hpp"

#include <cmath>

#include "detail/check.hpp"

namespace htfr {

void HtfrConfig::validate() const {
  HTFR_REQUIRE(input_dim > 0, InvalidArgument, "input_dim must be positive, got " << input_dim);
  HTFR_REQUIRE(output_dim > 0, InvalidArgument, "output_dim must be positive, got " << output_dim);
  HTFR_REQUIRE(num_tensors > 0, InvalidArgument,
               "num_tensors must be positive, got " << num_tensors);
  HTFR_REQUIRE(num_tensors <= (int64_t{1} << 30), InvalidArgument,
               "num_tensors must be at most 2^30, got " << num_tensors);
  HTFR_REQUIRE(top_k >= 1, InvalidArgument, "top_k must be at least 1, got " << top_k);
  HTFR_REQUIRE(top_k <= num_tensors, InvalidArgument,
               "top_k (" << top_k << ") must not exceed num_tensors (" << num_tensors << ")");
  HTFR_REQUIRE(top_k <= kMaxTopK, InvalidArgument,
               "top_k (" << top_k << ") exceeds the supported maximum " << kMaxTopK);
  auto finite_nonneg = [](float v) { return std::isfinite(v) && v >= 0.0f; };
  HTFR_REQUIRE(finite_nonneg(lr), InvalidArgument, "lr must be finite and >= 0, got " << lr);
  HTFR_REQUIRE(finite_nonneg(lr_geometry), InvalidArgument,
               "lr_geometry must be finite and >= 0, got " << lr_geometry);
  HTFR_REQUIRE(finite_nonneg(lr_tau), InvalidArgument,
               "lr_tau must be finite and >= 0, got " << lr_tau);
  HTFR_REQUIRE(band_gamma >= 0.0f && band_gamma < 1.0f, InvalidArgument,
               "band_gamma must be in [0, 1), got " << band_gamma);
  HTFR_REQUIRE(band_min > 0.0f && std::isfinite(band_min), InvalidArgument,
               "band_min must be positive, got " << band_min);
  HTFR_REQUIRE(tau_min > 0.0f && std::isfinite(tau_min), InvalidArgument,
               "tau_min must be positive, got " << tau_min);
  HTFR_REQUIRE(finite_nonneg(geometry_clip), InvalidArgument,
               "geometry_clip must be finite and >= 0, got " << geometry_clip);
  HTFR_REQUIRE(inverse_distance_eps > 0.0f, InvalidArgument,
               "inverse_distance_eps must be positive, got " << inverse_distance_eps);
  HTFR_REQUIRE(kernel_floor > 0.0f, InvalidArgument,
               "kernel_floor must be positive, got " << kernel_floor);
  HTFR_REQUIRE(finite_nonneg(ce_weight) && finite_nonneg(kl_weight), InvalidArgument,
               "ce_weight and kl_weight must be finite and >= 0");
  HTFR_REQUIRE(adam_beta1 >= 0.0f && adam_beta1 < 1.0f && adam_beta2 >= 0.0f &&
                   adam_beta2 < 1.0f && adam_eps > 0.0f,
               InvalidArgument, "Adam needs 0 <= beta1, beta2 < 1 and eps > 0");
  HTFR_REQUIRE(loss == Loss::mse || output_dim >= 2, InvalidArgument,
               "classification losses need output_dim >= 2, got " << output_dim);
}

const char* to_string(Backend v) { return v == Backend::cpu ? "cpu" : "cuda"; }

const char* to_string(Precision v) {
  switch (v) {
    case Precision::fp32: return "fp32";
    case Precision::tf32: return "tf32";
    case Precision::bf16: return "bf16";
    case Precision::fp16: return "fp16";
  }
  return "?";
}

const char* to_string(Weighting v) {
  switch (v) {
    case Weighting::softmax: return "softmax";
    case Weighting::inverse_distance: return "inverse_distance";
    case Weighting::triangular: return "triangular";
    case Weighting::epanechnikov: return "epanechnikov";
  }
  return "?";
}

const char* to_string(Interpolation v) {
  return v == Interpolation::linear ? "linear" : "hermite";
}

const char* to_string(Loss v) {
  switch (v) {
    case Loss::mse: return "mse";
    case Loss::cross_entropy: return "cross_entropy";
    case Loss::kl: return "kl";
    case Loss::mixed: return "mixed";
  }
  return "?";
}

const char* to_string(Optimizer v) { return v == Optimizer::sgd ? "sgd" : "adam"; }

}  // namespace htfr

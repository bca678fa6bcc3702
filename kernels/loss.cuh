// Per-row loss and its gradient with respect to the prediction.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "htfr/config.hpp"

namespace htfr::detail {

struct LossParams {
  Loss loss = Loss::mse;
  float ce_weight = 1.0f, kl_weight = 1.0f;
  float scale = 1.0f;  ///< 1 (sum) or 1/B (mean) applied to the gradient
  /// When set (bf16/fp16 training), g is also written here in `half_precision`.
  void* g_half = nullptr;
  Precision half_precision = Precision::bf16;
};

/// For each row r of y (rows x M): row_loss[r] (unscaled), g[r, :] = scale * dL/dyhat and
/// gy[r] = g[r, :] . y[r, :]. `target` (rows x M) for mse/kl/mixed, `target_index` (rows) for
/// cross_entropy/mixed. Asynchronous on `stream`.
void launch_loss_gradient(const LossParams& params, int64_t rows, int64_t m, const float* y,
                          const float* target, const int32_t* target_index, float* g,
                          float* row_loss, float* gy, cudaStream_t stream);

}  // namespace htfr::detail

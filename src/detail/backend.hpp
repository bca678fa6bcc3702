// The interface both backends implement behind HtfrModel, and their factories.
#pragma once

#include <memory>
#include <vector>

#include "detail/field_math.hpp"
#include "htfr/model.hpp"

namespace htfr::detail {

/// Arguments reach a backend already validated by HtfrModel (shapes, pointers, their memory
/// space, presence of the targets the loss needs); the backend checks values (NaN/Inf, class
/// indices) itself, before it changes anything.
class ModelBackend {
 public:
  ModelBackend(const HtfrConfig& config, HyperTensorPool&& pool)
      : config_(config), pool_(std::move(pool)) {}
  virtual ~ModelBackend() = default;

  virtual void select(const float* x, int64_t rows, int32_t* indices, float* distances,
                      cudaStream_t stream) = 0;
  virtual void forward(const float* x, int64_t rows, float* y, cudaStream_t stream) = 0;
  virtual void train_step(const Batch& batch, const StepOutputs& out, cudaStream_t stream) = 0;
  /// Adam moments, flat: m and v of the controls (N*3*M each), of the normals (N*D each), of the
  /// offsets and temperatures (2N each), in that order; empty for SGD. Synchronises `stream`.
  virtual std::vector<float> optimizer_state(cudaStream_t stream) const = 0;
  /// Replaces the moments from a vector laid out as optimizer_state(). Synchronises `stream`.
  virtual void set_optimizer_state(const std::vector<float>& state, cudaStream_t stream) = 0;

  HtfrConfig config_;
  HyperTensorPool pool_;
  int64_t step_ = 0;
};

std::unique_ptr<ModelBackend> make_cpu_backend(const HtfrConfig& config, HyperTensorPool&& pool);
std::unique_ptr<ModelBackend> make_cuda_backend(const HtfrConfig& config, HyperTensorPool&& pool);

/// Optimiser settings for the step about to be taken (step_ + 1).
StepParams step_params(const HtfrConfig& config, int64_t step);

}  // namespace htfr::detail

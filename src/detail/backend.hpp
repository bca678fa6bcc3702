// The interface both backends implement behind HtfrModel, and their factories.
#pragma once

#include <memory>

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

  HtfrConfig config_;
  HyperTensorPool pool_;
  int64_t step_ = 0;
};

std::unique_ptr<ModelBackend> make_cpu_backend(const HtfrConfig& config, HyperTensorPool&& pool);
std::unique_ptr<ModelBackend> make_cuda_backend(const HtfrConfig& config, HyperTensorPool&& pool);

/// Optimiser settings for the step about to be taken (step_ + 1).
StepParams step_params(const HtfrConfig& config, int64_t step);

}  // namespace htfr::detail

// HtfrModel: forward pass and mini-batch training of a HyperTensor field, on the CPU reference
// backend or the CUDA backend, behind one interface.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "htfr/config.hpp"
#include "htfr/pool.hpp"

namespace htfr {

namespace detail {
class ModelBackend;
}

/// A batch of B rows. Pointers are device pointers on the CUDA backend, host pointers on the CPU
/// backend; arrays are row-major and dense.
///  x             B x D inputs
///  target        B x M: regression targets (Loss::mse) or teacher probabilities (Loss::kl,
///                Loss::mixed); rows of probabilities must be non-negative
///  target_index  B class indices in [0, M) (Loss::cross_entropy, Loss::mixed)
struct Batch {
  const float* x = nullptr;
  int64_t rows = 0;
  const float* target = nullptr;
  const int32_t* target_index = nullptr;
};

/// Optional outputs of a training step (null = not wanted), same memory space as the batch.
///  prediction  B x M  the forward output with the parameters at the start of the step
///  row_loss    B      each row's loss (before batch reduction)
///  input_grad  B x D  dL/dx, the exact gradient of the (reduced) loss with respect to the inputs
struct StepOutputs {
  float* prediction = nullptr;
  float* row_loss = nullptr;
  float* input_grad = nullptr;
};

/// Summary of the pool's usage statistics.
struct PoolStatistics {
  int64_t steps = 0;            ///< training steps taken
  int64_t num_tensors = 0;
  int64_t used_tensors = 0;     ///< tensors selected at least once in training
  double active_fraction = 0;   ///< used_tensors / num_tensors
  double mean_use = 0;          ///< mean selection count
  double max_use = 0;           ///< largest selection count
  double mean_abs_distance = 0; ///< mean over used tensors of their running mean |d|
};

/// Forward and training of one HTFR over a pool it owns.
///
/// Batched semantics: every row of a batch is evaluated with the parameters as they were at the
/// start of the call; the updates of all rows are then combined (Reduction) and applied once. At
/// B = 1 with SGD this is the white paper's online algorithm (§8).
///
/// Top-K selects the K smallest |d_i|, ties broken by the smaller tensor index.
///
/// Every method validates its arguments before touching the pool, so a call that throws leaves the
/// pool unchanged (a CUDA fault in the middle of a step is the exception: the device is then in an
/// undefined state).
class HtfrModel {
 public:
  /// Takes ownership of `pool`, whose dimensions must match `config`. Throws InvalidArgument.
  HtfrModel(const HtfrConfig& config, HyperTensorPool&& pool);
  ~HtfrModel();
  HtfrModel(HtfrModel&&) noexcept;
  HtfrModel& operator=(HtfrModel&&) noexcept;
  HtfrModel(const HtfrModel&) = delete;
  HtfrModel& operator=(const HtfrModel&) = delete;

  /// y (B x M) = prediction for x (B x D). Asynchronous on `stream` except for the NaN/Inf check
  /// (config.check_finite), which synchronises once. Throws InvalidArgument, NonFiniteInput,
  /// WrongDevice.
  void forward(const float* x, int64_t rows, float* y, cudaStream_t stream = nullptr);

  /// The top-K selection alone: indices (B x K, int32) and signed distances (B x K), each row
  /// ordered by increasing |d|. Same synchronisation and errors as forward.
  void select(const float* x, int64_t rows, int32_t* indices, float* distances,
              cudaStream_t stream = nullptr);

  /// One mini-batch update. Same synchronisation and errors as forward, plus InvalidArgument for a
  /// missing target of the configured loss or a class index out of range (checked on the device
  /// together with the NaN check).
  void train_step(const Batch& batch, const StepOutputs& outputs = {},
                  cudaStream_t stream = nullptr);

  /// Reads the statistics back. Synchronises `stream`.
  PoolStatistics statistics(cudaStream_t stream = nullptr) const;

  const HtfrConfig& config() const;
  const HyperTensorPool& pool() const;
  /// The optimiser's state (Adam moments; empty for SGD) as one flat host vector, for
  /// checkpoints. Synchronises `stream`.
  std::vector<float> optimizer_state(cudaStream_t stream = nullptr) const;
  /// Restores a checkpointed state: the step counter and the optimiser state (as returned by
  /// optimizer_state). Throws InvalidArgument when the state's size does not fit the config.
  /// Synchronises `stream`.
  void restore_state(int64_t step, const std::vector<float>& optimizer_state,
                     cudaStream_t stream = nullptr);
  /// Mutable access, e.g. to upload new parameters. Optimiser state is not reset by it.
  HyperTensorPool& pool();
  int64_t step() const;
  Backend backend() const;

 private:
  std::unique_ptr<detail::ModelBackend> impl_;
};

}  // namespace htfr

// Pool maintenance primitives (white paper §9, §11): moving idle tensors onto rows the field
// predicts badly, and pruning tensors that training never selects.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include <memory>

#include "htfr/model.hpp"
#include "htfr/pool.hpp"

namespace htfr {

/// Parameters a reseeded tensor starts from.
struct ReseedOptions {
  float band = 1.0f;   ///< bands [-band, band], > 0
  float tau = 0.5f;    ///< temperature, > 0
  uint64_t seed = 0;   ///< normals: seeded random unit vectors, the same on every backend
};

/// Moves tensor tensors[r] onto row r, for r < tensors.size(): a seeded random unit normal n, the
/// offset -n.x_r (its hyperplane passes through x_r: d(x_r) = 0), bands [-band, band], the
/// temperature tau, all three control columns equal to target_r (so at x_r the tensor predicts
/// target_r exactly), statistics zeroed, half copies refreshed. x is count x D and targets count
/// x M, in the pool's memory. Synchronises `stream` on the CUDA backend. Throws InvalidArgument
/// (an index out of range or repeated, bad options, null arrays), NonFiniteInput (NaN/Inf in x or
/// targets), WrongDevice; a call that throws changes nothing.
void reseed_tensors(HyperTensorPool& pool, const std::vector<int64_t>& tensors, const float* x,
                    const float* targets, const ReseedOptions& options, cudaStream_t stream);

/// The `count` tensors with the smallest use_count, ties to the smaller index, in that order.
/// Synchronises `stream`. Throws InvalidArgument for count outside [0, N].
std::vector<int64_t> least_used_tensors(const HyperTensorPool& pool, int64_t count,
                                        cudaStream_t stream);

/// What prune_unused did: the old indices of the tensors kept (in order) and removed.
struct PruneReport {
  int64_t before = 0;
  int64_t after = 0;
  std::vector<int64_t> kept;
  std::vector<int64_t> removed;
};

/// A compacted copy of `pool` without the tensors whose use_count is <= min_use (min_use = 0:
/// the tensors training never selected), on the same backend and device, in the original order.
/// Tensor i of the result is tensor report.kept[i] of `pool`, bit for bit (parameters and
/// statistics); optimiser state lives in the model and is not carried over. At least one tensor
/// is always kept (the most used one, ties to the smaller index). Goes through host memory and
/// synchronises `stream`.
HyperTensorPool prune_unused(const HyperTensorPool& pool, float min_use, PruneReport* report,
                             cudaStream_t stream);

/// Knobs of PoolMaintainer.
struct MaintenanceConfig {
  float usage_decay = 0.99f;      ///< per step: usage <- decay * usage + selections this step
  int64_t queue_capacity = 1024;  ///< rows the high-error queue holds (ring buffer), >= 1
  int64_t queue_per_step = 8;     ///< highest-loss rows of each batch pushed onto the queue
  /// R: reseed every R steps. 0 = never, the default: reseeding made both synthetic tasks worse
  /// when measured (docs/RESULTS.md, "Pool initialisation").
  int64_t reseed_every = 0;
  int64_t reseed_count = 8;       ///< tensors reseeded per event (at most the queued rows)
  float class_value = 4.0f;       ///< control value of the true class for index targets
  ReseedOptions reseed;           ///< bands, temperature and normal seed of reseeded tensors
};

/// What a PoolMaintainer did, and the decayed usage it tracks.
struct MaintenanceStatistics {
  int64_t steps = 0;
  int64_t rows_queued = 0;       ///< rows pushed onto the queue in all
  int64_t reseed_events = 0;
  int64_t tensors_reseeded = 0;
  double active_fraction = 0;    ///< tensors whose decayed usage exceeds 1e-3
  double usage_p10 = 0, usage_median = 0, usage_p90 = 0;  ///< decayed usage quantiles
};

/// Maintenance during training (white paper §9, §11), on the pool's device and deterministic for
/// a seed: a decayed usage count per tensor, a bounded queue of the highest-loss rows seen, and
/// every R steps the least-used tensors (by decayed usage, ties to the smaller index) reseeded
/// onto the highest-loss queued rows (reseed_tensors' geometry; normal r of event e is seeded by
/// (reseed.seed, e, r)). A queued row is used once. A reseeded tensor's usage restarts at 0.
class PoolMaintainer {
 public:
  /// State for `pool` (its backend, device and shape) and batches of up to max_batch rows.
  /// Throws InvalidArgument for a bad config.
  PoolMaintainer(const HyperTensorPool& pool, const MaintenanceConfig& config, int64_t max_batch);
  ~PoolMaintainer();
  PoolMaintainer(PoolMaintainer&&) noexcept;
  PoolMaintainer& operator=(PoolMaintainer&&) noexcept;

  /// Call after each HtfrModel::train_step on the model that owns `pool` (HtfrModel::pool()),
  /// with the step's batch and its per-row losses (StepOutputs::row_loss). Targets for reseeding
  /// are batch.target when given (rows x M, used as controls), else the one-hot rows of
  /// batch.target_index scaled by class_value. Asynchronous on `stream`, except that a reseeding
  /// step synchronises it once (its seeded normals are uploaded from the host). Throws
  /// InvalidArgument (shape or batch size), WrongDevice.
  void after_step(HyperTensorPool& pool, const Batch& batch, const float* row_loss,
                  cudaStream_t stream);

  /// Reads the counters and the decayed usage back. Synchronises `stream`.
  MaintenanceStatistics statistics(cudaStream_t stream) const;

  /// Host copies of the decayed usage (N) and the queue's losses (capacity; empty slots and used
  /// rows are -inf). Synchronises `stream`.
  std::vector<float> decayed_usage(cudaStream_t stream) const;
  std::vector<float> queue_losses(cudaStream_t stream) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace htfr

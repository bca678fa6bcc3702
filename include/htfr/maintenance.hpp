// Pool maintenance primitives (white paper §9, §11): moving idle tensors onto rows the field
// predicts badly, and pruning tensors that training never selects.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

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

}  // namespace htfr

// Device side of pool maintenance: reseeding tensors in place, decayed usage, stable orderings
// and the high-error queue.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "htfr/pool.hpp"

namespace htfr::detail {

/// For r < count with index[r] >= 0: tensor index[r] of `pool` gets normal normals[r] (D), offset
/// -normal.x[r], bands [-band, band], temperature tau, controls with every column = targets[r]
/// (M), zeroed statistics and refreshed half copies. All arrays are device memory. Asynchronous.
void launch_reseed(const PoolView& pool, const int64_t* index, const float* normals,
                   const float* x, const float* targets, int64_t count, float band, float tau,
                   cudaStream_t stream);

/// decayed[i] = decay * decayed[i] + (use_count[i] - last[i]); last[i] = use_count[i].
void launch_decay_usage(const float* use_count, float* last, float* decayed, int64_t n,
                        float decay, cudaStream_t stream);

/// Device scratch launch_sorted_order needs for n keys.
std::size_t sorted_order_workspace_bytes(int64_t n);

/// order[0..n) = the indices of keys[0..n) in ascending (or descending) key order, ties to the
/// smaller index (a stable radix sort). Asynchronous.
void launch_sorted_order(const float* keys, int64_t n, bool descending, int32_t* order,
                         void* workspace, std::size_t workspace_bytes, cudaStream_t stream);

/// The high-error queue: capacity slots of x (D), target (M) and loss.
struct QueueView {
  float* x = nullptr;
  float* target = nullptr;
  float* loss = nullptr;
  int64_t capacity = 0;
  int64_t input_dim = 0;
  int64_t output_dim = 0;
};

/// Writes batch rows order[0..count) into slots (head + r) % capacity: the x row, the target row
/// (target, or the one-hot row of target_index times class_value) and the loss. Asynchronous.
void launch_push_rows(const QueueView& q, const int32_t* order, int64_t count, int64_t head,
                      const float* x, const float* target, const int32_t* target_index,
                      float class_value, const float* loss, cudaStream_t stream);

/// For r < count: when slot slots[r] holds a row (finite loss), tensor[r] = least[r], its x and
/// target rows are copied to xs[r] / ts[r], the slot is marked used (loss -inf), the tensor's
/// usage tracking restarts (decayed = last = 0) and *taken grows by one; otherwise tensor[r] =
/// -1. Asynchronous.
void launch_take_rows(const QueueView& q, const int32_t* slots, const int32_t* least,
                      int64_t count, int64_t* tensor, float* xs, float* ts, float* decayed,
                      float* last, unsigned long long* taken, cudaStream_t stream);

}  // namespace htfr::detail

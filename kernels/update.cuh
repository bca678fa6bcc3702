// The deterministic scatter of a training step: (tensor, row) pairs grouped by tensor with a
// radix sort, then one block per touched tensor reduces its rows in a fixed order.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "detail/field_math.hpp"
#include "htfr/pool.hpp"

namespace htfr::detail {

/// Partial sums per pair and column of G (one per warp of the control-update block).
inline constexpr int kDotParts = 8;

/// Everything the update kernels read and write, passed by value. When g_half / x_half are set
/// (bf16/fp16 precision) the update reads them instead of the fp32 arrays: half the bytes, and
/// small enough to stay in L2 at the benchmark shapes; accumulation stays fp32.
struct UpdateArgs {
  PoolView pool;
  StepParams step;
  int k = 0;
  int64_t pairs = 0;                     ///< rows * K
  bool locality_gradient = false;
  const float* x = nullptr;              ///< rows x D
  const float* g = nullptr;              ///< rows x M, dL/dyhat (reduction applied), fp32
  const void* g_half = nullptr;          ///< the same in the pool's half precision, or null
  const void* x_half = nullptr;          ///< x in the pool's half precision, or null
  const float* gy = nullptr;             ///< rows, g . yhat
  const float* row_loss = nullptr;       ///< rows
  const float* distances = nullptr;      ///< pairs, signed d of each active pair
  const ActiveCoef* coef = nullptr;      ///< pairs
  const int32_t* sorted_pairs = nullptr; ///< pairs, pair ids grouped by tensor, rows ascending
  const int32_t* run_tensor = nullptr;   ///< per run: the tensor
  const int32_t* run_offset = nullptr;   ///< per run: first position in sorted_pairs
  const int32_t* run_count = nullptr;    ///< per run: number of pairs
  const int32_t* num_runs = nullptr;     ///< device scalar
  /// pairs x kDotParts x 3: per-warp partial sums of G_j = g_r . C_i[:, j] (old controls)
  float* pair_dots = nullptr;
  PairGradient* pair_grad = nullptr;     ///< pairs
  float* m_controls = nullptr;           ///< Adam state (null exactly when SGD), as the pool lays out
  float* v_controls = nullptr;
  float* m_normals = nullptr;
  float* v_normals = nullptr;
  float* m_scalars = nullptr;            ///< 2N: offsets then temperatures
  float* v_scalars = nullptr;
};

/// Scratch bytes launch_group_pairs needs for `pairs` pairs over `n` tensors.
std::size_t group_pairs_temp_bytes(int64_t pairs, int64_t n);

/// Groups the pair ids 0..pairs) by tensor (stable: rows ascending inside a group) and writes the
/// runs. `sorted_keys`, `pair_ids`, `run_*` hold `pairs` entries. Asynchronous on `stream`.
void launch_group_pairs(const int32_t* indices, int64_t pairs, int64_t n, void* temp,
                        std::size_t temp_bytes, int32_t* pair_ids, int32_t* sorted_keys,
                        int32_t* sorted_pairs, int32_t* run_tensor, int32_t* run_count,
                        int32_t* run_offset, int32_t* num_runs, cudaStream_t stream);

/// Per touched tensor: pair_dots from the old controls, then the controls' optimiser step (and
/// their half copy). `max_runs` bounds the number of runs. Asynchronous.
void launch_control_update(const UpdateArgs& args, int64_t max_runs, cudaStream_t stream);

/// pair_grad[p] from coef, pair_dots and gy. Asynchronous.
void launch_pair_gradients(const UpdateArgs& args, cudaStream_t stream);

/// dx (rows x D) = sum_k e_exact(r, k) n_{i_rk}, with the normals before this step's update.
void launch_input_grad(const UpdateArgs& args, const int32_t* indices, int64_t rows, float* dx,
                       cudaStream_t stream);

/// Per touched tensor: normal step (clipped, renormalised), offset, temperature, bands and
/// statistics; refreshes the normals' half copy. Asynchronous.
void launch_geometry_update(const UpdateArgs& args, int64_t max_runs, cudaStream_t stream);

}  // namespace htfr::detail

// Locality weights, interpolation coefficients and the blend of the active tensors' local
// interpolants into the M outputs.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "detail/field_math.hpp"
#include "htfr/pool.hpp"

namespace htfr::detail {

/// One fused kernel, one warp per (row, output tile): the row's locality weights and
/// interpolation coefficients from its selection (indices, signed distances: rows x K), then
/// y[r, m] = sum_k w_rk sum_j alpha_rkj C_{i_rk}[m, j]. Reads the controls' half copy when
/// `precision` is bf16/fp16, the fp32 masters otherwise; accumulates in fp32. When `coef` is not
/// null the coefficients are also written there (rows x K), for the training step. Asynchronous.
void launch_blend(const FieldParams& params, int64_t rows, int k, const int32_t* indices,
                  const float* distances, const PoolView& pool, Precision precision,
                  ActiveCoef* coef, float* y, cudaStream_t stream);

}  // namespace htfr::detail

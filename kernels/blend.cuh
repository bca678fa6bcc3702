// Locality weights, interpolation coefficients and the blend of the active tensors' local
// interpolants into the M outputs.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "detail/field_math.hpp"
#include "htfr/pool.hpp"

namespace htfr::detail {

/// coef[r*K + k] = coefficients of row r's k-th active tensor (weights, their derivatives,
/// alpha and d alpha / dd), from the selection. Asynchronous on `stream`.
void launch_row_coefficients(const FieldParams& params, int64_t rows, int k,
                             const int32_t* indices, const float* distances, const PoolView& pool,
                             ActiveCoef* coef, cudaStream_t stream);

/// y[r, m] = sum_k w_rk sum_j alpha_rkj C_{i_rk}[m, j]. Reads the controls' half copy when
/// `precision` is bf16/fp16, the fp32 masters otherwise; accumulates in fp32. Asynchronous.
void launch_blend(int64_t rows, int k, const int32_t* indices, const ActiveCoef* coef,
                  const PoolView& pool, Precision precision, float* y, cudaStream_t stream);

}  // namespace htfr::detail

// Signed-distance dot products of a whole batch against every normal as one cuBLAS GEMM.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "htfr/config.hpp"
#include "htfr/pool.hpp"

typedef struct cublasContext* cublasHandle_t;

namespace htfr::detail {

/// dots (rows x N, row-major) = x (rows x D) . normals^T, fp32 accumulation. The offsets are not
/// added here: the selection kernel adds them as it reads each dot. With bf16/fp16 `precision` the
/// normals' half copy is used and x is first converted into `x_half` (rows x D elements of 2
/// bytes); tf32 lets cuBLAS use TF32 tensor cores on fp32 data. Asynchronous on `stream`.
void launch_distance_gemm(cublasHandle_t handle, const float* x, void* x_half, int64_t rows,
                          const PoolView& pool, Precision precision, float* dots,
                          cudaStream_t stream);

}  // namespace htfr::detail

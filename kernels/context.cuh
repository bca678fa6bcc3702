// Launchers of the HFT context-feature kernels (formulas in src/detail/context_math.hpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "detail/context_math.hpp"
#include "htfr/context.hpp"

namespace htfr::detail {

/// raw (rows x stage1_dim) = Stage 1 features. Asynchronous on `stream`.
void launch_context_stage1(const ContextParams& c, const float* table, const ContextRows& rows,
                           float* raw, cudaStream_t stream);
/// raw (rows x stage2_dim) = Stage 2 features (`embedding_rows` may be null). Asynchronous.
void launch_context_stage2(const ContextParams& c, const float* table, const ContextRows& rows,
                           const float* embedding_rows, float* raw, cudaStream_t stream);
/// grad_embedding (rows x H) = grad_raw[:, :H] * factor. Asynchronous on `stream`.
void launch_context_stage2_grad(const float* grad_raw, int64_t rows, int64_t stage2_dim, int64_t H,
                                float factor, float* grad_embedding, cudaStream_t stream);

}  // namespace htfr::detail

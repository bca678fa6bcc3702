// Fast Walsh–Hadamard transform and block SRHT on the device: host launchers over the templated
// kernels of hadamard.cu.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "htfr/pool.hpp"

namespace htfr::detail {

/// log2 of the largest transform one thread block holds in shared memory; larger sizes run as a
/// 2^12-point pass over contiguous chunks followed by a strided pass.
inline constexpr int kFwhtMaxFusedLog = 15;
inline constexpr int kFwhtMaxLog = 17;

/// Device parameters of a block SRHT: input_dim coordinates, zero-padded to num_blocks blocks of
/// block_size = 2^log_block; block b keeps m_b = output_dim / num_blocks (+1 for the first
/// output_dim % num_blocks blocks) coordinates, chosen by `sample` (indices within the block, for
/// the block's outputs in order), scaled by 1/sqrt(m_b); `signs` holds the +-1 diagonal, one per
/// padded coordinate.
struct SrhtView {
  int64_t input_dim = 0;
  int64_t output_dim = 0;
  int64_t num_blocks = 0;
  int log_block = 0;
  const int8_t* signs = nullptr;
  const int32_t* sample = nullptr;
};

/// y = H_n x for `rows` rows of n = 2^log_n values (unnormalised, entries +-1); x and y may be the
/// same array when their types agree. x_type / y_type: f32 or bf16; arithmetic in fp32.
/// Asynchronous on `stream` (sizes above 2^15 take stream-ordered scratch memory).
void launch_fwht(const void* x, DType x_type, void* y, DType y_type, int64_t rows, int log_n,
                 cudaStream_t stream);

/// y (rows x output_dim, y_type f32 or bf16) = SRHT x (rows x input_dim, fp32). Asynchronous.
void launch_srht(const SrhtView& srht, const float* x, void* y, DType y_type, int64_t rows,
                 cudaStream_t stream);

/// x (rows x input_dim, fp32) = SRHT^T y (rows x output_dim, fp32). Asynchronous.
void launch_srht_adjoint(const SrhtView& srht, const float* y, float* x, int64_t rows,
                         cudaStream_t stream);

}  // namespace htfr::detail

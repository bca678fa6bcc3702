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

/// Device scratch (bytes) a transform of `items` rows of 2^log_n values needs: an fp32 copy of the
/// rows above 2^15, nothing otherwise.
std::size_t fwht_workspace_bytes(int64_t items, int log_n);

/// y = H_n x for `rows` rows of n = 2^log_n values (unnormalised, entries +-1); x and y may be the
/// same array when their types agree. x_type / y_type: f32 or bf16; arithmetic in fp32. `work`
/// (fwht_workspace_bytes, may be null): above 2^15 an fp32 y serves as scratch and a bf16 y takes
/// stream-ordered scratch memory. Asynchronous on `stream`.
void launch_fwht(const void* x, DType x_type, void* y, DType y_type, int64_t rows, int log_n,
                 float* work, cudaStream_t stream);

/// y (rows x output_dim, y_type f32 or bf16) = SRHT x (rows x input_dim, fp32). `work` holds
/// fwht_workspace_bytes(rows * num_blocks, log_block) (unused up to 2^15). Asynchronous.
void launch_srht(const SrhtView& srht, const float* x, void* y, DType y_type, int64_t rows,
                 float* work, cudaStream_t stream);

/// x (rows x input_dim, fp32) = SRHT^T y (rows x output_dim, fp32); `work` as for launch_srht.
/// Asynchronous.
void launch_srht_adjoint(const SrhtView& srht, const float* y, float* x, int64_t rows,
                         float* work, cudaStream_t stream);

}  // namespace htfr::detail

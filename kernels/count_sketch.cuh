// CountSketch on the device: dense and sparse (CSR) inputs, and the adjoint. Deterministic: every
// output is summed in a fixed order, without atomics.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace htfr::detail {

/// Inputs per chunk of the shared-memory dense kernel.
inline constexpr int64_t kCountSketchChunk = 4096;

/// Device parameters of a CountSketch from input_dim to output_dim: `bucket`/`sign` per input
/// coordinate; the inverse map as CSR (the inputs of output b are members[member_start[b] ..
/// member_start[b+1]), in increasing order); and, per chunk of kCountSketchChunk inputs, the
/// chunk's inputs sorted by (bucket, input): chunk_bucket[e] and chunk_entry[e] = sign * (1 +
/// input index within the chunk).
struct CountSketchView {
  int64_t input_dim = 0;
  int64_t output_dim = 0;
  const int32_t* bucket = nullptr;
  const int8_t* sign = nullptr;
  const int64_t* member_start = nullptr;
  const int32_t* members = nullptr;
  const int32_t* chunk_bucket = nullptr;
  const int32_t* chunk_entry = nullptr;
};

/// y (rows x output_dim) = S x (rows x input_dim). Asynchronous on `stream`.
void launch_count_sketch(const CountSketchView& cs, const float* x, float* y, int64_t rows,
                         cudaStream_t stream);

/// y (rows x output_dim) = S x for CSR rows: row r holds entries row_offsets[r] ..
/// row_offsets[r+1] of indices/values (validated by the caller); repeated indices add up, in
/// entry order. Asynchronous on `stream`.
void launch_count_sketch_sparse(const CountSketchView& cs, const int64_t* row_offsets,
                                const int32_t* indices, const float* values, float* y,
                                int64_t rows, cudaStream_t stream);

/// x (rows x input_dim) = S^T y (rows x output_dim). Asynchronous on `stream`.
void launch_count_sketch_adjoint(const CountSketchView& cs, const float* y, float* x,
                                 int64_t rows, cudaStream_t stream);

/// Sets *flag to 1 unless row_offsets[0] = 0, row_offsets is non-decreasing and
/// row_offsets[rows] = nnz. Asynchronous on `stream`.
void launch_check_row_offsets(const int64_t* row_offsets, int64_t rows, int64_t nnz, int* flag,
                              cudaStream_t stream);

}  // namespace htfr::detail

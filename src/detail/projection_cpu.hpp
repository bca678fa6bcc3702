// The projection stack's CPU reference: straightforward loops, the oracle for the GPU kernels and
// the implementation for hosts without a GPU. All arrays are host arrays, row-major.
#pragma once

#include <cstdint>
#include <vector>

namespace htfr::detail {

/// bf16 bits <-> float (round to nearest even, NaN kept quiet).
float bf16_to_float(uint16_t bits);
uint16_t float_to_bf16(float value);

/// In-place unnormalised FWHT of `rows` rows of n (a power of two) values.
void fwht_cpu(float* data, int64_t rows, int64_t n);

void count_sketch_cpu(const int32_t* bucket, const int8_t* sign, int64_t input_dim,
                      int64_t output_dim, const float* x, float* y, int64_t rows);
void count_sketch_sparse_cpu(const int32_t* bucket, const int8_t* sign, int64_t output_dim,
                             const int64_t* row_offsets, const int32_t* indices,
                             const float* values, float* y, int64_t rows);
void count_sketch_adjoint_cpu(const int32_t* bucket, const int8_t* sign, int64_t input_dim,
                              int64_t output_dim, const float* y, float* x, int64_t rows);

/// Block SRHT and its adjoint; see BlockSrht for the layout of signs and sample.
void srht_cpu(const int8_t* signs, const int32_t* sample, int64_t input_dim, int64_t output_dim,
              int64_t block_size, const float* x, float* y, int64_t rows);
void srht_adjoint_cpu(const int8_t* signs, const int32_t* sample, int64_t input_dim,
                      int64_t output_dim, int64_t block_size, const float* y, float* x,
                      int64_t rows);

/// Output range [start, start + count) of SRHT block `block`.
void srht_block_outputs(int64_t output_dim, int64_t num_blocks, int64_t block, int64_t& start,
                        int64_t& count);

/// Eigen-decomposition of the symmetric dim x dim matrix `a` (row-major, destroyed) by cyclic
/// Jacobi rotations: eigenvalues in `values`, eigenvectors as the rows of `vectors`, sorted by
/// decreasing eigenvalue.
void symmetric_eigen_cpu(std::vector<double>& a, int64_t dim, std::vector<double>& values,
                         std::vector<double>& vectors);

/// Sample mean (dim) and covariance (dim x dim, divided by rows - 1) of x (rows x dim).
void mean_covariance_cpu(const float* x, int64_t rows, int64_t dim, std::vector<double>& mean,
                         std::vector<double>& cov);

/// y (rows x out) = x (rows x in) . w^T - bias, w out x in row-major.
void affine_cpu(const float* w, const float* bias, int64_t out, int64_t in, const float* x,
                float* y, int64_t rows);
/// x (rows x in) = y (rows x out) . w.
void affine_adjoint_cpu(const float* w, int64_t out, int64_t in, const float* y, float* x,
                        int64_t rows);

}  // namespace htfr::detail

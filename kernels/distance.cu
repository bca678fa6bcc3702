// The distance GEMM: one cuBLAS call per batch, operands in the configured precision.
#include <cublas_v2.h>

#include "detail/check.hpp"
#include "distance.cuh"
#include "pool_ops.cuh"

namespace htfr::detail {

void launch_distance_gemm(cublasHandle_t handle, const float* x, void* x_half, int64_t rows,
                          const PoolView& pool, Precision precision, float* dots,
                          cudaStream_t stream) {
  const int64_t n = pool.num_tensors, d = pool.input_dim;
  HTFR_REQUIRE(n < (int64_t{1} << 31) && d < (int64_t{1} << 31) && rows < (int64_t{1} << 31),
               InvalidArgument, "distance GEMM sizes must fit in 32-bit integers");
  HTFR_CUBLAS_CHECK(cublasSetStream(handle, stream));
  const float alpha = 1.0f, beta = 0.0f;
  const void* a = pool.normals;
  const void* b = x;
  cudaDataType_t type = CUDA_R_32F;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  if (precision == Precision::bf16 || precision == Precision::fp16) {
    HTFR_REQUIRE(pool.normals_half != nullptr && pool.half_precision == precision,
                 InvalidArgument, "the pool has no " << to_string(precision) << " copy of its normals");
    launch_to_half(x, x_half, rows * d, precision, stream);
    a = pool.normals_half;
    b = x_half;
    type = precision == Precision::bf16 ? CUDA_R_16BF : CUDA_R_16F;
  } else if (precision == Precision::tf32) {
    compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  }
  // Column-major view: normals are D x N (lda = D), x is D x rows, dots are N x rows (ldc = N),
  // i.e. the row-major rows x N matrix the selection reads.
  HTFR_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n),
                                 static_cast<int>(rows), static_cast<int>(d), &alpha, a, type,
                                 static_cast<int>(d), b, type, static_cast<int>(d), &beta, dots,
                                 CUDA_R_32F, static_cast<int>(n), compute, CUBLAS_GEMM_DEFAULT));
}

}  // namespace htfr::detail

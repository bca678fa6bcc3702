// One check per API family: failures become typed exceptions that name the call, file and line.
#pragma once

#include <cuda_runtime_api.h>

#include <sstream>
#include <string>

#include "htfr/error.hpp"

namespace htfr::detail {

/// Throws the exception that fits `status` (OutOfMemory, NoDevice or CudaError).
void throw_cuda_error(cudaError_t status, const char* expr, const char* file, int line);
/// Throws CudaError for a failed cuBLAS status (given as int to keep cuBLAS out of this header).
void throw_cublas_error(int status, const char* expr, const char* file, int line);
/// Throws CudaError (or OutOfMemory) for a failed cuRAND status.
void throw_curand_error(int status, const char* expr, const char* file, int line);
/// Throws CudaError (or OutOfMemory) for a failed cuSOLVER status.
void throw_cusolver_error(int status, const char* expr, const char* file, int line);

}  // namespace htfr::detail

#define HTFR_CUDA_CHECK(expr)                                                \
  do {                                                                       \
    const cudaError_t htfr_status_ = (expr);                                 \
    if (htfr_status_ != cudaSuccess)                                         \
      ::htfr::detail::throw_cuda_error(htfr_status_, #expr, __FILE__, __LINE__); \
  } while (0)

/// After a kernel launch: reports configuration errors of the launch itself.
#define HTFR_LAUNCH_CHECK() HTFR_CUDA_CHECK(cudaGetLastError())

#define HTFR_CUBLAS_CHECK(expr)                                                    \
  do {                                                                             \
    const int htfr_status_ = static_cast<int>(expr);                               \
    if (htfr_status_ != 0)                                                         \
      ::htfr::detail::throw_cublas_error(htfr_status_, #expr, __FILE__, __LINE__); \
  } while (0)

#define HTFR_CURAND_CHECK(expr)                                                    \
  do {                                                                             \
    const int htfr_status_ = static_cast<int>(expr);                               \
    if (htfr_status_ != 0)                                                         \
      ::htfr::detail::throw_curand_error(htfr_status_, #expr, __FILE__, __LINE__); \
  } while (0)

#define HTFR_CUSOLVER_CHECK(expr)                                                    \
  do {                                                                               \
    const int htfr_status_ = static_cast<int>(expr);                                 \
    if (htfr_status_ != 0)                                                           \
      ::htfr::detail::throw_cusolver_error(htfr_status_, #expr, __FILE__, __LINE__); \
  } while (0)

/// Precondition: throws `ErrorType` with the streamed message when `cond` is false.
#define HTFR_REQUIRE(cond, ErrorType, message) \
  do {                                         \
    if (!(cond)) {                             \
      std::ostringstream htfr_msg_;            \
      htfr_msg_ << message;                    \
      throw ErrorType(htfr_msg_.str());        \
    }                                          \
  } while (0)

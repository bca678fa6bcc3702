// Translation of CUDA-family status codes into htfr's typed exceptions.
#include <cublas_api.h>
#include <curand.h>
#include <cusolver_common.h>

#include "detail/check.hpp"

namespace htfr::detail {

namespace {
std::string where(const char* expr, const char* file, int line) {
  std::ostringstream os;
  os << expr << " at " << file << ":" << line;
  return os.str();
}
}  // namespace

void throw_cuda_error(cudaError_t status, const char* expr, const char* file, int line) {
  const std::string msg = std::string(cudaGetErrorName(status)) + " (" +
                          cudaGetErrorString(status) + ") in " + where(expr, file, line);
  (void)cudaGetLastError();  // clear a sticky-free error so the next call starts clean
  switch (status) {
    case cudaErrorMemoryAllocation:
      throw OutOfMemory("CUDA out of memory: " + msg);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInvalidDevice:
      throw NoDevice("no usable CUDA device: " + msg);
    default:
      throw CudaError("CUDA error " + msg);
  }
}

void throw_cublas_error(int status, const char* expr, const char* file, int line) {
  const auto s = static_cast<cublasStatus_t>(status);
  const std::string msg = std::string("cuBLAS error ") + cublasGetStatusName(s) + " (" +
                          cublasGetStatusString(s) + ") in " + where(expr, file, line);
  if (s == CUBLAS_STATUS_ALLOC_FAILED) throw OutOfMemory(msg);
  throw CudaError(msg);
}

void throw_curand_error(int status, const char* expr, const char* file, int line) {
  const std::string msg =
      "cuRAND error " + std::to_string(status) + " in " + where(expr, file, line);
  if (status == CURAND_STATUS_ALLOCATION_FAILED) throw OutOfMemory(msg);
  throw CudaError(msg);
}

void throw_cusolver_error(int status, const char* expr, const char* file, int line) {
  const std::string msg =
      "cuSOLVER error " + std::to_string(status) + " in " + where(expr, file, line);
  if (status == CUSOLVER_STATUS_ALLOC_FAILED) throw OutOfMemory(msg);
  throw CudaError(msg);
}

}  // namespace htfr::detail

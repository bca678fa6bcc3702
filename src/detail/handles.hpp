// Owning handles of the CUDA math libraries, so a failed construction leaks nothing.
#pragma once

#include <cublas_v2.h>
#include <cusolverDn.h>

#include "detail/check.hpp"

namespace htfr::detail {

/// Owning cuBLAS handle (on the current device).
struct CublasHandle {
  cublasHandle_t handle = nullptr;
  CublasHandle() { HTFR_CUBLAS_CHECK(cublasCreate(&handle)); }
  ~CublasHandle() { (void)cublasDestroy(handle); }
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
};

/// Owning cuSOLVER dense handle (on the current device).
struct CusolverHandle {
  cusolverDnHandle_t handle = nullptr;
  CusolverHandle() { HTFR_CUSOLVER_CHECK(cusolverDnCreate(&handle)); }
  ~CusolverHandle() { (void)cusolverDnDestroy(handle); }
  CusolverHandle(const CusolverHandle&) = delete;
  CusolverHandle& operator=(const CusolverHandle&) = delete;
};

}  // namespace htfr::detail

// One spelling for functions compiled for both the host and the device, so CPU references and
// CUDA kernels can share their formulas.
#pragma once

#if defined(__CUDACC__)
#define HTFR_HD __host__ __device__ __forceinline__
#else
#define HTFR_HD inline
#endif

// Pairs of 16-bit floats packed in 32-bit words: the 8-byte loads and stores of four values.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace htfr::detail {

__device__ __forceinline__ float2 to_float2(__nv_bfloat162 v) { return __bfloat1622float2(v); }
__device__ __forceinline__ float2 to_float2(__half2 v) { return __half22float2(v); }

/// The four values of an 8-byte word holding two pairs of type H2, as floats.
template <typename H2>
__device__ __forceinline__ void unpack_half4(uint2 raw, float* out) {
  const float2 lo = to_float2(*reinterpret_cast<const H2*>(&raw.x));
  const float2 hi = to_float2(*reinterpret_cast<const H2*>(&raw.y));
  out[0] = lo.x;
  out[1] = lo.y;
  out[2] = hi.x;
  out[3] = hi.y;
}

/// Two values rounded to the half type T, packed as its pair.
template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float a, float b);
template <>
__device__ __forceinline__ uint32_t pack_pair<__nv_bfloat16>(float a, float b) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack_pair<__half>(float a, float b) {
  const __half2 v = __floats2half2_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&v);
}

}  // namespace htfr::detail

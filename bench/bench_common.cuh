// Timing and data helpers shared by the benchmarks: CUDA-event medians on the benchmark's stream,
// device buffers of random data, the copy-bandwidth ceiling and JSON string escaping.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "detail/check.hpp"

namespace htfr::bench {

/// Median and p90 of the per-iteration times of `fn` on `stream`, in milliseconds.
struct Timing {
  double median_ms = 0, p90_ms = 0, min_ms = 0;
};

inline Timing time_op(cudaStream_t stream, int warmup, int iters, const std::function<void()>& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaEvent_t start, stop;
  HTFR_CUDA_CHECK(cudaEventCreate(&start));
  HTFR_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    HTFR_CUDA_CHECK(cudaEventRecord(start, stream));
    fn();
    HTFR_CUDA_CHECK(cudaEventRecord(stop, stream));
    HTFR_CUDA_CHECK(cudaEventSynchronize(stop));
    float t = 0;
    HTFR_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(t);
  }
  HTFR_CUDA_CHECK(cudaEventDestroy(start));
  HTFR_CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms[std::min(ms.size() - 1, ms.size() * 9 / 10)], ms.front()};
}

/// Device buffer of random normal floats (never zeros: they hide unwritten outputs and can run
/// faster than real data).
struct RandomBuffer {
  float* ptr = nullptr;
  RandomBuffer(std::size_t n, uint64_t seed, cudaStream_t stream) {
    HTFR_CUDA_CHECK(cudaMalloc(&ptr, std::max<std::size_t>(n, 2) * sizeof(float)));
    std::vector<float> host(n);
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (auto& v : host) {  // Box-Muller on a simple LCG: fast enough for a few hundred MB
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      const double u1 = ((s >> 11) + 1.0) / 9007199254740993.0;
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      const double u2 = (s >> 11) / 9007199254740992.0;
      v = static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
    }
    HTFR_CUDA_CHECK(
        cudaMemcpyAsync(ptr, host.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream));
    HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  ~RandomBuffer() { cudaFree(ptr); }
  RandomBuffer(const RandomBuffer&) = delete;
  RandomBuffer& operator=(const RandomBuffer&) = delete;
};

/// Device-to-device copy bandwidth (bytes read + written per second, in GB/s) over 1 GiB.
inline double measure_copy_gbps(cudaStream_t stream) {
  const std::size_t bytes = std::size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  HTFR_CUDA_CHECK(cudaMalloc(&a, bytes));
  HTFR_CUDA_CHECK(cudaMalloc(&b, bytes));
  HTFR_CUDA_CHECK(cudaMemsetAsync(a, 1, bytes, stream));
  const Timing t = time_op(stream, 3, 20, [&] {
    HTFR_CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream));
  });
  HTFR_CUDA_CHECK(cudaFree(a));
  HTFR_CUDA_CHECK(cudaFree(b));
  return 2.0 * bytes / (t.median_ms * 1e-3) / 1e9;
}

inline std::string json_escape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') o += '\\';
    o += ch;
  }
  return o;
}

}  // namespace htfr::bench

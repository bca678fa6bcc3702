// Per-row operations of the HFT (gathers, teacher probabilities, the Stage 1 history ring,
// metrics, norms) on either backend: the CUDA kernels of kernels/hft_rows.cu and their CPU twins,
// the straightforward loops. Shared by training, evaluation and inference sessions.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "detail/check.hpp"
#include "detail/device.hpp"
#include "htfr/capture.hpp"
#include "htfr/config.hpp"
#include "../kernels/hft_rows.cuh"
#include "../kernels/kmeans.cuh"

namespace htfr::detail {

/// Runs the per-row kernels on either backend (the CPU twins are the straightforward loops).
struct RowOps {
  Backend backend;
  cudaStream_t stream;

  void gather(const float* src, int64_t width, const int64_t* index, int64_t rows,
              float* dst) const {
    if (backend == Backend::cuda) return launch_gather_rows(src, width, index, rows, dst, stream);
    for (int64_t r = 0; r < rows; ++r) std::copy_n(src + index[r] * width, width, dst + r * width);
  }
  void gather_int(const int32_t* src, const int64_t* index, int64_t rows, int32_t* dst) const {
    if (backend == Backend::cuda) return launch_gather_int(src, index, rows, dst, stream);
    for (int64_t r = 0; r < rows; ++r) dst[r] = src[index[r]];
  }
  void teacher_probs(const uint16_t* lp, int64_t width, const int64_t* index, int64_t rows,
                     float* probs) const {
    if (backend == Backend::cuda)
      return launch_teacher_probs(lp, width, index, rows, probs, stream);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < width; ++c)
        probs[r * width + c] = std::exp(half_to_float(lp[index[r] * width + c]));
  }
  void history_write(const float* y, const int32_t* streams, const int32_t* positions,
                     int64_t rows, int64_t R, int64_t H, float* ring) const {
    if (backend == Backend::cuda)
      return launch_history_write(y, streams, positions, rows, R, H, ring, stream);
    if (R == 0) return;
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(y + r * H, H, ring + (int64_t(streams[r]) * R + positions[r] % R) * H);
  }
  void axpy(const float* a, float alpha, const float* b, int64_t n, float* out) const {
    if (backend == Backend::cuda) return launch_axpy(a, alpha, b, n, out, stream);
    for (int64_t i = 0; i < n; ++i) out[i] = a[i] + alpha * b[i];
  }
  void row_metrics(const float* logits, const uint16_t* lp, const int64_t* index,
                   const int32_t* target, int64_t rows, int64_t width, float* m) const {
    if (backend == Backend::cuda)
      return launch_row_metrics(logits, lp, index, target, rows, width, m, stream);
    for (int64_t r = 0; r < rows; ++r) {
      const float* z = logits + r * width;
      const uint16_t* q = lp + index[r] * width;
      int64_t s_arg = 0, t_arg = 0;
      for (int64_t c = 1; c < width; ++c) {
        if (z[c] > z[s_arg]) s_arg = c;
        if (half_to_float(q[c]) > half_to_float(q[t_arg])) t_arg = c;
      }
      double sum = 0;
      for (int64_t c = 0; c < width; ++c) sum += std::exp(double(z[c]) - z[s_arg]);
      const double lse = z[s_arg] + std::log(sum);
      double kl = 0;
      for (int64_t c = 0; c < width; ++c) {
        const double lq = half_to_float(q[c]), pq = std::exp(lq);
        if (pq > 0) kl += pq * (lq - (z[c] - lse));
      }
      float* out = m + r * kRowMetrics;
      out[kStudentLogp] = static_cast<float>(z[target[r]] - lse);
      out[kTeacherLogp] = half_to_float(q[target[r]]);
      out[kKl] = static_cast<float>(kl);
      out[kTop1] = s_arg == t_arg ? 1.0f : 0.0f;
      out[kTargetTop1] = s_arg == target[r] ? 1.0f : 0.0f;
    }
  }
  void row_cosine(const float* y, const float* t, int64_t rows, int64_t width, float* c) const {
    if (backend == Backend::cuda) return launch_row_cosine(y, t, rows, width, c, stream);
    for (int64_t r = 0; r < rows; ++r) {
      double yy = 0, tt = 0, yt = 0;
      for (int64_t k = 0; k < width; ++k) {
        const double a = y[r * width + k], b = t[r * width + k];
        yy += a * a;
        tt += b * b;
        yt += a * b;
      }
      c[r] = (yy > 0 && tt > 0) ? static_cast<float>(yt / std::sqrt(yy * tt)) : 0.0f;
    }
  }
  void row_norm(const float* v, int64_t rows, int64_t width, float scale, float* norm) const {
    if (backend == Backend::cuda) return launch_row_norm(v, rows, width, scale, norm, stream);
    for (int64_t r = 0; r < rows; ++r) {
      double ss = 0;
      for (int64_t k = 0; k < width; ++k) ss += double(v[r * width + k]) * v[r * width + k];
      norm[r] = static_cast<float>(scale * std::sqrt(ss));
    }
  }
  void centred_logprobs(const uint16_t* lp, int64_t width, const int64_t* index, int64_t rows,
                        float floor, float* out) const {
    if (backend == Backend::cuda)
      return launch_centred_logprobs(lp, width, index, rows, floor, out, stream);
    for (int64_t r = 0; r < rows; ++r) {
      const uint16_t* q = lp + index[r] * width;
      double sum = 0;
      for (int64_t c = 0; c < width; ++c) sum += std::max(half_to_float(q[c]), floor);
      const float mean = static_cast<float>(sum / width);
      for (int64_t c = 0; c < width; ++c)
        out[r * width + c] = std::max(half_to_float(q[c]), floor) - mean;
    }
  }
};

inline void sync(Backend backend, int device, cudaStream_t stream) {
  if (backend != Backend::cuda) return;
  DeviceGuard guard(device);
  HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace htfr::detail

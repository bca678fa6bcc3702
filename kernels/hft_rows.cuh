// Row-level helper kernels of the HFT trainer and evaluator: gathering a batch's class indices
// and teacher distributions from a device-resident capture (float rows go through
// launch_gather_rows of kmeans.cuh), the Stage 1 history ring, per-row evaluation metrics, and
// the row norms and centred teacher logits of training diagnostics and data initialisation.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace htfr::detail {

/// Per-row metrics written by launch_row_metrics, kRowMetrics floats per row.
enum RowMetric { kStudentLogp = 0, kTeacherLogp, kKl, kTop1, kTargetTop1, kRowMetrics };

/// dst[r] = src[index[r]]. Asynchronous on `stream`.
void launch_gather_int(const int32_t* src, const int64_t* index, int64_t rows, int32_t* dst,
                       cudaStream_t stream);
/// probs[r, c] = exp(logprobs[index[r], c]) for binary16 log-probabilities. Asynchronous.
void launch_teacher_probs(const uint16_t* logprobs, int64_t width, const int64_t* index,
                          int64_t rows, float* probs, cudaStream_t stream);
/// ring[stream[r]][position[r] mod R] = y[r] (H floats). Asynchronous on `stream`.
void launch_history_write(const float* y, const int32_t* streams, const int32_t* positions,
                          int64_t rows, int64_t R, int64_t H, float* ring, cudaStream_t stream);
/// out = a + alpha * b (n floats). Asynchronous on `stream`.
void launch_axpy(const float* a, float alpha, const float* b, int64_t n, float* out,
                 cudaStream_t stream);
/// Per row r (one block each): student log-softmax of logits at target[r], teacher log-prob at
/// target, KL(teacher || student), argmax agreement, student argmax == target; written to
/// metrics[r * kRowMetrics + ...]. Teacher rows are logprobs[index[r]]. Asynchronous.
void launch_row_metrics(const float* logits, const uint16_t* logprobs, const int64_t* index,
                        const int32_t* target, int64_t rows, int64_t width, float* metrics,
                        cudaStream_t stream);
/// cosine[r] = <y[r], t[r]> / (|y[r]| |t[r]|) (0 when either is zero). Asynchronous.
void launch_row_cosine(const float* y, const float* t, int64_t rows, int64_t width, float* cosine,
                       cudaStream_t stream);
/// norm[r] = scale * |v[r]| (L2 norm of row r of v, rows x width). Asynchronous on `stream`.
void launch_row_norm(const float* v, int64_t rows, int64_t width, float scale, float* norm,
                     cudaStream_t stream);
/// out[r, c] = l[r, c] - mean_c l[r, c] with l[r, c] = max(logprobs[index[r], c], floor) for
/// binary16 log-probabilities: the teacher's log-probabilities as logits centred per row, the
/// floor keeping saturated (-65504) entries finite. Asynchronous on `stream`.
void launch_centred_logprobs(const uint16_t* logprobs, int64_t width, const int64_t* index,
                             int64_t rows, float floor, float* out, cudaStream_t stream);

}  // namespace htfr::detail

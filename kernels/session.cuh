// Launchers of the inference-session kernels: appending each session's token to its rolling
// buffer, and sampling the next token from the logits (formulas in src/detail/sampling.hpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "detail/sampling.hpp"

namespace htfr::detail {

/// Per session s: class = compact_map[tokens[s]] (unk for ids outside [0, teacher_vocab)),
/// ring[s * ring_size + count[s] % ring_size] = class, position[s] = count[s], ++count[s].
void launch_session_advance(const int32_t* tokens, int64_t sessions, const int32_t* compact_map,
                            int64_t teacher_vocab, int32_t unk, int32_t* ring, int64_t ring_size,
                            int32_t* count, int32_t* position, cudaStream_t stream);

/// Per session s: samples a class from logits[s] (sessions x V) with `p`, draw number
/// count[s], and writes it to next_class[s] (may be null) and its teacher id
/// class_token[class] to next[s] (may be null).
void launch_session_sample(const float* logits, int64_t sessions, int64_t V, SampleParams p,
                           const int32_t* count, const int32_t* class_token, int32_t* next,
                           int32_t* next_class, cudaStream_t stream);

}  // namespace htfr::detail

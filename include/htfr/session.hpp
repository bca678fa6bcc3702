// Teacher-free incremental inference with a trained HyperField Transformer (HFT note §7–8):
// sessions that each keep a rolling buffer of their last W tokens and the ring of Stage 1's own
// earlier outputs, and per arriving token run Stage 1 then Stage 2 to the compact logits of the
// next token, optionally sampling it on the device.
//
// Memory. On Backend::cuda every array argument of step/sample lives in device memory of the
// model's device and calls are asynchronous on the given stream; on Backend::cpu they are host
// arrays and calls return when done.
//
// CUDA graphs. With `use_graph` the first step at a given set of arguments runs eagerly (it sizes
// every scratch buffer), the second captures the whole step into a CUDA graph, and later steps
// replay it: one launch per token and no host synchronisation. Changing the argument pointers or
// the sampling settings captures a new graph.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "htfr/config.hpp"
#include "htfr/hft.hpp"

namespace htfr {

/// How a session turns logits into a token.
struct SamplingConfig {
  float temperature = 0.0f;  ///< 0: greedy (argmax, lowest class on ties); > 0: softmax(z / T)
  float top_p = 1.0f;        ///< nucleus: keep the most likely classes holding >= top_p of the mass
  bool allow_unk = false;    ///< false: the unk class is never sampled
  /// Throws InvalidArgument when temperature < 0 or top_p outside (0, 1] (or either not finite).
  void validate() const;
};

struct HftSessionOptions {
  int64_t sessions = 1;            ///< independent sequences stepped together
  uint64_t seed = 0;               ///< sampling: session s at its step n draws from (seed, s, n)
  bool use_graph = true;           ///< CUDA backend: replay each step as one CUDA graph
  /// Tokens a session may take before it has to be reset (positions are int32 on the device).
  int64_t max_positions = (int64_t{1} << 31) - 1;
  /// Throws InvalidArgument naming the first field out of range.
  void validate() const;
};

/// A batch of independent inference sessions over one HFT model, which the session owns (its
/// scratch buffers and CUDA graphs must not be touched by anyone else).
class HftSession {
 public:
  /// Takes the model. Throws InvalidArgument (bad options), OutOfMemory.
  HftSession(HftModel model, const HftSessionOptions& options);
  /// Loads a checkpoint written by HftModel::save, without its optimiser state (inference holds
  /// the fields alone). Throws IoError, FormatError (including a
  /// checkpoint whose stored configuration does not match its tensors), InvalidArgument.
  static HftSession load(const std::string& checkpoint, Backend backend, int device,
                         const HftSessionOptions& options);
  HftSession(HftSession&&) noexcept;
  HftSession& operator=(HftSession&&) noexcept;
  ~HftSession();

  /// Appends one token to every session and computes the logits of the next one.
  /// `tokens` holds `sessions` teacher-vocabulary ids; an id outside the compact vocabulary
  /// (including one outside the teacher's vocabulary) is read as the unk class. `logits` (may
  /// be null) receives sessions x vocab_size() compact logits. Throws InvalidArgument (null or
  /// wrongly placed arrays, a session that already holds max_positions tokens: reset it).
  void step(const int32_t* tokens, float* logits, cudaStream_t stream);
  /// step(), then samples each session's next token: `next` (sessions entries, may be the same
  /// array as `tokens`) receives teacher-vocabulary ids, `next_class` (may be null) the compact
  /// classes. Deterministic for a seed; no host synchronisation.
  void step_and_sample(const int32_t* tokens, const SamplingConfig& sampling, int32_t* next,
                       int32_t* next_class, float* logits, cudaStream_t stream);
  /// Empties every session (position 0, no history). Synchronises the session's work.
  void reset();
  /// Empties one session. Throws InvalidArgument for an index outside [0, sessions).
  void reset(int64_t session);

  int64_t sessions() const;
  int64_t vocab_size() const;              ///< compact classes (the last one is unk)
  int64_t teacher_vocab_size() const;      ///< ids below this map to compact classes
  const std::vector<int32_t>& compact_token_ids() const;  ///< teacher id of each class but unk
  int32_t bos_id() const;                  ///< the teacher's BOS token (-1 when unknown)
  const std::string& model_sha256() const; ///< SHA-256 of the teacher file distilled from
  /// Tokens each session holds (host mirror, exact without synchronising).
  const std::vector<int64_t>& lengths() const;
  const HftConfig& config() const;
  Backend backend() const;
  int device() const;
  /// Device bytes the session holds beyond the model's parameters (buffers and scratch).
  std::size_t state_bytes() const;
  /// Parameter bytes of the model (both pools).
  std::size_t parameter_bytes() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace htfr

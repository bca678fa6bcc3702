// The context builder of the HyperField Transformer: the teacher-free raw features of one
// position (DESIGN §5) — compact embedding rows of the window, RoPE-style phases, mask bits,
// hashed n-gram indicators and the rolling buffer of Stage 1's own earlier outputs — and the
// Stage 2 input built from a Stage 1 embedding and the recent token tail. The same features on
// the CPU (host arrays) and on one GPU (device arrays), bit for bit.
//
// Streams. A stream is one independent token sequence (a capture window, or one inference
// session). `tokens` holds each stream's compact token ids, row s at tokens + s * token_stride:
// tokens[s][q] is the input token at position q of stream s. A row of a batch names its stream and
// the position p it predicts from; it reads tokens[s][max(0, p - W + 1) .. p] and the stream's
// history ring, never anything later.
//
// History ring. history + s * R * H holds R slots of H floats (R = history, H = history_dim): the
// Stage 1 output of position q lives in slot q mod R. A row at position p reads the outputs of
// positions p-1 .. p-R (those >= 0); the caller writes position p's output after the call.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "htfr/config.hpp"

namespace htfr {

/// Feature sizes and weights. Every group is multiplied by its weight and by `scale`, so the
/// relative geometry of the features is set here and their overall size by `scale`.
struct ContextConfig {
  int64_t vocab_size = 4096;      ///< compact classes; ids outside [0, vocab_size) are rejected
  int64_t embedding_dim = 640;    ///< E: width of an embedding row
  int64_t window = 128;           ///< W: token slots; slot j holds the token at position p - j
  float slot_decay = 0.8f;        ///< slot j's embedding, phases and mask bit carry decay^j
  float embedding_weight = 1.0f;  ///< embedding rows are unit-normalised, then weighted
  int64_t phase_pairs = 8;        ///< P: sin/cos pairs of the slot's absolute position
  float phase_base = 10000.0f;    ///< frequencies base^(-k/P), k = 0 .. P-1
  float phase_weight = 0.25f;
  float mask_weight = 0.25f;      ///< one bit per slot: the slot holds a token
  std::vector<int> ngram_orders = {1, 2, 3};  ///< n of the hashed n-gram indicators
  int64_t bloom_size = 16384;     ///< buckets of the n-gram Bloom filter (0 = none)
  int64_t bloom_hashes = 2;       ///< buckets set per n-gram
  float bloom_weight = 0.05f;
  uint64_t hash_seed = 0x5eedb100f11e7ULL;
  int64_t history = 4;            ///< R: Stage 1 outputs of earlier positions read per row
  int64_t history_dim = 1024;     ///< H: width of a Stage 1 output
  float history_weight = 0.05f;
  /// Stage 2 input: [Stage 1 embedding * stage1_weight, last `tail` token embeddings (slot j
  /// weighted tail_weight * tail_decay^j), phases of p, a bias bit].
  int64_t tail = 16;
  float tail_decay = 0.7f;
  float tail_weight = 1.0f;  ///< tail rows are unit-normalised, then weighted (0: no tail)
  float stage1_weight = 0.1f;
  float scale = 1.0f;  ///< overall factor of the Stage 1 features
  float stage2_scale = 1.0f;  ///< overall factor of the Stage 2 features
  /// Throws InvalidArgument naming the first field out of range.
  void validate() const;
};

/// Offsets of the feature groups in a raw Stage 1 row (in floats) and its width.
struct ContextLayout {
  int64_t slot_width = 0;   ///< E + 2P + 1
  int64_t slots = 0;        ///< at 0: W slots of [embedding | phases | mask]
  int64_t bloom = 0;        ///< bloom_size buckets
  int64_t history = 0;      ///< R x H
  int64_t meta = 0;         ///< [p / W, 1 (bias), p == 0]
  int64_t stage1_dim = 0;   ///< total
  int64_t stage2_tail = 0;  ///< Stage 2 row: [H | tail x E | 2P | 1]
  int64_t stage2_meta = 0;
  int64_t stage2_dim = 0;
};

ContextLayout context_layout(const ContextConfig& config);

/// Which positions of which streams a batch holds.
struct ContextRows {
  const int32_t* tokens = nullptr;   ///< streams x token_stride compact ids
  int64_t token_stride = 0;
  const float* history = nullptr;    ///< streams x R x H ring (may be null when R == 0)
  const int32_t* stream = nullptr;   ///< rows: stream of each row
  const int32_t* position = nullptr; ///< rows: position p of each row (p < token_stride unless ring)
  int64_t rows = 0;
  /// 0: position q of stream s at tokens[s * token_stride + q]. Otherwise a rolling buffer of the
  /// last token_ring tokens (window <= token_ring <= token_stride): position q at
  /// tokens[s * token_stride + q % token_ring], positions unbounded.
  int64_t token_ring = 0;
};

namespace detail {
struct ContextParams;
}

/// Builds raw feature rows on one backend. Holds the unit-normalised embedding table (a copy in
/// the backend's memory).
class ContextBuilder {
 public:
  /// `embedding` is a host array of vocab_size x embedding_dim floats (all finite; a zero row stays
  /// zero). Throws InvalidArgument, NonFiniteInput, NoDevice, OutOfMemory.
  ContextBuilder(const ContextConfig& config, const std::vector<float>& embedding,
                 Backend backend = Backend::cpu, int device = 0);
  ~ContextBuilder();
  ContextBuilder(ContextBuilder&&) noexcept;
  ContextBuilder& operator=(ContextBuilder&&) noexcept;
  ContextBuilder(const ContextBuilder&) = delete;
  ContextBuilder& operator=(const ContextBuilder&) = delete;

  /// raw (rows x layout().stage1_dim) = Stage 1 features of each row. Asynchronous on `stream`.
  /// Token ids and positions are trusted (validate them with check_tokens once per stream).
  void stage1(const ContextRows& rows, float* raw, cudaStream_t stream) const;
  /// raw (rows x layout().stage2_dim) = Stage 2 features from each row's Stage 1 embedding
  /// `embedding_rows` (rows x H) and its token tail. `embedding_rows` may be null (zero
  /// embedding: the ablation without Stage 1). Asynchronous on `stream`.
  void stage2(const ContextRows& rows, const float* embedding_rows, float* raw,
              cudaStream_t stream) const;
  /// d raw2 / d embedding: grad_embedding (rows x H) = the first H columns of grad_raw (rows x
  /// stage2_dim) times stage1_weight * stage2_scale. Asynchronous on `stream`.
  void stage2_embedding_grad(const float* grad_raw, int64_t rows, float* grad_embedding,
                             cudaStream_t stream) const;

  /// Throws InvalidArgument naming the first id outside [0, vocab_size) of a host array.
  void check_tokens(const int32_t* tokens, int64_t count) const;

  const ContextConfig& config() const { return config_; }
  const ContextLayout& layout() const { return layout_; }
  Backend backend() const { return backend_; }
  int device() const { return device_; }
  /// Sets `scale` / `stage2_scale` (e.g. once measured on data).
  void set_scales(float scale, float stage2_scale);
  /// Diagnostic (verify.hpp): computes every phase feature from a permuted position, q -> (a q +
  /// b) mod span, with a odd and b drawn from `seed`, so the phases no longer say where a token
  /// is while everything else stays the same. `span` (a power of two) covers the positions in
  /// use; seed 0 restores the true phases. Throws InvalidArgument for a bad span.
  void set_phase_permutation(uint64_t seed, int64_t span);

 private:
  detail::ContextParams params() const;
  void release() noexcept;
  ContextConfig config_;
  ContextLayout layout_;
  Backend backend_ = Backend::cpu;
  int device_ = 0;
  std::vector<float> host_table_;       ///< normalised embedding (CPU backend)
  float* device_table_ = nullptr;       ///< normalised embedding (CUDA backend)
  uint64_t phase_mul_ = 0, phase_add_ = 0, phase_mask_ = 0;  ///< set_phase_permutation
};

}  // namespace htfr

// The per-element formulas of the HFT context features, written once for host and device so the
// CPU builder and the CUDA kernels cannot drift apart.
#pragma once

#include <cmath>
#include <cstdint>

#include "detail/hd.hpp"
#include "detail/random.hpp"
#include "htfr/context.hpp"

namespace htfr::detail {

inline constexpr int kMaxNgramOrders = 8;

/// Everything a feature kernel needs, by value.
struct ContextParams {
  int64_t E = 0, W = 0, P = 0, slot_width = 0;
  int64_t bloom_offset = 0, bloom_size = 0, bloom_hashes = 0;
  int64_t history_offset = 0, R = 0, H = 0, meta_offset = 0, stage1_dim = 0;
  int64_t tail = 0, s2_tail_offset = 0, s2_meta_offset = 0, stage2_dim = 0;
  float slot_decay = 0, embedding_weight = 0, phase_weight = 0, mask_weight = 0;
  float bloom_weight = 0, history_weight = 0, tail_decay = 0, tail_weight = 0, stage1_weight = 0;
  float scale = 1, stage2_scale = 1, phase_base = 10000;
  uint64_t hash_seed = 0;
  /// Diagnostic permutation of the positions the phases are computed from (mul == 0: none).
  uint64_t phase_mul = 0, phase_add = 0, phase_mask = 0;
  int num_orders = 0;
  int orders[kMaxNgramOrders] = {};
};

ContextParams context_params(const ContextConfig& c, const ContextLayout& l);

/// The tokens of one stream: position q at base[q] (ring == 0), or at base[q % ring] for a
/// rolling buffer of `ring` >= W slots (inference sessions).
struct TokenView {
  const int32_t* base = nullptr;
  int64_t ring = 0;
  HTFR_HD int32_t operator[](int64_t q) const { return base[ring > 0 ? q % ring : q]; }
};

/// weight^j in double, rounded once.
HTFR_HD float decay_power(float weight, int64_t j) {
  return static_cast<float>(pow(static_cast<double>(weight), static_cast<double>(j)));
}

/// Component k (0 .. 2P-1) of the phases of absolute position `position`: sin for even k, cos for
/// odd k, frequency base^(-(k/2)/P). Computed in double and rounded once.
HTFR_HD float phase_value(int64_t position, int64_t k, int64_t P, float base) {
  const double freq = pow(static_cast<double>(base), -static_cast<double>(k / 2) / double(P));
  const double angle = static_cast<double>(position) * freq;
  return static_cast<float>((k & 1) ? cos(angle) : sin(angle));
}

/// The position whose phases position q carries: q itself, or its image under the diagnostic
/// permutation q -> (mul * q + add) mod span of ContextBuilder::set_phase_permutation.
HTFR_HD int64_t phase_position(const ContextParams& c, int64_t q) {
  if (c.phase_mul == 0) return q;
  return static_cast<int64_t>((c.phase_mul * static_cast<uint64_t>(q) + c.phase_add) & c.phase_mask);
}

/// Value of Stage 1 feature i (outside the Bloom group, which stage1_bloom_* fill) for the row at
/// position p of a stream whose tokens start at `toks` and whose history ring starts at `hist`.
HTFR_HD float stage1_dense_value(const ContextParams& c, const float* table, TokenView toks,
                                 const float* hist, int64_t p, int64_t i) {
  if (i < c.bloom_offset) {
    const int64_t j = i / c.slot_width, k = i - j * c.slot_width;
    if (j > p) return 0.0f;  // before the start of the stream
    const float w = decay_power(c.slot_decay, j) * c.scale;
    if (k < c.E) return table[static_cast<int64_t>(toks[p - j]) * c.E + k] * c.embedding_weight * w;
    if (k < c.E + 2 * c.P) return phase_value(phase_position(c, p - j), k - c.E, c.P, c.phase_base) * c.phase_weight * w;
    return c.mask_weight * w;
  }
  if (i < c.history_offset) return 0.0f;  // Bloom buckets start empty
  if (i < c.meta_offset) {
    const int64_t r = (i - c.history_offset) / c.H, h = i - c.history_offset - r * c.H;
    const int64_t q = p - 1 - r;
    if (q < 0) return 0.0f;
    return hist[(q % c.R) * c.H + h] * c.history_weight * c.scale;
  }
  const int64_t m = i - c.meta_offset;
  const float v = m == 0 ? static_cast<float>(p) / static_cast<float>(c.W)
                  : m == 1 ? 1.0f
                           : (p == 0 ? 1.0f : 0.0f);
  return v * c.scale;
}

/// Hash of the n tokens ending at position q.
HTFR_HD uint64_t ngram_hash(uint64_t seed, int n, TokenView toks, int64_t q) {
  uint64_t h = mix64(seed ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(n)));
  for (int64_t t = q - n + 1; t <= q; ++t) h = mix64(h ^ static_cast<uint64_t>(toks[t]));
  return h;
}

/// Bucket of hash function `i` for an n-gram hash.
HTFR_HD int64_t bloom_bucket(uint64_t hash, int64_t i, int64_t size) {
  return uniform_below(mix64(hash + 0xD1B54A32D192ED03ull * static_cast<uint64_t>(i + 1)), size);
}

/// First position of the window of a row at position p.
HTFR_HD int64_t window_start(const ContextParams& c, int64_t p) {
  return p - c.W + 1 > 0 ? p - c.W + 1 : 0;
}

/// The tokens of stream s of a batch.
HTFR_HD TokenView token_view(const ContextRows& rows, int64_t s) {
  return TokenView{rows.tokens + s * rows.token_stride, rows.token_ring};
}

/// Value of Stage 2 feature i for the row at position p with Stage 1 embedding `emb` (null: 0).
HTFR_HD float stage2_value(const ContextParams& c, const float* table, TokenView toks,
                           const float* emb, int64_t p, int64_t i) {
  if (i < c.H) return emb ? emb[i] * c.stage1_weight * c.stage2_scale : 0.0f;
  if (i < c.s2_meta_offset) {
    const int64_t j = (i - c.H) / c.E, k = i - c.H - j * c.E;
    if (j > p) return 0.0f;
    return table[static_cast<int64_t>(toks[p - j]) * c.E + k] * decay_power(c.tail_decay, j) *
           c.tail_weight * c.stage2_scale;
  }
  const int64_t m = i - c.s2_meta_offset;
  if (m < 2 * c.P)
    return phase_value(phase_position(c, p), m, c.P, c.phase_base) * c.phase_weight * c.stage2_scale;
  return c.stage2_scale;
}

}  // namespace htfr::detail

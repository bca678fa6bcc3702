// Count-based n-gram language models over class ids (the compact vocabulary of V classes): the
// baselines, an add-a unigram and interpolated modified Kneser-Ney up to order 8, that a learned
// next-class predictor has to beat on the same data. Host only, no GPU.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

namespace htfr {

/// Highest order an NgramModel supports.
inline constexpr int kMaxNgramOrder = 8;

/// How an NgramModel turns counts into probabilities.
///  additive    the add-a unigram p(w) = (c(w) + a) / (T + a V), c(w) the count of class w and T
///              the number of tokens counted (a = 1: Laplace). Order 1 only.
///  kneser_ney  interpolated modified Kneser-Ney (Chen & Goodman 1998), any order 1 .. 8; see
///              NgramModel.
enum class NgramSmoothing { additive, kneser_ney };

/// Shape and smoothing of an NgramModel.
struct NgramOptions {
  /// n: the model conditions on the previous n - 1 tokens. 1 .. kMaxNgramOrder.
  int order = 3;
  /// V: the classes are the ids 0 .. V - 1 (the last one is typically the unk bucket; it is an
  /// ordinary class here). 1 <= V <= 2^31 - 1.
  int64_t vocab_size = 0;
  NgramSmoothing smoothing = NgramSmoothing::kneser_ney;
  /// a of the additive smoothing, finite and > 0 (so every class keeps a non-zero probability).
  /// Ignored by kneser_ney.
  double additive = 1.0;
};

/// What finalize() found at one order n (1 .. order) of an NgramModel.
struct NgramOrderStats {
  int order = 0;
  /// Distinct n-grams of this order, i.e. (history of n - 1 symbols, class) pairs seen. A history
  /// may start with the begin symbol; the predicted symbol is always a class.
  int64_t distinct = 0;
  /// n_1 .. n_4: how many of those n-grams have a count of exactly 1, 2, 3, 4, where the count is
  /// the one this order smooths with (see NgramModel: raw or continuation).
  std::array<int64_t, 4> count_of_counts{};
  /// D_1, D_2, D_3+ of kneser_ney (all zero for additive). 0 < D_c <= c.
  std::array<double, 3> discounts{};
  /// True where D_c is the fallback c / 2 rather than the Chen & Goodman estimate.
  std::array<bool, 3> discount_fallback{};
};

/// An n-gram language model over class ids, trained by counting and queried for log-probabilities.
///
/// Sequences are independent (windows, documents): conditioning never crosses from one sequence
/// into the next. Each sequence is preceded by one begin symbol <s> (an id outside [0, V)), as in
/// SRILM and KenLM, so the history of the token at position i is <s> t_0 .. t_{i-1}, of which the
/// model uses the last n - 1 symbols (at a position i < n - 2 that is all i + 1 of them). <s> is
/// only ever a history symbol, never predicted.
///
/// kneser_ney, with p_0(w) = 1 / V and for k = 1 .. n and a history h of k - 1 symbols:
///   p_k(w | h) = (c_k(h w) - D_k(c_k(h w)) + gamma_k(h) p_{k-1}(w | h')) / S_k(h)
/// where h' is h without its oldest symbol, S_k(h) = sum_w c_k(h w), D_k(0) = 0, D_k(c) is D_1,
/// D_2 or D_3+ of order k for c = 1, 2, >= 3, and gamma_k(h) = D_1 N_1(h) + D_2 N_2(h) +
/// D_3+ N_3+(h) with N_c(h) the number of classes w with c_k(h w) = c (resp. >= 3). A history
/// never seen at order k (S_k(h) = 0) backs off fully: p_k(w | h) = p_{k-1}(w | h'). The counts:
///  - at the highest order n, and for n-grams that start with <s> (which have no left extension
///    to count: the SRILM and KenLM convention), c_k is the raw count;
///  - otherwise c_k(g) is the continuation count: the number of distinct symbols x (class or <s>)
///    for which the k + 1-gram x g was seen.
/// The discounts of order k come from its counts-of-counts n_1 .. n_4 (see NgramOrderStats):
/// Y = n_1 / (n_1 + 2 n_2), D_1 = 1 - 2 Y n_2 / n_1, D_2 = 2 - 3 Y n_3 / n_2,
/// D_3+ = 3 - 4 Y n_4 / n_3. D_c takes the fallback c / 2 (0.5, 1, 1.5, KenLM's fallback) when it
/// cannot be estimated (n_1 = 0 or n_c = 0) or when the estimate falls outside (0, c] (only D_2
/// and D_3+ can fall below; none can exceed c). So 0 < D_c <= c: every seen history keeps some
/// back-off mass, every class has a non-zero probability after any history, and every
/// distribution sums to 1 over the V classes up to rounding.
///
/// Use: add_sequence() any number of times, finalize() once, then query. The const queries read
/// only, so concurrent queries on a finalized model are safe. Counting and scoring a token each
/// cost about 2 n hash look-ups; memory is up to ~100 bytes per distinct n-gram. Move-only; a
/// moved-from model may only be assigned to or destroyed.
class NgramModel {
 public:
  /// Validates `options` (order 1 .. 8, 1 <= V <= 2^31 - 1, a known smoothing; additive needs
  /// order 1 and a finite a > 0). Throws InvalidArgument naming the field and the value.
  explicit NgramModel(const NgramOptions& options);
  ~NgramModel();
  NgramModel(NgramModel&&) noexcept;
  NgramModel& operator=(NgramModel&&) noexcept;
  NgramModel(const NgramModel&) = delete;
  NgramModel& operator=(const NgramModel&) = delete;

  /// Counts one independent sequence of `length` class ids (host memory; null allowed when
  /// length is 0; an empty sequence changes nothing). Every id is checked before anything is
  /// counted, so a call that throws leaves the model unchanged. Throws InvalidArgument after
  /// finalize(), for length < 0, a null `tokens` with length > 0, or an id outside [0, V) (the
  /// message names the position and the value).
  void add_sequence(const int32_t* tokens, int64_t length);

  /// Derives the continuation counts, discounts and normalisers; needed before any query, and
  /// no sequence can be added afterwards. A second call does nothing. Throws InvalidArgument if
  /// no token was counted.
  void finalize();

  /// Natural-log probability of class `token` after `history`: the preceding tokens of the same
  /// sequence, oldest first, so history_len is the position of `token` in its sequence (0: the
  /// sequence's first token, whose history is <s> alone). Only the last order - 1 entries are
  /// read (and checked); additive reads none. Throws InvalidArgument before finalize(), for a
  /// token or read history entry outside [0, V), history_len < 0, or a null history with
  /// history_len > 0. Always finite: no class has probability 0.
  double log_prob(const int32_t* history, int64_t history_len, int32_t token) const;

  /// log_prob(tokens, i, tokens[i]) for i = 0 .. length - 1: every token of one sequence given
  /// its own prefix. Throws as log_prob() does (every token is checked first).
  std::vector<double> sequence_log_probs(const int32_t* tokens, int64_t length) const;

  /// The probabilities (not logs) of all V classes after `history` (as in log_prob()); they sum
  /// to 1 up to rounding. O(V order) work. Throws as log_prob() does.
  std::vector<double> distribution(const int32_t* history, int64_t history_len) const;

  const NgramOptions& options() const;
  /// Whether finalize() has run.
  bool finalized() const;
  /// Tokens counted so far (all sequences).
  int64_t num_tokens() const;
  /// Sequences passed to add_sequence() so far, empty ones included.
  int64_t num_sequences() const;
  /// One entry per order 1 .. n (index k - 1 for order k). Throws InvalidArgument before
  /// finalize().
  const std::vector<NgramOrderStats>& order_stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace htfr

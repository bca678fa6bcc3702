// Information-flow verification of a trained HFT (the HFT note §9): for each signal the model is
// meant to read, a measurement that shows whether it reaches the predictions, with the note's
// criterion where it gives one. Every check runs teacher-free unless its name says otherwise;
// teacher signals are used only as references (the teacher's distribution for KL, Stage 1's
// targets for its cosine and for the leaky reference of the Stage 1 check).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "htfr/capture.hpp"
#include "htfr/config.hpp"
#include "htfr/hft.hpp"

namespace htfr {

class HftSession;

/// Sizes of the probes. The sequences are the first `length` tokens of the first `sequences`
/// capture windows that hold at least `length` tokens.
struct VerifyOptions {
  int64_t sequences = 64;
  int64_t length = 64;
  int64_t ablate_offsets = 16;   ///< token ablation: offsets 0 .. ablate_offsets-1 from the end
  int64_t position_buckets = 8;  ///< positional check: perplexity per equal range of positions
  uint64_t seed = 7;             ///< phase permutation and injected tokens
  /// Stage coupling: rows of the data the probe model fine-tunes on (<= 0: all).
  int64_t coupling_rows = 8192;
  /// n-gram check: a bucket is flagged when it holds more than this many times the mean number
  /// of distinct n-grams per used bucket.
  double collision_flag = 3.0;
  /// Throws InvalidArgument naming the first bad field.
  void validate() const;
};

/// One check: what it measured, against which criterion, and whether the criterion holds.
struct VerifyCheck {
  std::string name;       ///< short id: token_ablation, positions, causal_mask, ...
  std::string signal;     ///< the signal of the note's §9 it concerns
  std::string criterion;  ///< the criterion, in words
  bool passed = false;
  std::vector<std::pair<std::string, double>> figures;  ///< headline figures, in order
  std::string detail_json;  ///< curves and per-item arrays (a JSON object)
  double figure(const std::string& key) const;  ///< NaN when absent
};

struct VerifyReport {
  std::vector<VerifyCheck> checks;
  bool all_passed() const;
  std::string to_json() const;  ///< {"checks": [...], "passed": n, "failed": n}
};

/// Replaces the token at each offset j (0: the last token) of every sequence with unk and
/// measures, at the last position, KL(original || ablated) and the change of log p(unk).
/// Passes when every offset shifts the prediction and the most recent quarter of the offsets
/// shifts it more, on average, than the oldest quarter.
VerifyCheck check_token_ablation(const HftModel& model, const HftData& data,
                                 const VerifyOptions& options);
/// Perplexity per range of absolute positions, with the true phases and with the phases of a
/// permuted position (ContextBuilder::set_phase_permutation). Passes when permuting the phases
/// raises the perplexity by at least 1 %: the model reads positions from them.
VerifyCheck check_positions(const HftModel& model, const HftData& data,
                            const VerifyOptions& options);
/// Replaces every token after position m = length/2 with other tokens: the logits of positions
/// < m must stay bit for bit the same (tokens beyond the causal edge are masked).
VerifyCheck check_causal_mask(const HftModel& model, const HftData& data,
                              const VerifyOptions& options);
/// Distinct n-grams per Bloom bucket over the sequences' windows, the correlation of a row's mean
/// bucket load with its loss, and the buckets flagged as crowded. Passes when the rows touching
/// a flagged bucket do not have a loss more than 5 % above the others.
VerifyCheck check_ngram_collisions(const HftModel& model, const HftData& data,
                                   const VerifyOptions& options);
/// Stage 1 against its teacher targets on `data` (mean cosine; the note asks >= 0.9) and the
/// share of the perplexity reduction over "no Stage 1" that the teacher-free embedding keeps
/// relative to the teacher's own projected features in Stage 1's place (leaky mode; the note
/// asks >= 95 %), in log-perplexity.
VerifyCheck check_stage1_proxy(const HftModel& model, const HftData& data,
                               const VerifyOptions& options);
/// KL(teacher || student) with and without the 16-token tail (the note: the tail is used when
/// turning it off raises KL by >= 10 %).
VerifyCheck check_tail(const HftModel& model, const HftData& data, const VerifyOptions& options);
/// Fine-tunes `probe` (a model that may be changed, e.g. a second load of the checkpoint with its
/// optimiser state) end to end on `data` and records the norm of the gradient reaching Stage 1
/// at every step it reads back. Passes when every norm is finite and > 0.
VerifyCheck check_stage_coupling(HftModel& probe, const HftData& data,
                                 const VerifyOptions& options);
/// Logits from cached projected vectors against fresh projections: (a) Stage 2 applied to the
/// projected inputs of a run, kept in a host cache, against that run's logits; (b) the
/// incremental session (its cached token buffer and Stage 1 ring) against a recomputation of
/// every window from scratch. Passes when both agree within 1e-4 (relative to the logits' scale).
VerifyCheck check_cached_projections(const HftModel& model, HftSession& session,
                                     const HftData& data, const VerifyOptions& options);

/// All checks on a checkpoint and a capture (normally the held-out evaluation capture): loads
/// the model for inference, a session and a probe copy with its optimiser state, one after the
/// other as needed. `progress` (may be empty) is told the name of each check before it runs.
VerifyReport verify_information_flow(const std::string& checkpoint, const CaptureReader& capture,
                                     Backend backend, int device, const VerifyOptions& options,
                                     int64_t max_positions = 0,
                                     const std::function<void(const std::string&)>& progress = {});

}  // namespace htfr

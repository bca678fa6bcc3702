// The state behind HftModel and HftData, shared by the trainer (hft.cpp) and the checkpoint code
// (hft_checkpoint.cpp).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <utility>
#include <string>
#include <vector>

#include "detail/backend_array.hpp"
#include "htfr/context.hpp"
#include "htfr/hft.hpp"
#include "htfr/maintenance.hpp"
#include "htfr/model.hpp"
#include "htfr/projection.hpp"

namespace htfr {

struct HftData::Impl {
  Backend backend = Backend::cpu;
  int device = 0;
  int64_t streams = 0, stride = 0, rows = 0, scored_rows = 0;
  std::vector<int64_t> first_row;  ///< per stream
  std::vector<int32_t> length;     ///< per stream
  std::vector<int32_t> target;     ///< per row, compact class
  std::vector<uint8_t> scored;     ///< per row
  std::vector<int32_t> host_tokens;  ///< streams x stride compact input tokens (unk padded)
  detail::BackendArray<int32_t> tokens;
  detail::BackendArray<int32_t> target_dev;
  detail::BackendArray<uint16_t> teacher;      ///< rows x V binary16 log-probabilities
  detail::BackendArray<float> stage1_target;   ///< rows x H
};

/// Scratch arrays of one batch (grown on demand).
struct HftWorkspace {
  detail::BackendArray<float> raw1, x1, y1, t1, t1e, raw2, x2, q, g2, graw2, gy1, loss1, loss2;
  detail::BackendArray<float> metrics, cosine, grad_norm;
  detail::BackendArray<int32_t> row_stream, row_position, row_target;
  detail::BackendArray<int64_t> row_index;
  detail::BackendArray<float> history;
};

/// How HftModel::Impl::run_streams builds its rows (the defaults are inference's).
struct StreamRun {
  const ContextBuilder* builder = nullptr;  ///< null: the model's
  bool stage1 = true;                       ///< false: Stage 2 sees a zero Stage 1 embedding
  /// length x streams x V logits on the backend (position-major), or null: each position's
  /// logits are left in the workspace for after_position only.
  float* logits = nullptr;
  /// Called after each position q with that position's streams x V logits (backend memory,
  /// valid until the next position) and its Stage 2 inputs as projected (streams x input dim).
  std::function<void(int64_t q, const float* logits, const float* x2)> after_position;
};

/// What training keeps about a stage's pool beside its parameters.
struct HftStageUpkeep {
  /// Null when the stage is not maintained (HftStageConfig::track_usage, maintenance). Made at
  /// the first training epoch and anew after pruning; never checkpointed.
  std::unique_ptr<PoolMaintainer> maintainer;
  /// Pool sizes around prune_after_pretrain's pruning (0, 0: not pruned). Checkpointed.
  int64_t pruned_before = 0, pruned_after = 0;
};

struct HftModel::Impl {
  HftConfig config;
  Backend backend = Backend::cpu;
  int device = 0;
  cudaStream_t stream = nullptr;  ///< owned, non-blocking (CUDA backend)
  // Teacher identity and the compact vocabulary the model was built for.
  std::string model_sha256;
  int64_t hidden_size = 0;
  int64_t vocab_size = 0;          ///< compact classes
  std::vector<int32_t> compact_token_ids;
  int32_t bos_id = -1;
  int64_t teacher_vocab_size = 0;  ///< token ids of the teacher lie in [0, teacher_vocab_size)
  std::vector<float> embedding;    ///< compact_size x hidden_size, as given
  std::vector<float> target_mean, target_std;  ///< per channel of the concatenated layers
  std::unique_ptr<ContextBuilder> builder;
  ProjectionStack proj1, proj2, target_proj;
  std::unique_ptr<HtfrModel> stage1, stage2;
  HftStageUpkeep upkeep1, upkeep2;
  int64_t epochs_done = 0;
  int64_t steps_done = 0;
  int64_t tokens_seen = 0;
  bool inference_only = false;  ///< loaded without the optimiser state: cannot train or save
  mutable HftWorkspace ws;
  /// Wall seconds per training phase, accumulated while profiling (each phase synchronised).
  bool profiling = false;
  std::vector<std::pair<std::string, double>> phase_seconds;
  void phase(const char* name, std::chrono::steady_clock::time_point& since);

  Impl() = default;
  ~Impl();
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  /// Creates the stream and the builder (after config/embedding are set).
  void init_runtime();
  /// Initialises the pools of the stages with HftInit::data from the rows of `sample` (see
  /// HftModel::create). Synchronises.
  void init_pools_from_data(const HftData::Impl& sample);
  /// Creates the maintainer of each stage that asks for one and has none yet.
  void make_maintainers();
  /// prune_after_pretrain: replaces each such stage by one on its compacted pool (config
  /// updated, optimiser restarted, a fresh maintainer). Synchronises.
  void prune_stages();
  /// Compact class of every teacher token id (teacher_vocab_size entries; unk where none).
  std::vector<int32_t> compact_map() const;
  /// Teacher-free logits of `streams` token sequences side by side: `tokens` is streams x length
  /// compact ids in the backend's memory (trusted: check them first), position q of every
  /// stream is one batch of `streams` rows, in order, so each stream's history ring holds what
  /// inference would have. Asynchronous on `stream` apart from what after_position does.
  void run_streams(const int32_t* tokens, int64_t streams, int64_t length,
                   const StreamRun& run) const;
};

/// Access to the state behind the HFT classes for the library's own diagnostics (verify.cpp).
struct HftInternals {
  static HftModel::Impl& of(const HftModel& model) { return *model.impl_; }
  static const HftData::Impl& of(const HftData& data) { return *data.impl_; }
};

}  // namespace htfr

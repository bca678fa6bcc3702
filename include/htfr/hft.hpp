// The two-stage HyperField Transformer (DESIGN §5): Stage 1 maps teacher-free window features
// (context.hpp) through CountSketch -> SRHT to a 1k embedding trained on a fixed projection of the
// teacher's hidden states; Stage 2 maps [that embedding, the recent token tail, position] through
// CountSketch -> SRHT to compact-vocabulary logits trained on the teacher's distribution (KL) and
// the true token (CE). Pretraining trains both stages on their own targets; end-to-end
// fine-tuning adds the Stage 2 loss's gradient, carried back through Stage 2's input projection,
// to Stage 1's target. At inference the model reads token ids and its own earlier Stage 1
// outputs only: teacher signals are training targets, never inputs, except in the diagnostic
// evaluation modes, which say so.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "htfr/capture.hpp"
#include "htfr/config.hpp"
#include "htfr/context.hpp"
#include "htfr/maintenance.hpp"

namespace htfr {

/// How a stage's pool starts.
enum class HftInit {
  random,  ///< HyperTensorPool::init_random with the stage's init_* scales
  data,    ///< init_pool_from_data (init.hpp) on a sample of training rows (HftModel::create)
};
const char* to_string(HftInit init);

/// One HTFR stage: its projection (CountSketch to sketch_dim, then block SRHT to input_dim of
/// `htfr`), the field, its initialisation and the upkeep of its pool during training.
struct HftStageConfig {
  HtfrConfig htfr;
  int64_t sketch_dim = 0;     ///< CountSketch output (a multiple of srht_block)
  int64_t srht_block = 0;     ///< power of two <= 2^17
  float init_offset_scale = 1.0f;
  float init_band = 1.0f;
  float init_tau = 1.0f;      ///< every tensor's temperature, with either kind of init
  float init_control_scale = 0.01f;
  /// Data init fits the pool to projected features of init_rows training rows (>= 1; whole
  /// windows in a seeded order from the capture's first 4 x init_rows positions). Stage 1 does
  /// not exist yet, so its history ring holds the teacher targets of past positions and Stage 2
  /// reads the teacher target as its embedding. Controls: Stage 1's targets; for Stage 2 the
  /// teacher's log-probabilities centred per row (logits). Bands come from each cluster's spread,
  /// temperatures are init_tau. k-means runs with min(num_tensors, rows) clusters: when the
  /// sample is smaller than the pool, the remaining tensors keep their random initialisation.
  HftInit init = HftInit::random;
  int64_t init_rows = 16384;
  int init_iterations = 10;   ///< data init: k-means Lloyd iterations, >= 1
  /// Pool maintenance during training: a PoolMaintainer (maintenance.hpp) follows every training
  /// step of the stage when track_usage is true or maintenance.reseed_every > 0 (reseeding).
  /// Reseeded Stage 1 tensors take the step's target rows as controls, Stage 2 tensors the true
  /// class scaled by class_value. Its state is not checkpointed (a loaded model starts a fresh
  /// maintainer, so reseeding breaks the exact-resume guarantee) and restarts after pruning.
  /// reseed.seed is mixed with the config seed.
  MaintenanceConfig maintenance;
  bool track_usage = false;
  /// After the last pretraining epoch, remove the tensors whose use count is <= prune_min_use
  /// (prune_unused) and continue on the compacted pool: htfr.num_tensors becomes the tensors
  /// kept and top_k is clamped to it; the optimiser state restarts from zero (step 0), as its
  /// moments do not follow the compaction.
  bool prune_after_pretrain = false;
  float prune_min_use = 0.0f;  ///< finite, >= 0
};

/// Everything that defines an HFT run. Defaults follow the HFT note §4 and DESIGN §5.
struct HftConfig {
  ContextConfig context;
  HftStageConfig stage1;
  HftStageConfig stage2;
  /// Teacher hidden layers whose standardised concatenation, projected by a block SRHT to
  /// stage1.htfr.output_dim, is Stage 1's target.
  std::vector<int> target_layers = {6, 12, 18};
  float target_clip = 8.0f;  ///< standardised hidden values are clipped to +-target_clip
  int64_t batch_streams = 256;   ///< streams (capture windows) trained side by side
  int64_t pretrain_epochs = 2;
  int64_t finetune_epochs = 1;
  float e2e_weight = 1.0f;   ///< weight of the Stage 2 gradient in Stage 1's fine-tuning target
  /// Factors on the measured feature scales (1: mean squared norm of a projected input = its
  /// dimension). Smaller inputs make the top-K selection depend less on small feature changes.
  float stage1_gain = 1.0f;
  float stage2_gain = 1.0f;
  uint64_t seed = 1234;
  /// Throws InvalidArgument naming the first inconsistent field.
  void validate() const;
};

/// The defaults of the HFT note at full size (Stage 1: 8,192 tensors over 16,384 dims to 1,024;
/// Stage 2: 16,384 tensors over 4,096 dims to 4,096 classes).
HftConfig default_hft_config();
/// A small configuration for the CPU backend (same structure, reduced sizes).
HftConfig small_hft_config();
/// JSON round trip. Parsing starts from `base` and overrides only the keys present; unknown keys
/// and wrongly typed values are InvalidArgument naming the key.
std::string to_json(const HftConfig& config);
HftConfig hft_config_from_json(const std::string& text, const HftConfig& base = default_hft_config());

/// Teacher-free headline or a diagnostic mode (DESIGN §5).
enum class HftMode {
  teacher_free,      ///< Stage 1 history = its own outputs; Stage 2 reads its own Stage 1 output
  teacher_assisted,  ///< history = teacher targets of past positions (diagnostic)
  leaky,             ///< also the current position's teacher target as Stage 2's embedding
};
const char* to_string(HftMode mode);
HftMode hft_mode_from_string(const std::string& name);

/// One capture loaded for training or evaluation, on the model's backend. Streams are the
/// capture's windows.
class HftData;

/// What an evaluation measured (over the scored rows).
struct HftEvalReport {
  HftMode mode = HftMode::teacher_free;
  bool stage1_enabled = true;  ///< false: Stage 2 saw a zero Stage 1 embedding
  bool tail_enabled = true;    ///< false: Stage 2 saw no token tail
  int64_t tokens = 0;          ///< scored rows
  double student_ppl = 0;      ///< exp(mean -log p_student(target))
  double teacher_ppl = 0;      ///< exp(mean -log p_teacher(target)) on the compact classes
  double kl = 0;               ///< mean KL(teacher || student), nats
  double top1 = 0;             ///< share of rows where the argmaxes agree
  double target_top1 = 0;      ///< share of rows where the student's argmax is the target
  double coverage = 0;         ///< share of targets inside the compact vocabulary (not unk)
  double stage1_cosine = 0;    ///< mean cosine of Stage 1 output and its target
  double seconds = 0;
  double tokens_per_s = 0;     ///< all rows (scored or not) per second
};

/// Progress of training, reported after every step.
struct HftTrainProgress {
  int64_t epoch = 0;
  bool finetune = false;
  int64_t step = 0;          ///< steps taken so far (all epochs)
  int64_t tokens = 0;        ///< training rows seen so far
  int64_t epoch_tokens = 0;  ///< rows of this epoch done
  int64_t epoch_total = 0;   ///< rows of the epoch
  double stage1_loss = 0;    ///< mean row loss of the step (NaN when not read back this step)
  double stage2_loss = 0;
  /// Fine-tuning: the mean over rows of the L2 norm of each row's Stage 2 loss gradient with
  /// respect to its Stage 1 output (dL2_row / dy1; the shift folded into Stage 1's target is
  /// e2e_weight times it). NaN in pretraining and when not read back this step.
  double stage1_grad_norm = std::numeric_limits<double>::quiet_NaN();
  double seconds = 0;        ///< wall time of the epoch so far
};

/// The two stages, their projections, the compact embedding table and the target projection.
class HftModel {
 public:
  /// A fresh model. `embedding` is compact_size x hidden_size (the capture's compact embedding
  /// rows); `train` supplies the hidden-state statistics of Stage 1's target, the feature
  /// scales and, for a stage with HftInit::data, the sample its pool is initialised from
  /// (deterministic for the config seed). Throws InvalidArgument (config/capture mismatch),
  /// NoDevice, OutOfMemory.
  static HftModel create(const HftConfig& config, const std::vector<float>& embedding,
                         const CaptureReader& train, Backend backend, int device = 0);
  /// Reads a checkpoint written by save(). With `optimizer_state` false the optimiser moments
  /// are neither read nor held (for inference): such a model cannot train or be saved
  /// (InvalidArgument). Throws IoError, FormatError, InvalidArgument.
  static HftModel load(const std::string& path, Backend backend, int device = 0,
                       bool optimizer_state = true);
  /// Writes everything needed to resume or serve (both pools with optimiser state and
  /// statistics, projections, target projection and statistics, embedding, compact vocabulary,
  /// config, epochs done) to one safetensors file, atomically. Synchronises.
  void save(const std::string& path) const;

  HftModel(HftModel&&) noexcept;
  HftModel& operator=(HftModel&&) noexcept;
  ~HftModel();

  /// Loads `capture` (at most `max_positions` rows, whole windows; <= 0: all) for this model:
  /// checks that it was made by the same teacher with the same compact vocabulary and layers.
  HftData load_data(const CaptureReader& capture, int64_t max_positions = 0) const;

  /// One epoch over `data` in a shuffled stream order (seeded by config seed and the epoch
  /// number): pretraining or end-to-end fine-tuning. Each stage's maintainer (if any) follows
  /// each of that stage's steps; a pretraining epoch that completes pretrain_epochs prunes the
  /// stages configured to (HftStageConfig::prune_after_pretrain). `progress` (may be empty) is
  /// called after every step. Synchronises.
  void train_epoch(const HftData& data, bool finetune,
                   const std::function<void(const HftTrainProgress&)>& progress = {});
  /// Runs the configured schedule from where it stands (pretrain_epochs, then finetune_epochs);
  /// `after_epoch` is called after every epoch (e.g. to evaluate and checkpoint).
  void train(const HftData& data, const std::function<void(const HftTrainProgress&)>& progress,
             const std::function<void(int64_t epoch)>& after_epoch);
  /// Evaluates on `data` with fixed parameters. Synchronises.
  HftEvalReport evaluate(const HftData& data, HftMode mode = HftMode::teacher_free,
                         bool stage1_enabled = true, bool tail_enabled = true) const;

  const HftConfig& config() const;
  int64_t epochs_done() const;
  int64_t steps_done() const;
  Backend backend() const;
  /// Parameter bytes of both pools (fp32 masters, half copies, statistics).
  std::size_t parameter_bytes() const;
  /// Both pools' statistics, as JSON: per stage ("stage1", "stage2") the pool's usage (steps,
  /// num_tensors, used_tensors, active_fraction, mean_use, max_use, mean_abs_distance), "init"
  /// (the config's kind), "maintenance" (the maintainer's MaintenanceStatistics, when the stage
  /// has one) and "prune" (before, after, removed, when the pool was pruned). Synchronises.
  std::string statistics_json() const;
  /// Per-phase timing of training: when on, every phase of a step synchronises and its wall time
  /// is added up (slower; for finding where the time goes). Turning it on clears the sums.
  void set_profiling(bool on);
  std::vector<std::pair<std::string, double>> phase_seconds() const;
  /// Host copies of both pools' parameters (for tests).
  std::vector<float> parameters_flat() const;

  /// Teacher-free logits of every position of one token sequence (teacher-vocabulary ids; ids
  /// outside the compact vocabulary read as unk), recomputing each position's window from
  /// scratch with the batch path of evaluate(): count x vocab_size compact logits on the host.
  /// The reference for incremental inference (session.hpp). Synchronises.
  std::vector<float> sequence_logits(const std::vector<int32_t>& tokens) const;
  /// Identity of the teacher the model was distilled from.
  const std::string& model_sha256() const;

  struct Impl;

 private:
  friend class HftSession;
  friend struct HftInternals;
  explicit HftModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class HftData {
 public:
  HftData(HftData&&) noexcept;
  HftData& operator=(HftData&&) noexcept;
  ~HftData();
  int64_t streams() const;
  int64_t rows() const;
  int64_t scored_rows() const;
  /// Compact class of every row's target, row order of the capture (for the n-gram baselines).
  const std::vector<int32_t>& targets() const;
  /// First row of every stream and its length.
  const std::vector<int64_t>& stream_first_row() const;
  const std::vector<int32_t>& stream_length() const;
  const std::vector<uint8_t>& scored() const;

  struct Impl;

 private:
  friend class HftModel;
  friend struct HftInternals;
  explicit HftData(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Reads a compact embedding file written by `python3 -m tools.capture.embedding` and checks it
/// against the capture (model and compact vocabulary). Returns compact_size x hidden_size floats.
std::vector<float> read_compact_embedding(const std::string& path, const CaptureManifest& manifest);

}  // namespace htfr

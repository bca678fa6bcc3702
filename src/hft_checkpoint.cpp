// HFT checkpoints: one safetensors file holding both pools (parameters, statistics, optimiser
// state), the three projections, the target statistics, the compact embedding and vocabulary,
// with the config and the training position as JSON metadata. Written atomically. Pool
// maintainers' state is not kept (a loaded model starts fresh ones); a pruned pool is stored at
// its pruned size, which the stored config records.
#include <nlohmann/json.hpp>

#include "detail/check.hpp"
#include "detail/hft_impl.hpp"
#include "detail/nvtx.hpp"
#include "htfr/safetensors.hpp"

namespace htfr {

namespace {

constexpr const char* kFormat = "htfr-hft";

struct PoolArray {
  const char* name;
  std::vector<float> PoolParameters::*member;
};
constexpr PoolArray kPoolArrays[] = {
    {"normals", &PoolParameters::normals},       {"offsets", &PoolParameters::offsets},
    {"dneg", &PoolParameters::dneg},             {"dpos", &PoolParameters::dpos},
    {"tau", &PoolParameters::tau},               {"controls", &PoolParameters::controls},
    {"use_count", &PoolParameters::use_count},   {"last_used", &PoolParameters::last_used},
    {"mean_abs_d", &PoolParameters::mean_abs_d}, {"loss_trace", &PoolParameters::loss_trace},
};

void save_stage(SafetensorsWriter& w, const std::string& prefix, const HtfrModel& m,
                cudaStream_t stream) {
  const PoolParameters p = m.pool().download(stream);
  for (const auto& a : kPoolArrays) {
    const std::vector<float>& v = p.*(a.member);
    w.add(prefix + a.name, ElementType::f32, {static_cast<int64_t>(v.size())}, v);
  }
  const std::vector<float> opt = m.optimizer_state(stream);
  if (!opt.empty())
    w.add(prefix + "optimizer", ElementType::f32, {static_cast<int64_t>(opt.size())}, opt);
}

std::unique_ptr<HtfrModel> load_stage(const SafetensorsReader& r, const std::string& prefix,
                                      const HftStageConfig& s, int64_t step, Backend backend,
                                      int device, cudaStream_t stream, bool optimizer) {
  const HtfrConfig& c = s.htfr;
  PoolParameters p;
  p.num_tensors = c.num_tensors;
  p.input_dim = c.input_dim;
  p.output_dim = c.output_dim;
  const int64_t N = c.num_tensors;
  for (const auto& a : kPoolArrays) {
    const std::string name = a.name;
    const int64_t count = name == "normals"    ? N * c.input_dim
                          : name == "controls" ? N * 3 * c.output_dim
                                               : N;
    p.*(a.member) = r.read_as<float>(prefix + name, ElementType::f32, {count});
  }
  const Precision half =
      c.precision == Precision::bf16 || c.precision == Precision::fp16 ? c.precision
                                                                       : Precision::fp32;
  HyperTensorPool pool = HyperTensorPool::create(backend, N, c.input_dim, c.output_dim, half, device);
  pool.upload(p, stream);
  auto model = std::make_unique<HtfrModel>(c, std::move(pool));
  if (!optimizer) return model;  // inference: the moments stay on disk
  std::vector<float> opt;
  if (c.optimizer == Optimizer::adam) {
    const int64_t count = 2 * (N * 3 * c.output_dim + N * c.input_dim + 2 * N);
    opt = r.read_as<float>(prefix + "optimizer", ElementType::f32, {count});
  }
  model->restore_state(step, opt, stream);
  return model;
}

}  // namespace

void HftModel::save(const std::string& path) const {
  HTFR_NVTX_RANGE("htfr::HftModel::save");
  const Impl& I = *impl_;
  HTFR_REQUIRE(!I.inference_only, InvalidArgument,
               "HFT: a model loaded without its optimiser state cannot be saved (" << path
                                                                                  << ")");
  SafetensorsWriter w;
  w.set_metadata("format", kFormat);
  w.set_metadata("version", "1");
  w.set_metadata("config", to_json(I.config));
  nlohmann::json state{{"epochs_done", I.epochs_done},
                       {"steps_done", I.steps_done},
                       {"tokens_seen", I.tokens_seen},
                       {"stage1_step", I.stage1->step()},
                       {"stage2_step", I.stage2->step()},
                       {"model_sha256", I.model_sha256},
                       {"hidden_size", I.hidden_size},
                       {"bos_id", I.bos_id},
                       {"teacher_vocab_size", I.teacher_vocab_size}};
  const auto put_prune = [&](const char* name, const HftStageUpkeep& u) {
    if (u.pruned_before > 0)
      state["prune"][name] = {{"before", u.pruned_before}, {"after", u.pruned_after}};
  };
  put_prune("stage1", I.upkeep1);
  put_prune("stage2", I.upkeep2);
  w.set_metadata("state", state.dump());
  const int64_t V = I.vocab_size;
  w.add("embedding", ElementType::f32, {V, I.hidden_size}, I.embedding);
  w.add("compact_token_ids", ElementType::i32, {static_cast<int64_t>(I.compact_token_ids.size())},
        I.compact_token_ids);
  w.add("target_mean", ElementType::f32, {static_cast<int64_t>(I.target_mean.size())},
        I.target_mean);
  w.add("target_std", ElementType::f32, {static_cast<int64_t>(I.target_std.size())}, I.target_std);
  I.proj1.save_to(w, "proj1.");
  I.proj2.save_to(w, "proj2.");
  I.target_proj.save_to(w, "target_proj.");
  save_stage(w, "stage1.", *I.stage1, I.stream);
  save_stage(w, "stage2.", *I.stage2, I.stream);
  w.write(path);
}

HftModel HftModel::load(const std::string& path, Backend backend, int device,
                        bool optimizer_state) {
  HTFR_NVTX_RANGE("htfr::HftModel::load");
  const SafetensorsReader r(path);
  const auto meta = [&](const std::string& key) { return r.metadata_value(key); };
  HTFR_REQUIRE(meta("format") == kFormat, FormatError,
               path << " is not an HFT checkpoint (format '" << meta("format") << "')");
  HTFR_REQUIRE(meta("version") == "1", FormatError,
               path << ": unsupported HFT checkpoint version " << meta("version"));
  auto impl = std::make_unique<Impl>();
  try {
    impl->config = hft_config_from_json(meta("config"));
  } catch (const InvalidArgument& e) {
    throw FormatError(path + ": stored config is invalid: " + e.what());
  }
  nlohmann::json state;
  int64_t stage1_step = 0, stage2_step = 0;
  try {
    state = nlohmann::json::parse(meta("state"));
    impl->epochs_done = state.at("epochs_done").get<int64_t>();
    impl->steps_done = state.at("steps_done").get<int64_t>();
    impl->tokens_seen = state.at("tokens_seen").get<int64_t>();
    stage1_step = state.at("stage1_step").get<int64_t>();
    stage2_step = state.at("stage2_step").get<int64_t>();
    impl->model_sha256 = state.at("model_sha256").get<std::string>();
    impl->hidden_size = state.at("hidden_size").get<int64_t>();
    impl->bos_id = state.at("bos_id").get<int32_t>();
    impl->teacher_vocab_size = state.at("teacher_vocab_size").get<int64_t>();
    const auto read_prune = [&](const char* name, HftStageUpkeep& u) {
      if (!state.contains("prune") || !state.at("prune").contains(name)) return;
      const nlohmann::json& p = state.at("prune").at(name);
      u.pruned_before = p.at("before").get<int64_t>();
      u.pruned_after = p.at("after").get<int64_t>();
    };
    read_prune("stage1", impl->upkeep1);
    read_prune("stage2", impl->upkeep2);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(path + ": training state metadata is invalid: " + e.what());
  }
  const HftConfig& c = impl->config;
  HTFR_REQUIRE(impl->hidden_size == c.context.embedding_dim, FormatError,
               path << ": hidden_size " << impl->hidden_size << " disagrees with the config");
  impl->backend = backend;
  impl->device = device;
  impl->vocab_size = c.context.vocab_size;
  const int64_t V = impl->vocab_size, L = static_cast<int64_t>(c.target_layers.size());
  impl->embedding = r.read_as<float>("embedding", ElementType::f32, {V, impl->hidden_size});
  impl->compact_token_ids = r.read_as<int32_t>("compact_token_ids", ElementType::i32, {V - 1});
  for (const int32_t id : impl->compact_token_ids)
    HTFR_REQUIRE(id >= 0 && id < impl->teacher_vocab_size, FormatError,
                 path << ": compact token id " << id << " outside the teacher vocabulary [0, "
                      << impl->teacher_vocab_size << ")");
  impl->target_mean = r.read_as<float>("target_mean", ElementType::f32, {L * impl->hidden_size});
  impl->target_std = r.read_as<float>("target_std", ElementType::f32, {L * impl->hidden_size});
  impl->init_runtime();
  impl->proj1 = ProjectionStack::load_from(r, "proj1.", backend, device);
  impl->proj2 = ProjectionStack::load_from(r, "proj2.", backend, device);
  impl->target_proj = ProjectionStack::load_from(r, "target_proj.", backend, device);
  const ContextLayout l = impl->builder->layout();
  HTFR_REQUIRE(impl->proj1.input_dim() == l.stage1_dim &&
                   impl->proj1.output_dim() == c.stage1.htfr.input_dim &&
                   impl->proj2.input_dim() == l.stage2_dim &&
                   impl->proj2.output_dim() == c.stage2.htfr.input_dim &&
                   impl->target_proj.input_dim() == L * impl->hidden_size &&
                   impl->target_proj.output_dim() == c.context.history_dim,
               FormatError, path << ": projection sizes disagree with the config");
  impl->stage1 = load_stage(r, "stage1.", c.stage1, stage1_step, backend, device, impl->stream,
                            optimizer_state);
  impl->stage2 = load_stage(r, "stage2.", c.stage2, stage2_step, backend, device, impl->stream,
                            optimizer_state);
  impl->inference_only = !optimizer_state;
  return HftModel(std::move(impl));
}

}  // namespace htfr

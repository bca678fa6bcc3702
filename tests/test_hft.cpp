// The two-stage HFT on a small real capture (tests/data/capture_fixture: 3 windows of 16 tokens of
// Gemma 3 270M): configuration round trip, evaluation against a direct computation, learning,
// checkpoint round trip and exact resume, the upkeep of the pools (data initialisation,
// maintenance, pruning), the stage coupling figure, and the CUDA backend against the CPU.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "detail/hft_impl.hpp"
#include "htfr/capture.hpp"
#include "htfr/error.hpp"
#include "htfr/hft.hpp"
#include "htfr/safetensors.hpp"
#include "hft_fixture.hpp"
#include "test_util.hpp"

namespace htfr {
namespace {

using namespace test;

TEST(HftConfigJson, RoundTripsAndNamesBadKeys) {
  HftConfig c = tiny_config();
  c.context.slot_decay = 0.61f;
  c.stage2.htfr.optimizer = Optimizer::sgd;
  c.stage2.htfr.weighting = Weighting::triangular;
  c.context.ngram_orders = {2, 4};
  const HftConfig back = hft_config_from_json(to_json(c));
  EXPECT_EQ(to_json(back), to_json(c));
  EXPECT_EQ(back.stage2.htfr.optimizer, Optimizer::sgd);
  EXPECT_EQ(back.context.ngram_orders, (std::vector<int>{2, 4}));
  // Partial JSON overrides the base only where given.
  const HftConfig partial = hft_config_from_json(R"({"stage1": {"htfr": {"top_k": 3}}})", c);
  EXPECT_EQ(partial.stage1.htfr.top_k, 3);
  EXPECT_EQ(partial.stage2.htfr.top_k, c.stage2.htfr.top_k);
  const auto message = [&](const std::string& text) {
    try {
      hft_config_from_json(text, c);
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(R"({"stage1": {"htfr": {"topk": 3}}})").find("stage1.htfr.topk"),
            std::string::npos);
  EXPECT_NE(message(R"({"context": {"window": "long"}})").find("context.window"),
            std::string::npos);
  EXPECT_NE(message(R"({"stage2": {"htfr": {"optimizer": "lbfgs"}}})").find("adam"),
            std::string::npos);
  EXPECT_NE(message(R"({"stage2": {"htfr": {"precision": "fp8"}}})").find("stage2.htfr.precision"),
            std::string::npos);
  EXPECT_NE(message("{not json").find("JSON"), std::string::npos);
  EXPECT_NE(message(R"({"stage1": {"htfr": {"loss": "kl"}}})").find("stage1.loss"),
            std::string::npos);
  EXPECT_NE(message(R"({"batch_streams": 0})").find("batch_streams"), std::string::npos);
}

// Every shipped config file parses and validates over the preset it is used with (hft-cpu.json
// over the small preset, the others over the note's defaults), and the GPU budget holds the
// settings docs/RESULTS.md reports for it.
TEST(HftConfigJson, ShippedConfigFilesAreValid) {
  namespace fs = std::filesystem;
  const auto read = [](const fs::path& p) {
    std::ifstream in(p);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  };
  int files = 0;
  for (const fs::path& dir : {fs::path(HTFR_CONFIG_DIR), fs::path(HTFR_CONFIG_DIR) / "ablation"}) {
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.path().extension() != ".json") continue;
      const HftConfig base = entry.path().filename() == "hft-cpu.json" ? small_hft_config()
                                                                        : default_hft_config();
      SCOPED_TRACE(entry.path().string());
      EXPECT_NO_THROW(hft_config_from_json(read(entry.path()), base).validate());
      ++files;
    }
  }
  EXPECT_GE(files, 20);
  const HftConfig gpu = hft_config_from_json(read(fs::path(HTFR_CONFIG_DIR) / "hft-gpu.json"));
  EXPECT_EQ(gpu.stage2.htfr.num_tensors, 65536);
  EXPECT_EQ(gpu.stage2.htfr.top_k, 256);
  EXPECT_EQ(gpu.stage2.init_rows, 131072);
  EXPECT_FLOAT_EQ(gpu.context.stage1_weight, 0.01f);
  EXPECT_EQ(gpu.pretrain_epochs, 3);
  EXPECT_EQ(gpu.finetune_epochs, 1);
  EXPECT_EQ(gpu.stage1.htfr.num_tensors, default_hft_config().stage1.htfr.num_tensors);
}

TEST(HftConfigJson, RoundTripsThePoolUpkeepKeysAndNamesBadValues) {
  HftConfig c = tiny_config();
  EXPECT_EQ(c.stage1.init, HftInit::random);  // the CPU sizes keep the random start
  EXPECT_EQ(default_hft_config().stage1.init, HftInit::data);  // the measured better default
  EXPECT_EQ(default_hft_config().stage2.init_rows, 65536);
  EXPECT_EQ(c.stage2.maintenance.reseed_every, 0);
  EXPECT_FALSE(c.stage1.track_usage || c.stage1.prune_after_pretrain);
  c.stage1.init = HftInit::data;
  c.stage1.init_rows = 333;
  c.stage1.init_iterations = 7;
  c.stage2.maintenance.usage_decay = 0.5f;
  c.stage2.maintenance.queue_capacity = 17;
  c.stage2.maintenance.queue_per_step = 3;
  c.stage2.maintenance.reseed_every = 5;
  c.stage2.maintenance.reseed_count = 4;
  c.stage2.maintenance.class_value = 2.5f;
  c.stage2.maintenance.reseed.band = 0.25f;
  c.stage2.maintenance.reseed.tau = 0.125f;
  c.stage2.maintenance.reseed.seed = 99;
  c.stage1.track_usage = true;
  c.stage2.prune_after_pretrain = true;
  c.stage2.prune_min_use = 1.5f;
  const HftConfig back = hft_config_from_json(to_json(c));
  EXPECT_EQ(to_json(back), to_json(c));
  EXPECT_EQ(back.stage1.init, HftInit::data);
  EXPECT_EQ(back.stage1.init_rows, 333);
  EXPECT_EQ(back.stage1.init_iterations, 7);
  EXPECT_TRUE(back.stage1.track_usage);
  const MaintenanceConfig& m = back.stage2.maintenance;
  EXPECT_EQ(m.usage_decay, 0.5f);
  EXPECT_EQ(m.queue_capacity, 17);
  EXPECT_EQ(m.queue_per_step, 3);
  EXPECT_EQ(m.reseed_every, 5);
  EXPECT_EQ(m.reseed_count, 4);
  EXPECT_EQ(m.class_value, 2.5f);
  EXPECT_EQ(m.reseed.band, 0.25f);
  EXPECT_EQ(m.reseed.tau, 0.125f);
  EXPECT_EQ(m.reseed.seed, 99u);
  EXPECT_TRUE(back.stage2.prune_after_pretrain);
  EXPECT_EQ(back.stage2.prune_min_use, 1.5f);
  // A partial maintenance object overrides only its keys.
  const HftConfig partial =
      hft_config_from_json(R"({"stage2": {"maintenance": {"reseed_every": 9}}})", c);
  EXPECT_EQ(partial.stage2.maintenance.reseed_every, 9);
  EXPECT_EQ(partial.stage2.maintenance.queue_capacity, 17);

  const auto message = [&](const std::string& text) {
    try {
      hft_config_from_json(text, tiny_config());
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const auto names = [&](const std::string& text, const std::string& key) {
    const std::string error = message(text);
    return error.find(key) != std::string::npos
               ? ::testing::AssertionSuccess()
               : ::testing::AssertionFailure() << text << ": " << error;
  };
  EXPECT_TRUE(names(R"({"stage1": {"init": "kmeans"}})", "stage1.init"));
  EXPECT_TRUE(names(R"({"stage1": {"init": "kmeans"}})", "random, data"));
  EXPECT_TRUE(names(R"({"stage1": {"init_rows": 0}})", "stage1.init_rows"));
  EXPECT_TRUE(names(R"({"stage2": {"init_iterations": 0}})", "stage2.init_iterations"));
  EXPECT_TRUE(names(R"({"stage2": {"init_rows": "many"}})", "stage2.init_rows"));
  EXPECT_TRUE(names(R"({"stage1": {"track_usage": "yes"}})", "stage1.track_usage"));
  EXPECT_TRUE(names(R"({"stage2": {"maintenance": {"usage_decay": 0}}})",
                    "stage2.maintenance.usage_decay"));
  EXPECT_TRUE(names(R"({"stage2": {"maintenance": {"usage_decay": 1.5}}})",
                    "stage2.maintenance.usage_decay"));
  EXPECT_TRUE(names(R"({"stage1": {"maintenance": {"queue_capacity": 0}}})",
                    "stage1.maintenance.queue_capacity"));
  EXPECT_TRUE(names(R"({"stage1": {"maintenance": {"queue_per_step": -1}}})",
                    "stage1.maintenance.queue_per_step"));
  EXPECT_TRUE(names(R"({"stage1": {"maintenance": {"reseed_every": -2}}})",
                    "stage1.maintenance.reseed_every"));
  EXPECT_TRUE(names(R"({"stage2": {"maintenance": {"reseed_count": -1}}})",
                    "stage2.maintenance.reseed_count"));
  EXPECT_TRUE(names(R"({"stage2": {"maintenance": {"reseed_band": 0}}})",
                    "stage2.maintenance.reseed_band"));
  EXPECT_TRUE(names(R"({"stage2": {"maintenance": {"reseed_tau": -1}}})",
                    "stage2.maintenance.reseed_tau"));
  EXPECT_TRUE(names(R"({"stage2": {"maintenance": {"reseed_evry": 3}}})",
                    "stage2.maintenance.reseed_evry"));
  EXPECT_TRUE(names(R"({"stage1": {"maintenance": 3}})", "stage1.maintenance."));
  EXPECT_TRUE(names(R"({"stage2": {"prune_min_use": -1}})", "stage2.prune_min_use"));
  EXPECT_TRUE(names(R"({"stage2": {"prune_after_pretrain": 1}})", "stage2.prune_after_pretrain"));
}

TEST(Hft, TeacherFiguresMatchTheCapture) {
  const CaptureReader reader(kFixture.string());
  HftModel model = HftModel::create(tiny_config(), test_embedding(), reader, Backend::cpu);
  const HftData data = model.load_data(reader);
  EXPECT_EQ(data.rows(), 48);
  EXPECT_EQ(data.streams(), 3);
  double nll = 0, n = 0, covered = 0;
  for (std::size_t s = 0; s < reader.shard_count(); ++s) {
    const CaptureShard sh = reader.read_shard(s);
    for (int64_t r = 0; r < sh.positions; ++r) {
      if (!sh.scored[r]) continue;
      nll -= half_to_float(sh.compact_logprobs[r * 4096 + sh.target_compact[r]]);
      covered += sh.target_compact[r] != 4095;
      ++n;
    }
  }
  const HftEvalReport rep = model.evaluate(data);
  EXPECT_EQ(rep.tokens, static_cast<int64_t>(n));
  EXPECT_NEAR(rep.teacher_ppl, std::exp(nll / n), 1e-4 * std::exp(nll / n));
  EXPECT_NEAR(rep.coverage, covered / n, 1e-12);
  // Untrained: close to uniform over 4,096 classes.
  EXPECT_GT(rep.student_ppl, 2000);
  EXPECT_LT(rep.student_ppl, 8000);
  EXPECT_GE(rep.top1, 0);
  EXPECT_LE(rep.top1, 1);
  EXPECT_GT(rep.kl, 0);
}

TEST(Hft, LearnsTheTrainingWindows) {
  const CaptureReader reader(kFixture.string());
  HftConfig c = tiny_config();
  c.pretrain_epochs = 12;
  c.finetune_epochs = 4;
  HftModel model = HftModel::create(c, test_embedding(), reader, Backend::cpu);
  const HftData data = model.load_data(reader);
  const HftEvalReport before = model.evaluate(data);
  int64_t steps = 0;
  double last_loss2 = NAN;
  model.train(
      data,
      [&](const HftTrainProgress& p) {
        ++steps;
        if (!std::isnan(p.stage2_loss)) last_loss2 = p.stage2_loss;
        EXPECT_LE(p.epoch_tokens, p.epoch_total);
      },
      {});
  EXPECT_EQ(model.epochs_done(), 16);
  EXPECT_EQ(steps, 16 * 2 * 16);  // 3 streams in groups of 2: 2 groups x 16 positions
  EXPECT_TRUE(std::isfinite(last_loss2));
  const HftEvalReport after = model.evaluate(data);
  EXPECT_LT(after.student_ppl, before.student_ppl / 20) << before.student_ppl << " -> "
                                                        << after.student_ppl;
  EXPECT_LT(after.kl, before.kl / 2);
  EXPECT_GT(after.stage1_cosine, before.stage1_cosine);
  // The ablations run and cost something.
  const HftEvalReport no_tail = model.evaluate(data, HftMode::teacher_free, true, false);
  EXPECT_GT(no_tail.student_ppl, after.student_ppl);
  const HftEvalReport leaky = model.evaluate(data, HftMode::leaky);
  EXPECT_TRUE(std::isfinite(leaky.student_ppl));
}

TEST(Hft, CheckpointRoundTripAndExactResume) {
  const CaptureReader reader(kFixture.string());
  const HftConfig c = tiny_config();  // 2 pretraining epochs, 1 fine-tuning
  HftModel straight = HftModel::create(c, test_embedding(), reader, Backend::cpu);
  const HftData data = straight.load_data(reader);
  straight.train(data, {}, {});

  HftModel first = HftModel::create(c, test_embedding(), reader, Backend::cpu);
  first.train_epoch(data, false);
  const fs::path path = temp_path("resume.safetensors");
  first.save(path.string());
  HftModel resumed = HftModel::load(path.string(), Backend::cpu);
  EXPECT_EQ(resumed.epochs_done(), 1);
  EXPECT_EQ(resumed.parameters_flat(), first.parameters_flat());
  const HftData data2 = resumed.load_data(reader);
  EXPECT_EQ(resumed.evaluate(data2).student_ppl, first.evaluate(data).student_ppl);
  resumed.train(data2, {}, {});
  EXPECT_EQ(resumed.epochs_done(), 3);
  EXPECT_EQ(resumed.steps_done(), straight.steps_done());
  EXPECT_EQ(resumed.parameters_flat(), straight.parameters_flat());
  EXPECT_EQ(resumed.evaluate(data2).student_ppl, straight.evaluate(data).student_ppl);

  // A damaged checkpoint is a FormatError; the intact one stays readable.
  const std::string bytes = read_file(path.string());
  const fs::path broken = temp_path("broken.safetensors");
  write_file_atomic(broken.string(), bytes.substr(0, bytes.size() / 2));
  EXPECT_THROW(HftModel::load(broken.string(), Backend::cpu), FormatError);
  EXPECT_THROW(HftModel::load(temp_path("missing.safetensors").string(), Backend::cpu), IoError);
  EXPECT_NO_THROW(HftModel::load(path.string(), Backend::cpu));
  fs::remove(path);
  fs::remove(broken);
}

TEST(Hft, CompactEmbeddingFileIsCheckedAgainstTheCapture) {
  const CaptureReader reader(kFixture.string());
  const CaptureManifest& m = reader.manifest();
  const auto emb = random_normal(4096 * 640, 5);
  std::string ids(m.compact_vocab.token_ids.size() * 4, '\0');
  for (std::size_t i = 0; i < m.compact_vocab.token_ids.size(); ++i)
    for (int b = 0; b < 4; ++b)
      ids[i * 4 + b] = static_cast<char>((uint32_t(m.compact_vocab.token_ids[i]) >> (8 * b)) & 0xff);
  const auto write = [&](const std::string& model_sha, const std::string& vocab_sha) {
    SafetensorsWriter w;
    w.set_metadata("format", "htfr-compact-embedding");
    w.set_metadata("version", "1");
    w.set_metadata("model_sha256", model_sha);
    w.set_metadata("compact_vocab_sha256", vocab_sha);
    w.add("embedding", ElementType::f32, {4096, 640}, emb);
    const fs::path p = temp_path("embedding.safetensors");
    w.write(p.string());
    return p.string();
  };
  EXPECT_EQ(read_compact_embedding(write(m.model.sha256, sha256_hex(ids)), m), emb);
  EXPECT_THROW(read_compact_embedding(write(std::string(64, '0'), sha256_hex(ids)), m),
               InvalidArgument);
  EXPECT_THROW(read_compact_embedding(write(m.model.sha256, sha256_hex("x")), m), InvalidArgument);
  fs::remove(temp_path("embedding.safetensors"));
}

// ---------------------------------------------------------------- the upkeep of the pools

using json = nlohmann::json;

/// Host copy of a stage's pool (1 or 2).
PoolParameters stage_pool(const HftModel& model, int stage) {
  const HftModel::Impl& I = HftInternals::of(model);
  return (stage == 1 ? I.stage1 : I.stage2)->pool().download(I.stream);
}

json statistics(const HftModel& model) { return json::parse(model.statistics_json()); }

/// Row i of a row-major array of rows of `width`.
std::vector<float> row(const std::vector<float>& a, int64_t i, int64_t width) {
  return std::vector<float>(a.begin() + i * width, a.begin() + (i + 1) * width);
}

/// Data init on the fixture's 48 rows: Stage 1 has fewer tensors than rows (every tensor from
/// k-means), Stage 2 more (48 tensors from data, the others as the random init made them).
HftConfig data_init_config() {
  HftConfig c = tiny_config();
  c.stage1.htfr.num_tensors = 16;
  c.stage1.init = HftInit::data;
  c.stage2.init = HftInit::data;
  return c;
}

TEST(HftPools, DataInitIsDeterministicAndReplacesTheRandomPools) {
  const CaptureReader reader(kFixture.string());
  const HftConfig c = data_init_config();
  HftConfig random = c;
  random.stage1.init = random.stage2.init = HftInit::random;
  HftModel a = HftModel::create(c, test_embedding(), reader, Backend::cpu);
  HftModel b = HftModel::create(c, test_embedding(), reader, Backend::cpu);
  HftModel r = HftModel::create(random, test_embedding(), reader, Backend::cpu);
  EXPECT_EQ(a.parameters_flat(), b.parameters_flat());
  const HftData data = a.load_data(reader);
  ASSERT_EQ(data.rows(), 48);

  const int64_t D1 = c.stage1.htfr.input_dim, D2 = c.stage2.htfr.input_dim;
  const int64_t M1 = c.stage1.htfr.output_dim, M2 = c.stage2.htfr.output_dim;
  const PoolParameters a1 = stage_pool(a, 1), r1 = stage_pool(r, 1);
  for (int64_t i = 0; i < 16; ++i) {
    EXPECT_NE(row(a1.normals, i, D1), row(r1.normals, i, D1)) << "stage 1 tensor " << i;
    // Controls: the mean Stage 1 target of the cluster, in all three columns.
    EXPECT_EQ(row(a1.controls, 3 * i, M1), row(a1.controls, 3 * i + 2, M1));
  }
  const PoolParameters a2 = stage_pool(a, 2), r2 = stage_pool(r, 2);
  for (int64_t i = 0; i < 96; ++i) {
    const bool from_data = i < 48;
    EXPECT_EQ(row(a2.normals, i, D2) != row(r2.normals, i, D2), from_data) << "tensor " << i;
    EXPECT_EQ(row(a2.controls, 3 * i, M2) != row(r2.controls, 3 * i, M2), from_data);
    if (!from_data) continue;
    // Centred teacher log-probabilities: each column sums to ~0 and favours some class.
    const std::vector<float> ctl = row(a2.controls, 3 * i + 1, M2);
    double sum = 0;
    for (float v : ctl) sum += v;
    EXPECT_NEAR(sum / M2, 0.0, 1e-4);
    EXPECT_GT(*std::max_element(ctl.begin(), ctl.end()), 5.0f);
    EXPECT_EQ(a2.use_count[i], 0.0f);
  }
  const json stats = statistics(a);
  EXPECT_EQ(stats["stage1"]["init"], "data");
  EXPECT_EQ(statistics(r)["stage2"]["init"], "random");
  // With the teacher's embeddings (the leaky mode), Stage 2's inputs are those the pool was fitted
  // on: it starts closer to the teacher than a random pool.
  EXPECT_LT(a.evaluate(data, HftMode::leaky).kl, r.evaluate(data, HftMode::leaky).kl);
  // And it trains.
  a.train(data, {}, {});
  EXPECT_TRUE(std::isfinite(a.evaluate(data).student_ppl));
}

/// Reseeding every 4 steps, 2 tensors per event, in both stages.
HftConfig reseeding_config() {
  HftConfig c = tiny_config();
  for (HftStageConfig* s : {&c.stage1, &c.stage2}) {
    s->maintenance.reseed_every = 4;
    s->maintenance.reseed_count = 2;
    s->maintenance.queue_per_step = 2;
  }
  return c;
}

TEST(HftPools, ReseedingMaintenanceReseedsDeterministicallyAndTrainingStaysFinite) {
  const CaptureReader reader(kFixture.string());
  const HftConfig c = reseeding_config();
  HftModel a = HftModel::create(c, test_embedding(), reader, Backend::cpu);
  HftModel b = HftModel::create(c, test_embedding(), reader, Backend::cpu);
  HftModel plain = HftModel::create(tiny_config(), test_embedding(), reader, Backend::cpu);
  const HftData data = a.load_data(reader);
  EXPECT_EQ(statistics(a)["stage1"].count("maintenance"), 0u);  // made when training starts
  a.train(data, {}, {});
  b.train(data, {}, {});
  plain.train(data, {}, {});
  EXPECT_EQ(a.parameters_flat(), b.parameters_flat());
  EXPECT_NE(a.parameters_flat(), plain.parameters_flat());
  const json stats = statistics(a);
  for (const char* stage : {"stage1", "stage2"}) {
    const json& m = stats[stage]["maintenance"];
    // 3 epochs of 32 steps (Stage 1 trains in fine-tuning too); each step of two streams queues
    // 2 rows, each of one stream 1.
    EXPECT_EQ(m["steps"], 96) << stage;
    EXPECT_EQ(m["rows_queued"], 3 * (16 * 2 + 16 * 1)) << stage;
    EXPECT_EQ(m["reseed_events"], 24) << stage;
    EXPECT_GT(m["tensors_reseeded"].get<int64_t>(), 0) << stage;
    EXPECT_LE(m["tensors_reseeded"].get<int64_t>(), 48) << stage;
    EXPECT_GT(m["active_fraction"].get<double>(), 0) << stage;
    EXPECT_LE(m["usage_p10"].get<double>(), m["usage_median"].get<double>());
    EXPECT_LE(m["usage_median"].get<double>(), m["usage_p90"].get<double>());
  }
  const HftEvalReport rep = a.evaluate(data);
  EXPECT_TRUE(std::isfinite(rep.student_ppl));
  EXPECT_TRUE(std::isfinite(rep.kl));
  for (float v : a.parameters_flat()) ASSERT_TRUE(std::isfinite(v));
}

TEST(HftPools, UsageTrackingAloneLeavesTrainingUnchanged) {
  const CaptureReader reader(kFixture.string());
  HftConfig c = tiny_config();
  c.stage1.track_usage = c.stage2.track_usage = true;
  HftModel tracked = HftModel::create(c, test_embedding(), reader, Backend::cpu);
  HftModel plain = HftModel::create(tiny_config(), test_embedding(), reader, Backend::cpu);
  const HftData data = tracked.load_data(reader);
  tracked.train(data, {}, {});
  plain.train(data, {}, {});
  EXPECT_EQ(tracked.parameters_flat(), plain.parameters_flat());
  const json m = statistics(tracked)["stage2"]["maintenance"];
  EXPECT_EQ(m["steps"], 96);
  EXPECT_EQ(m["reseed_events"], 0);
  EXPECT_EQ(m["tensors_reseeded"], 0);
  EXPECT_GT(m["active_fraction"].get<double>(), 0);
  EXPECT_EQ(statistics(plain)["stage2"].count("maintenance"), 0u);
}

TEST(HftPools, PruningAfterPretrainingKeepsExactlyTheUsedTensors) {
  const CaptureReader reader(kFixture.string());
  HftConfig c = tiny_config();
  c.stage1.htfr.num_tensors = 160;  // more than two epochs of 48 rows can all select
  c.stage1.prune_after_pretrain = c.stage2.prune_after_pretrain = true;
  HftConfig keep = c;
  keep.stage1.prune_after_pretrain = keep.stage2.prune_after_pretrain = false;
  HftModel pruned = HftModel::create(c, test_embedding(), reader, Backend::cpu);
  HftModel full = HftModel::create(keep, test_embedding(), reader, Backend::cpu);
  const HftData data = pruned.load_data(reader);
  pruned.train_epoch(data, false);
  EXPECT_EQ(pruned.config().stage1.htfr.num_tensors, 160);  // not after the first epoch
  pruned.train_epoch(data, false);
  full.train_epoch(data, false);
  full.train_epoch(data, false);
  const json before = statistics(full), after = statistics(pruned);
  for (int stage : {1, 2}) {
    const std::string name = "stage" + std::to_string(stage);
    const HftStageConfig& s = stage == 1 ? pruned.config().stage1 : pruned.config().stage2;
    const int64_t N = stage == 1 ? 160 : 96, used = before[name]["used_tensors"].get<int64_t>();
    EXPECT_LT(used, N) << name;
    EXPECT_EQ(s.htfr.num_tensors, used) << name;
    EXPECT_EQ(after[name]["num_tensors"], used);
    EXPECT_EQ(after[name]["used_tensors"], used);
    EXPECT_EQ(after[name]["steps"], 0);  // the optimiser restarted
    EXPECT_EQ(after[name]["prune"]["before"], N);
    EXPECT_EQ(after[name]["prune"]["after"], used);
    EXPECT_EQ(after[name]["prune"]["removed"], N - used);
    // Tensor j of the pruned pool is the j-th used tensor of the same training without pruning.
    const PoolParameters p = stage_pool(pruned, stage), q = stage_pool(full, stage);
    const int64_t D = p.input_dim, M = p.output_dim;
    int64_t j = 0;
    for (int64_t i = 0; i < N; ++i) {
      if (q.use_count[i] == 0) continue;
      ASSERT_LT(j, used);
      EXPECT_EQ(row(p.normals, j, D), row(q.normals, i, D));
      EXPECT_EQ(row(p.controls, j, 3 * M), row(q.controls, i, 3 * M));
      EXPECT_EQ(p.offsets[j], q.offsets[i]);
      EXPECT_EQ(p.use_count[j], q.use_count[i]);
      ++j;
    }
    EXPECT_EQ(j, used);
  }
  // The checkpoint holds the pruned model: it loads, evaluates identically and trains on
  // exactly as the model in memory does.
  const fs::path path = temp_path("pruned.safetensors");
  pruned.save(path.string());
  HftModel loaded = HftModel::load(path.string(), Backend::cpu);
  EXPECT_EQ(loaded.config().stage1.htfr.num_tensors, pruned.config().stage1.htfr.num_tensors);
  EXPECT_EQ(to_json(loaded.config()), to_json(pruned.config()));
  EXPECT_EQ(loaded.parameters_flat(), pruned.parameters_flat());
  EXPECT_EQ(statistics(loaded)["stage2"]["prune"], after["stage2"]["prune"]);
  const HftEvalReport e1 = pruned.evaluate(data), e2 = loaded.evaluate(data);
  EXPECT_EQ(e1.student_ppl, e2.student_ppl);
  EXPECT_EQ(e1.kl, e2.kl);
  EXPECT_EQ(e1.stage1_cosine, e2.stage1_cosine);
  EXPECT_EQ(loaded.sequence_logits({2, 17, 300}), pruned.sequence_logits({2, 17, 300}));
  pruned.train(data, {}, {});
  loaded.train(data, {}, {});
  EXPECT_EQ(loaded.epochs_done(), 3);
  EXPECT_EQ(loaded.parameters_flat(), pruned.parameters_flat());
  EXPECT_TRUE(std::isfinite(loaded.evaluate(data).student_ppl));
  fs::remove(path);
}

TEST(HftPools, MaintainersRestartOnThePrunedPools) {
  const CaptureReader reader(kFixture.string());
  HftConfig c = reseeding_config();
  c.stage1.prune_after_pretrain = c.stage2.prune_after_pretrain = true;
  HftModel model = HftModel::create(c, test_embedding(), reader, Backend::cpu);
  const HftData data = model.load_data(reader);
  model.train(data, {}, {});
  const json stats = statistics(model);
  for (const char* stage : {"stage1", "stage2"}) {
    // Counters of the fine-tuning epoch only: 32 steps, a reseed every 4.
    EXPECT_EQ(stats[stage]["maintenance"]["steps"], 32) << stage;
    EXPECT_EQ(stats[stage]["maintenance"]["reseed_events"], 8) << stage;
    EXPECT_EQ(stats[stage]["num_tensors"], stats[stage]["prune"]["after"]) << stage;
  }
  EXPECT_TRUE(std::isfinite(model.evaluate(data).student_ppl));
}

TEST(HftPools, PruningBelowTopKClampsIt) {
  const CaptureReader reader(kFixture.string());
  HftConfig c = tiny_config();
  c.pretrain_epochs = 1;
  c.stage2.prune_after_pretrain = true;
  c.stage2.prune_min_use = 1e30f;  // no tensor is used that often: the most used one stays
  HftModel model = HftModel::create(c, test_embedding(), reader, Backend::cpu);
  const HftData data = model.load_data(reader);
  model.train(data, {}, {});
  EXPECT_EQ(model.config().stage2.htfr.num_tensors, 1);
  EXPECT_EQ(model.config().stage2.htfr.top_k, 1);
  EXPECT_NO_THROW(model.config().validate());
  EXPECT_TRUE(std::isfinite(model.evaluate(data).student_ppl));
}

TEST(Hft, Stage1GradientNormIsReportedInFineTuningOnly) {
  const CaptureReader reader(kFixture.string());
  HftModel model = HftModel::create(tiny_config(), test_embedding(), reader, Backend::cpu);
  const HftData data = model.load_data(reader);
  int64_t pretrain_reads = 0, finetune_reads = 0;
  model.train(
      data,
      [&](const HftTrainProgress& p) {
        if (std::isnan(p.stage2_loss)) {  // not read back this step
          EXPECT_TRUE(std::isnan(p.stage1_grad_norm));
          return;
        }
        if (!p.finetune) {
          ++pretrain_reads;
          EXPECT_TRUE(std::isnan(p.stage1_grad_norm)) << "step " << p.step;
        } else {
          ++finetune_reads;
          EXPECT_TRUE(std::isfinite(p.stage1_grad_norm)) << "step " << p.step;
          EXPECT_GT(p.stage1_grad_norm, 0) << "step " << p.step;
        }
      },
      {});
  EXPECT_GT(pretrain_reads, 0);
  EXPECT_GT(finetune_reads, 0);
}

TEST(HftCuda, EvaluatesLikeTheCpuAndTrainsDeterministically) {
  HTFR_SKIP_WITHOUT_GPU();
  const CaptureReader reader(kFixture.string());
  HftConfig c = tiny_config();
  for (auto* s : {&c.stage1.htfr, &c.stage2.htfr}) s->precision = Precision::fp32;
  HftModel cpu = HftModel::create(c, test_embedding(), reader, Backend::cpu);
  const HftData cpu_data = cpu.load_data(reader);
  cpu.train(cpu_data, {}, {});
  const fs::path path = temp_path("gpu.safetensors");
  cpu.save(path.string());
  // The same parameters on the GPU: forward-only evaluation agrees with the CPU's.
  HftModel gpu = HftModel::load(path.string(), Backend::cuda);
  const HftData gpu_data = gpu.load_data(reader);
  for (HftMode mode : {HftMode::teacher_free, HftMode::teacher_assisted, HftMode::leaky}) {
    const HftEvalReport a = cpu.evaluate(cpu_data, mode), b = gpu.evaluate(gpu_data, mode);
    EXPECT_NEAR(b.student_ppl, a.student_ppl, 1e-3 * a.student_ppl) << to_string(mode);
    EXPECT_NEAR(b.teacher_ppl, a.teacher_ppl, 1e-4 * a.teacher_ppl);
    EXPECT_NEAR(b.kl, a.kl, 1e-3 * (1 + a.kl));
    EXPECT_NEAR(b.stage1_cosine, a.stage1_cosine, 1e-4);
  }
  // Training on the GPU: two runs are identical bit for bit, and learn like the CPU.
  HftModel g1 = HftModel::create(c, test_embedding(), reader, Backend::cuda);
  HftModel g2 = HftModel::create(c, test_embedding(), reader, Backend::cuda);
  const HftData d1 = g1.load_data(reader);
  const double start = g1.evaluate(d1).student_ppl;
  g1.train(d1, {}, {});
  g2.train(d1, {}, {});
  EXPECT_EQ(g1.parameters_flat(), g2.parameters_flat());
  const double cpu_ppl = cpu.evaluate(cpu_data).student_ppl, gpu_ppl = g1.evaluate(d1).student_ppl;
  EXPECT_LT(gpu_ppl, start / 2);
  EXPECT_NEAR(std::log(gpu_ppl), std::log(cpu_ppl), 0.25);
  fs::remove(path);
}

TEST(HftCuda, DataInitMatchesTheCpu) {
  HTFR_SKIP_WITHOUT_GPU();
  const CaptureReader reader(kFixture.string());
  const HftConfig c = data_init_config();
  HftModel cpu = HftModel::create(c, test_embedding(), reader, Backend::cpu);
  HftModel gpu = HftModel::create(c, test_embedding(), reader, Backend::cuda);
  HftModel again = HftModel::create(c, test_embedding(), reader, Backend::cuda);
  EXPECT_EQ(gpu.parameters_flat(), again.parameters_flat());
  for (int stage : {1, 2}) {
    const PoolParameters p = stage_pool(cpu, stage), q = stage_pool(gpu, stage);
    EXPECT_TRUE(all_close(q.normals, p.normals, 1e-3, 1e-3)) << "stage " << stage;
    EXPECT_TRUE(all_close(q.offsets, p.offsets, 1e-3, 1e-3)) << "stage " << stage;
    EXPECT_TRUE(all_close(q.dpos, p.dpos, 1e-3, 1e-3)) << "stage " << stage;
    EXPECT_TRUE(all_close(q.tau, p.tau, 0, 0)) << "stage " << stage;
    EXPECT_TRUE(all_close(q.controls, p.controls, 1e-3, 1e-3)) << "stage " << stage;
  }
}

TEST(HftCuda, PoolUpkeepRunsOnTheDeviceLikeOnTheCpu) {
  HTFR_SKIP_WITHOUT_GPU();
  const CaptureReader reader(kFixture.string());
  HftConfig c = reseeding_config();
  c.stage1.htfr.num_tensors = 16;
  c.stage1.init = c.stage2.init = HftInit::data;
  c.stage1.prune_after_pretrain = c.stage2.prune_after_pretrain = true;
  HftModel a = HftModel::create(c, test_embedding(), reader, Backend::cuda);
  HftModel b = HftModel::create(c, test_embedding(), reader, Backend::cuda);
  HftModel cpu = HftModel::create(c, test_embedding(), reader, Backend::cpu);
  const HftData data = a.load_data(reader), cpu_data = cpu.load_data(reader);
  int64_t finetune_reads = 0;
  a.train(
      data,
      [&](const HftTrainProgress& p) {
        if (std::isnan(p.stage2_loss)) return;
        EXPECT_EQ(std::isfinite(p.stage1_grad_norm), p.finetune) << "step " << p.step;
        if (p.finetune) {
          ++finetune_reads;
          EXPECT_GT(p.stage1_grad_norm, 0);
        }
      },
      {});
  b.train(data, {}, {});
  cpu.train(cpu_data, {}, {});
  EXPECT_GT(finetune_reads, 0);
  EXPECT_EQ(a.parameters_flat(), b.parameters_flat());
  const json stats = statistics(a), cpu_stats = statistics(cpu);
  for (const char* stage : {"stage1", "stage2"}) {
    // The maintainer restarted after pruning: one fine-tuning epoch of 32 steps.
    EXPECT_EQ(stats[stage]["maintenance"]["steps"], 32) << stage;
    EXPECT_EQ(stats[stage]["maintenance"]["reseed_events"], 8) << stage;
    EXPECT_GT(stats[stage]["maintenance"]["tensors_reseeded"].get<int64_t>(), 0) << stage;
    EXPECT_EQ(stats[stage]["maintenance"]["rows_queued"],
              cpu_stats[stage]["maintenance"]["rows_queued"]);
    EXPECT_LE(stats[stage]["prune"]["after"].get<int64_t>(),
              stats[stage]["prune"]["before"].get<int64_t>());
  }
  const HftEvalReport rep = a.evaluate(data);
  EXPECT_TRUE(std::isfinite(rep.student_ppl));
  // The pruned checkpoint loads and evaluates identically.
  const fs::path path = temp_path("gpu_pruned.safetensors");
  a.save(path.string());
  HftModel loaded = HftModel::load(path.string(), Backend::cuda);
  const HftData loaded_data = loaded.load_data(reader);
  EXPECT_EQ(loaded.parameters_flat(), a.parameters_flat());
  EXPECT_EQ(loaded.evaluate(loaded_data).student_ppl, rep.student_ppl);
  fs::remove(path);
}

}  // namespace
}  // namespace htfr

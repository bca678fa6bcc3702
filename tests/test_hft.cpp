// The two-stage HFT on a small real capture (tests/data/capture_fixture: 3 windows of 16 tokens of
// Gemma 3 270M): configuration round trip, evaluation against a direct computation, learning,
// checkpoint round trip and exact resume, and the CUDA backend against the CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

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

}  // namespace
}  // namespace htfr

// The information-flow checks (include/htfr/verify.hpp) on the tiny HFT of the fixture: each check
// measures what it claims (counted independently where it counts), the exact checks hold, and
// models built without a signal (no phases, no tail) fail the check of that signal. CUDA runs of
// the same checks agree with the CPU.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <set>

#include "detail/hft_impl.hpp"
#include "hft_fixture.hpp"
#include "htfr/capture.hpp"
#include "htfr/error.hpp"
#include "htfr/session.hpp"
#include "htfr/verify.hpp"
#include "test_util.hpp"

namespace htfr {
namespace {

using namespace test;

/// The fixture's three windows of 16 tokens, whole.
VerifyOptions fixture_options() {
  VerifyOptions o;
  o.sequences = 3;
  o.length = 16;
  o.ablate_offsets = 8;
  o.position_buckets = 4;
  o.coupling_rows = 0;
  return o;
}

/// An untrained model of the tiny configuration with `edit` applied to its config.
template <typename Edit>
HftModel fresh_model(Edit edit, Backend backend = Backend::cpu) {
  const CaptureReader reader(kFixture.string());
  HftConfig c = tiny_config();
  edit(c);
  return HftModel::create(c, test_embedding(), reader, backend);
}

struct Trained {
  CaptureReader reader{kFixture.string()};
  HftModel model;
  HftData data;
  explicit Trained(Backend backend = Backend::cpu)
      : model(HftModel::load(trained_checkpoint(Precision::fp32), backend)),
        data(model.load_data(reader)) {}
};

TEST(Verify, CausalMaskHoldsBitForBit) {
  const Trained t;
  const VerifyCheck c = check_causal_mask(t.model, t.data, fixture_options());
  EXPECT_TRUE(c.passed);
  EXPECT_EQ(c.figure("max_abs_diff_before_m"), 0.0);
  EXPECT_GT(c.figure("max_abs_diff_from_m"), 0.0);  // the injected tokens do reach later logits
  EXPECT_EQ(c.figure("m"), 8.0);
}

TEST(Verify, CachedProjectionsAndSessionMatchFreshLogits) {
  const Trained t;
  HftSessionOptions so;
  so.sessions = 3;
  HftSession session = HftSession::load(trained_checkpoint(Precision::fp32), Backend::cpu, 0, so);
  const VerifyCheck c = check_cached_projections(t.model, session, t.data, fixture_options());
  EXPECT_TRUE(c.passed);
  EXPECT_LE(c.figure("max_abs_diff_cached_vectors"), 1e-6 * c.figure("logit_scale"));
  EXPECT_LE(c.figure("max_abs_diff_session"), 1e-5 * c.figure("logit_scale"));
  EXPECT_EQ(c.figure("positions"), 48.0);
  // A session of another size is refused.
  so.sessions = 2;
  HftSession two = HftSession::load(trained_checkpoint(Precision::fp32), Backend::cpu, 0, so);
  EXPECT_THROW(check_cached_projections(t.model, two, t.data, fixture_options()), InvalidArgument);
}

TEST(Verify, TokenAblationMeasuresEveryOffset) {
  const Trained t;
  const VerifyCheck c = check_token_ablation(t.model, t.data, fixture_options());
  const auto detail = nlohmann::json::parse(c.detail_json);
  ASSERT_EQ(detail["per_offset"].size(), 8u);
  for (const auto& o : detail["per_offset"]) {
    ASSERT_FALSE(o["kl"].is_null());
    EXPECT_GE(o["kl"].get<double>(), 0.0);
    EXPECT_LE(o["sequences"].get<int64_t>(), 3);
  }
  // The last token reaches the prediction directly (window slot 0 and tail slot 0).
  EXPECT_GT(c.figure("kl_offset0"), 0.0);
  EXPECT_TRUE(std::isfinite(c.figure("mean_delta_log_p_unk")));
  // Whether it passes is the model's business; the verdict follows its own figures.
  const bool every = std::all_of(detail["per_offset"].begin(), detail["per_offset"].end(),
                                 [](const nlohmann::json& o) { return o["kl"].get<double>() > 0; });
  EXPECT_EQ(c.passed, every && c.figure("kl_recent_quarter") > c.figure("kl_oldest_quarter"));
}

TEST(Verify, PhasePermutationDetectsWhetherPositionsAreRead) {
  const Trained t;
  const VerifyCheck with = check_positions(t.model, t.data, fixture_options());
  EXPECT_TRUE(std::isfinite(with.figure("ppl")));
  EXPECT_NE(with.figure("ppl_phases_permuted"), with.figure("ppl"));  // phases reach the logits
  EXPECT_EQ(nlohmann::json::parse(with.detail_json)["per_range"].size(), 4u);
  // A model without phase features cannot tell the permutation apart: the check fails.
  HftModel flat = fresh_model([](HftConfig& c) { c.context.phase_weight = 0.0f; });
  const HftData data = flat.load_data(t.reader);
  const VerifyCheck without = check_positions(flat, data, fixture_options());
  EXPECT_EQ(without.figure("ppl_phases_permuted"), without.figure("ppl"));
  EXPECT_FALSE(without.passed);
}

TEST(Verify, TailCheckFailsWithoutATail) {
  HftModel m = fresh_model([](HftConfig& c) { c.context.tail_weight = 0.0f; });
  const CaptureReader reader(kFixture.string());
  const HftData data = m.load_data(reader);
  const VerifyCheck c = check_tail(m, data, fixture_options());
  EXPECT_EQ(c.figure("kl_rise"), 0.0);
  EXPECT_FALSE(c.passed);
  const Trained t;
  const VerifyCheck used = check_tail(t.model, t.data, fixture_options());
  EXPECT_NE(used.figure("kl_rise"), 0.0);
  EXPECT_EQ(used.passed, used.figure("kl_rise") >= 0.10);
}

TEST(Verify, NgramCollisionsCountDistinctNgrams) {
  for (const int64_t buckets : {int64_t{4}, int64_t{1} << 20}) {
    HftModel m = fresh_model([&](HftConfig& c) { c.context.bloom_size = buckets; });
    const CaptureReader reader(kFixture.string());
    const HftData data = m.load_data(reader);
    const VerifyCheck c = check_ngram_collisions(m, data, fixture_options());
    // Distinct n-grams of the configured orders over the three sequences, counted directly.
    const HftData::Impl& d = HftInternals::of(data);
    std::set<std::vector<int32_t>> distinct;
    for (int64_t s = 0; s < 3; ++s)
      for (int64_t q = 0; q < 16; ++q)
        for (int n : m.config().context.ngram_orders)
          if (q - n + 1 >= 0) {
            const auto* at = d.host_tokens.data() + s * d.stride;
            std::vector<int32_t> key{n};
            key.insert(key.end(), at + q - n + 1, at + q + 1);
            distinct.insert(key);
          }
    EXPECT_EQ(c.figure("distinct_ngrams"), static_cast<double>(distinct.size()));
    EXPECT_GT(c.figure("distinct_ngrams"), 0.0);
    if (buckets == 4) {
      EXPECT_EQ(c.figure("used_buckets"), 4.0);
      EXPECT_EQ(c.figure("share_of_ngrams_sharing_a_bucket"), 1.0);
    } else {
      EXPECT_LT(c.figure("share_of_ngrams_sharing_a_bucket"), 0.05);
    }
  }
}

TEST(Verify, Stage1ProxyFiguresFollowTheEvaluations) {
  const Trained t;
  const VerifyCheck c = check_stage1_proxy(t.model, t.data, fixture_options());
  const HftEvalReport tf = t.model.evaluate(t.data);
  const HftEvalReport off = t.model.evaluate(t.data, HftMode::teacher_free, false);
  const HftEvalReport leaky = t.model.evaluate(t.data, HftMode::leaky);
  EXPECT_EQ(c.figure("stage1_cosine"), tf.stage1_cosine);
  EXPECT_EQ(c.figure("ppl_teacher_free"), tf.student_ppl);
  EXPECT_EQ(c.figure("ppl_without_stage1"), off.student_ppl);
  EXPECT_EQ(c.figure("ppl_teacher_features_leaky"), leaky.student_ppl);
  const double reference = std::log(off.student_ppl / leaky.student_ppl);
  if (reference > 0) {
    EXPECT_NEAR(c.figure("share_of_reduction_kept"),
                std::log(off.student_ppl / tf.student_ppl) / reference, 1e-12);
  }
  // One epoch on 48 rows does not reach the note's cosine.
  EXPECT_LT(tf.stage1_cosine, 0.9);
  EXPECT_FALSE(c.passed);
}

TEST(Verify, StageCouplingSeesAGradientInEveryFineTuningStep) {
  const CaptureReader reader(kFixture.string());
  HftModel probe = HftModel::load(trained_checkpoint(Precision::fp32), Backend::cpu);
  const HftData data = probe.load_data(reader);
  const std::vector<float> before = probe.parameters_flat();
  const VerifyCheck c = check_stage_coupling(probe, data, fixture_options());
  EXPECT_TRUE(c.passed);
  EXPECT_GE(c.figure("steps_read"), 1.0);
  EXPECT_GT(c.figure("grad_norm_min"), 0.0);
  EXPECT_NE(probe.parameters_flat(), before);  // the probe did fine-tune
  // A model loaded for inference cannot be the probe.
  HftModel frozen = HftModel::load(trained_checkpoint(Precision::fp32), Backend::cpu, 0, false);
  EXPECT_THROW(check_stage_coupling(frozen, data, fixture_options()), InvalidArgument);
}

TEST(Verify, FullReportOnACheckpoint) {
  const CaptureReader reader(kFixture.string());
  std::vector<std::string> told;
  const VerifyReport r = verify_information_flow(
      trained_checkpoint(Precision::fp32), reader, Backend::cpu, 0, fixture_options(), 0,
      [&](const std::string& name) { told.push_back(name); });
  ASSERT_EQ(r.checks.size(), 8u);
  std::set<std::string> names;
  for (const auto& c : r.checks) {
    names.insert(c.name);
    EXPECT_FALSE(c.criterion.empty());
    EXPECT_FALSE(c.figures.empty());
  }
  EXPECT_EQ(names.size(), 8u);
  EXPECT_EQ(told.size(), 8u);
  const auto j = nlohmann::json::parse(r.to_json());
  EXPECT_EQ(j["checks"].size(), 8u);
  EXPECT_EQ(j["passed"].get<int64_t>() + j["failed"].get<int64_t>(), 8);
  EXPECT_EQ(j["passed"].get<int64_t>() == 8, r.all_passed());
  // The exact checks hold on any model.
  for (const auto& c : r.checks)
    if (c.name == "causal_mask" || c.name == "cached_projections" || c.name == "stage_coupling") {
      EXPECT_TRUE(c.passed) << c.name;
    }
}

TEST(Verify, BadOptionsAndDataAreRejected) {
  const Trained t;
  const auto with = [](auto edit) {
    VerifyOptions o = fixture_options();
    edit(o);
    return o;
  };
  EXPECT_THROW(check_causal_mask(t.model, t.data, with([](VerifyOptions& o) { o.length = 1; })),
               InvalidArgument);
  EXPECT_THROW(check_causal_mask(t.model, t.data, with([](VerifyOptions& o) { o.sequences = 0; })),
               InvalidArgument);
  EXPECT_THROW(check_positions(t.model, t.data, with([](VerifyOptions& o) { o.position_buckets = 17; })),
               InvalidArgument);
  EXPECT_THROW(check_positions(t.model, t.data, with([](VerifyOptions& o) { o.seed = 0; })),
               InvalidArgument);
  EXPECT_THROW(check_ngram_collisions(t.model, t.data,
                                      with([](VerifyOptions& o) { o.collision_flag = NAN; })),
               InvalidArgument);
  // No window holds 17 tokens.
  EXPECT_THROW(check_token_ablation(t.model, t.data, with([](VerifyOptions& o) { o.length = 17; })),
               InvalidArgument);
  // A missing checkpoint is an IoError.
  const CaptureReader reader(kFixture.string());
  EXPECT_THROW(verify_information_flow("/nonexistent/model.safetensors", reader, Backend::cpu, 0,
                                       fixture_options()),
               IoError);
}

TEST(VerifyCuda, ChecksAgreeWithTheCpu) {
  HTFR_SKIP_WITHOUT_GPU();
  const CaptureReader reader(kFixture.string());
  const VerifyOptions o = fixture_options();
  const std::string path = trained_checkpoint(Precision::fp32);
  const VerifyReport cpu = verify_information_flow(path, reader, Backend::cpu, 0, o);
  const VerifyReport gpu = verify_information_flow(path, reader, Backend::cuda, 0, o);
  ASSERT_EQ(gpu.checks.size(), cpu.checks.size());
  for (std::size_t i = 0; i < cpu.checks.size(); ++i) {
    const VerifyCheck &a = cpu.checks[i], &b = gpu.checks[i];
    ASSERT_EQ(a.name, b.name);
    if (a.name == "causal_mask" || a.name == "cached_projections" || a.name == "stage_coupling") {
      EXPECT_TRUE(b.passed) << b.name;
      continue;
    }
    // The same arithmetic in fp32 with another summation order: figures agree to float
    // tolerance unless a top-K choice sits on a tie (not the case for this model and data).
    for (const auto& [key, value] : a.figures) {
      const double v = b.figure(key);
      if (std::isnan(value)) {
        EXPECT_TRUE(std::isnan(v)) << a.name << "." << key;
        continue;
      }
      EXPECT_NEAR(v, value, 1e-3 * (1.0 + std::fabs(value))) << a.name << "." << key;
    }
  }
}

}  // namespace
}  // namespace htfr

// Incremental inference sessions: a session's per-token logits equal a recomputation of every
// window from scratch over 500 steps (the buffers wrap many times), batched sessions do not see
// each other, sampling is deterministic for a seed and draws from the right distribution, and bad
// inputs get typed errors. On both backends (the GPU ones with and without CUDA graphs).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

#include "hft_fixture.hpp"
#include "htfr/capture.hpp"
#include "htfr/error.hpp"
#include "htfr/safetensors.hpp"
#include "htfr/session.hpp"
#include "test_util.hpp"

namespace htfr {
namespace {

using namespace test;

/// `count` teacher ids: mostly compact-vocabulary tokens, some outside it (unk), a few invalid.
std::vector<int32_t> token_sequence(const HftSession& s, int64_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const auto& ids = s.compact_token_ids();
  std::vector<int32_t> out;
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t r = rng() % 100;
    if (r < 85) out.push_back(ids[rng() % ids.size()]);
    else if (r < 95) out.push_back(static_cast<int32_t>(rng() % s.teacher_vocab_size()));
    else if (r < 98) out.push_back(-1 - static_cast<int32_t>(rng() % 5));
    else out.push_back(static_cast<int32_t>(s.teacher_vocab_size() + rng() % 7));
  }
  return out;
}

float max_abs_diff(const float* a, const float* b, int64_t n) {
  float m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

/// Steps every session through its sequence (sessions x steps tokens) and returns all logits
/// (steps x sessions x V).
std::vector<float> run_sessions(HftSession& session, const std::vector<std::vector<int32_t>>& seqs,
                                cudaStream_t stream = nullptr) {
  const Backend b = session.backend();
  const int64_t S = session.sessions(), V = session.vocab_size();
  const int64_t steps = static_cast<int64_t>(seqs[0].size());
  Staged<int32_t> tokens(b, static_cast<std::size_t>(S));
  Staged<float> logits(b, static_cast<std::size_t>(S * V));
  std::vector<float> out;
  std::vector<int32_t> step_tokens(static_cast<std::size_t>(S));
  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t s = 0; s < S; ++s) step_tokens[s] = seqs[s][t];
    session.step(tokens.set(step_tokens), logits.get(), stream);
    const auto& l = logits.fetch();
    out.insert(out.end(), l.begin(), l.end());
  }
  return out;
}

void expect_incremental_equals_recomputation(Backend backend, Precision precision,
                                             bool use_graph) {
  const std::string path = trained_checkpoint(precision);
  HftSessionOptions o;
  o.use_graph = use_graph;
  HftSession session = HftSession::load(path, backend, 0, o);
  const HftModel reference = HftModel::load(path, backend);
  const int64_t steps = 500, V = session.vocab_size();
  ASSERT_GT(steps, 10 * session.config().context.window);  // the buffers wrap many times
  const std::vector<int32_t> seq = token_sequence(session, steps, 7);
  const std::vector<float> inc = run_sessions(session, {seq});
  const std::vector<float> full = reference.sequence_logits(seq);
  ASSERT_EQ(inc.size(), full.size());
  float worst = 0;
  for (int64_t t = 0; t < steps; ++t)
    worst = std::max(worst, max_abs_diff(inc.data() + t * V, full.data() + t * V, V));
  // The same arithmetic in the same order: equal to float tolerance (in practice bit for bit).
  EXPECT_LE(worst, 1e-5f);
  // The logits do depend on the tokens (the comparison is not between constants).
  EXPECT_GT(max_abs_diff(inc.data(), inc.data() + (steps - 1) * V, V), 1e-3f);
  EXPECT_EQ(session.lengths()[0], steps);

  // After a reset the session starts over and repeats itself.
  session.reset();
  const std::vector<float> again = run_sessions(session, {std::vector<int32_t>(seq.begin(), seq.begin() + 40)});
  EXPECT_EQ(std::vector<float>(inc.begin(), inc.begin() + 40 * V), again);
}

void expect_sessions_independent(Backend backend, Precision precision) {
  const std::string path = trained_checkpoint(precision);
  HftSessionOptions o;
  o.sessions = 3;
  HftSession a = HftSession::load(path, backend, 0, o);
  HftSession b = HftSession::load(path, backend, 0, o);
  const int64_t steps = 60, V = a.vocab_size(), S = 3;
  const auto s0 = token_sequence(a, steps, 1);
  const auto la = run_sessions(a, {s0, token_sequence(a, steps, 2), token_sequence(a, steps, 3)});
  const auto lb = run_sessions(b, {s0, token_sequence(a, steps, 4), token_sequence(a, steps, 5)});
  for (int64_t t = 0; t < steps; ++t) {
    // Session 0 saw the same tokens in both batches: the same logits, bit for bit.
    EXPECT_EQ(0.0f, max_abs_diff(la.data() + t * S * V, lb.data() + t * S * V, V)) << "step " << t;
  }
  // Sessions 1 differ (different tokens) — the check above is not vacuous.
  EXPECT_GT(max_abs_diff(la.data() + (steps - 1) * S * V + V, lb.data() + (steps - 1) * S * V + V, V),
            1e-3f);
  // Resetting one session leaves the others running.
  a.reset(1);
  EXPECT_EQ(a.lengths(), (std::vector<int64_t>{steps, 0, steps}));
}

/// Samples `steps` tokens for every session, feeding each sampled token back.
std::vector<int32_t> generate(HftSession& s, const SamplingConfig& sc, int64_t steps,
                              std::vector<float>* first_logits = nullptr) {
  const Backend b = s.backend();
  const int64_t S = s.sessions(), V = s.vocab_size();
  Staged<int32_t> tokens(b, std::vector<int32_t>(static_cast<std::size_t>(S), s.bos_id()));
  Staged<int32_t> classes(b, static_cast<std::size_t>(S));
  Staged<float> logits(b, static_cast<std::size_t>(S * V));
  std::vector<int32_t> out;
  for (int64_t t = 0; t < steps; ++t) {
    s.step_and_sample(tokens.get(), sc, tokens.get(), classes.get(), logits.get(), nullptr);
    const auto& c = classes.fetch();
    out.insert(out.end(), c.begin(), c.end());
    if (t == 0 && first_logits) *first_logits = logits.fetch();
  }
  return out;
}

void expect_sampling_behaves(Backend backend, Precision precision) {
  const std::string path = trained_checkpoint(precision);
  HftSessionOptions o;
  o.sessions = 2;
  o.seed = 11;
  HftSession s = HftSession::load(path, backend, 0, o);
  const int64_t V = s.vocab_size();
  // Greedy: the argmax of the logits over every class but unk, deterministic.
  std::vector<float> first;
  const auto greedy = generate(s, SamplingConfig{}, 30, &first);
  const int64_t arg = std::max_element(first.begin(), first.begin() + V - 1) - first.begin();
  EXPECT_EQ(greedy[0], arg);
  s.reset();
  EXPECT_EQ(generate(s, SamplingConfig{}, 30), greedy);
  // Temperature and nucleus: the same seed repeats, another seed differs, unk never drawn.
  SamplingConfig sc;
  sc.temperature = 1.5f;
  sc.top_p = 0.9f;
  s.reset();
  const auto a = generate(s, sc, 40);
  s.reset();
  EXPECT_EQ(generate(s, sc, 40), a);
  o.seed = 12;
  HftSession other = HftSession::load(path, backend, 0, o);
  EXPECT_NE(generate(other, sc, 40), a);
  for (int32_t c : a) EXPECT_TRUE(c >= 0 && c < V - 1) << c;
}

/// Many sessions draw their first token from the same logits: the share of each class matches
/// its probability, and classes outside the nucleus are never drawn.
void expect_sampling_distribution(Backend backend) {
  const std::string path = trained_checkpoint(Precision::fp32);
  HftSessionOptions o;
  o.sessions = 4000;
  o.seed = 3;
  HftSession s = HftSession::load(path, backend, 0, o);
  const int64_t V = s.vocab_size(), S = o.sessions;
  SamplingConfig sc;
  sc.temperature = 0.05f;  // sharp enough that a handful of classes hold the mass
  sc.top_p = 0.8f;
  std::vector<float> logits;
  const auto drawn = generate(s, sc, 1, &logits);
  std::vector<double> p(static_cast<std::size_t>(V - 1));
  const float zmax = *std::max_element(logits.begin(), logits.begin() + V - 1);
  double total = 0;
  for (int64_t c = 0; c < V - 1; ++c) total += p[c] = std::exp((logits[c] - zmax) / sc.temperature);
  std::vector<int64_t> order(p.size());
  for (std::size_t c = 0; c < p.size(); ++c) order[c] = static_cast<int64_t>(c);
  std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return p[x] > p[y]; });
  std::vector<char> in_nucleus(p.size(), 0);
  double acc = 0, kept = 0;
  for (const int64_t c : order) {
    if (acc >= sc.top_p * total) break;
    in_nucleus[c] = 1;
    acc += p[c];
    kept += p[c];
  }
  std::map<int32_t, int64_t> freq;
  for (const int32_t c : drawn) ++freq[c];
  for (const auto& [c, n] : freq) EXPECT_TRUE(in_nucleus[c]) << "class " << c << " drawn " << n;
  for (std::size_t c = 0; c < p.size(); ++c) {
    if (!in_nucleus[c]) continue;
    const double q = p[c] / kept, n = static_cast<double>(freq[static_cast<int32_t>(c)]);
    EXPECT_NEAR(n / S, q, 5 * std::sqrt(q * (1 - q) / S) + 1e-3) << "class " << c;
  }
}

TEST(Session, IncrementalEqualsRecomputationOver500Steps) {
  expect_incremental_equals_recomputation(Backend::cpu, Precision::fp32, false);
}

TEST(Session, BatchedSessionsAreIndependent) {
  expect_sessions_independent(Backend::cpu, Precision::fp32);
}

/// A teacher id outside the compact vocabulary, one outside the teacher's vocabulary and a
/// negative id all read as the unk class: sessions fed each of them stay identical.
void expect_unknown_ids_read_as_unk(Backend backend) {
  const std::string path = trained_checkpoint(Precision::fp32);
  HftSessionOptions o;
  o.sessions = 3;
  HftSession s = HftSession::load(path, backend, 0, o);
  const auto& ids = s.compact_token_ids();
  int32_t outside = 0;  // a teacher token that has no compact class
  while (std::find(ids.begin(), ids.end(), outside) != ids.end()) ++outside;
  ASSERT_LT(outside, s.teacher_vocab_size());
  const auto base = token_sequence(s, 30, 9);
  std::vector<std::vector<int32_t>> seqs(3, base);
  for (const int t : {3, 11, 12, 25}) {
    seqs[0][t] = outside;
    seqs[1][t] = static_cast<int32_t>(s.teacher_vocab_size() + 5);
    seqs[2][t] = -7;
  }
  const int64_t V = s.vocab_size();
  const auto l = run_sessions(s, seqs);
  for (int64_t t = 0; t < 30; ++t)
    for (int64_t j = 1; j < 3; ++j)
      EXPECT_EQ(0.0f, max_abs_diff(l.data() + (t * 3) * V, l.data() + (t * 3 + j) * V, V))
          << "step " << t << " session " << j;
}

TEST(Session, IdsOutsideTheCompactVocabularyReadAsUnk) {
  expect_unknown_ids_read_as_unk(Backend::cpu);
}

TEST(SessionCuda, IdsOutsideTheCompactVocabularyReadAsUnk) {
  HTFR_SKIP_WITHOUT_GPU();
  expect_unknown_ids_read_as_unk(Backend::cuda);
}

TEST(Session, SamplingIsDeterministicForASeed) {
  expect_sampling_behaves(Backend::cpu, Precision::fp32);
}

TEST(Session, SamplingDrawsFromTheNucleus) { expect_sampling_distribution(Backend::cpu); }

TEST(Session, BadInputsGetTypedErrors) {
  const std::string path = trained_checkpoint(Precision::fp32);
  HftSessionOptions o;
  o.sessions = 0;
  EXPECT_THROW(HftSession::load(path, Backend::cpu, 0, o), InvalidArgument);
  o.sessions = 2;
  o.max_positions = 0;
  EXPECT_THROW(HftSession::load(path, Backend::cpu, 0, o), InvalidArgument);
  o.max_positions = 3;
  HftSession s = HftSession::load(path, Backend::cpu, 0, o);
  std::vector<int32_t> tokens{s.bos_id(), s.bos_id()};
  std::vector<float> logits(static_cast<std::size_t>(2 * s.vocab_size()));
  EXPECT_THROW(s.step(nullptr, logits.data(), nullptr), InvalidArgument);
  for (int i = 0; i < 3; ++i) s.step(tokens.data(), logits.data(), nullptr);
  // Exhausted: a typed error, nothing changed; resetting one session is not enough.
  EXPECT_THROW(s.step(tokens.data(), logits.data(), nullptr), InvalidArgument);
  EXPECT_EQ(s.lengths(), (std::vector<int64_t>{3, 3}));
  s.reset(0);
  EXPECT_THROW(s.step(tokens.data(), logits.data(), nullptr), InvalidArgument);
  s.reset(1);
  EXPECT_NO_THROW(s.step(tokens.data(), logits.data(), nullptr));
  EXPECT_THROW(s.reset(2), InvalidArgument);
  EXPECT_THROW(s.reset(-1), InvalidArgument);
  std::vector<int32_t> next(2);
  SamplingConfig bad;
  bad.temperature = -1;
  EXPECT_THROW(s.step_and_sample(tokens.data(), bad, next.data(), nullptr, nullptr, nullptr),
               InvalidArgument);
  bad = SamplingConfig{};
  bad.top_p = 0;
  EXPECT_THROW(s.step_and_sample(tokens.data(), bad, next.data(), nullptr, nullptr, nullptr),
               InvalidArgument);
  EXPECT_THROW(s.step_and_sample(tokens.data(), SamplingConfig{}, nullptr, nullptr, nullptr,
                                 nullptr),
               InvalidArgument);

  // A model loaded for inference holds no optimiser state: it neither trains nor saves.
  {
    HftModel served = HftModel::load(path, Backend::cpu, 0, /*optimizer_state=*/false);
    const CaptureReader reader(kFixture.string());
    const HftData data = served.load_data(reader);
    EXPECT_THROW(served.train_epoch(data, false), InvalidArgument);
    EXPECT_THROW(served.save(temp_path("session_served.safetensors").string()), InvalidArgument);
    EXPECT_FALSE(std::filesystem::exists(temp_path("session_served.safetensors")));
    EXPECT_GT(served.evaluate(data).student_ppl, 1.0);
  }

  // A checkpoint whose stored configuration disagrees with its tensors.
  const SafetensorsReader r(path);
  SafetensorsWriter w;
  for (const TensorRecord& t : r.tensors()) {
    std::vector<char> bytes(t.bytes);
    r.read(t.name, bytes.data(), bytes.size());
    w.add(t.name, t.type, t.shape, bytes.data(), bytes.size());
  }
  for (const auto& [k, v] : r.metadata()) w.set_metadata(k, v);
  HftConfig other = tiny_config();
  other.context.window = 32;
  w.set_metadata("config", to_json(other));
  const std::string mismatched = temp_path("session_mismatch_" + std::to_string(::getpid()) + ".safetensors").string();
  w.write(mismatched);
  EXPECT_THROW(HftSession::load(mismatched, Backend::cpu, 0, HftSessionOptions{}), FormatError);
  EXPECT_THROW(HftSession::load(temp_path("session_missing.safetensors").string(), Backend::cpu,
                                0, HftSessionOptions{}),
               IoError);
  std::filesystem::remove(mismatched);
}

TEST(SessionCuda, IncrementalEqualsRecomputationWithAndWithoutGraphs) {
  HTFR_SKIP_WITHOUT_GPU();
  for (const Precision p : {Precision::fp32, Precision::bf16}) {
    expect_incremental_equals_recomputation(Backend::cuda, p, true);
    expect_incremental_equals_recomputation(Backend::cuda, p, false);
  }
}

TEST(SessionCuda, BatchedSessionsAreIndependent) {
  HTFR_SKIP_WITHOUT_GPU();
  expect_sessions_independent(Backend::cuda, Precision::bf16);
}

TEST(SessionCuda, SamplingIsDeterministicForASeed) {
  HTFR_SKIP_WITHOUT_GPU();
  expect_sampling_behaves(Backend::cuda, Precision::bf16);
}

TEST(SessionCuda, SamplingDrawsFromTheNucleus) {
  HTFR_SKIP_WITHOUT_GPU();
  expect_sampling_distribution(Backend::cuda);
}

TEST(SessionCuda, GraphReplayMatchesEagerAndCpu) {
  HTFR_SKIP_WITHOUT_GPU();
  const std::string path = trained_checkpoint(Precision::fp32);
  HftSessionOptions eager, graph;
  eager.use_graph = false;
  eager.sessions = graph.sessions = 2;
  HftSession e = HftSession::load(path, Backend::cuda, 0, eager);
  HftSession g = HftSession::load(path, Backend::cuda, 0, graph);
  HftSession c = HftSession::load(path, Backend::cpu, 0, eager);
  const auto s0 = token_sequence(e, 80, 21), s1 = token_sequence(e, 80, 22);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  const auto le = run_sessions(e, {s0, s1}, stream);
  const auto lg = run_sessions(g, {s0, s1}, stream);
  const auto lc = run_sessions(c, {s0, s1});
  EXPECT_EQ(le, lg);  // a replayed graph runs the same kernels on the same data
  // fp32 fields: the GPU follows the CPU up to the precision of its GEMM (TF32 off).
  EXPECT_LE(max_abs_diff(le.data(), lc.data(), static_cast<int64_t>(le.size())), 2e-3f);
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace htfr

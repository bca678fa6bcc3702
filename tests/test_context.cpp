// The HFT context builder: each feature group against its definition, causality and the window
// limit, the Stage 2 gradient, CUDA against CPU, and bad inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "htfr/context.hpp"
#include "htfr/error.hpp"
#include "test_util.hpp"

namespace htfr {
namespace {

using namespace test;

ContextConfig small_context() {
  ContextConfig c;
  c.vocab_size = 37;
  c.embedding_dim = 13;
  c.window = 9;
  c.slot_decay = 0.8f;
  c.embedding_weight = 1.5f;
  c.phase_pairs = 3;
  c.phase_weight = 0.5f;
  c.mask_weight = 0.25f;
  c.ngram_orders = {1, 2, 3};
  c.bloom_size = 101;
  c.bloom_hashes = 2;
  c.bloom_weight = 0.7f;
  c.history = 3;
  c.history_dim = 5;
  c.history_weight = 0.3f;
  c.tail = 4;
  c.tail_decay = 0.6f;
  c.tail_weight = 1.25f;
  c.stage1_weight = 0.2f;
  c.scale = 1.1f;
  c.stage2_scale = 0.9f;
  return c;
}

struct Streams {
  int64_t count = 3, stride = 23;
  std::vector<int32_t> tokens;
  std::vector<float> history;
};

Streams random_streams(const ContextConfig& c, uint64_t seed) {
  Streams s;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(c.vocab_size - 1));
  for (int64_t i = 0; i < s.count * s.stride; ++i) s.tokens.push_back(tok(rng));
  s.history = random_normal(s.count * c.history * c.history_dim, seed + 1);
  return s;
}

std::vector<float> unit_rows(const std::vector<float>& e, int64_t E) {
  std::vector<float> out(e.size());
  for (std::size_t r = 0; r < e.size() / E; ++r) {
    double n2 = 0;
    for (int64_t k = 0; k < E; ++k) n2 += double(e[r * E + k]) * e[r * E + k];
    for (int64_t k = 0; k < E; ++k) out[r * E + k] = float(e[r * E + k] / std::sqrt(n2));
  }
  return out;
}

std::vector<float> build1(const ContextBuilder& b, const Streams& s, std::vector<int32_t> stream,
                          std::vector<int32_t> position) {
  const ContextRows rows{s.tokens.data(), s.stride, s.history.data(), stream.data(),
                         position.data(), static_cast<int64_t>(stream.size())};
  std::vector<float> raw(stream.size() * b.layout().stage1_dim, NAN);
  b.stage1(rows, raw.data(), nullptr);
  return raw;
}

/// Phase component k of slot 0 of a row at position q, as the unpermuted builder writes it.
float plain_phase(const ContextBuilder& b, const Streams& s, int64_t q, int64_t k) {
  const auto raw = build1(b, s, {0}, {static_cast<int32_t>(q)});
  return raw[b.config().embedding_dim + k];
}

TEST(Context, LayoutAddsUp) {
  const ContextConfig c = small_context();
  const ContextLayout l = context_layout(c);
  EXPECT_EQ(l.slot_width, 13 + 6 + 1);
  EXPECT_EQ(l.bloom, 9 * 20);
  EXPECT_EQ(l.history, l.bloom + 101);
  EXPECT_EQ(l.meta, l.history + 15);
  EXPECT_EQ(l.stage1_dim, l.meta + 3);
  EXPECT_EQ(l.stage2_dim, 5 + 4 * 13 + 6 + 1);
}

TEST(Context, Stage1GroupsFollowTheirDefinition) {
  const ContextConfig c = small_context();
  const auto emb = random_normal(c.vocab_size * c.embedding_dim, 7);
  const auto unit = unit_rows(emb, c.embedding_dim);
  const ContextBuilder b(c, emb);
  const Streams s = random_streams(c, 11);
  const ContextLayout l = b.layout();
  const int32_t st = 1, p = 12;  // p >= window: slots cover positions 4 .. 12
  const auto raw = build1(b, s, {st}, {p});
  const int32_t* toks = s.tokens.data() + st * s.stride;
  for (int64_t j = 0; j < c.window; ++j) {
    const float w = static_cast<float>(std::pow(double(c.slot_decay), double(j))) * c.scale;
    for (int64_t k = 0; k < c.embedding_dim; ++k)
      EXPECT_NEAR(raw[j * l.slot_width + k], unit[toks[p - j] * c.embedding_dim + k] * 1.5f * w,
                  1e-6);
    for (int64_t k = 0; k < 2 * c.phase_pairs; ++k) {
      const double freq = std::pow(double(c.phase_base), -double(k / 2) / c.phase_pairs);
      const double ang = double(p - j) * freq;
      EXPECT_NEAR(raw[j * l.slot_width + c.embedding_dim + k],
                  (k % 2 ? std::cos(ang) : std::sin(ang)) * 0.5 * w, 1e-6);
    }
    EXPECT_NEAR(raw[j * l.slot_width + l.slot_width - 1], 0.25f * w, 1e-7);
  }
  // History: slots r = 0..R-1 hold positions p-1-r from the ring (slot q mod R).
  for (int64_t r = 0; r < c.history; ++r)
    for (int64_t h = 0; h < c.history_dim; ++h) {
      const int64_t q = p - 1 - r;
      EXPECT_FLOAT_EQ(raw[l.history + r * c.history_dim + h],
                      s.history[(st * c.history + q % c.history) * c.history_dim + h] * 0.3f *
                          c.scale);
    }
  EXPECT_FLOAT_EQ(raw[l.meta + 0], float(p) / c.window * c.scale);
  EXPECT_FLOAT_EQ(raw[l.meta + 1], c.scale);
  EXPECT_FLOAT_EQ(raw[l.meta + 2], 0.0f);
  // Bloom: only 0 or the bit value, at least one and at most (#n-grams x hashes) buckets set.
  int set = 0;
  for (int64_t i = 0; i < c.bloom_size; ++i) {
    const float v = raw[l.bloom + i];
    EXPECT_TRUE(v == 0.0f || v == 0.7f * c.scale) << v;
    set += v != 0.0f;
  }
  EXPECT_GT(set, 0);
  EXPECT_LE(set, (9 + 8 + 7) * 2);
}

TEST(Context, StartOfStreamHasEmptySlotsAndNoHistory) {
  const ContextConfig c = small_context();
  const ContextBuilder b(c, random_normal(c.vocab_size * c.embedding_dim, 3));
  const Streams s = random_streams(c, 5);
  const ContextLayout l = b.layout();
  const auto raw = build1(b, s, {0}, {0});
  for (int64_t i = l.slot_width; i < l.bloom; ++i) EXPECT_EQ(raw[i], 0.0f) << i;  // slots 1..
  for (int64_t i = l.history; i < l.meta; ++i) EXPECT_EQ(raw[i], 0.0f) << i;
  EXPECT_FLOAT_EQ(raw[l.meta + 2], c.scale);  // the start bit
}

TEST(Context, FeaturesAreCausalAndRespectTheWindow) {
  const ContextConfig c = small_context();
  const ContextBuilder b(c, random_normal(c.vocab_size * c.embedding_dim, 3));
  Streams s = random_streams(c, 9);
  const int32_t p = 14;
  const auto before = build1(b, s, {2}, {p});
  // Later tokens of the same stream, tokens before the window and other streams' tokens and
  // history must not matter.
  int32_t* toks = s.tokens.data() + 2 * s.stride;
  for (int32_t q = p + 1; q < s.stride; ++q) toks[q] = (toks[q] + 5) % c.vocab_size;
  for (int32_t q = 0; q <= p - c.window; ++q) toks[q] = (toks[q] + 7) % c.vocab_size;
  for (int64_t i = 0; i < s.stride; ++i) s.tokens[i] = (s.tokens[i] + 1) % c.vocab_size;
  for (int64_t h = 0; h < c.history * c.history_dim; ++h) s.history[h] = 1e6f;
  EXPECT_EQ(build1(b, s, {2}, {p}), before);
  // A token inside the window does matter.
  toks[p - 2] = (toks[p - 2] + 1) % c.vocab_size;
  EXPECT_NE(build1(b, s, {2}, {p}), before);
}

TEST(Context, Stage2AndItsEmbeddingGradient) {
  const ContextConfig c = small_context();
  const auto emb = random_normal(c.vocab_size * c.embedding_dim, 21);
  const auto unit = unit_rows(emb, c.embedding_dim);
  const ContextBuilder b(c, emb);
  const Streams s = random_streams(c, 4);
  const ContextLayout l = b.layout();
  std::vector<int32_t> st{0, 2}, po{2, 17};
  const ContextRows rows{s.tokens.data(), s.stride, s.history.data(), st.data(), po.data(), 2};
  const auto e1 = random_normal(2 * c.history_dim, 8);
  std::vector<float> raw(2 * l.stage2_dim, NAN);
  b.stage2(rows, e1.data(), raw.data(), nullptr);
  for (int r = 0; r < 2; ++r) {
    const float* x = raw.data() + r * l.stage2_dim;
    for (int64_t h = 0; h < c.history_dim; ++h)
      EXPECT_FLOAT_EQ(x[h], e1[r * c.history_dim + h] * 0.2f * 0.9f);
    const int32_t* toks = s.tokens.data() + st[r] * s.stride;
    for (int64_t j = 0; j < c.tail; ++j)
      for (int64_t k = 0; k < c.embedding_dim; ++k) {
        const float want =
            j > po[r] ? 0.0f
                      : unit[toks[po[r] - j] * c.embedding_dim + k] *
                            float(std::pow(0.6, double(j))) * 1.25f * 0.9f;
        EXPECT_NEAR(x[l.stage2_tail + j * c.embedding_dim + k], want, 1e-6);
      }
    EXPECT_FLOAT_EQ(x[l.stage2_dim - 1], 0.9f);
  }
  // Without an embedding the first H columns are zero.
  b.stage2(rows, nullptr, raw.data(), nullptr);
  for (int64_t h = 0; h < c.history_dim; ++h) EXPECT_EQ(raw[h], 0.0f);
  // The gradient is the adjoint of the embedding's linear map: <g, d raw> = <grad, d emb>.
  const auto g = random_normal(2 * l.stage2_dim, 31);
  std::vector<float> grad(2 * c.history_dim);
  b.stage2_embedding_grad(g.data(), 2, grad.data(), nullptr);
  std::vector<float> raw_a(2 * l.stage2_dim), raw_b(2 * l.stage2_dim);
  const auto de = random_normal(2 * c.history_dim, 41);
  std::vector<float> e2(e1);
  for (std::size_t i = 0; i < e2.size(); ++i) e2[i] += de[i];
  b.stage2(rows, e1.data(), raw_a.data(), nullptr);
  b.stage2(rows, e2.data(), raw_b.data(), nullptr);
  double lhs = 0, rhs = 0;
  for (std::size_t i = 0; i < raw_a.size(); ++i) lhs += double(g[i]) * (raw_b[i] - raw_a[i]);
  for (std::size_t i = 0; i < de.size(); ++i) rhs += double(grad[i]) * de[i];
  EXPECT_NEAR(lhs, rhs, 1e-4 * (1 + std::fabs(rhs)));
}

TEST(Context, PhasePermutationMovesOnlyThePhases) {
  const ContextConfig c = small_context();
  const auto emb = random_normal(c.vocab_size * c.embedding_dim, 21);
  const ContextBuilder plain(c, emb);
  ContextBuilder permuted(c, emb);
  const Streams s = random_streams(c, 22);
  const ContextLayout l = plain.layout();
  std::vector<int32_t> st, po;
  for (int32_t p = 0; p < 16; ++p) {
    st.push_back(p % 3);
    po.push_back(p);
  }
  permuted.set_phase_permutation(5, 16);
  const auto a = build1(plain, s, st, po), b = build1(permuted, s, st, po);
  // Slot j of a row at position p carries the phases of position pi(p - j), pi a permutation.
  std::set<int64_t> images;
  for (int64_t r = 0; r < 16; ++r) {
    const int64_t p = po[r];
    int64_t image = -1;
    for (int64_t cand = 0; cand < 16 && image < 0; ++cand) {
      bool all = true;
      for (int64_t k = 0; k < 2 * c.phase_pairs && all; ++k) {
        const float want = b[r * l.stage1_dim + c.embedding_dim + k];
        const float got = plain_phase(plain, s, cand, k);
        all = std::fabs(want - got) <= 1e-6f;
      }
      if (all) image = cand;
    }
    ASSERT_GE(image, 0) << "row " << r;
    images.insert(image);
    for (int64_t i = 0; i < l.stage1_dim; ++i) {
      const int64_t j = i / l.slot_width, k = i % l.slot_width;
      const bool phase = i < l.bloom && j <= p && k >= c.embedding_dim &&
                         k < c.embedding_dim + 2 * c.phase_pairs;
      if (!phase) {
        EXPECT_EQ(a[r * l.stage1_dim + i], b[r * l.stage1_dim + i]) << r << " " << i;
      }
    }
  }
  EXPECT_EQ(images.size(), 16u);  // slot 0 of positions 0..15: a permutation of [0, 16)
  EXPECT_NE(a, b);
  // Seed 0 restores the true phases; spans that are not powers of two are refused.
  permuted.set_phase_permutation(0, 0);
  EXPECT_EQ(build1(permuted, s, st, po), a);
  EXPECT_THROW(permuted.set_phase_permutation(5, 12), InvalidArgument);
  EXPECT_THROW(permuted.set_phase_permutation(5, 1), InvalidArgument);
}

TEST(Context, BadInputsAreRejected) {
  ContextConfig c = small_context();
  const auto emb = random_normal(c.vocab_size * c.embedding_dim, 1);
  EXPECT_THROW(ContextBuilder(c, std::vector<float>(10)), InvalidArgument);
  auto nan_emb = emb;
  nan_emb[17] = NAN;
  EXPECT_THROW(ContextBuilder(c, nan_emb), NonFiniteInput);
  ContextConfig bad = c;
  bad.ngram_orders = {0};
  EXPECT_THROW(bad.validate(), InvalidArgument);
  bad = c;
  bad.tail = c.window + 1;
  EXPECT_THROW(bad.validate(), InvalidArgument);
  bad = c;
  bad.scale = 0;
  EXPECT_THROW(bad.validate(), InvalidArgument);
  bad = c;
  bad.slot_decay = NAN;
  EXPECT_THROW(bad.validate(), InvalidArgument);
  const ContextBuilder b(c, emb);
  const std::vector<int32_t> ok{0, 36}, wrong{0, 37};
  EXPECT_NO_THROW(b.check_tokens(ok.data(), 2));
  EXPECT_THROW(b.check_tokens(wrong.data(), 2), InvalidArgument);
  const ContextRows missing{nullptr, 4, nullptr, nullptr, nullptr, 1};
  std::vector<float> raw(b.layout().stage1_dim);
  EXPECT_THROW(b.stage1(missing, raw.data(), nullptr), InvalidArgument);
  // A rolling token buffer must hold at least the window (and fit its stride).
  const int64_t W = c.window;
  std::vector<int32_t> ring(static_cast<std::size_t>(W + 1), 0), one{0}, pos{static_cast<int32_t>(3 * W)};
  std::vector<float> hist(static_cast<std::size_t>(c.history * c.history_dim), 0.0f);
  ContextRows rolling{ring.data(), W + 1, hist.data(), one.data(), pos.data(), 1};
  rolling.token_ring = W + 1;
  EXPECT_NO_THROW(b.stage1(rolling, raw.data(), nullptr));
  rolling.token_ring = W - 1;
  EXPECT_THROW(b.stage1(rolling, raw.data(), nullptr), InvalidArgument);
  rolling.token_ring = W + 2;  // beyond the stride
  EXPECT_THROW(b.stage1(rolling, raw.data(), nullptr), InvalidArgument);
}

TEST(ContextCuda, MatchesCpuOnOddBatches) {
  HTFR_SKIP_WITHOUT_GPU();
  const ContextConfig c = small_context();
  const auto emb = random_normal(c.vocab_size * c.embedding_dim, 12);
  const ContextBuilder cpu(c, emb);
  const ContextBuilder gpu(c, emb, Backend::cuda);
  const Streams s = random_streams(c, 13);
  const ContextLayout l = cpu.layout();
  std::vector<int32_t> st, po;
  for (int32_t r = 0; r < 37; ++r) {
    st.push_back(r % 3);
    po.push_back((r * 7) % static_cast<int32_t>(s.stride));
  }
  const int64_t B = 37;
  const ContextRows host_rows{s.tokens.data(), s.stride, s.history.data(), st.data(), po.data(), B};
  std::vector<float> want1(B * l.stage1_dim), want2(B * l.stage2_dim);
  const auto e = random_normal(B * c.history_dim, 14);
  cpu.stage1(host_rows, want1.data(), nullptr);
  cpu.stage2(host_rows, e.data(), want2.data(), nullptr);
  Stream stream;
  DeviceArray<int32_t> d_tok(s.tokens), d_st(st), d_po(po);
  DeviceArray<float> d_hist(s.history), d_e(e), d_raw1(B * l.stage1_dim), d_raw2(B * l.stage2_dim);
  const ContextRows dev_rows{d_tok.get(), s.stride, d_hist.get(), d_st.get(), d_po.get(), B};
  gpu.stage1(dev_rows, d_raw1.get(), stream.s);
  gpu.stage2(dev_rows, d_e.get(), d_raw2.get(), stream.s);
  ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
  // Embedding, mask, history, Bloom and meta values are the same products in the same order;
  // phases use double sin/cos, which may differ in the last bit between host and device.
  EXPECT_TRUE(all_close(d_raw1.download(), want1, 1e-6, 1e-6));
  EXPECT_TRUE(all_close(d_raw2.download(), want2, 1e-6, 1e-6));
  // The same with the diagnostic phase permutation on both.
  ContextBuilder cpu_p(c, emb), gpu_p(c, emb, Backend::cuda);
  cpu_p.set_phase_permutation(9, 32);
  gpu_p.set_phase_permutation(9, 32);
  cpu_p.stage1(host_rows, want1.data(), nullptr);
  cpu_p.stage2(host_rows, e.data(), want2.data(), nullptr);
  gpu_p.stage1(dev_rows, d_raw1.get(), stream.s);
  gpu_p.stage2(dev_rows, d_e.get(), d_raw2.get(), stream.s);
  ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
  EXPECT_TRUE(all_close(d_raw1.download(), want1, 1e-6, 1e-6));
  EXPECT_TRUE(all_close(d_raw2.download(), want2, 1e-6, 1e-6));
  const auto g = random_normal(B * l.stage2_dim, 15);
  std::vector<float> want_g(B * c.history_dim);
  cpu.stage2_embedding_grad(g.data(), B, want_g.data(), nullptr);
  DeviceArray<float> d_g(g), d_grad(B * c.history_dim);
  gpu.stage2_embedding_grad(d_g.get(), B, d_grad.get(), stream.s);
  ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
  EXPECT_EQ(d_grad.download(), want_g);
}

}  // namespace
}  // namespace htfr

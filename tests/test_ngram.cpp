// N-gram baselines: every distribution sums to 1 over the V classes (seen, unseen and sequence-
// start histories); small corpora match probabilities worked out by hand from the Kneser-Ney
// formulas; discounts stay in (0, c]; on a sparse second-order Markov source held-out perplexity
// falls with the order towards the source entropy; sequences never condition each other; the
// additive unigram is (c + a) / (T + a V); bad inputs throw InvalidArgument.
#include <gtest/gtest.h>
#include <htfr/error.hpp>
#include <htfr/ngram.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace htfr::test {
namespace {

using Sequence = std::vector<int32_t>;

NgramOptions kn_options(int order, int64_t vocab) {
  NgramOptions o;
  o.order = order;
  o.vocab_size = vocab;
  o.smoothing = NgramSmoothing::kneser_ney;
  return o;
}

NgramModel train(const NgramOptions& options, const std::vector<Sequence>& sequences) {
  NgramModel model(options);
  for (const Sequence& s : sequences) model.add_sequence(s.data(), int64_t(s.size()));
  model.finalize();
  return model;
}

double log_prob(const NgramModel& model, const Sequence& history, int32_t token) {
  return model.log_prob(history.data(), int64_t(history.size()), token);
}

double prob(const NgramModel& model, const Sequence& history, int32_t token) {
  return std::exp(log_prob(model, history, token));
}

// Sum over all V classes of exp(log_prob): 1 for a normalised model.
double total_probability(const NgramModel& model, const Sequence& history) {
  double total = 0.0;
  for (int32_t w = 0; w < model.options().vocab_size; ++w) total += prob(model, history, w);
  return total;
}

// A sparse second-order Markov source over the classes 0 .. used - 1 (a model may have more). t_0
// is uniform over the used classes; t_1 is uniform over the 6 candidates of t_0; each later t_i
// follows (t_{i-2}, t_{i-1}) = (a, b) to one of 3 of b's 6 candidates, with random weights. So the
// unigram is near uniform, the bigram spreads over 6 classes and the trigram over 3: the orders are
// clearly separated.
class MarkovSource {
 public:
  MarkovSource(int32_t used, uint64_t seed) : used_(used), rng_(seed) {
    std::vector<int32_t> all(static_cast<std::size_t>(used));
    std::iota(all.begin(), all.end(), 0);
    candidates_.resize(static_cast<std::size_t>(used));
    for (auto& c : candidates_) {
      std::shuffle(all.begin(), all.end(), rng_);
      c.assign(all.begin(), all.begin() + kCandidates);
    }
    next_.resize(static_cast<std::size_t>(used) * used);
    weights_.resize(next_.size());
    std::uniform_real_distribution<double> weight(0.2, 1.0);
    for (int32_t a = 0; a < used; ++a) {
      for (int32_t b = 0; b < used; ++b) {
        std::vector<int32_t> c = candidates_[b];
        std::shuffle(c.begin(), c.end(), rng_);
        auto& n = next_[std::size_t(a) * used + b];
        auto& w = weights_[std::size_t(a) * used + b];
        double sum = 0.0;
        for (int k = 0; k < kSuccessors; ++k) {
          n[k] = c[k];
          w[k] = weight(rng_);
          sum += w[k];
        }
        for (double& x : w) x /= sum;
      }
    }
  }

  Sequence sample(int64_t length) {
    Sequence s;
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    for (int64_t i = 0; i < length; ++i) {
      if (i == 0) {
        s.push_back(std::uniform_int_distribution<int32_t>(0, used_ - 1)(rng_));
      } else if (i == 1) {
        s.push_back(
            candidates_[s[0]][std::uniform_int_distribution<int>(0, kCandidates - 1)(rng_)]);
      } else {
        const std::size_t ctx = std::size_t(s[i - 2]) * used_ + s[i - 1];
        double u = unit(rng_);
        int k = 0;
        while (k < kSuccessors - 1 && u >= weights_[ctx][k]) u -= weights_[ctx][k++];
        s.push_back(next_[ctx][k]);
      }
    }
    return s;
  }

  // The source's own log-probability of s[i] given s[0 .. i-1].
  double log_prob(const Sequence& s, std::size_t i) const {
    if (i == 0) return -std::log(double(used_));
    if (i == 1) return -std::log(double(kCandidates));
    const std::size_t ctx = std::size_t(s[i - 2]) * used_ + s[i - 1];
    for (int k = 0; k < kSuccessors; ++k)
      if (next_[ctx][k] == s[i]) return std::log(weights_[ctx][k]);
    ADD_FAILURE() << "the source cannot emit " << s[i];
    return 0.0;
  }

 private:
  static constexpr int kCandidates = 6;
  static constexpr int kSuccessors = 3;
  int32_t used_;
  std::mt19937_64 rng_;
  std::vector<std::vector<int32_t>> candidates_;
  std::vector<std::array<int32_t, kSuccessors>> next_;
  std::vector<std::array<double, kSuccessors>> weights_;
};

std::vector<Sequence> sample_sequences(MarkovSource& source, int count, int64_t min_length,
                                       int64_t max_length, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> length(min_length, max_length);
  std::vector<Sequence> out;
  for (int i = 0; i < count; ++i) out.push_back(source.sample(length(rng)));
  return out;
}

// Mean negative log-likelihood per token (nats) of held-out sequences.
double mean_nll(const NgramModel& model, const std::vector<Sequence>& sequences) {
  double sum = 0.0;
  int64_t tokens = 0;
  for (const Sequence& s : sequences) {
    const std::vector<double> lp = model.sequence_log_probs(s.data(), int64_t(s.size()));
    for (const double x : lp) sum -= x;
    tokens += int64_t(s.size());
  }
  return sum / double(tokens);
}

// ---------------------------------------------------------------------------------------------
// Normalisation.

class NgramNormalisation : public ::testing::TestWithParam<int> {};

TEST_P(NgramNormalisation, EveryHistorySumsToOneOverAllClasses) {
  const int order = GetParam();
  constexpr int32_t kVocab = 37;  // class 36 never occurs in training (an unseen unk bucket)
  MarkovSource source(kVocab - 1, 11);
  const auto train_set = sample_sequences(source, 150, 1, 41, 12);
  const NgramModel model = train(kn_options(order, kVocab), train_set);

  std::vector<Sequence> histories = {{}};  // sequence start
  const Sequence& seen = train_set[3];
  for (std::size_t len = 1; len <= std::min<std::size_t>(seen.size(), 7); ++len)
    histories.emplace_back(seen.begin(), seen.begin() + len);  // seen prefixes, all lengths
  histories.push_back({kVocab - 1});                           // a class never seen
  histories.push_back({3, kVocab - 1, 5});
  std::mt19937_64 rng(13);
  std::uniform_int_distribution<int32_t> any(0, kVocab - 1);
  for (int i = 0; i < 6; ++i) {  // random histories: mostly unseen at the higher orders
    Sequence h(1 + i);
    for (auto& x : h) x = any(rng);
    histories.push_back(h);
  }
  for (const Sequence& h : histories) {
    EXPECT_NEAR(total_probability(model, h), 1.0, 1e-9) << "history length " << h.size();
    const std::vector<double> dist = model.distribution(h.data(), int64_t(h.size()));
    ASSERT_EQ(dist.size(), std::size_t(kVocab));
    for (int32_t w = 0; w < kVocab; ++w) {
      EXPECT_GT(dist[w], 0.0);
      EXPECT_NEAR(dist[w], prob(model, h, w), 1e-15);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Ngram, NgramNormalisation, ::testing::Values(1, 2, 3, 5),
                         [](const auto& info) { return "order" + std::to_string(info.param); });

TEST(NgramModel, SumsToOneWithAFullCompactVocabularyAtOrderFive) {
  constexpr int32_t kVocab = 4096;
  std::mt19937_64 rng(21);
  std::uniform_int_distribution<int32_t> any(0, kVocab - 2);  // the unk bucket 4095 is unseen
  std::vector<Sequence> train_set(40, Sequence(100));
  for (auto& s : train_set)
    for (auto& x : s) x = any(rng);
  const NgramModel model = train(kn_options(5, kVocab), train_set);
  const Sequence& seen = train_set[7];
  const std::vector<Sequence> histories = {{},
                                           {seen[0]},
                                           {seen[0], seen[1]},
                                           Sequence(seen.begin(), seen.begin() + 30),
                                           {kVocab - 1, 17, 9, 100, 3}};
  for (const Sequence& h : histories)
    EXPECT_NEAR(total_probability(model, h), 1.0, 1e-9) << "history length " << h.size();
}

// ---------------------------------------------------------------------------------------------
// Hand-computed examples on the corpus {0 1 0 1 2}, {1 0 1}, {2 2} over V = 4 classes (class 3
// unseen), with <s> written B. The counts below are read off the corpus by hand.

const std::vector<Sequence> kTinyCorpus = {{0, 1, 0, 1, 2}, {1, 0, 1}, {2, 2}};

// One interpolation step: (c - D(c) + gamma lower) / S with D = {D1, D2, D3+}.
double kn_step(int c, const std::array<double, 3>& d, double total, double gamma, double lower) {
  const double discount = c == 0 ? 0.0 : d[std::min(c, 3) - 1];
  return (c - discount + gamma * lower) / total;
}

// Order 1 of both examples: continuation counts N1+(. w) over the bigram types B0 10 | B1 01 |
// B2 12 22: c(0) = 2, c(1) = 2, c(2) = 3, c(3) = 0; n = (0, 2, 1, 0), so with n_1 = 0 no
// discount can be estimated and all three fall back to (0.5, 1, 1.5).
double tiny_unigram(int32_t w) {
  const std::array<double, 3> d = {0.5, 1.0, 1.5};
  const int c[4] = {2, 2, 3, 0};
  const double gamma = 2 * d[1] + 1 * d[2];  // two classes of count 2, one of count 3
  return kn_step(c[w], d, 7.0, gamma, 0.25);
}

TEST(NgramModel, OrderTwoMatchesHandComputedKneserNey) {
  const NgramModel model = train(kn_options(2, 4), kTinyCorpus);
  // Bigram raw counts: B0 1, B1 1, B2 1, 01 3, 10 2, 12 1, 22 1: n = (5, 1, 1, 0), Y = 5/7.
  // D1 = 1 - 2 Y 1/5 = 5/7; D2 = 2 - 3 Y 1/1 = -1/7 falls below 0: fallback 1;
  // D3+ = 3 - 4 Y 0/1 = 3 (in range).
  const std::array<double, 3> d = {5.0 / 7, 1.0, 3.0};
  const auto& stats = model.order_stats();
  ASSERT_EQ(stats.size(), 2u);
  EXPECT_EQ(stats[0].distinct, 3);
  EXPECT_EQ(stats[0].count_of_counts, (std::array<int64_t, 4>{0, 2, 1, 0}));
  EXPECT_EQ(stats[0].discounts, (std::array<double, 3>{0.5, 1.0, 1.5}));
  EXPECT_EQ(stats[0].discount_fallback, (std::array<bool, 3>{true, true, true}));
  EXPECT_EQ(stats[1].distinct, 7);
  EXPECT_EQ(stats[1].count_of_counts, (std::array<int64_t, 4>{5, 1, 1, 0}));
  for (int c = 0; c < 3; ++c) EXPECT_NEAR(stats[1].discounts[c], d[c], 1e-15);
  EXPECT_EQ(stats[1].discount_fallback, (std::array<bool, 3>{false, true, false}));

  for (int32_t w = 0; w < 4; ++w) {
    const double p1 = tiny_unigram(w);
    // History B: B0 1, B1 1, B2 1 (S = 3, gamma = 3 D1).
    const int after_begin[4] = {1, 1, 1, 0};
    EXPECT_NEAR(prob(model, {}, w), kn_step(after_begin[w], d, 3, 3 * d[0], p1), 1e-12) << w;
    // History 0: 01 3 (S = 3, gamma = D3+): p(1 | 0) = p1(1), all its mass discounted.
    const int after_0[4] = {0, 3, 0, 0};
    EXPECT_NEAR(prob(model, {2, 0}, w), kn_step(after_0[w], d, 3, d[2], p1), 1e-12) << w;
    // History 1: 10 2, 12 1 (S = 3, gamma = D2 + D1).
    const int after_1[4] = {2, 0, 1, 0};
    EXPECT_NEAR(prob(model, {1}, w), kn_step(after_1[w], d, 3, d[1] + d[0], p1), 1e-12) << w;
    // History 2: 22 1 (S = 1, gamma = D1).
    const int after_2[4] = {0, 0, 1, 0};
    EXPECT_NEAR(prob(model, {2}, w), kn_step(after_2[w], d, 1, d[0], p1), 1e-12) << w;
    // History 3 was never seen: the unigram alone.
    EXPECT_NEAR(prob(model, {3}, w), p1, 1e-12) << w;
  }
}

TEST(NgramModel, OrderThreeUsesContinuationCountsAndRawCountsAfterTheBeginSymbol) {
  const NgramModel model = train(kn_options(3, 4), kTinyCorpus);
  // Trigrams (raw): B01 1, 010 1, 101 2, 012 1, B10 1, B22 1: n = (5, 1, 0, 0), Y = 5/7:
  // D1 = 5/7, D2 = 2 - 3 Y 0 = 2, D3+ cannot be estimated (n_3 = 0): 1.5.
  const std::array<double, 3> d3 = {5.0 / 7, 2.0, 1.5};
  // Bigrams: those after B keep raw counts (B0 1, B1 1, B2 1); the others count distinct left
  // extensions among the trigram types: 01 {B, 1} 2, 10 {0, B} 2, 12 {0} 1, 22 {B} 1.
  // n = (5, 2, 0, 0), Y = 5/9: D1 = 1 - 2 Y 2/5 = 5/9, D2 = 2, D3+ falls back to 1.5.
  const std::array<double, 3> d2 = {5.0 / 9, 2.0, 1.5};
  const auto& stats = model.order_stats();
  ASSERT_EQ(stats.size(), 3u);
  EXPECT_EQ(stats[1].distinct, 7);
  EXPECT_EQ(stats[1].count_of_counts, (std::array<int64_t, 4>{5, 2, 0, 0}));
  EXPECT_EQ(stats[2].distinct, 6);
  EXPECT_EQ(stats[2].count_of_counts, (std::array<int64_t, 4>{5, 1, 0, 0}));
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(stats[1].discounts[c], d2[c], 1e-15);
    EXPECT_NEAR(stats[2].discounts[c], d3[c], 1e-15);
  }
  EXPECT_EQ(stats[2].discount_fallback, (std::array<bool, 3>{false, false, true}));

  for (int32_t w = 0; w < 4; ++w) {
    const double p1 = tiny_unigram(w);
    const int after_begin[4] = {1, 1, 1, 0};  // B: S = 3, gamma = 3 D1
    const double p2_begin = kn_step(after_begin[w], d2, 3, 3 * d2[0], p1);
    const int after_0[4] = {0, 2, 0, 0};  // 0: S = 2, gamma = D2
    const double p2_0 = kn_step(after_0[w], d2, 2, d2[1], p1);
    const int after_1[4] = {2, 0, 1, 0};  // 1: S = 3, gamma = D2 + D1
    const double p2_1 = kn_step(after_1[w], d2, 3, d2[1] + d2[0], p1);

    // Position 0: the history is B alone, a bigram history.
    EXPECT_NEAR(prob(model, {}, w), p2_begin, 1e-12) << w;
    // B 0: B01 1 (S = 1, gamma = D1).
    const int after_b0[4] = {0, 1, 0, 0};
    EXPECT_NEAR(prob(model, {0}, w), kn_step(after_b0[w], d3, 1, d3[0], p2_0), 1e-12) << w;
    // 1 0: 101 2 (S = 2, gamma = D2).
    const int after_10[4] = {0, 2, 0, 0};
    EXPECT_NEAR(prob(model, {1, 0}, w), kn_step(after_10[w], d3, 2, d3[1], p2_0), 1e-12) << w;
    // 0 1: 010 1, 012 1 (S = 2, gamma = 2 D1).
    const int after_01[4] = {1, 0, 1, 0};
    EXPECT_NEAR(prob(model, {2, 0, 1}, w), kn_step(after_01[w], d3, 2, 2 * d3[0], p2_1), 1e-12)
        << w;
    // 2 1 was never seen as a trigram history: the bigram after 1.
    EXPECT_NEAR(prob(model, {2, 1}, w), p2_1, 1e-12) << w;
  }
}

TEST(NgramModel, UnigramKneserNeyEstimatesTheChenGoodmanDiscounts) {
  // Counts: classes 0-3 once, 4-5 twice, 6 three times, 7 four times, 8-9 never: T = 15,
  // n = (4, 2, 1, 1), Y = 1/2, D1 = 1/2, D2 = 2 - 3 Y 1/2 = 5/4, D3+ = 3 - 4 Y 1/1 = 1.
  const Sequence corpus = {0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 6, 7, 7, 7, 7};
  const NgramModel model = train(kn_options(1, 10), {corpus});
  const std::array<double, 3> d = {0.5, 1.25, 1.0};
  const auto& s = model.order_stats()[0];
  EXPECT_EQ(s.count_of_counts, (std::array<int64_t, 4>{4, 2, 1, 1}));
  for (int c = 0; c < 3; ++c) EXPECT_NEAR(s.discounts[c], d[c], 1e-15);
  EXPECT_EQ(s.discount_fallback, (std::array<bool, 3>{false, false, false}));
  const double gamma = 4 * d[0] + 2 * d[1] + 2 * d[2];
  const int count[10] = {1, 1, 1, 1, 2, 2, 3, 4, 0, 0};
  for (int32_t w = 0; w < 10; ++w)
    EXPECT_NEAR(prob(model, {}, w), kn_step(count[w], d, 15, gamma, 0.1), 1e-14) << w;
  EXPECT_NEAR(prob(model, {7, 7}, 8), prob(model, {}, 8), 1e-15);  // history is ignored
}

TEST(NgramModel, DiscountsOutsideTheirRangeFallBackToHalfTheCount) {
  // Class 0 once, class 1 twice, classes 2 and 3 three times: n = (1, 1, 2, 0), Y = 1/3,
  // D1 = 1/3; D2 = 2 - 3 Y 2/1 = 0 is not > 0: fallback 1; D3+ = 3 - 4 Y 0 = 3.
  const Sequence corpus = {0, 1, 1, 2, 2, 2, 3, 3, 3};
  const NgramModel model = train(kn_options(1, 5), {corpus});
  const auto& s = model.order_stats()[0];
  EXPECT_NEAR(s.discounts[0], 1.0 / 3, 1e-15);
  EXPECT_EQ(s.discounts[1], 1.0);
  EXPECT_EQ(s.discounts[2], 3.0);
  EXPECT_EQ(s.discount_fallback, (std::array<bool, 3>{false, true, false}));
  // Classes 2 and 3 lose their whole count but keep the uniform share.
  const double gamma = 1.0 / 3 + 1.0 + 2 * 3.0;
  EXPECT_NEAR(prob(model, {}, 2), gamma / 5 / 9, 1e-15);
  EXPECT_NEAR(total_probability(model, {}), 1.0, 1e-12);
}

TEST(NgramModel, DiscountsLieInTheirValidRangesAtEveryOrder) {
  MarkovSource source(64, 31);
  const auto train_set = sample_sequences(source, 400, 20, 80, 32);
  const NgramModel model = train(kn_options(5, 64), train_set);
  const auto& stats = model.order_stats();
  ASSERT_EQ(stats.size(), 5u);
  for (int k = 1; k <= 5; ++k) {
    const NgramOrderStats& s = stats[k - 1];
    EXPECT_EQ(s.order, k);
    EXPECT_GE(s.distinct,
              std::accumulate(s.count_of_counts.begin(), s.count_of_counts.end(), int64_t{0}));
    for (int c = 1; c <= 3; ++c) {
      EXPECT_GT(s.discounts[c - 1], 0.0) << "order " << k << " D" << c;
      EXPECT_LE(s.discounts[c - 1], double(c)) << "order " << k << " D" << c;
    }
  }
  // The top orders are sparse enough for every estimate to exist.
  for (int k = 3; k <= 5; ++k)
    EXPECT_EQ(stats[k - 1].discount_fallback, (std::array<bool, 3>{false, false, false})) << k;
}

// ---------------------------------------------------------------------------------------------
// Behaviour on a source.

TEST(NgramModel, HeldOutPerplexityFallsWithOrderTowardsTheSourceEntropy) {
  MarkovSource source(32, 41);
  const auto train_set = sample_sequences(source, 1500, 32, 96, 42);
  const auto test_set = sample_sequences(source, 200, 32, 96, 43);
  double truth = 0.0;
  int64_t tokens = 0;
  for (const Sequence& s : test_set) {
    for (std::size_t i = 0; i < s.size(); ++i) truth -= source.log_prob(s, i);
    tokens += int64_t(s.size());
  }
  truth /= double(tokens);

  const double nll1 = mean_nll(train(kn_options(1, 32), train_set), test_set);
  const double nll2 = mean_nll(train(kn_options(2, 32), train_set), test_set);
  const double nll3 = mean_nll(train(kn_options(3, 32), train_set), test_set);
  const double nll5 = mean_nll(train(kn_options(5, 32), train_set), test_set);
  EXPECT_LT(nll2, nll1 - 0.5);
  EXPECT_LT(nll3, nll2 - 0.3);
  EXPECT_GT(nll3, truth - 0.02);  // no model beats the source by more than sampling noise
  EXPECT_LT(nll3, truth + 0.05);
  EXPECT_LT(nll5, truth + 0.08);  // higher orders add little noise
  RecordProperty("nll_source", std::to_string(truth));
  RecordProperty("nll_orders_1_2_3_5", std::to_string(nll1) + " " + std::to_string(nll2) + " " +
                                           std::to_string(nll3) + " " + std::to_string(nll5));
}

TEST(NgramModel, ConditioningNeverCrossesSequences) {
  // Every sequence starts with 5 and ends with 7 around a random middle over 0 .. 4, so inside a
  // sequence 7 is never followed by anything and 5 never follows anything.
  std::mt19937_64 rng(61);
  std::uniform_int_distribution<int32_t> middle(0, 4);
  std::uniform_int_distribution<int> length(1, 6);
  std::vector<Sequence> separate(30);
  for (Sequence& s : separate) {
    s.push_back(5);
    for (int i = length(rng); i > 0; --i) s.push_back(middle(rng));
    s.push_back(7);
  }
  Sequence joined;
  for (const Sequence& s : separate) joined.insert(joined.end(), s.begin(), s.end());
  const NgramModel apart = train(kn_options(2, 8), separate);
  const NgramModel together = train(kn_options(2, 8), {joined});
  for (int32_t w = 0; w < 8; ++w) {
    // Apart, the history 7 was never seen: it backs off exactly as the never-seen class 6 does.
    EXPECT_EQ(log_prob(apart, separate[0], w), log_prob(apart, {6}, w)) << w;
  }
  // Joined, 7 -> 5 was counted 29 times: 5 after 7 becomes likely.
  EXPECT_GT(prob(together, {7}, 5), 0.8);
  EXPECT_LT(prob(apart, {7}, 5), 0.2);
  // At the sequence start, apart has seen 30 starts with 5, joined only one.
  EXPECT_GT(prob(apart, {}, 5), 0.9);
  EXPECT_LT(prob(together, {}, 5), 0.8);
  // Counting is a sum over sequences: their order does not matter.
  const NgramModel reversed =
      train(kn_options(2, 8), std::vector<Sequence>(separate.rbegin(), separate.rend()));
  for (int32_t w = 0; w < 8; ++w) {
    EXPECT_NEAR(log_prob(reversed, {}, w), log_prob(apart, {}, w), 1e-13);
    EXPECT_NEAR(log_prob(reversed, {2}, w), log_prob(apart, {2}, w), 1e-13);
  }
}

TEST(NgramModel, SequenceLogProbsScoreEachTokenGivenItsOwnPrefix) {
  MarkovSource source(20, 51);
  const auto train_set = sample_sequences(source, 100, 5, 30, 52);
  const NgramModel model = train(kn_options(4, 20), train_set);
  const Sequence s = source.sample(17);
  const std::vector<double> lp = model.sequence_log_probs(s.data(), int64_t(s.size()));
  ASSERT_EQ(lp.size(), s.size());
  for (std::size_t i = 0; i < s.size(); ++i)
    EXPECT_EQ(lp[i], model.log_prob(s.data(), int64_t(i), s[i])) << i;
  EXPECT_TRUE(model.sequence_log_probs(nullptr, 0).empty());
}

TEST(NgramModel, AdditiveUnigramIsCountPlusAOverTotalPlusAV) {
  NgramOptions o;
  o.order = 1;
  o.vocab_size = 6;
  o.smoothing = NgramSmoothing::additive;
  o.additive = 0.5;
  const NgramModel model = train(o, {{0, 0, 1, 2, 2, 2, 5}, {1}});
  EXPECT_EQ(model.num_tokens(), 8);
  EXPECT_EQ(model.num_sequences(), 2);
  const int count[6] = {2, 2, 3, 0, 0, 1};
  for (int32_t w = 0; w < 6; ++w) {
    EXPECT_NEAR(prob(model, {}, w), (count[w] + 0.5) / (8 + 0.5 * 6), 1e-15) << w;
    EXPECT_EQ(log_prob(model, {0, 1}, w), log_prob(model, {}, w)) << w;
  }
  const auto& s = model.order_stats()[0];
  EXPECT_EQ(s.distinct, 4);
  EXPECT_EQ(s.count_of_counts, (std::array<int64_t, 4>{1, 2, 1, 0}));
  EXPECT_EQ(s.discounts, (std::array<double, 3>{0.0, 0.0, 0.0}));
}

TEST(NgramModel, AFailedOrEmptyAddLeavesTheCountsUnchanged) {
  const Sequence a = {1, 2, 3, 1, 2}, bad = {1, 2, 9, 3};
  NgramModel model(kn_options(3, 5));
  model.add_sequence(a.data(), int64_t(a.size()));
  EXPECT_THROW(model.add_sequence(bad.data(), int64_t(bad.size())), InvalidArgument);
  model.add_sequence(nullptr, 0);
  model.finalize();
  model.finalize();  // a second call does nothing
  const NgramModel clean = train(kn_options(3, 5), {a});
  EXPECT_EQ(model.num_tokens(), clean.num_tokens());
  for (int32_t w = 0; w < 5; ++w)
    EXPECT_EQ(log_prob(model, {1, 2}, w), log_prob(clean, {1, 2}, w)) << w;
}

// ---------------------------------------------------------------------------------------------
// Errors.

TEST(NgramModel, BadOptionsThrowInvalidArgument) {
  EXPECT_THROW(NgramModel{kn_options(0, 10)}, InvalidArgument);
  EXPECT_THROW(NgramModel{kn_options(9, 10)}, InvalidArgument);
  EXPECT_THROW(NgramModel{kn_options(3, 0)}, InvalidArgument);
  EXPECT_THROW(NgramModel{kn_options(3, -4)}, InvalidArgument);
  EXPECT_THROW(NgramModel{kn_options(3, int64_t{1} << 31)}, InvalidArgument);
  EXPECT_NO_THROW(NgramModel{kn_options(kMaxNgramOrder, 1)});
  NgramOptions additive = kn_options(2, 10);
  additive.smoothing = NgramSmoothing::additive;
  EXPECT_THROW(NgramModel{additive}, InvalidArgument);
  additive.order = 1;
  EXPECT_NO_THROW(NgramModel{additive});
  additive.additive = 0.0;
  EXPECT_THROW(NgramModel{additive}, InvalidArgument);
  additive.additive = std::nan("");
  EXPECT_THROW(NgramModel{additive}, InvalidArgument);
  NgramOptions unknown = kn_options(2, 10);
  unknown.smoothing = static_cast<NgramSmoothing>(7);
  EXPECT_THROW(NgramModel{unknown}, InvalidArgument);
}

TEST(NgramModel, BadTokensAndCallOrderThrowInvalidArgument) {
  NgramModel model(kn_options(3, 10));
  const Sequence ok = {1, 2, 3, 4}, out_of_range = {1, 10}, negative = {-1};
  EXPECT_THROW(model.finalize(), InvalidArgument);               // nothing counted yet
  EXPECT_THROW(model.log_prob(nullptr, 0, 1), InvalidArgument);  // before finalize()
  EXPECT_THROW(model.order_stats(), InvalidArgument);
  try {
    model.add_sequence(out_of_range.data(), 2);
    ADD_FAILURE() << "no exception";
  } catch (const InvalidArgument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("position 1"), std::string::npos) << what;
    EXPECT_NE(what.find("10"), std::string::npos) << what;
  }
  EXPECT_THROW(model.add_sequence(negative.data(), 1), InvalidArgument);
  EXPECT_THROW(model.add_sequence(nullptr, 3), InvalidArgument);
  EXPECT_THROW(model.add_sequence(ok.data(), -1), InvalidArgument);
  model.add_sequence(ok.data(), int64_t(ok.size()));
  model.finalize();
  EXPECT_THROW(model.add_sequence(ok.data(), int64_t(ok.size())), InvalidArgument);
  EXPECT_THROW(model.log_prob(ok.data(), 2, 10), InvalidArgument);
  EXPECT_THROW(model.log_prob(ok.data(), 2, -1), InvalidArgument);
  EXPECT_THROW(model.log_prob(ok.data(), -1, 1), InvalidArgument);
  EXPECT_THROW(model.log_prob(nullptr, 2, 1), InvalidArgument);
  EXPECT_THROW(model.log_prob(out_of_range.data(), 2, 1), InvalidArgument);  // read history
  EXPECT_THROW(model.sequence_log_probs(out_of_range.data(), 2), InvalidArgument);
  EXPECT_THROW(model.distribution(out_of_range.data(), 2), InvalidArgument);
  EXPECT_NO_THROW(model.log_prob(ok.data(), 4, 9));
}

}  // namespace
}  // namespace htfr::test

// N-gram baselines: counting into two hash tables (histories as a suffix tree, n-grams as
// (history, class) pairs), the Kneser-Ney continuation counts and discounts at finalize(), and
// scoring by walking the history from the most recent symbol back.
#include "htfr/ngram.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "detail/check.hpp"
#include "detail/nvtx.hpp"
#include "detail/random.hpp"
#include "htfr/error.hpp"

namespace htfr {

namespace {

constexpr uint32_t kMissing = std::numeric_limits<uint32_t>::max();
// Ids are uint32 and kMissing is reserved; keep a margin so a whole sequence can be checked
// against the limit before it is counted.
constexpr uint64_t kMaxIds = uint64_t{kMissing} - 1;

// Key of a child of `parent`: the parent's id in the high half, the symbol (< 2^31) in the low.
// ~0 never occurs, so it marks an empty slot.
uint64_t pack(uint32_t parent, uint32_t symbol) { return (uint64_t{parent} << 32) | symbol; }

// Open-addressing hash map uint64 -> uint32 with linear probing, kept at most half full.
class FlatMap {
 public:
  FlatMap() { rehash(64); }

  uint32_t find(uint64_t key) const {
    for (std::size_t i = slot(key);; i = (i + 1) & mask_) {
      if (keys_[i] == key) return values_[i];
      if (keys_[i] == kEmpty) return kMissing;
    }
  }

  // The value stored under `key`, or `value_if_new` after storing it there.
  uint32_t find_or_insert(uint64_t key, uint32_t value_if_new) {
    if (2 * (size_ + 1) > keys_.size()) rehash(2 * keys_.size());
    for (std::size_t i = slot(key);; i = (i + 1) & mask_) {
      if (keys_[i] == key) return values_[i];
      if (keys_[i] == kEmpty) {
        keys_[i] = key;
        values_[i] = value_if_new;
        ++size_;
        return value_if_new;
      }
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};

  std::size_t slot(uint64_t key) const {
    return static_cast<std::size_t>(detail::mix64(key)) & mask_;
  }

  void rehash(std::size_t capacity) {
    std::vector<uint64_t> old_keys(capacity, kEmpty);
    std::vector<uint32_t> old_values(capacity);
    old_keys.swap(keys_);
    old_values.swap(values_);
    mask_ = capacity - 1;
    for (std::size_t j = 0; j < old_keys.size(); ++j) {
      if (old_keys[j] == kEmpty) continue;
      std::size_t i = slot(old_keys[j]);
      while (keys_[i] != kEmpty) i = (i + 1) & mask_;
      keys_[i] = old_keys[j];
      values_[i] = old_values[j];
    }
  }

  std::vector<uint64_t> keys_;
  std::vector<uint32_t> values_;
  std::size_t size_ = 0;
  std::size_t mask_ = 0;
};

// Chen & Goodman's D_c (c = 1, 2, 3 for 3+) from n = (n_1 .. n_4), or the fallback c / 2 when
// it cannot be estimated or falls outside (0, c]. Returns {D_c, fell back}.
std::pair<double, bool> estimate_discount(const std::array<int64_t, 4>& n, int c) {
  const double fallback = 0.5 * c;
  if (n[0] == 0 || n[c - 1] == 0) return {fallback, true};
  const double y = double(n[0]) / (double(n[0]) + 2.0 * double(n[1]));
  const double d = c - (c + 1) * y * double(n[c]) / double(n[c - 1]);
  if (!(d > 0.0 && d <= c)) return {fallback, true};
  return {d, false};
}

}  // namespace

// Histories are nodes of a suffix tree: node 0 is the empty history, and the history
// x_1 .. x_m (oldest first) is the child of x_2 .. x_m under symbol x_1, so walking from the
// most recent symbol back visits the histories of orders 1, 2, .. n in turn and dropping the
// oldest symbol (backing off) is going to the parent. An n-gram is an entry keyed by its history
// node and its class.
struct NgramModel::Impl {
  NgramOptions options;
  uint32_t begin_symbol = 0;  // V
  FlatMap histories;          // pack(parent node, oldest symbol) -> node
  std::vector<uint32_t> history_parent;
  std::vector<uint8_t> history_length;
  std::vector<uint8_t> history_starts_with_begin;
  // Filled by finalize(): S(h) and gamma(h) of each history node.
  std::vector<double> history_total;
  std::vector<double> history_backoff;
  FlatMap ngrams;  // pack(history node, class) -> entry
  std::vector<uint32_t> entry_history;
  std::vector<uint32_t> entry_class;
  // Raw counts while counting; after finalize() the counts each order smooths with.
  std::vector<int64_t> entry_count;
  std::vector<NgramOrderStats> stats;
  int64_t tokens = 0;
  int64_t sequences = 0;
  bool finalized = false;

  explicit Impl(const NgramOptions& o) : options(o), begin_symbol(uint32_t(o.vocab_size)) {
    history_parent.push_back(0);
    history_length.push_back(0);
    history_starts_with_begin.push_back(0);
  }

  int order() const { return options.order; }

  uint32_t child_history(uint32_t parent, uint32_t symbol) {
    const uint32_t next = uint32_t(history_parent.size());
    const uint32_t node = histories.find_or_insert(pack(parent, symbol), next);
    if (node == next) {
      history_parent.push_back(parent);
      history_length.push_back(uint8_t(history_length[parent] + 1));
      history_starts_with_begin.push_back(symbol == begin_symbol ? 1 : 0);
    }
    return node;
  }

  void count(uint32_t history, uint32_t cls) {
    const uint32_t next = uint32_t(entry_count.size());
    const uint32_t entry = ngrams.find_or_insert(pack(history, cls), next);
    if (entry == next) {
      entry_history.push_back(history);
      entry_class.push_back(cls);
      entry_count.push_back(0);
    }
    ++entry_count[entry];
  }

  void count_sequence(const int32_t* tokens_in, int64_t length) {
    for (int64_t j = 0; j < length; ++j) {
      const uint32_t cls = uint32_t(tokens_in[j]);
      uint32_t history = 0;
      count(history, cls);
      for (int m = 1; m < order() && m <= j + 1; ++m) {
        const uint32_t symbol = m <= j ? uint32_t(tokens_in[j - m]) : begin_symbol;
        history = child_history(history, symbol);
        count(history, cls);
      }
    }
  }

  double discount(int order_k, int64_t c) const {
    if (c <= 0) return 0.0;
    return stats[order_k - 1].discounts[std::min<int64_t>(c, 3) - 1];
  }

  // p_k(cls | history node) from p_{k-1} = `lower`.
  double interpolate(uint32_t history, uint32_t cls, double lower) const {
    const uint32_t entry = ngrams.find(pack(history, cls));
    const int64_t c = entry == kMissing ? 0 : entry_count[entry];
    const double direct = double(c) - discount(history_length[history] + 1, c);
    return (direct + history_backoff[history] * lower) / history_total[history];
  }

  // The seen history nodes of orders 2 .. n for an already checked history (the most recent
  // symbol first, so node k - 2 is the history of order k); returns how many were seen. Longer
  // histories of an unseen one are unseen too, so the walk stops at the first.
  int history_nodes(const int32_t* history, int64_t history_len,
                    std::array<uint32_t, kMaxNgramOrder>& nodes) const {
    int seen = 0;
    uint32_t node = 0;
    for (int m = 1; m < order() && m <= history_len + 1; ++m) {
      const uint32_t symbol = m <= history_len ? uint32_t(history[history_len - m]) : begin_symbol;
      node = histories.find(pack(node, symbol));
      if (node == kMissing) break;
      nodes[seen++] = node;
    }
    return seen;
  }

  // Probability of `cls` after the history whose nodes history_nodes() returned.
  double probability(const std::array<uint32_t, kMaxNgramOrder>& nodes, int seen,
                     uint32_t cls) const {
    if (options.smoothing == NgramSmoothing::additive) {
      const uint32_t entry = ngrams.find(pack(0, cls));
      const double c = entry == kMissing ? 0.0 : double(entry_count[entry]);
      return (c + options.additive) /
             (double(tokens) + options.additive * double(options.vocab_size));
    }
    double p = interpolate(0, cls, 1.0 / double(options.vocab_size));
    for (int i = 0; i < seen; ++i) p = interpolate(nodes[i], cls, p);
    return p;
  }

  double probability(const int32_t* history, int64_t history_len, uint32_t cls) const {
    std::array<uint32_t, kMaxNgramOrder> nodes;
    const int seen = history_nodes(history, history_len, nodes);
    return probability(nodes, seen, cls);
  }

  void check_class(int64_t value, const char* what, int64_t position) const {
    HTFR_REQUIRE(value >= 0 && value < options.vocab_size, InvalidArgument,
                 what << " " << value << " at position " << position << " is outside [0, "
                      << options.vocab_size << ")");
  }

  void check_query(const int32_t* history, int64_t history_len, const char* fn) const {
    HTFR_REQUIRE(finalized, InvalidArgument, "NgramModel::" << fn << "() before finalize()");
    HTFR_REQUIRE(history_len >= 0, InvalidArgument,
                 "history_len must be >= 0, got " << history_len);
    HTFR_REQUIRE(history_len == 0 || history != nullptr, InvalidArgument,
                 "history is null but history_len is " << history_len);
    if (options.smoothing == NgramSmoothing::additive) return;
    for (int64_t i = std::max<int64_t>(0, history_len - (order() - 1)); i < history_len; ++i)
      check_class(history[i], "history id", i);
  }

  void finalize_additive() {
    NgramOrderStats& s = stats[0];
    for (const int64_t c : entry_count) {
      ++s.distinct;
      if (c <= 4) ++s.count_of_counts[c - 1];
    }
  }

  void finalize_kneser_ney() {
    const std::size_t entries = entry_count.size();
    // Continuation counts: every entry of order k + 1 >= 2 is one distinct left extension of its
    // suffix (same class, history without its oldest symbol), an entry of order k. A suffix
    // never starts with <s>, so the raw counts kept below are never touched here.
    std::vector<int64_t> continuation(entries, 0);
    for (std::size_t e = 0; e < entries; ++e) {
      const uint32_t h = entry_history[e];
      if (history_length[h] == 0) continue;
      const uint32_t suffix = ngrams.find(pack(history_parent[h], entry_class[e]));
      ++continuation[suffix];  // present: counting recorded every suffix of every n-gram
    }
    for (std::size_t e = 0; e < entries; ++e) {
      const uint32_t h = entry_history[e];
      const bool raw = history_length[h] + 1 == order() || history_starts_with_begin[h];
      if (!raw) entry_count[e] = continuation[e];
    }
    for (std::size_t e = 0; e < entries; ++e) {
      NgramOrderStats& s = stats[history_length[entry_history[e]]];
      ++s.distinct;
      const int64_t c = entry_count[e];
      if (c <= 4) ++s.count_of_counts[c - 1];
    }
    for (NgramOrderStats& s : stats) {
      for (int c = 1; c <= 3; ++c) {
        const auto [d, fell_back] = estimate_discount(s.count_of_counts, c);
        s.discounts[c - 1] = d;
        s.discount_fallback[c - 1] = fell_back;
      }
    }
    history_total.assign(history_parent.size(), 0.0);
    history_backoff.assign(history_parent.size(), 0.0);
    for (std::size_t e = 0; e < entries; ++e) {
      const uint32_t h = entry_history[e];
      history_total[h] += double(entry_count[e]);
      history_backoff[h] += discount(history_length[h] + 1, entry_count[e]);
    }
  }
};

NgramModel::NgramModel(const NgramOptions& options) {
  HTFR_REQUIRE(
      options.order >= 1 && options.order <= kMaxNgramOrder, InvalidArgument,
      "NgramOptions::order must be in [1, " << kMaxNgramOrder << "], got " << options.order);
  HTFR_REQUIRE(options.vocab_size >= 1 && options.vocab_size <= INT32_MAX, InvalidArgument,
               "NgramOptions::vocab_size must be in [1, 2^31 - 1], got " << options.vocab_size);
  HTFR_REQUIRE(options.smoothing == NgramSmoothing::additive ||
                   options.smoothing == NgramSmoothing::kneser_ney,
               InvalidArgument,
               "NgramOptions::smoothing is not a known NgramSmoothing: "
                   << static_cast<int>(options.smoothing));
  if (options.smoothing == NgramSmoothing::additive) {
    HTFR_REQUIRE(
        options.order == 1, InvalidArgument,
        "additive smoothing is a unigram baseline: order must be 1, got " << options.order);
    HTFR_REQUIRE(std::isfinite(options.additive) && options.additive > 0.0, InvalidArgument,
                 "NgramOptions::additive must be finite and > 0, got " << options.additive);
  }
  impl_ = std::make_unique<Impl>(options);
  impl_->stats.resize(static_cast<std::size_t>(options.order));
  for (int k = 1; k <= options.order; ++k) impl_->stats[k - 1].order = k;
}

NgramModel::~NgramModel() = default;
NgramModel::NgramModel(NgramModel&&) noexcept = default;
NgramModel& NgramModel::operator=(NgramModel&&) noexcept = default;

void NgramModel::add_sequence(const int32_t* tokens, int64_t length) {
  HTFR_NVTX_RANGE("htfr::NgramModel::add_sequence");
  Impl& m = *impl_;
  HTFR_REQUIRE(!m.finalized, InvalidArgument, "NgramModel::add_sequence() after finalize()");
  HTFR_REQUIRE(length >= 0, InvalidArgument, "length must be >= 0, got " << length);
  HTFR_REQUIRE(length == 0 || tokens != nullptr, InvalidArgument,
               "tokens is null but length is " << length);
  for (int64_t i = 0; i < length; ++i) m.check_class(tokens[i], "token", i);
  // Each token adds at most `order` entries and order - 1 history nodes.
  const uint64_t growth = uint64_t(length) * uint64_t(m.order());
  HTFR_REQUIRE(
      m.entry_count.size() + growth <= kMaxIds && m.history_parent.size() + growth <= kMaxIds,
      InvalidArgument, "NgramModel holds at most " << kMaxIds << " distinct n-grams and histories");
  m.count_sequence(tokens, length);
  m.tokens += length;
  ++m.sequences;
}

void NgramModel::finalize() {
  HTFR_NVTX_RANGE("htfr::NgramModel::finalize");
  Impl& m = *impl_;
  if (m.finalized) return;
  HTFR_REQUIRE(m.tokens > 0, InvalidArgument, "NgramModel::finalize() with no token counted");
  if (m.options.smoothing == NgramSmoothing::additive)
    m.finalize_additive();
  else
    m.finalize_kneser_ney();
  m.finalized = true;
}

double NgramModel::log_prob(const int32_t* history, int64_t history_len, int32_t token) const {
  const Impl& m = *impl_;
  m.check_query(history, history_len, "log_prob");
  m.check_class(token, "token", history_len);
  return std::log(m.probability(history, history_len, uint32_t(token)));
}

std::vector<double> NgramModel::sequence_log_probs(const int32_t* tokens, int64_t length) const {
  HTFR_NVTX_RANGE("htfr::NgramModel::sequence_log_probs");
  const Impl& m = *impl_;
  HTFR_REQUIRE(m.finalized, InvalidArgument, "NgramModel::sequence_log_probs() before finalize()");
  HTFR_REQUIRE(length >= 0, InvalidArgument, "length must be >= 0, got " << length);
  HTFR_REQUIRE(length == 0 || tokens != nullptr, InvalidArgument,
               "tokens is null but length is " << length);
  for (int64_t i = 0; i < length; ++i) m.check_class(tokens[i], "token", i);
  std::vector<double> out(static_cast<std::size_t>(length));
  for (int64_t i = 0; i < length; ++i)
    out[i] = std::log(m.probability(tokens, i, uint32_t(tokens[i])));
  return out;
}

std::vector<double> NgramModel::distribution(const int32_t* history, int64_t history_len) const {
  HTFR_NVTX_RANGE("htfr::NgramModel::distribution");
  const Impl& m = *impl_;
  m.check_query(history, history_len, "distribution");
  std::array<uint32_t, kMaxNgramOrder> nodes;
  const int seen = m.history_nodes(history, history_len, nodes);
  std::vector<double> out(static_cast<std::size_t>(m.options.vocab_size));
  for (int64_t w = 0; w < m.options.vocab_size; ++w)
    out[w] = m.probability(nodes, seen, uint32_t(w));
  return out;
}

const NgramOptions& NgramModel::options() const { return impl_->options; }
bool NgramModel::finalized() const { return impl_->finalized; }
int64_t NgramModel::num_tokens() const { return impl_->tokens; }
int64_t NgramModel::num_sequences() const { return impl_->sequences; }

const std::vector<NgramOrderStats>& NgramModel::order_stats() const {
  HTFR_REQUIRE(impl_->finalized, InvalidArgument, "NgramModel::order_stats() before finalize()");
  return impl_->stats;
}

}  // namespace htfr

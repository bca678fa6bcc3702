// Information-flow verification of a trained HFT (include/htfr/verify.hpp, the HFT note §9).
//
// The probes run teacher-free over whole sequences (HftModel::Impl::run_streams): every position
// of every sequence is computed as inference computes it, with the Stage 1 history ring of its own
// earlier outputs, so a change to one token reaches the later positions the way it would when
// serving. Teacher signals are read only as references.
#include "htfr/verify.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <unordered_map>
#include <unordered_set>

#include "detail/backend_array.hpp"
#include "detail/check.hpp"
#include "detail/context_math.hpp"
#include "detail/device.hpp"
#include "detail/hft_impl.hpp"
#include "detail/hft_rows.hpp"
#include "detail/nvtx.hpp"
#include "htfr/error.hpp"
#include "htfr/session.hpp"

namespace htfr {

using json = nlohmann::json;

void VerifyOptions::validate() const {
  HTFR_REQUIRE(sequences >= 1, InvalidArgument, "verify: sequences must be >= 1, got " << sequences);
  HTFR_REQUIRE(length >= 2, InvalidArgument, "verify: length must be >= 2, got " << length);
  HTFR_REQUIRE(ablate_offsets >= 1, InvalidArgument,
               "verify: ablate_offsets must be >= 1, got " << ablate_offsets);
  HTFR_REQUIRE(position_buckets >= 1 && position_buckets <= length, InvalidArgument,
               "verify: position_buckets must be in [1, length], got " << position_buckets);
  HTFR_REQUIRE(seed != 0, InvalidArgument, "verify: seed must be non-zero");
  HTFR_REQUIRE(std::isfinite(collision_flag) && collision_flag > 1.0, InvalidArgument,
               "verify: collision_flag must be a finite number > 1, got " << collision_flag);
}

double VerifyCheck::figure(const std::string& key) const {
  for (const auto& f : figures)
    if (f.first == key) return f.second;
  return std::numeric_limits<double>::quiet_NaN();
}

bool VerifyReport::all_passed() const {
  return std::all_of(checks.begin(), checks.end(), [](const VerifyCheck& c) { return c.passed; });
}

namespace {

/// JSON has no NaN or infinity: such figures are written as null.
json number(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

}  // namespace

std::string VerifyReport::to_json() const {
  json out = json::array();
  int64_t passed = 0;
  for (const VerifyCheck& c : checks) {
    json figures = json::object();
    for (const auto& f : c.figures) figures[f.first] = number(f.second);
    out.push_back({{"name", c.name},
                   {"signal", c.signal},
                   {"criterion", c.criterion},
                   {"passed", c.passed},
                   {"figures", figures},
                   {"detail", json::parse(c.detail_json.empty() ? "{}" : c.detail_json)}});
    passed += c.passed ? 1 : 0;
  }
  return json{{"checks", out},
              {"passed", passed},
              {"failed", static_cast<int64_t>(checks.size()) - passed}}
      .dump(2);
}

namespace {

/// The probe sequences: the first `length` compact tokens of the first `sequences` streams
/// that hold at least `length` rows, and the data row of each one's first position.
struct Sequences {
  int64_t count = 0, length = 0;
  std::vector<int32_t> tokens;  ///< count x length
  std::vector<int64_t> first_row;
};

Sequences pick_sequences(const HftData::Impl& D, const VerifyOptions& o) {
  o.validate();
  Sequences S;
  S.length = o.length;
  for (int64_t s = 0; s < D.streams && S.count < o.sequences; ++s) {
    if (D.length[s] < o.length) continue;
    S.tokens.insert(S.tokens.end(), D.host_tokens.begin() + s * D.stride,
                    D.host_tokens.begin() + s * D.stride + o.length);
    S.first_row.push_back(D.first_row[s]);
    ++S.count;
  }
  HTFR_REQUIRE(S.count >= 1, InvalidArgument,
               "verify: no window of the data holds " << o.length << " tokens");
  return S;
}

/// `count` values at a backend pointer, on the host.
std::vector<float> to_host(const HftModel::Impl& I, const float* src, int64_t count) {
  std::vector<float> out(static_cast<std::size_t>(count));
  if (I.backend == Backend::cpu) {
    std::copy_n(src, count, out.data());
    return out;
  }
  detail::DeviceGuard guard(I.device);
  HTFR_CUDA_CHECK(cudaMemcpyAsync(out.data(), src, count * sizeof(float), cudaMemcpyDeviceToHost,
                                  I.stream));
  HTFR_CUDA_CHECK(cudaStreamSynchronize(I.stream));
  return out;
}

detail::BackendArray<int32_t> upload_tokens(const HftModel::Impl& I,
                                            const std::vector<int32_t>& tokens) {
  detail::BackendArray<int32_t> out(I.backend, I.device, static_cast<int64_t>(tokens.size()));
  out.upload(tokens.data(), out.size(), 0, I.stream);
  return out;
}

/// Logits of every position of `count` sequences (length x count x V, position-major), on the
/// host.
std::vector<float> all_logits(const HftModel::Impl& I, const std::vector<int32_t>& tokens,
                              int64_t count, int64_t length, const ContextBuilder* builder = nullptr) {
  const int64_t V = I.config.context.vocab_size;
  const auto toks = upload_tokens(I, tokens);
  detail::BackendArray<float> logits(I.backend, I.device, length * count * V);
  StreamRun run;
  run.builder = builder;
  run.logits = logits.data();
  I.run_streams(toks.data(), count, length, run);
  return logits.download(I.stream);
}

/// Logits of the last position of `count` sequences (count x V), on the host.
std::vector<float> last_logits(const HftModel::Impl& I, const std::vector<int32_t>& tokens,
                               int64_t count, int64_t length) {
  const int64_t V = I.config.context.vocab_size;
  const auto toks = upload_tokens(I, tokens);
  std::vector<float> out;
  StreamRun run;
  run.after_position = [&](int64_t q, const float* logits, const float*) {
    if (q == length - 1) out = to_host(I, logits, count * V);
  };
  I.run_streams(toks.data(), count, length, run);
  return out;
}

/// Per-row metrics (detail::RowMetric) of the sequences against the data's targets and teacher
/// distribution: length x count x kRowMetrics, position-major.
std::vector<float> sequence_metrics(const HftModel::Impl& I, const HftData::Impl& D,
                                    const Sequences& S, const ContextBuilder* builder = nullptr) {
  const int64_t V = I.config.context.vocab_size, n = S.count * S.length;
  std::vector<int64_t> index(n);
  std::vector<int32_t> target(n);
  for (int64_t q = 0; q < S.length; ++q)
    for (int64_t s = 0; s < S.count; ++s) {
      index[q * S.count + s] = S.first_row[s] + q;
      target[q * S.count + s] = D.target[S.first_row[s] + q];
    }
  detail::BackendArray<int64_t> index_dev(I.backend, I.device, n);
  detail::BackendArray<int32_t> target_dev(I.backend, I.device, n);
  detail::BackendArray<float> metrics(I.backend, I.device, n * detail::kRowMetrics);
  index_dev.upload(index.data(), n, 0, I.stream);
  target_dev.upload(target.data(), n, 0, I.stream);
  const auto toks = upload_tokens(I, S.tokens);
  const detail::RowOps ops{I.backend, I.stream};
  StreamRun run;
  run.builder = builder;
  run.after_position = [&](int64_t q, const float* logits, const float*) {
    ops.row_metrics(logits, D.teacher.data(), index_dev.data() + q * S.count,
                    target_dev.data() + q * S.count, S.count, V,
                    metrics.data() + q * S.count * detail::kRowMetrics);
  };
  I.run_streams(toks.data(), S.count, S.length, run);
  return metrics.download(I.stream);
}

/// log-softmax of one row, in double.
std::vector<double> log_softmax(const float* z, int64_t n) {
  const double m = *std::max_element(z, z + n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(z[i] - m);
  const double lse = m + std::log(sum);
  std::vector<double> out(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = z[i] - lse;
  return out;
}

double kl_divergence(const std::vector<double>& lp, const std::vector<double>& lq) {
  double kl = 0;
  for (std::size_t i = 0; i < lp.size(); ++i) kl += std::exp(lp[i]) * (lp[i] - lq[i]);
  return std::max(kl, 0.0);
}

double pearson(const std::vector<double>& a, const std::vector<double>& b) {
  const double n = static_cast<double>(a.size());
  if (a.size() < 2) return std::numeric_limits<double>::quiet_NaN();
  const double ma = std::accumulate(a.begin(), a.end(), 0.0) / n;
  const double mb = std::accumulate(b.begin(), b.end(), 0.0) / n;
  double sab = 0, saa = 0, sbb = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  return saa > 0 && sbb > 0 ? sab / std::sqrt(saa * sbb) : std::numeric_limits<double>::quiet_NaN();
}

double max_abs_diff(const float* a, const float* b, int64_t n) {
  double d = 0;
  for (int64_t i = 0; i < n; ++i) d = std::max(d, std::fabs(double(a[i]) - double(b[i])));
  return d;
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, std::fabs(double(x)));
  return m;
}

}  // namespace

VerifyCheck check_token_ablation(const HftModel& model, const HftData& data,
                                 const VerifyOptions& options) {
  HTFR_NVTX_RANGE("htfr::check_token_ablation");
  const HftModel::Impl& I = HftInternals::of(model);
  const Sequences S = pick_sequences(HftInternals::of(data), options);
  const int64_t V = I.config.context.vocab_size, L = S.length;
  const int64_t J = std::min(options.ablate_offsets, L);
  const int32_t unk = static_cast<int32_t>(V - 1);
  // Sequence s, variant v: v = 0 as is, v = j + 1 with the token at offset j set to unk.
  std::vector<int32_t> tokens;
  tokens.reserve(S.count * (J + 1) * L);
  for (int64_t s = 0; s < S.count; ++s)
    for (int64_t v = 0; v <= J; ++v) {
      tokens.insert(tokens.end(), S.tokens.begin() + s * L, S.tokens.begin() + (s + 1) * L);
      if (v > 0) tokens[tokens.size() - 1 - (v - 1)] = unk;
    }
  const std::vector<float> z = last_logits(I, tokens, S.count * (J + 1), L);
  std::vector<double> shift(J, 0.0), toward_unk(J, 0.0);
  std::vector<int64_t> changed(J, 0), counted(J, 0);
  for (int64_t s = 0; s < S.count; ++s) {
    const auto base = log_softmax(z.data() + s * (J + 1) * V, V);
    for (int64_t j = 0; j < J; ++j) {
      if (S.tokens[s * L + L - 1 - j] == unk) continue;  // already unk: nothing replaced
      const auto ab = log_softmax(z.data() + (s * (J + 1) + j + 1) * V, V);
      shift[j] += kl_divergence(base, ab);
      toward_unk[j] += ab[unk] - base[unk];
      changed[j] += ab != base ? 1 : 0;
      ++counted[j];
    }
  }
  json curve = json::array();
  bool every_offset = true;
  for (int64_t j = 0; j < J; ++j) {
    const double n = std::max<int64_t>(counted[j], 1);
    shift[j] /= n;
    toward_unk[j] /= n;
    every_offset = every_offset && counted[j] > 0 && shift[j] > 0;
    curve.push_back({{"offset", j},
                     {"kl", number(shift[j])},
                     {"delta_log_p_unk", number(toward_unk[j])},
                     {"sequences", counted[j]},
                     {"changed", changed[j]}});
  }
  const int64_t quarter = std::max<int64_t>(J / 4, 1);
  const double recent = std::accumulate(shift.begin(), shift.begin() + quarter, 0.0) / quarter;
  const double oldest = std::accumulate(shift.end() - quarter, shift.end(), 0.0) / quarter;
  const double unk_mean = std::accumulate(toward_unk.begin(), toward_unk.end(), 0.0) / J;
  VerifyCheck c;
  c.name = "token_ablation";
  c.signal = "token ids -> logits";
  c.criterion = "replacing any of the last " + std::to_string(J) +
                " tokens with unk shifts the prediction (KL > 0), recent tokens (first quarter of "
                "offsets) more than old ones (last quarter)";
  c.passed = every_offset && recent > oldest;
  c.figures = {{"kl_offset0", shift[0]},
               {"kl_recent_quarter", recent},
               {"kl_oldest_quarter", oldest},
               {"mean_delta_log_p_unk", unk_mean},
               {"offsets", static_cast<double>(J)},
               {"sequences", static_cast<double>(S.count)}};
  c.detail_json = json{{"per_offset", curve}, {"length", L}}.dump();
  return c;
}

VerifyCheck check_positions(const HftModel& model, const HftData& data,
                            const VerifyOptions& options) {
  HTFR_NVTX_RANGE("htfr::check_positions");
  const HftModel::Impl& I = HftInternals::of(model);
  const HftData::Impl& D = HftInternals::of(data);
  const Sequences S = pick_sequences(D, options);
  const int64_t L = S.length, Bk = options.position_buckets;
  ContextBuilder permuted(I.builder->config(), I.embedding, I.backend, I.device);
  int64_t span = 2;
  while (span < L) span *= 2;
  permuted.set_phase_permutation(options.seed, span);
  const std::vector<float> base = sequence_metrics(I, D, S);
  const std::vector<float> perm = sequence_metrics(I, D, S, &permuted);
  std::vector<double> nll_base(Bk, 0.0), nll_perm(Bk, 0.0);
  std::vector<int64_t> rows(Bk, 0);
  double all_base = 0, all_perm = 0;
  for (int64_t q = 0; q < L; ++q) {
    const int64_t b = q * Bk / L;
    for (int64_t s = 0; s < S.count; ++s) {
      const int64_t r = (q * S.count + s) * detail::kRowMetrics;
      nll_base[b] -= base[r + detail::kStudentLogp];
      nll_perm[b] -= perm[r + detail::kStudentLogp];
      ++rows[b];
    }
  }
  json curve = json::array();
  for (int64_t b = 0; b < Bk; ++b) {
    all_base += nll_base[b];
    all_perm += nll_perm[b];
    curve.push_back({{"first_position", b * L / Bk},
                     {"last_position", (b + 1) * L / Bk - 1},
                     {"ppl", number(std::exp(nll_base[b] / rows[b]))},
                     {"ppl_phases_permuted", number(std::exp(nll_perm[b] / rows[b]))}});
  }
  const double n = static_cast<double>(S.count * L);
  const double ppl = std::exp(all_base / n), ppl_perm = std::exp(all_perm / n);
  const double first = std::exp(nll_base[0] / rows[0]), last = std::exp(nll_base[Bk - 1] / rows[Bk - 1]);
  VerifyCheck c;
  c.name = "positions";
  c.signal = "RoPE-style phases / positional encodings";
  c.criterion = "perplexity per position range; permuting the phases' positions raises the "
                "perplexity by >= 1 % (the model reads positions from them)";
  c.passed = ppl_perm >= 1.01 * ppl;
  c.figures = {{"ppl", ppl},
               {"ppl_phases_permuted", ppl_perm},
               {"ratio", ppl_perm / ppl},
               {"ppl_first_range", first},
               {"ppl_last_range", last}};
  c.detail_json = json{{"per_range", curve}, {"span", span}, {"sequences", S.count}}.dump();
  return c;
}

VerifyCheck check_causal_mask(const HftModel& model, const HftData& data,
                              const VerifyOptions& options) {
  HTFR_NVTX_RANGE("htfr::check_causal_mask");
  const HftModel::Impl& I = HftInternals::of(model);
  const Sequences S = pick_sequences(HftInternals::of(data), options);
  const int64_t V = I.config.context.vocab_size, L = S.length, m = L / 2;
  std::vector<int32_t> injected = S.tokens;
  uint64_t state = options.seed;
  for (int64_t s = 0; s < S.count; ++s)
    for (int64_t q = m; q < L; ++q) {
      int32_t& t = injected[s * L + q];
      // Another class than the one there (V >= 2 is guaranteed by the config).
      t = static_cast<int32_t>((t + 1 + detail::uniform_below(detail::splitmix64(state), V - 1)) % V);
    }
  const auto a = all_logits(I, S.tokens, S.count, L);
  const auto b = all_logits(I, injected, S.count, L);
  const int64_t before = m * S.count * V;
  const double diff_before = max_abs_diff(a.data(), b.data(), before);
  const double diff_after =
      max_abs_diff(a.data() + before, b.data() + before, static_cast<int64_t>(a.size()) - before);
  VerifyCheck c;
  c.name = "causal_mask";
  c.signal = "attention masks / stride metadata";
  c.criterion = "tokens injected after position m leave the logits of every position < m "
                "unchanged, bit for bit (and do change those at >= m, so the probe bites)";
  c.passed = diff_before == 0.0 && diff_after > 0.0;
  c.figures = {{"max_abs_diff_before_m", diff_before},
               {"max_abs_diff_from_m", diff_after},
               {"m", static_cast<double>(m)},
               {"sequences", static_cast<double>(S.count)}};
  c.detail_json = json{{"length", L}}.dump();
  return c;
}

VerifyCheck check_ngram_collisions(const HftModel& model, const HftData& data,
                                   const VerifyOptions& options) {
  HTFR_NVTX_RANGE("htfr::check_ngram_collisions");
  const HftModel::Impl& I = HftInternals::of(model);
  const HftData::Impl& D = HftInternals::of(data);
  const ContextConfig& cc = I.builder->config();
  VerifyCheck c;
  c.name = "ngram_collisions";
  c.signal = "hashed n-gram indicators";
  c.criterion = "rows whose window sets a crowded bucket (more than " +
                std::to_string(options.collision_flag) +
                "x the mean distinct n-grams per used bucket) have a loss at most 5 % above the "
                "other rows";
  if (cc.bloom_size == 0 || cc.ngram_orders.empty()) {
    c.passed = true;
    c.figures = {{"buckets", 0.0}};
    c.detail_json = json{{"note", "the model has no n-gram indicators"}}.dump();
    return c;
  }
  const Sequences S = pick_sequences(D, options);
  const int64_t L = S.length;
  const detail::ContextParams p = detail::context_params(cc, I.builder->layout());
  // Distinct n-grams (by their 64-bit hash) per bucket over every window of the sequences.
  std::vector<std::unordered_set<uint64_t>> bucket(static_cast<std::size_t>(p.bloom_size));
  std::unordered_set<uint64_t> distinct;
  for (int64_t s = 0; s < S.count; ++s) {
    const detail::TokenView toks{S.tokens.data() + s * L, 0};
    for (int64_t q = 0; q < L; ++q)
      for (int o = 0; o < p.num_orders; ++o) {
        const int n = p.orders[o];
        if (q - n + 1 < 0) continue;
        const uint64_t h = detail::ngram_hash(p.hash_seed, n, toks, q);
        distinct.insert(h);
        for (int64_t k = 0; k < p.bloom_hashes; ++k)
          bucket[detail::bloom_bucket(h, k, p.bloom_size)].insert(h);
      }
  }
  int64_t used = 0;
  double load_sum = 0;
  for (const auto& b : bucket)
    if (!b.empty()) {
      ++used;
      load_sum += static_cast<double>(b.size());
    }
  const double mean_load = load_sum / std::max<int64_t>(used, 1);
  const double flag_load = options.collision_flag * mean_load;
  std::unordered_set<uint64_t> sharing;
  int64_t flagged_buckets = 0;
  for (const auto& b : bucket) {
    if (b.size() > 1) sharing.insert(b.begin(), b.end());
    if (static_cast<double>(b.size()) > flag_load) ++flagged_buckets;
  }
  const auto shared_ngrams = static_cast<int64_t>(sharing.size());
  // Per row: the mean load of the buckets its window sets, whether one is flagged, its loss.
  const std::vector<float> metrics = sequence_metrics(I, D, S);
  std::vector<double> row_load, row_loss;
  double flagged_loss = 0, other_loss = 0;
  int64_t flagged_rows = 0, other_rows = 0;
  for (int64_t s = 0; s < S.count; ++s) {
    const detail::TokenView toks{S.tokens.data() + s * L, 0};
    for (int64_t q = 0; q < L; ++q) {
      const int64_t start = detail::window_start(p, q);
      double load = 0;
      int64_t set = 0;
      bool flagged = false;
      for (int64_t e = start; e <= q; ++e)
        for (int o = 0; o < p.num_orders; ++o) {
          const int n = p.orders[o];
          if (e - n + 1 < start) continue;
          const uint64_t h = detail::ngram_hash(p.hash_seed, n, toks, e);
          for (int64_t k = 0; k < p.bloom_hashes; ++k) {
            const double b = static_cast<double>(bucket[detail::bloom_bucket(h, k, p.bloom_size)].size());
            load += b;
            ++set;
            flagged = flagged || b > flag_load;
          }
        }
      const double loss = -metrics[(q * S.count + s) * detail::kRowMetrics + detail::kStudentLogp];
      row_load.push_back(load / std::max<int64_t>(set, 1));
      row_loss.push_back(loss);
      (flagged ? flagged_loss : other_loss) += loss;
      ++(flagged ? flagged_rows : other_rows);
    }
  }
  const double mean_flagged = flagged_rows ? flagged_loss / flagged_rows : std::nan("");
  const double mean_other = other_rows ? other_loss / other_rows : std::nan("");
  c.passed = flagged_rows == 0 || other_rows == 0 || mean_flagged <= 1.05 * mean_other;
  c.figures = {{"distinct_ngrams", static_cast<double>(distinct.size())},
               {"used_buckets", static_cast<double>(used)},
               {"bucket_share_used", static_cast<double>(used) / p.bloom_size},
               {"mean_ngrams_per_used_bucket", mean_load},
               {"share_of_ngrams_sharing_a_bucket",
                static_cast<double>(shared_ngrams) / std::max<std::size_t>(distinct.size(), 1)},
               {"flagged_buckets", static_cast<double>(flagged_buckets)},
               {"load_loss_correlation", pearson(row_load, row_loss)},
               {"loss_rows_with_flagged_bucket", mean_flagged},
               {"loss_other_rows", mean_other},
               {"rows_with_flagged_bucket", static_cast<double>(flagged_rows)}};
  c.detail_json = json{{"bloom_size", p.bloom_size},
                       {"bloom_hashes", p.bloom_hashes},
                       {"orders", cc.ngram_orders},
                       {"rows", static_cast<int64_t>(row_loss.size())}}
                      .dump();
  return c;
}

VerifyCheck check_stage1_proxy(const HftModel& model, const HftData& data,
                               const VerifyOptions& options) {
  HTFR_NVTX_RANGE("htfr::check_stage1_proxy");
  options.validate();
  const HftEvalReport tf = model.evaluate(data, HftMode::teacher_free);
  const HftEvalReport off = model.evaluate(data, HftMode::teacher_free, false);
  const HftEvalReport leaky = model.evaluate(data, HftMode::leaky);
  // Share of the log-perplexity reduction over "no Stage 1" that the teacher-free embedding
  // keeps, relative to the teacher's projected features in its place.
  const double reference = std::log(off.student_ppl / leaky.student_ppl);
  const double kept = std::log(off.student_ppl / tf.student_ppl);
  const double share = reference > 0 ? kept / reference : std::nan("");
  VerifyCheck c;
  c.name = "stage1_proxy";
  c.signal = "Stage 1 Q/K/V proxies";
  c.criterion = "mean cosine of Stage 1 outputs and their teacher targets >= 0.9 on held-out data, "
                "and the 1k embedding keeps >= 95 % of the log-perplexity reduction that the "
                "teacher's projected features give Stage 2 (both relative to no Stage 1)";
  c.passed = tf.stage1_cosine >= 0.9 && std::isfinite(share) && share >= 0.95;
  c.figures = {{"stage1_cosine", tf.stage1_cosine},
               {"ppl_teacher_free", tf.student_ppl},
               {"ppl_without_stage1", off.student_ppl},
               {"ppl_teacher_features_leaky", leaky.student_ppl},
               {"share_of_reduction_kept", share}};
  c.detail_json = json{{"rows", tf.tokens}}.dump();
  return c;
}

VerifyCheck check_tail(const HftModel& model, const HftData& data, const VerifyOptions& options) {
  HTFR_NVTX_RANGE("htfr::check_tail");
  options.validate();
  const HftEvalReport with = model.evaluate(data, HftMode::teacher_free);
  const HftEvalReport without = model.evaluate(data, HftMode::teacher_free, true, false);
  const double rise = with.kl > 0 ? without.kl / with.kl - 1.0 : std::nan("");
  VerifyCheck c;
  c.name = "tail";
  c.signal = "stage coupling: the 16-token tail";
  c.criterion = "turning the token tail off raises KL(teacher || student) by >= 10 %";
  c.passed = std::isfinite(rise) && rise >= 0.10;
  c.figures = {{"kl", with.kl},
               {"kl_without_tail", without.kl},
               {"kl_rise", rise},
               {"ppl", with.student_ppl},
               {"ppl_without_tail", without.student_ppl}};
  c.detail_json = json{{"rows", with.tokens}}.dump();
  return c;
}

VerifyCheck check_stage_coupling(HftModel& probe, const HftData& data,
                                 const VerifyOptions& options) {
  HTFR_NVTX_RANGE("htfr::check_stage_coupling");
  options.validate();
  std::vector<double> norms;
  probe.train_epoch(data, true, [&](const HftTrainProgress& p) {
    if (!std::isnan(p.stage1_grad_norm)) norms.push_back(p.stage1_grad_norm);
  });
  const bool all_ok = !norms.empty() && std::all_of(norms.begin(), norms.end(), [](double v) {
    return std::isfinite(v) && v > 0;
  });
  std::vector<double> sorted = norms;
  std::sort(sorted.begin(), sorted.end());
  const auto at = [&](double f) {
    return sorted.empty() ? std::nan("")
                          : sorted[static_cast<std::size_t>(f * (sorted.size() - 1) + 0.5)];
  };
  VerifyCheck c;
  c.name = "stage_coupling";
  c.signal = "stage coupling: gradient from Stage 2 into Stage 1";
  c.criterion = "during end-to-end fine-tuning the gradient reaching Stage 1 is finite and "
                "non-zero at every step read back";
  c.passed = all_ok;
  c.figures = {{"steps_read", static_cast<double>(norms.size())},
               {"grad_norm_min", at(0.0)},
               {"grad_norm_median", at(0.5)},
               {"grad_norm_max", at(1.0)}};
  json per_step = json::array();
  for (double v : norms) per_step.push_back(number(v));
  c.detail_json = json{{"grad_norm_per_step", per_step}, {"rows", data.rows()}}.dump();
  return c;
}

VerifyCheck check_cached_projections(const HftModel& model, HftSession& session,
                                     const HftData& data, const VerifyOptions& options) {
  HTFR_NVTX_RANGE("htfr::check_cached_projections");
  const HftModel::Impl& I = HftInternals::of(model);
  const Sequences S = pick_sequences(HftInternals::of(data), options);
  const int64_t V = I.config.context.vocab_size, L = S.length, N = S.count;
  const int64_t D2 = I.config.stage2.htfr.input_dim;
  HTFR_REQUIRE(session.sessions() == N && session.vocab_size() == V &&
                   session.model_sha256() == I.model_sha256,
               InvalidArgument,
               "verify: the session must be of the same model with " << N << " sessions, has "
                                                                      << session.sessions());
  // Fresh run, keeping the projected Stage 2 inputs of every position in a host cache.
  const auto toks = upload_tokens(I, S.tokens);
  detail::BackendArray<float> fresh_dev(I.backend, I.device, L * N * V);
  std::vector<float> cache(static_cast<std::size_t>(L * N * D2));
  StreamRun run;
  run.logits = fresh_dev.data();
  run.after_position = [&](int64_t q, const float*, const float* x2) {
    const auto host = to_host(I, x2, N * D2);
    std::copy(host.begin(), host.end(), cache.begin() + q * N * D2);
  };
  I.run_streams(toks.data(), N, L, run);
  const std::vector<float> fresh = fresh_dev.download(I.stream);
  const double scale = std::max(1.0, max_abs(fresh));
  // (a) Stage 2 on the cached projected vectors.
  detail::BackendArray<float> x2(I.backend, I.device, N * D2), z(I.backend, I.device, N * V);
  double diff_cache = 0;
  for (int64_t q = 0; q < L; ++q) {
    x2.upload(cache.data() + q * N * D2, N * D2, 0, I.stream);
    I.stage2->forward(x2.data(), N, z.data(), I.stream);
    const auto zq = z.download(I.stream);
    diff_cache = std::max(diff_cache, max_abs_diff(zq.data(), fresh.data() + q * N * V, N * V));
  }
  // (b) The incremental session against the fresh recomputation.
  session.reset();
  const Backend sb = I.backend;
  detail::BackendArray<int32_t> step_tokens(sb, I.device, N);
  detail::BackendArray<float> step_logits(sb, I.device, N * V);
  std::vector<int32_t> teacher_ids(N);
  const int32_t unk = static_cast<int32_t>(V - 1);
  double diff_session = 0;
  for (int64_t q = 0; q < L; ++q) {
    for (int64_t s = 0; s < N; ++s) {
      const int32_t t = S.tokens[s * L + q];
      teacher_ids[s] = t == unk ? -1 : I.compact_token_ids[t];
    }
    step_tokens.upload(teacher_ids.data(), N, 0, I.stream);
    session.step(step_tokens.data(), step_logits.data(), I.stream);
    const auto zq = step_logits.download(I.stream);
    diff_session = std::max(diff_session, max_abs_diff(zq.data(), fresh.data() + q * N * V, N * V));
  }
  session.reset();
  VerifyCheck c;
  c.name = "cached_projections";
  c.signal = "projected vectors -> logits";
  c.criterion = "logits from cached projected vectors, and from the incremental session's cached "
                "state, equal fresh projections of the same contexts within 1e-4 of the logits' "
                "scale";
  c.passed = diff_cache <= 1e-4 * scale && diff_session <= 1e-4 * scale;
  c.figures = {{"max_abs_diff_cached_vectors", diff_cache},
               {"max_abs_diff_session", diff_session},
               {"logit_scale", scale},
               {"positions", static_cast<double>(L * N)}};
  c.detail_json = json{{"sequences", N}, {"length", L}}.dump();
  return c;
}

VerifyReport verify_information_flow(const std::string& checkpoint, const CaptureReader& capture,
                                     Backend backend, int device, const VerifyOptions& options,
                                     int64_t max_positions,
                                     const std::function<void(const std::string&)>& progress) {
  HTFR_NVTX_RANGE("htfr::verify_information_flow");
  options.validate();
  const auto tell = [&](const char* name) {
    if (progress) progress(name);
  };
  VerifyReport report;
  {
    const HftModel model = HftModel::load(checkpoint, backend, device, false);
    const HftData data = model.load_data(capture, max_positions);
    tell("token_ablation");
    report.checks.push_back(check_token_ablation(model, data, options));
    tell("positions");
    report.checks.push_back(check_positions(model, data, options));
    tell("causal_mask");
    report.checks.push_back(check_causal_mask(model, data, options));
    tell("ngram_collisions");
    report.checks.push_back(check_ngram_collisions(model, data, options));
    tell("stage1_proxy");
    report.checks.push_back(check_stage1_proxy(model, data, options));
    tell("tail");
    report.checks.push_back(check_tail(model, data, options));
    tell("cached_projections");
    HftSessionOptions so;
    so.sessions = pick_sequences(HftInternals::of(data), options).count;
    HftSession session = HftSession::load(checkpoint, backend, device, so);
    report.checks.push_back(check_cached_projections(model, session, data, options));
  }
  tell("stage_coupling");
  HftModel probe = HftModel::load(checkpoint, backend, device, true);
  const HftData probe_data = probe.load_data(capture, options.coupling_rows);
  report.checks.push_back(check_stage_coupling(probe, probe_data, options));
  return report;
}

}  // namespace htfr

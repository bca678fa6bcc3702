// The HFT context builder: configuration checks, the feature layout, the CPU reference builder,
// and the dispatch to the CUDA kernels (kernels/context.cu).
#include "htfr/context.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

#include "detail/check.hpp"
#include "detail/context_math.hpp"
#include "detail/device.hpp"
#include "detail/nvtx.hpp"
#include "../kernels/context.cuh"

namespace htfr {

void ContextConfig::validate() const {
  const auto positive = [](double v) { return std::isfinite(v) && v > 0; };
  const auto non_negative = [](double v) { return std::isfinite(v) && v >= 0; };
  HTFR_REQUIRE(vocab_size >= 1, InvalidArgument, "context: vocab_size must be >= 1, got " << vocab_size);
  HTFR_REQUIRE(embedding_dim >= 1, InvalidArgument,
               "context: embedding_dim must be >= 1, got " << embedding_dim);
  HTFR_REQUIRE(window >= 1, InvalidArgument, "context: window must be >= 1, got " << window);
  HTFR_REQUIRE(phase_pairs >= 0, InvalidArgument, "context: phase_pairs must be >= 0, got " << phase_pairs);
  HTFR_REQUIRE(positive(phase_base), InvalidArgument, "context: phase_base must be > 0");
  HTFR_REQUIRE(ngram_orders.size() <= static_cast<std::size_t>(detail::kMaxNgramOrders),
               InvalidArgument, "context: at most " << detail::kMaxNgramOrders << " n-gram orders");
  for (int n : ngram_orders)
    HTFR_REQUIRE(n >= 1 && n <= window, InvalidArgument,
                 "context: n-gram order " << n << " outside [1, window = " << window << "]");
  HTFR_REQUIRE(bloom_size >= 0 && bloom_hashes >= 1, InvalidArgument,
               "context: bloom_size must be >= 0 and bloom_hashes >= 1");
  HTFR_REQUIRE(history >= 0 && history_dim >= 1, InvalidArgument,
               "context: history must be >= 0 and history_dim >= 1");
  HTFR_REQUIRE(tail >= 1 && tail <= window, InvalidArgument,
               "context: tail must be in [1, window], got " << tail);
  for (float v : {slot_decay, embedding_weight, phase_weight, mask_weight, bloom_weight,
                  history_weight, tail_decay, tail_weight, stage1_weight})
    HTFR_REQUIRE(non_negative(v), InvalidArgument, "context: weights must be finite and >= 0");
  HTFR_REQUIRE(positive(scale) && positive(stage2_scale), InvalidArgument,
               "context: scale and stage2_scale must be finite and > 0");
}

ContextLayout context_layout(const ContextConfig& c) {
  ContextLayout l;
  l.slot_width = c.embedding_dim + 2 * c.phase_pairs + 1;
  l.slots = 0;
  l.bloom = c.window * l.slot_width;
  l.history = l.bloom + c.bloom_size;
  l.meta = l.history + c.history * c.history_dim;
  l.stage1_dim = l.meta + 3;
  l.stage2_tail = c.history_dim;
  l.stage2_meta = l.stage2_tail + c.tail * c.embedding_dim;
  l.stage2_dim = l.stage2_meta + 2 * c.phase_pairs + 1;
  return l;
}

namespace detail {

ContextParams context_params(const ContextConfig& c, const ContextLayout& l) {
  ContextParams p;
  p.E = c.embedding_dim;
  p.W = c.window;
  p.P = c.phase_pairs;
  p.slot_width = l.slot_width;
  p.bloom_offset = l.bloom;
  p.bloom_size = c.bloom_size;
  p.bloom_hashes = c.bloom_hashes;
  p.history_offset = l.history;
  p.R = c.history;
  p.H = c.history_dim;
  p.meta_offset = l.meta;
  p.stage1_dim = l.stage1_dim;
  p.tail = c.tail;
  p.s2_tail_offset = l.stage2_tail;
  p.s2_meta_offset = l.stage2_meta;
  p.stage2_dim = l.stage2_dim;
  p.slot_decay = c.slot_decay;
  p.embedding_weight = c.embedding_weight;
  p.phase_weight = c.phase_weight;
  p.mask_weight = c.mask_weight;
  p.bloom_weight = c.bloom_weight;
  p.history_weight = c.history_weight;
  p.tail_decay = c.tail_decay;
  p.tail_weight = c.tail_weight;
  p.stage1_weight = c.stage1_weight;
  p.scale = c.scale;
  p.stage2_scale = c.stage2_scale;
  p.phase_base = c.phase_base;
  p.hash_seed = c.hash_seed;
  p.num_orders = static_cast<int>(c.ngram_orders.size());
  for (int i = 0; i < p.num_orders; ++i) p.orders[i] = c.ngram_orders[i];
  return p;
}

namespace {

void stage1_row_cpu(const ContextParams& c, const float* table, TokenView toks,
                    const float* hist, int64_t p, float* out) {
  for (int64_t i = 0; i < c.stage1_dim; ++i) out[i] = stage1_dense_value(c, table, toks, hist, p, i);
  const float bit = c.bloom_weight * c.scale;
  const int64_t start = window_start(c, p);
  for (int64_t q = start; q <= p; ++q)
    for (int o = 0; o < c.num_orders; ++o) {
      const int n = c.orders[o];
      if (q - n + 1 < start) continue;
      const uint64_t h = ngram_hash(c.hash_seed, n, toks, q);
      for (int64_t k = 0; k < c.bloom_hashes; ++k)
        out[c.bloom_offset + bloom_bucket(h, k, c.bloom_size)] = bit;
    }
}

}  // namespace
}  // namespace detail

ContextBuilder::ContextBuilder(const ContextConfig& config, const std::vector<float>& embedding,
                               Backend backend, int device)
    : config_(config), layout_(context_layout(config)), backend_(backend), device_(device) {
  HTFR_NVTX_RANGE("htfr::ContextBuilder::ContextBuilder");
  config_.validate();
  const auto V = config_.vocab_size, E = config_.embedding_dim;
  HTFR_REQUIRE(static_cast<int64_t>(embedding.size()) == V * E, InvalidArgument,
               "context: embedding has " << embedding.size() << " values, expected vocab_size x "
                                         << "embedding_dim = " << V * E);
  host_table_.assign(embedding.size(), 0.0f);
  for (int64_t v = 0; v < V; ++v) {
    double norm2 = 0;
    for (int64_t k = 0; k < E; ++k) {
      const float x = embedding[v * E + k];
      HTFR_REQUIRE(std::isfinite(x), NonFiniteInput,
                   "context: embedding row " << v << " holds a non-finite value at column " << k);
      norm2 += double(x) * x;
    }
    const double inv = norm2 > 0 ? 1.0 / std::sqrt(norm2) : 0.0;
    for (int64_t k = 0; k < E; ++k)
      host_table_[v * E + k] = static_cast<float>(embedding[v * E + k] * inv);
  }
  if (backend_ == Backend::cuda) {
    detail::require_cuda_device(device_);
    detail::DeviceGuard guard(device_);
    try {
      HTFR_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&device_table_), host_table_.size() * sizeof(float)));
      HTFR_CUDA_CHECK(cudaMemcpy(device_table_, host_table_.data(),
                                 host_table_.size() * sizeof(float), cudaMemcpyHostToDevice));
    } catch (...) {
      release();
      throw;
    }
    host_table_.clear();
    host_table_.shrink_to_fit();
  }
}

ContextBuilder::~ContextBuilder() { release(); }

void ContextBuilder::release() noexcept {
  if (device_table_) {
    detail::DeviceGuard guard(device_);
    cudaFree(device_table_);
    device_table_ = nullptr;
  }
}

ContextBuilder::ContextBuilder(ContextBuilder&& o) noexcept
    : config_(std::move(o.config_)),
      layout_(o.layout_),
      backend_(o.backend_),
      device_(o.device_),
      host_table_(std::move(o.host_table_)),
      device_table_(std::exchange(o.device_table_, nullptr)),
      phase_mul_(o.phase_mul_),
      phase_add_(o.phase_add_),
      phase_mask_(o.phase_mask_) {}

ContextBuilder& ContextBuilder::operator=(ContextBuilder&& o) noexcept {
  if (this != &o) {
    release();
    config_ = std::move(o.config_);
    layout_ = o.layout_;
    backend_ = o.backend_;
    device_ = o.device_;
    host_table_ = std::move(o.host_table_);
    device_table_ = std::exchange(o.device_table_, nullptr);
    phase_mul_ = o.phase_mul_;
    phase_add_ = o.phase_add_;
    phase_mask_ = o.phase_mask_;
  }
  return *this;
}

void ContextBuilder::set_scales(float scale, float stage2_scale) {
  ContextConfig c = config_;
  c.scale = scale;
  c.stage2_scale = stage2_scale;
  c.validate();
  config_ = c;
}

void ContextBuilder::set_phase_permutation(uint64_t seed, int64_t span) {
  if (seed == 0) {
    phase_mul_ = phase_add_ = phase_mask_ = 0;
    return;
  }
  HTFR_REQUIRE(span >= 2 && (span & (span - 1)) == 0, InvalidArgument,
               "context: phase permutation span must be a power of two >= 2, got " << span);
  uint64_t state = seed;
  const auto mask = static_cast<uint64_t>(span - 1);
  // An odd multiplier other than 1 and any offset give a permutation of [0, span).
  uint64_t mul = (detail::splitmix64(state) & mask) | 1u;
  if (mul == 1 && span > 2) mul = 3;
  phase_mul_ = mul;
  phase_add_ = detail::splitmix64(state) & mask;
  phase_mask_ = mask;
}

detail::ContextParams ContextBuilder::params() const {
  detail::ContextParams p = detail::context_params(config_, layout_);
  p.phase_mul = phase_mul_;
  p.phase_add = phase_add_;
  p.phase_mask = phase_mask_;
  return p;
}

void ContextBuilder::check_tokens(const int32_t* tokens, int64_t count) const {
  for (int64_t i = 0; i < count; ++i)
    HTFR_REQUIRE(tokens[i] >= 0 && tokens[i] < config_.vocab_size, InvalidArgument,
                 "context: token " << i << " is " << tokens[i] << ", outside the compact "
                                   << "vocabulary [0, " << config_.vocab_size << ")");
}

namespace {
void check_rows(const ContextRows& r, const ContextConfig& c, Backend backend, int device) {
  HTFR_REQUIRE(r.rows >= 0, InvalidArgument, "context: rows must be >= 0, got " << r.rows);
  if (r.rows == 0) return;
  HTFR_REQUIRE(r.tokens && r.stream && r.position && r.token_stride >= 1, InvalidArgument,
               "context: tokens, stream and position are required and token_stride >= 1");
  HTFR_REQUIRE(r.token_ring == 0 || (r.token_ring >= c.window && r.token_ring <= r.token_stride),
               InvalidArgument, "context: token_ring must be 0 or in [window = " << c.window
                                    << ", token_stride], got " << r.token_ring);
  HTFR_REQUIRE(c.history == 0 || r.history, InvalidArgument,
               "context: history ring required when history > 0");
  detail::require_memory(r.tokens, backend, device, "tokens");
  detail::require_memory(r.stream, backend, device, "stream");
  detail::require_memory(r.position, backend, device, "position");
  detail::require_memory(r.history, backend, device, "history");
}
}  // namespace

void ContextBuilder::stage1(const ContextRows& rows, float* raw, cudaStream_t stream) const {
  HTFR_NVTX_RANGE("htfr::ContextBuilder::stage1");
  check_rows(rows, config_, backend_, device_);
  if (rows.rows == 0) return;
  HTFR_REQUIRE(raw, InvalidArgument, "context: raw output is null");
  detail::require_memory(raw, backend_, device_, "raw");
  const auto params = this->params();
  if (backend_ == Backend::cuda) {
    detail::DeviceGuard guard(device_);
    detail::launch_context_stage1(params, device_table_, rows, raw, stream);
    return;
  }
  for (int64_t r = 0; r < rows.rows; ++r) {
    const int64_t s = rows.stream[r], p = rows.position[r];
    const float* hist = rows.history ? rows.history + s * config_.history * config_.history_dim : nullptr;
    detail::stage1_row_cpu(params, host_table_.data(), detail::token_view(rows, s), hist, p,
                           raw + r * layout_.stage1_dim);
  }
}

void ContextBuilder::stage2(const ContextRows& rows, const float* embedding_rows, float* raw,
                            cudaStream_t stream) const {
  HTFR_NVTX_RANGE("htfr::ContextBuilder::stage2");
  check_rows(rows, config_, backend_, device_);
  if (rows.rows == 0) return;
  HTFR_REQUIRE(raw, InvalidArgument, "context: raw output is null");
  detail::require_memory(raw, backend_, device_, "raw");
  detail::require_memory(embedding_rows, backend_, device_, "embedding_rows");
  const auto params = this->params();
  if (backend_ == Backend::cuda) {
    detail::DeviceGuard guard(device_);
    detail::launch_context_stage2(params, device_table_, rows, embedding_rows, raw, stream);
    return;
  }
  const int64_t H = config_.history_dim, D2 = layout_.stage2_dim;
  for (int64_t r = 0; r < rows.rows; ++r) {
    const int64_t s = rows.stream[r], p = rows.position[r];
    const detail::TokenView toks = detail::token_view(rows, s);
    const float* emb = embedding_rows ? embedding_rows + r * H : nullptr;
    for (int64_t i = 0; i < D2; ++i)
      raw[r * D2 + i] = detail::stage2_value(params, host_table_.data(), toks, emb, p, i);
  }
}

void ContextBuilder::stage2_embedding_grad(const float* grad_raw, int64_t rows,
                                           float* grad_embedding, cudaStream_t stream) const {
  HTFR_NVTX_RANGE("htfr::ContextBuilder::stage2_embedding_grad");
  HTFR_REQUIRE(rows >= 0, InvalidArgument, "context: rows must be >= 0");
  if (rows == 0) return;
  HTFR_REQUIRE(grad_raw && grad_embedding, InvalidArgument, "context: null gradient array");
  detail::require_memory(grad_raw, backend_, device_, "grad_raw");
  detail::require_memory(grad_embedding, backend_, device_, "grad_embedding");
  const int64_t H = config_.history_dim, D2 = layout_.stage2_dim;
  const float factor = config_.stage1_weight * config_.stage2_scale;
  if (backend_ == Backend::cuda) {
    detail::DeviceGuard guard(device_);
    detail::launch_context_stage2_grad(grad_raw, rows, D2, H, factor, grad_embedding, stream);
    return;
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < H; ++h) grad_embedding[r * H + h] = grad_raw[r * D2 + h] * factor;
}

}  // namespace htfr

// Incremental teacher-free inference sessions over a trained HFT (include/htfr/session.hpp).
//
// What is cached and what is recomputed per token. Each session keeps the rolling buffer of its
// last W compact token ids and the ring of Stage 1's last R outputs; a step appends one token and
// one Stage 1 output and never touches the rest of the window. Every other feature of a position
// is a closed form of what the buffers hold: embedding rows are a table lookup, phases and mask
// bits depend on the position alone, and the n-gram indicators are hashes of buffered tokens.
//
// Why the projected window is not updated in place. CountSketch and SRHT are linear, so a
// projected window could in principle be updated by adding the new position's contribution and
// removing the expired one. The features do not allow it here: every window feature is indexed
// by the age of its token (slot j holds position p - j, decayed by slot_decay^j; the history
// ring and the token tail the same), so when a token arrives every buffered token moves to a new
// slot, and with it to new CountSketch buckets and signs — the whole window changes, not one
// position. The n-gram indicators are set-valued (a bucket holds 1 while any n-gram of the
// window hashes to it), which is not linear in the positions either. A rolled update would also
// drift by rounding from a fresh projection, and the top-K selection of the fields is
// discontinuous: a drifted input flips near-tied tensors and changes the logits by far more than
// the rounding. So a step re-projects the window from the buffers (one fused feature kernel, one
// sketch, one Walsh–Hadamard transform per stage), which keeps the incremental path identical to
// a recomputation from scratch; bench/serve reports what that costs next to the fields.
#include "htfr/session.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "detail/backend_array.hpp"
#include "detail/check.hpp"
#include "detail/device.hpp"
#include "detail/hft_impl.hpp"
#include "detail/hft_rows.hpp"
#include "detail/nvtx.hpp"
#include "detail/sampling.hpp"
#include "../kernels/session.cuh"

namespace htfr {

void SamplingConfig::validate() const {
  HTFR_REQUIRE(std::isfinite(temperature) && temperature >= 0, InvalidArgument,
               "sampling: temperature must be finite and >= 0, got " << temperature);
  HTFR_REQUIRE(std::isfinite(top_p) && top_p > 0 && top_p <= 1, InvalidArgument,
               "sampling: top_p must be in (0, 1], got " << top_p);
}

void HftSessionOptions::validate() const {
  HTFR_REQUIRE(sessions >= 1 && sessions <= 65535, InvalidArgument,
               "session: sessions must be in [1, 65535], got " << sessions);
  HTFR_REQUIRE(max_positions >= 1 && max_positions <= (int64_t{1} << 31) - 1, InvalidArgument,
               "session: max_positions must be in [1, 2^31 - 1], got " << max_positions);
}

namespace {

/// What a captured graph was recorded with; a step with other arguments needs another graph.
struct GraphKey {
  const int32_t* tokens = nullptr;
  float* logits = nullptr;
  int32_t* next = nullptr;
  int32_t* next_class = nullptr;
  bool sample = false;
  SamplingConfig sampling;
  bool operator==(const GraphKey& o) const {
    return tokens == o.tokens && logits == o.logits && next == o.next &&
           next_class == o.next_class && sample == o.sample &&
           sampling.temperature == o.sampling.temperature && sampling.top_p == o.sampling.top_p &&
           sampling.allow_unk == o.sampling.allow_unk;
  }
};

/// The CPU twin of the sampling kernel (kernels/session.cu): the same steps, in class order.
int32_t sample_row_cpu(const float* z, int64_t V, const detail::SampleParams& p, int64_t session,
                       int64_t draw) {
  const int64_t classes = p.allow_unk ? V : V - 1;
  int64_t best = 0;
  for (int64_t c = 1; c < classes; ++c)
    if (z[c] > z[best]) best = c;
  if (p.temperature <= 0) return static_cast<int32_t>(best);
  const float zmax = z[best], inv_t = 1.0f / p.temperature;
  std::vector<float> w(static_cast<std::size_t>(classes));
  for (int64_t c = 0; c < classes; ++c) w[c] = std::exp((z[c] - zmax) * inv_t);
  const auto mass_above = [&](float threshold) {
    double sum = 0;
    for (const float v : w)
      if (v >= threshold) sum += v;
    return sum;
  };
  float threshold = 0.0f;
  if (p.top_p < 1.0f) {
    const double need = p.top_p * mass_above(0.0f);
    float a = 0.0f, b = 2.0f;
    for (int it = 0; it < detail::kNucleusSteps; ++it) {
      const float mid = 0.5f * (a + b);
      if (mass_above(mid) >= need) a = mid;
      else b = mid;
    }
    threshold = a;
  }
  const double target = detail::sample_uniform(p.seed, session, draw) * mass_above(threshold);
  double acc = 0;
  for (int64_t c = 0; c < classes; ++c) {
    if (w[c] < threshold) continue;
    acc += w[c];
    if (acc > target) return static_cast<int32_t>(c);
  }
  return static_cast<int32_t>(best);
}

}  // namespace

struct HftSession::Impl {
  HftModel model;
  HftModel::Impl* m = nullptr;
  HftSessionOptions options;
  int64_t S = 0, W = 0, R = 0, H = 0, V = 0;
  std::vector<int64_t> lengths;
  // Session state.
  detail::BackendArray<int32_t> ring, count, position, stream_ids;
  detail::BackendArray<float> history;
  // Tables.
  detail::BackendArray<int32_t> compact_map, class_token;
  // Scratch of one step.
  detail::BackendArray<float> raw1, x1, y1, raw2, x2, logits;
  // CUDA graph of the step: the arguments it was captured with, and those of the last eager step.
  cudaStream_t capture_stream = nullptr;
  cudaGraphExec_t graph = nullptr;
  GraphKey graph_key, eager_key;
  bool eager_seen = false;

  explicit Impl(HftModel&& model_in) : model(std::move(model_in)) {}
  ~Impl() { release_graph(); destroy_stream(); }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  void release_graph() noexcept {
    if (graph) {
      detail::DeviceGuard guard(m->device);
      cudaGraphExecDestroy(graph);
      graph = nullptr;
    }
  }
  void destroy_stream() noexcept {
    if (capture_stream) {
      detail::DeviceGuard guard(m->device);
      cudaStreamDestroy(capture_stream);
      capture_stream = nullptr;
    }
  }

  /// Everything a step does, enqueued on `stream`.
  void enqueue(const GraphKey& k, cudaStream_t stream) {
    const Backend backend = m->backend;
    const detail::RowOps ops{backend, stream};
    const int32_t unk = static_cast<int32_t>(V - 1);
    if (backend == Backend::cuda) {
      detail::launch_session_advance(k.tokens, S, compact_map.data(), m->teacher_vocab_size, unk,
                                     ring.data(), W, count.data(), position.data(), stream);
    } else {
      for (int64_t s = 0; s < S; ++s) {
        const int32_t t = k.tokens[s];
        const int32_t cls = t >= 0 && t < m->teacher_vocab_size ? compact_map.data()[t] : unk;
        const int32_t p = count.data()[s];
        ring.data()[s * W + p % W] = cls;
        position.data()[s] = p;
        count.data()[s] = p + 1;
      }
    }
    ContextRows rows{ring.data(), W, history.data(), stream_ids.data(), position.data(), S};
    rows.token_ring = W;
    float* out = k.logits ? k.logits : logits.data();
    m->builder->stage1(rows, raw1.data(), stream);
    m->proj1.apply(raw1.data(), x1.data(), DType::f32, S, stream);
    m->stage1->forward(x1.data(), S, y1.data(), stream);
    ops.history_write(y1.data(), stream_ids.data(), position.data(), S, R, H, history.data());
    m->builder->stage2(rows, y1.data(), raw2.data(), stream);
    m->proj2.apply(raw2.data(), x2.data(), DType::f32, S, stream);
    m->stage2->forward(x2.data(), S, out, stream);
    if (!k.sample) return;
    detail::SampleParams sp;
    sp.temperature = k.sampling.temperature;
    sp.top_p = k.sampling.top_p;
    sp.allow_unk = k.sampling.allow_unk ? 1 : 0;
    sp.seed = options.seed;
    if (backend == Backend::cuda) {
      detail::launch_session_sample(out, S, V, sp, count.data(), class_token.data(), k.next,
                                    k.next_class, stream);
      return;
    }
    for (int64_t s = 0; s < S; ++s) {
      const int32_t cls = sample_row_cpu(out + s * V, V, sp, s, count.data()[s]);
      if (k.next_class) k.next_class[s] = cls;
      if (k.next) k.next[s] = class_token.data()[cls];
    }
  }

  void run(const GraphKey& k, cudaStream_t stream) {
    HTFR_REQUIRE(k.tokens, InvalidArgument, "session: tokens is null");
    const Backend b = m->backend;
    const int dev = m->device;
    detail::require_memory(k.tokens, b, dev, "tokens");
    detail::require_memory(k.logits, b, dev, "logits");
    detail::require_memory(k.next, b, dev, "next");
    detail::require_memory(k.next_class, b, dev, "next_class");
    if (k.sample) k.sampling.validate();
    for (int64_t s = 0; s < S; ++s)
      HTFR_REQUIRE(lengths[s] < options.max_positions, InvalidArgument,
                   "session " << s << " holds " << lengths[s] << " tokens, its limit "
                              << "(max_positions); reset it before stepping again");
    if (b == Backend::cpu) {
      enqueue(k, stream);
    } else {
      detail::DeviceGuard guard(dev);
      if (!options.use_graph) {
        enqueue(k, stream);
      } else if (graph && k == graph_key) {
        HTFR_CUDA_CHECK(cudaGraphLaunch(graph, stream));
      } else if (eager_seen && k == eager_key) {
        capture(k);
        HTFR_CUDA_CHECK(cudaGraphLaunch(graph, stream));
      } else {
        // The first step with these arguments runs eagerly: it sizes every scratch buffer, so
        // nothing is allocated while a later step is captured.
        enqueue(k, stream);
        eager_key = k;
        eager_seen = true;
      }
    }
    for (auto& n : lengths) ++n;
  }

  void capture(const GraphKey& k) {
    release_graph();
    if (!capture_stream)
      HTFR_CUDA_CHECK(cudaStreamCreateWithFlags(&capture_stream, cudaStreamNonBlocking));
    HTFR_CUDA_CHECK(cudaStreamBeginCapture(capture_stream, cudaStreamCaptureModeRelaxed));
    cudaGraph_t g = nullptr;
    try {
      enqueue(k, capture_stream);
    } catch (...) {
      (void)cudaStreamEndCapture(capture_stream, &g);
      if (g) (void)cudaGraphDestroy(g);
      (void)cudaGetLastError();
      throw;
    }
    HTFR_CUDA_CHECK(cudaStreamEndCapture(capture_stream, &g));
    const cudaError_t inst = cudaGraphInstantiate(&graph, g, 0);
    (void)cudaGraphDestroy(g);
    HTFR_CUDA_CHECK(inst);
    graph_key = k;
  }

  /// Waits for every step in flight (on whatever stream the caller used), then zeroes the
  /// counts: a session only ever reads ring and history slots of its own positions.
  void wait_idle() {
    if (m->backend != Backend::cuda) return;
    detail::DeviceGuard guard(m->device);
    HTFR_CUDA_CHECK(cudaDeviceSynchronize());
  }
  void reset_all() {
    wait_idle();
    count.zero(m->stream);
    detail::sync(m->backend, m->device, m->stream);
    std::fill(lengths.begin(), lengths.end(), 0);
  }
};

HftSession::HftSession(HftModel model, const HftSessionOptions& options) {
  HTFR_NVTX_RANGE("htfr::HftSession::HftSession");
  options.validate();
  impl_ = std::make_unique<Impl>(std::move(model));
  Impl& I = *impl_;
  I.m = I.model.impl_.get();
  HftModel::Impl& m = *I.m;
  const HftConfig& c = m.config;
  I.options = options;
  I.S = options.sessions;
  I.W = c.context.window;
  I.R = c.context.history;
  I.H = c.context.history_dim;
  I.V = c.context.vocab_size;
  HTFR_REQUIRE(I.V >= 2, InvalidArgument, "session: the model needs at least 2 classes");
  HTFR_REQUIRE(m.teacher_vocab_size >= 1, InvalidArgument,
               "session: the model does not know its teacher's vocabulary size");
  HTFR_REQUIRE(m.backend != Backend::cuda || !options.use_graph ||
                   (!c.stage1.htfr.check_finite && !c.stage2.htfr.check_finite),
               InvalidArgument,
               "session: use_graph needs check_finite off in both stages (the finite check "
               "reads a flag back to the host every step); turn one of them off");
  I.lengths.assign(static_cast<std::size_t>(I.S), 0);
  const Backend b = m.backend;
  const int dev = m.device;
  const auto ints = [&](int64_t n) { return detail::BackendArray<int32_t>(b, dev, n); };
  const auto floats = [&](int64_t n) { return detail::BackendArray<float>(b, dev, n); };
  const ContextLayout& l = m.builder->layout();
  I.ring = ints(I.S * I.W);
  I.count = ints(I.S);
  I.position = ints(I.S);
  I.stream_ids = ints(I.S);
  I.history = floats(std::max<int64_t>(I.S * I.R * I.H, 1));
  I.raw1 = floats(I.S * l.stage1_dim);
  I.x1 = floats(I.S * c.stage1.htfr.input_dim);
  I.y1 = floats(I.S * I.H);
  I.raw2 = floats(I.S * l.stage2_dim);
  I.x2 = floats(I.S * c.stage2.htfr.input_dim);
  I.logits = floats(I.S * I.V);
  std::vector<int32_t> ids(static_cast<std::size_t>(I.S));
  for (int64_t s = 0; s < I.S; ++s) ids[s] = static_cast<int32_t>(s);
  I.stream_ids.upload(ids.data(), I.S, 0, m.stream);
  const std::vector<int32_t> map = m.compact_map();
  I.compact_map = ints(static_cast<int64_t>(map.size()));
  I.compact_map.upload(map.data(), static_cast<int64_t>(map.size()), 0, m.stream);
  std::vector<int32_t> class_token(m.compact_token_ids);
  class_token.push_back(-1);  // unk has no teacher token; fed back, -1 reads as unk again
  I.class_token = ints(I.V);
  I.class_token.upload(class_token.data(), I.V, 0, m.stream);
  detail::sync(b, dev, m.stream);
}

HftSession HftSession::load(const std::string& checkpoint, Backend backend, int device,
                            const HftSessionOptions& options) {
  options.validate();
  return HftSession(HftModel::load(checkpoint, backend, device, /*optimizer_state=*/false),
                    options);
}

HftSession::HftSession(HftSession&&) noexcept = default;
HftSession& HftSession::operator=(HftSession&&) noexcept = default;
HftSession::~HftSession() = default;

void HftSession::step(const int32_t* tokens, float* logits, cudaStream_t stream) {
  HTFR_NVTX_RANGE("htfr::HftSession::step");
  GraphKey k;
  k.tokens = tokens;
  k.logits = logits;
  impl_->run(k, stream);
}

void HftSession::step_and_sample(const int32_t* tokens, const SamplingConfig& sampling,
                                 int32_t* next, int32_t* next_class, float* logits,
                                 cudaStream_t stream) {
  HTFR_NVTX_RANGE("htfr::HftSession::step_and_sample");
  HTFR_REQUIRE(next || next_class, InvalidArgument,
               "session: step_and_sample needs next or next_class");
  GraphKey k;
  k.tokens = tokens;
  k.logits = logits;
  k.next = next;
  k.next_class = next_class;
  k.sample = true;
  k.sampling = sampling;
  impl_->run(k, stream);
}

void HftSession::reset() {
  HTFR_NVTX_RANGE("htfr::HftSession::reset");
  impl_->reset_all();
}

void HftSession::reset(int64_t session) {
  HTFR_NVTX_RANGE("htfr::HftSession::reset");
  Impl& I = *impl_;
  HTFR_REQUIRE(session >= 0 && session < I.S, InvalidArgument,
               "session: index " << session << " outside [0, " << I.S << ")");
  I.wait_idle();
  const int32_t zero = 0;
  I.count.upload(&zero, 1, session, I.m->stream);
  detail::sync(I.m->backend, I.m->device, I.m->stream);
  I.lengths[session] = 0;
}

int64_t HftSession::sessions() const { return impl_->S; }
int64_t HftSession::vocab_size() const { return impl_->V; }
int64_t HftSession::teacher_vocab_size() const { return impl_->m->teacher_vocab_size; }
const std::vector<int32_t>& HftSession::compact_token_ids() const {
  return impl_->m->compact_token_ids;
}
int32_t HftSession::bos_id() const { return impl_->m->bos_id; }
const std::string& HftSession::model_sha256() const { return impl_->m->model_sha256; }
const std::vector<int64_t>& HftSession::lengths() const { return impl_->lengths; }
const HftConfig& HftSession::config() const { return impl_->m->config; }
Backend HftSession::backend() const { return impl_->m->backend; }
int HftSession::device() const { return impl_->m->device; }
std::size_t HftSession::parameter_bytes() const { return impl_->model.parameter_bytes(); }

std::size_t HftSession::state_bytes() const {
  const Impl& I = *impl_;
  std::size_t bytes = 0;
  for (const auto* a : {&I.ring, &I.count, &I.position, &I.stream_ids, &I.compact_map,
                        &I.class_token})
    bytes += static_cast<std::size_t>(a->size()) * sizeof(int32_t);
  for (const auto* a : {&I.history, &I.raw1, &I.x1, &I.y1, &I.raw2, &I.x2, &I.logits})
    bytes += static_cast<std::size_t>(a->size()) * sizeof(float);
  return bytes;
}

}  // namespace htfr

// Pool maintenance: reseeding tensors onto rows and pruning unused tensors, on both backends.
#include "htfr/maintenance.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "../kernels/maintenance.cuh"
#include "../kernels/pool_ops.cuh"
#include "detail/check.hpp"
#include "detail/device.hpp"
#include "detail/nvtx.hpp"
#include "detail/random.hpp"
#include "htfr/error.hpp"

namespace htfr {

namespace {

// Seeded unit normal for tensor `tensor`: Gaussian entries (Box-Muller in double) normalised.
void random_unit(uint64_t seed, int64_t tensor, int64_t dim, float* out) {
  uint64_t state = detail::mix64(seed ^ detail::mix64(static_cast<uint64_t>(tensor)));
  double norm = 0.0;
  std::vector<double> v(static_cast<std::size_t>(dim));
  for (int64_t j = 0; j < dim; ++j) {
    const double u1 = ((detail::splitmix64(state) >> 11) + 1.0) / 9007199254740992.0;
    const double u2 = (detail::splitmix64(state) >> 11) / 9007199254740992.0;
    v[j] = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    norm += v[j] * v[j];
  }
  norm = std::sqrt(norm);
  for (int64_t j = 0; j < dim; ++j) out[j] = static_cast<float>(v[j] / norm);
}

// True when any of the `count` values (in `backend` memory) is NaN or Inf. Synchronises.
bool any_nonfinite(const float* data, int64_t count, Backend backend, cudaStream_t stream) {
  if (count == 0) return false;
  if (backend == Backend::cpu) {
    return std::any_of(data, data + count, [](float v) { return !std::isfinite(v); });
  }
  detail::StreamScratch flag(sizeof(int), stream);
  HTFR_CUDA_CHECK(cudaMemsetAsync(flag.as<int>(), 0, sizeof(int), stream));
  detail::launch_find_nonfinite(data, count, flag.as<int>(), stream);
  int host = 0;
  HTFR_CUDA_CHECK(cudaMemcpyAsync(&host, flag.as<int>(), sizeof(int), cudaMemcpyDeviceToHost,
                                  stream));
  HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host != 0;
}

// CPU twin of the reseed kernel: for r < count, tensor tensors[r] moves onto row r.
void reseed_cpu(const PoolView& v, const int64_t* tensors, int64_t count, const float* normals,
                const float* x, const float* targets, float band, float tau) {
  const int64_t D = v.input_dim, M = v.output_dim;
  for (int64_t r = 0; r < count; ++r) {
    const int64_t i = tensors[r];
    double dot = 0.0;
    for (int64_t j = 0; j < D; ++j) {
      dot += double(normals[r * D + j]) * x[r * D + j];
      v.normals[i * D + j] = normals[r * D + j];
    }
    for (int64_t k = 0; k < 3 * M; ++k) v.controls[i * 3 * M + k] = targets[r * M + k % M];
    v.offsets[i] = static_cast<float>(-dot);
    v.dneg[i] = -band;
    v.dpos[i] = band;
    v.tau[i] = tau;
    v.use_count[i] = v.last_used[i] = v.mean_abs_d[i] = v.loss_trace[i] = 0.0f;
  }
}

}  // namespace

void reseed_tensors(HyperTensorPool& pool, const std::vector<int64_t>& tensors, const float* x,
                    const float* targets, const ReseedOptions& options, cudaStream_t stream) {
  HTFR_NVTX_RANGE("htfr::reseed_tensors");
  HTFR_REQUIRE(!pool.empty(), InvalidArgument, "reseed_tensors on an empty pool");
  HTFR_REQUIRE(options.band > 0.0f && std::isfinite(options.band), InvalidArgument,
               "ReseedOptions::band must be finite and > 0, got " << options.band);
  HTFR_REQUIRE(options.tau > 0.0f && std::isfinite(options.tau), InvalidArgument,
               "ReseedOptions::tau must be finite and > 0, got " << options.tau);
  const int64_t count = static_cast<int64_t>(tensors.size());
  const int64_t N = pool.num_tensors(), D = pool.input_dim(), M = pool.output_dim();
  std::vector<char> seen(static_cast<std::size_t>(N), 0);
  for (int64_t t : tensors) {
    HTFR_REQUIRE(t >= 0 && t < N, InvalidArgument,
                 "tensor index " << t << " is outside [0, " << N << ")");
    HTFR_REQUIRE(!seen[t], InvalidArgument, "tensor index " << t << " is listed twice");
    seen[t] = 1;
  }
  if (count == 0) return;
  HTFR_REQUIRE(x != nullptr && targets != nullptr, InvalidArgument,
               "reseed_tensors needs x and targets");
  const Backend backend = pool.backend();
  detail::require_memory(x, backend, pool.device(), "x");
  detail::require_memory(targets, backend, pool.device(), "targets");
  std::unique_ptr<detail::DeviceGuard> guard;
  if (backend == Backend::cuda) guard = std::make_unique<detail::DeviceGuard>(pool.device());
  HTFR_REQUIRE(!any_nonfinite(x, count * D, backend, stream), NonFiniteInput,
               "x holds NaN or Inf; no tensor was reseeded");
  HTFR_REQUIRE(!any_nonfinite(targets, count * M, backend, stream), NonFiniteInput,
               "targets hold NaN or Inf; no tensor was reseeded");

  std::vector<float> normals(static_cast<std::size_t>(count * D));
  for (int64_t r = 0; r < count; ++r) random_unit(options.seed, tensors[r], D, &normals[r * D]);
  const PoolView v = pool.view();
  if (backend == Backend::cuda) {
    const std::size_t index_bytes = detail::align128(count * sizeof(int64_t));
    detail::StreamScratch scratch(index_bytes + normals.size() * sizeof(float), stream);
    auto* index = scratch.as<int64_t>();
    auto* dev_normals = reinterpret_cast<float*>(scratch.as<char>() + index_bytes);
    HTFR_CUDA_CHECK(cudaMemcpyAsync(index, tensors.data(), count * sizeof(int64_t),
                                    cudaMemcpyHostToDevice, stream));
    HTFR_CUDA_CHECK(cudaMemcpyAsync(dev_normals, normals.data(), normals.size() * sizeof(float),
                                    cudaMemcpyHostToDevice, stream));
    detail::launch_reseed(v, index, dev_normals, x, targets, count, options.band, options.tau,
                          stream);
    HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));  // the host arrays above must outlive the copies
    return;
  }
  reseed_cpu(v, tensors.data(), count, normals.data(), x, targets, options.band, options.tau);
}

std::vector<int64_t> least_used_tensors(const HyperTensorPool& pool, int64_t count,
                                        cudaStream_t stream) {
  HTFR_NVTX_RANGE("htfr::least_used_tensors");
  const int64_t N = pool.num_tensors();
  HTFR_REQUIRE(count >= 0 && count <= N, InvalidArgument,
               "count must lie in [0, " << N << "], got " << count);
  std::vector<float> use(static_cast<std::size_t>(N));
  if (pool.backend() == Backend::cuda) {
    detail::DeviceGuard guard(pool.device());
    HTFR_CUDA_CHECK(cudaMemcpyAsync(use.data(), pool.view().use_count, N * sizeof(float),
                                    cudaMemcpyDeviceToHost, stream));
    HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
  } else {
    std::copy(pool.view().use_count, pool.view().use_count + N, use.begin());
  }
  std::vector<int64_t> order(static_cast<std::size_t>(N));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return use[a] < use[b]; });
  order.resize(static_cast<std::size_t>(count));
  return order;
}

HyperTensorPool prune_unused(const HyperTensorPool& pool, float min_use, PruneReport* report,
                             cudaStream_t stream) {
  HTFR_NVTX_RANGE("htfr::prune_unused");
  HTFR_REQUIRE(!pool.empty(), InvalidArgument, "prune_unused on an empty pool");
  HTFR_REQUIRE(std::isfinite(min_use), InvalidArgument, "min_use must be finite");
  const PoolParameters p = pool.download(stream);
  const int64_t N = p.num_tensors, D = p.input_dim, M = p.output_dim;
  PruneReport r;
  r.before = N;
  for (int64_t i = 0; i < N; ++i) (p.use_count[i] > min_use ? r.kept : r.removed).push_back(i);
  if (r.kept.empty()) {
    const int64_t best = std::max_element(p.use_count.begin(), p.use_count.end()) -
                         p.use_count.begin();
    r.kept.push_back(best);
    r.removed.erase(std::find(r.removed.begin(), r.removed.end(), best));
  }
  r.after = static_cast<int64_t>(r.kept.size());
  PoolParameters q;
  q.num_tensors = r.after;
  q.input_dim = D;
  q.output_dim = M;
  const auto take = [&](const std::vector<float>& from, std::vector<float>& to, int64_t width) {
    to.reserve(static_cast<std::size_t>(r.after * width));
    for (int64_t i : r.kept) to.insert(to.end(), from.begin() + i * width, from.begin() + (i + 1) * width);
  };
  take(p.normals, q.normals, D);
  take(p.offsets, q.offsets, 1);
  take(p.dneg, q.dneg, 1);
  take(p.dpos, q.dpos, 1);
  take(p.tau, q.tau, 1);
  take(p.controls, q.controls, 3 * M);
  take(p.use_count, q.use_count, 1);
  take(p.last_used, q.last_used, 1);
  take(p.mean_abs_d, q.mean_abs_d, 1);
  take(p.loss_trace, q.loss_trace, 1);
  HyperTensorPool out = HyperTensorPool::create(pool.backend(), r.after, D, M,
                                                pool.half_precision(), pool.device());
  out.upload(q, stream);
  if (report) *report = std::move(r);
  return out;
}

}  // namespace htfr

// -----------------------------------------------------------------------------------------------
// PoolMaintainer

namespace htfr {

struct PoolMaintainer::Impl {
  MaintenanceConfig config;
  Backend backend = Backend::cpu;
  int device = 0;
  int64_t N = 0, D = 0, M = 0, max_batch = 0;
  int64_t head = 0;  // next queue slot
  MaintenanceStatistics stats;
  // CPU state, or the device allocation carved below.
  std::vector<float> decayed, last, qx, qt, qloss;
  detail::DeviceBuffer storage;
  float *d_decayed = nullptr, *d_last = nullptr;
  detail::QueueView queue;
  int32_t *batch_order = nullptr, *least = nullptr, *slots = nullptr;
  int64_t* tensor = nullptr;
  unsigned long long* taken = nullptr;  // tensors reseeded, counted on the device
  float *xs = nullptr, *ts = nullptr, *normals = nullptr;
  void* sort_space = nullptr;
  std::size_t sort_bytes = 0;

  // Normal r of reseed event `event`: a seeded unit vector, the same on every backend.
  std::vector<float> event_normals(int64_t count) const {
    std::vector<float> n(static_cast<std::size_t>(count * D));
    const uint64_t event_seed = detail::mix64(config.reseed.seed ^ detail::mix64(stats.reseed_events));
    for (int64_t r = 0; r < count; ++r) random_unit(event_seed, r, D, &n[r * D]);
    return n;
  }
};

PoolMaintainer::PoolMaintainer(const HyperTensorPool& pool, const MaintenanceConfig& config,
                               int64_t max_batch)
    : impl_(std::make_unique<Impl>()) {
  const MaintenanceConfig& c = config;
  HTFR_REQUIRE(!pool.empty(), InvalidArgument, "PoolMaintainer needs a pool");
  HTFR_REQUIRE(c.usage_decay > 0.0f && c.usage_decay <= 1.0f, InvalidArgument,
               "usage_decay must lie in (0, 1], got " << c.usage_decay);
  HTFR_REQUIRE(c.queue_capacity >= 1 && c.queue_capacity <= INT32_MAX, InvalidArgument,
               "queue_capacity must be >= 1, got " << c.queue_capacity);
  HTFR_REQUIRE(c.queue_per_step >= 0 && c.reseed_every >= 0 && c.reseed_count >= 0,
               InvalidArgument, "queue_per_step, reseed_every and reseed_count must be >= 0");
  HTFR_REQUIRE(c.reseed.band > 0.0f && c.reseed.tau > 0.0f && std::isfinite(c.class_value),
               InvalidArgument, "reseed band and tau must be > 0 and class_value finite");
  HTFR_REQUIRE(max_batch >= 1 && max_batch <= INT32_MAX, InvalidArgument,
               "max_batch must be >= 1, got " << max_batch);
  Impl& m = *impl_;
  m.config = c;
  m.config.reseed_count = std::min(c.reseed_count, pool.num_tensors());
  m.backend = pool.backend();
  m.device = pool.device();
  m.N = pool.num_tensors();
  m.D = pool.input_dim();
  m.M = pool.output_dim();
  m.max_batch = max_batch;
  const int64_t Q = c.queue_capacity, S = m.config.reseed_count;
  if (m.backend == Backend::cpu) {
    m.decayed.assign(static_cast<std::size_t>(m.N), 0.0f);
    m.last.assign(static_cast<std::size_t>(m.N), 0.0f);
    m.qx.assign(static_cast<std::size_t>(Q * m.D), 0.0f);
    m.qt.assign(static_cast<std::size_t>(Q * m.M), 0.0f);
    m.qloss.assign(static_cast<std::size_t>(Q), -INFINITY);
    return;
  }
  detail::DeviceGuard guard(m.device);
  m.sort_bytes = detail::sorted_order_workspace_bytes(std::max({m.N, Q, max_batch}));
  detail::Carver size(nullptr);
  const auto carve = [&](detail::Carver& k) {
    m.d_decayed = k.take<float>(m.N);
    m.d_last = k.take<float>(m.N);
    m.queue.x = k.take<float>(Q * m.D);
    m.queue.target = k.take<float>(Q * m.M);
    m.queue.loss = k.take<float>(Q);
    m.batch_order = k.take<int32_t>(std::max({m.N, Q, max_batch}));
    m.least = k.take<int32_t>(m.N);
    m.slots = k.take<int32_t>(Q);
    m.tensor = k.take<int64_t>(S);
    m.taken = k.take<unsigned long long>(1);
    m.xs = k.take<float>(S * m.D);
    m.ts = k.take<float>(S * m.M);
    m.normals = k.take<float>(S * m.D);
    m.sort_space = k.take<char>(m.sort_bytes);
  };
  carve(size);
  m.storage.reserve(size.used());
  detail::Carver real(m.storage.data());
  carve(real);
  m.queue.capacity = Q;
  m.queue.input_dim = m.D;
  m.queue.output_dim = m.M;
  HTFR_CUDA_CHECK(cudaMemset(m.storage.data(), 0, size.used()));
  detail::launch_fill(m.queue.loss, Q, -INFINITY, nullptr);
  HTFR_CUDA_CHECK(cudaDeviceSynchronize());
}

PoolMaintainer::~PoolMaintainer() = default;
PoolMaintainer::PoolMaintainer(PoolMaintainer&&) noexcept = default;
PoolMaintainer& PoolMaintainer::operator=(PoolMaintainer&&) noexcept = default;

namespace {

// Indices 0..n-1 ordered by key (descending or ascending), ties to the smaller index.
std::vector<int32_t> stable_order(const float* keys, int64_t n, bool descending) {
  std::vector<int32_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return descending ? keys[a] > keys[b] : keys[a] < keys[b];
  });
  return order;
}

}  // namespace

void PoolMaintainer::after_step(HyperTensorPool& pool, const Batch& batch, const float* row_loss,
                                cudaStream_t stream) {
  HTFR_NVTX_RANGE("htfr::PoolMaintainer::after_step");
  Impl& m = *impl_;
  const MaintenanceConfig& c = m.config;
  HTFR_REQUIRE(pool.backend() == m.backend && pool.device() == m.device &&
                   pool.num_tensors() == m.N && pool.input_dim() == m.D &&
                   pool.output_dim() == m.M,
               InvalidArgument, "after_step got a pool of another shape or device");
  HTFR_REQUIRE(batch.rows >= 0 && batch.rows <= m.max_batch, InvalidArgument,
               "batch of " << batch.rows << " rows; the maintainer takes up to " << m.max_batch);
  HTFR_REQUIRE(batch.rows == 0 || (batch.x && row_loss && (batch.target || batch.target_index)),
               InvalidArgument, "after_step needs x, row_loss and a target");
  for (const auto& [p, name] :
       {std::pair<const void*, const char*>{batch.x, "x"}, {row_loss, "row_loss"},
        {batch.target, "target"}, {batch.target_index, "target_index"}}) {
    detail::require_memory(p, m.backend, m.device, name);
  }
  const PoolView v = pool.view();
  const int64_t B = batch.rows, L = std::min(c.queue_per_step, B);
  const int64_t Q = c.queue_capacity, S = c.reseed_count;
  ++m.stats.steps;
  m.stats.rows_queued += L;
  const bool reseed = c.reseed_every > 0 && m.stats.steps % c.reseed_every == 0 && S > 0;
  if (m.backend == Backend::cpu) {
    for (int64_t i = 0; i < m.N; ++i) {
      m.decayed[i] = c.usage_decay * m.decayed[i] + (v.use_count[i] - m.last[i]);
      m.last[i] = v.use_count[i];
    }
    const auto order = stable_order(row_loss, B, true);
    for (int64_t r = 0; r < L; ++r) {
      const int64_t row = order[r], slot = (m.head + r) % Q;
      std::copy(batch.x + row * m.D, batch.x + (row + 1) * m.D, m.qx.begin() + slot * m.D);
      for (int64_t k = 0; k < m.M; ++k) {
        m.qt[slot * m.M + k] = batch.target ? batch.target[row * m.M + k]
                                            : (k == batch.target_index[row] ? c.class_value : 0.0f);
      }
      m.qloss[slot] = row_loss[row];
    }
    m.head = (m.head + L) % Q;
    if (!reseed) return;
    const auto least = stable_order(m.decayed.data(), m.N, false);
    const auto slots = stable_order(m.qloss.data(), Q, true);
    std::vector<int64_t> tensors;
    std::vector<float> xs, ts;
    for (int64_t r = 0; r < S; ++r) {
      const int64_t slot = slots[r], i = least[r];
      if (!std::isfinite(m.qloss[slot])) break;  // slots are sorted: the rest are empty too
      tensors.push_back(i);
      xs.insert(xs.end(), m.qx.begin() + slot * m.D, m.qx.begin() + (slot + 1) * m.D);
      ts.insert(ts.end(), m.qt.begin() + slot * m.M, m.qt.begin() + (slot + 1) * m.M);
      m.qloss[slot] = -INFINITY;
      m.decayed[i] = m.last[i] = 0.0f;
    }
    const auto normals = m.event_normals(static_cast<int64_t>(tensors.size()));
    reseed_cpu(v, tensors.data(), static_cast<int64_t>(tensors.size()), normals.data(),
               xs.data(), ts.data(), c.reseed.band, c.reseed.tau);
    ++m.stats.reseed_events;
    m.stats.tensors_reseeded += static_cast<int64_t>(tensors.size());
    return;
  }
  detail::DeviceGuard guard(m.device);
  detail::launch_decay_usage(v.use_count, m.d_last, m.d_decayed, m.N, c.usage_decay, stream);
  if (L > 0) {
    detail::launch_sorted_order(row_loss, B, true, m.batch_order, m.sort_space, m.sort_bytes,
                                stream);
    detail::launch_push_rows(m.queue, m.batch_order, L, m.head, batch.x, batch.target,
                             batch.target_index, c.class_value, row_loss, stream);
  }
  m.head = (m.head + L) % Q;
  if (!reseed) return;
  detail::launch_sorted_order(m.d_decayed, m.N, false, m.least, m.sort_space, m.sort_bytes,
                              stream);
  detail::launch_sorted_order(m.queue.loss, Q, true, m.slots, m.sort_space, m.sort_bytes, stream);
  detail::launch_take_rows(m.queue, m.slots, m.least, S, m.tensor, m.xs, m.ts, m.d_decayed,
                           m.d_last, m.taken, stream);
  const auto normals = m.event_normals(S);
  HTFR_CUDA_CHECK(cudaMemcpyAsync(m.normals, normals.data(), normals.size() * sizeof(float),
                                  cudaMemcpyHostToDevice, stream));
  detail::launch_reseed(v, m.tensor, m.normals, m.xs, m.ts, S, c.reseed.band, c.reseed.tau,
                        stream);
  // The pageable normals must stay alive until the copy has been made.
  HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
  ++m.stats.reseed_events;
}

std::vector<float> PoolMaintainer::decayed_usage(cudaStream_t stream) const {
  const Impl& m = *impl_;
  if (m.backend == Backend::cpu) return m.decayed;
  std::vector<float> out(static_cast<std::size_t>(m.N));
  detail::DeviceGuard guard(m.device);
  HTFR_CUDA_CHECK(cudaMemcpyAsync(out.data(), m.d_decayed, m.N * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream));
  HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
  return out;
}

std::vector<float> PoolMaintainer::queue_losses(cudaStream_t stream) const {
  const Impl& m = *impl_;
  if (m.backend == Backend::cpu) return m.qloss;
  std::vector<float> out(static_cast<std::size_t>(m.config.queue_capacity));
  detail::DeviceGuard guard(m.device);
  HTFR_CUDA_CHECK(cudaMemcpyAsync(out.data(), m.queue.loss, out.size() * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream));
  HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
  return out;
}

MaintenanceStatistics PoolMaintainer::statistics(cudaStream_t stream) const {
  HTFR_NVTX_RANGE("htfr::PoolMaintainer::statistics");
  const Impl& m = *impl_;
  MaintenanceStatistics s = m.stats;
  if (m.backend == Backend::cuda) {
    unsigned long long taken = 0;
    detail::DeviceGuard guard(m.device);
    HTFR_CUDA_CHECK(cudaMemcpyAsync(&taken, m.taken, sizeof taken, cudaMemcpyDeviceToHost,
                                    stream));
    HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
    s.tensors_reseeded = static_cast<int64_t>(taken);
  }
  std::vector<float> usage = decayed_usage(stream);
  const int64_t n = static_cast<int64_t>(usage.size());
  s.active_fraction =
      double(std::count_if(usage.begin(), usage.end(), [](float u) { return u > 1e-3f; })) / n;
  std::sort(usage.begin(), usage.end());
  s.usage_p10 = usage[(n - 1) / 10];
  s.usage_median = usage[(n - 1) / 2];
  s.usage_p90 = usage[(n - 1) * 9 / 10];
  return s;
}

}  // namespace htfr

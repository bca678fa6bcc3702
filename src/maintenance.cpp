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
  for (int64_t r = 0; r < count; ++r) {
    const int64_t i = tensors[r];
    double dot = 0.0;
    for (int64_t j = 0; j < D; ++j) {
      dot += double(normals[r * D + j]) * x[r * D + j];
      v.normals[i * D + j] = normals[r * D + j];
    }
    for (int64_t k = 0; k < 3 * M; ++k) v.controls[i * 3 * M + k] = targets[r * M + k % M];
    v.offsets[i] = static_cast<float>(-dot);
    v.dneg[i] = -options.band;
    v.dpos[i] = options.band;
    v.tau[i] = options.tau;
    v.use_count[i] = v.last_used[i] = v.mean_abs_d[i] = v.loss_trace[i] = 0.0f;
  }
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

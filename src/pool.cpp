// HyperTensorPool: one allocation per pool, its layout table, host/device transfers and random
// initialisation through cuRAND.
#include "htfr/pool.hpp"

#include <curand.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <algorithm>
#include <utility>

#include "../kernels/pool_ops.cuh"
#include "detail/check.hpp"
#include "detail/device.hpp"
#include "detail/nvtx.hpp"

namespace htfr {

namespace {

std::size_t dtype_size(DType t) { return t == DType::f32 ? 4 : 2; }

struct SliceSpec {
  const char* name;
  int64_t count;
  DType dtype;
};

void check_dims(int64_t n, int64_t d, int64_t m) {
  HTFR_REQUIRE(n > 0 && d > 0 && m > 0, InvalidArgument,
               "pool dimensions must be positive, got N=" << n << " D=" << d << " M=" << m);
}

/// Copies `bytes` between pool storage and host memory (either direction) on `stream`.
void copy_bytes(void* dst, const void* src, std::size_t bytes, Backend backend,
                cudaStream_t stream) {
  if (bytes == 0) return;
  if (backend == Backend::cpu) {
    std::memcpy(dst, src, bytes);
  } else {
    HTFR_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream));
  }
}

void normalize_host(float* rows, int64_t n, int64_t dim) {
  for (int64_t i = 0; i < n; ++i) {
    float* row = rows + i * dim;
    double acc = 0.0;
    for (int64_t j = 0; j < dim; ++j) acc += double(row[j]) * row[j];
    const float scale = static_cast<float>(1.0 / (std::sqrt(acc) + 1e-12));
    for (int64_t j = 0; j < dim; ++j) row[j] *= scale;
  }
}

}  // namespace

void PoolParameters::validate() const {
  check_dims(num_tensors, input_dim, output_dim);
  const auto n = static_cast<std::size_t>(num_tensors);
  auto want = [&](const std::vector<float>& v, std::size_t size, const char* name) {
    HTFR_REQUIRE(v.size() == size, InvalidArgument,
                 "PoolParameters::" << name << " has " << v.size() << " elements, expected "
                                    << size);
  };
  want(normals, n * input_dim, "normals");
  want(offsets, n, "offsets");
  want(dneg, n, "dneg");
  want(dpos, n, "dpos");
  want(tau, n, "tau");
  want(controls, n * 3 * output_dim, "controls");
  want(use_count, n, "use_count");
  want(last_used, n, "last_used");
  want(mean_abs_d, n, "mean_abs_d");
  want(loss_trace, n, "loss_trace");
  for (std::size_t i = 0; i < n; ++i) {
    HTFR_REQUIRE(dneg[i] < 0.0f && dpos[i] > 0.0f, InvalidArgument,
                 "tensor " << i << " has bands dneg=" << dneg[i] << " dpos=" << dpos[i]
                           << "; need dneg < 0 < dpos");
    HTFR_REQUIRE(tau[i] > 0.0f, InvalidArgument,
                 "tensor " << i << " has temperature " << tau[i] << "; need tau > 0");
  }
}

HyperTensorPool HyperTensorPool::create(Backend backend, int64_t num_tensors, int64_t input_dim,
                                        int64_t output_dim, Precision half, int device) {
  HTFR_NVTX_RANGE("htfr::HyperTensorPool::create");
  check_dims(num_tensors, input_dim, output_dim);
  if (backend == Backend::cuda) detail::require_cuda_device(device);

  HyperTensorPool pool;
  pool.backend_ = backend;
  pool.device_ = device;
  const int64_t n = num_tensors;
  const bool halves = backend == Backend::cuda &&
                      (half == Precision::bf16 || half == Precision::fp16);
  const DType half_type = half == Precision::fp16 ? DType::f16 : DType::bf16;
  std::vector<SliceSpec> specs = {
      {"normals", n * input_dim, DType::f32},     {"offsets", n, DType::f32},
      {"dneg", n, DType::f32},                    {"dpos", n, DType::f32},
      {"tau", n, DType::f32},                     {"controls", n * 3 * output_dim, DType::f32},
      {"use_count", n, DType::f32},               {"last_used", n, DType::f32},
      {"mean_abs_d", n, DType::f32},              {"loss_trace", n, DType::f32}};
  if (halves) {
    specs.push_back({"normals_half", n * input_dim, half_type});
    specs.push_back({"controls_half", n * 3 * output_dim, half_type});
  }
  std::size_t offset = 0;
  for (const auto& s : specs) {
    pool.layout_.push_back({s.name, offset, s.count, s.dtype});
    offset += detail::align128(static_cast<std::size_t>(s.count) * dtype_size(s.dtype));
  }
  pool.bytes_ = offset;

  if (backend == Backend::cpu) {
    pool.data_ = std::aligned_alloc(128, offset);
    HTFR_REQUIRE(pool.data_ != nullptr, OutOfMemory,
                 "cannot allocate " << offset << " bytes of host memory for the pool");
    std::memset(pool.data_, 0, offset);
  } else {
    detail::DeviceGuard guard(device);
    HTFR_CUDA_CHECK(cudaMalloc(&pool.data_, offset));
    // From here the pool owns the memory: a throw below frees it in the destructor.
    HTFR_CUDA_CHECK(cudaMemset(pool.data_, 0, offset));
  }

  char* base = static_cast<char*>(pool.data_);
  auto at = [&](std::size_t index) { return base + pool.layout_[index].offset_bytes; };
  PoolView& v = pool.view_;
  v.num_tensors = n;
  v.input_dim = input_dim;
  v.output_dim = output_dim;
  v.normals = reinterpret_cast<float*>(at(0));
  v.offsets = reinterpret_cast<float*>(at(1));
  v.dneg = reinterpret_cast<float*>(at(2));
  v.dpos = reinterpret_cast<float*>(at(3));
  v.tau = reinterpret_cast<float*>(at(4));
  v.controls = reinterpret_cast<float*>(at(5));
  v.use_count = reinterpret_cast<float*>(at(6));
  v.last_used = reinterpret_cast<float*>(at(7));
  v.mean_abs_d = reinterpret_cast<float*>(at(8));
  v.loss_trace = reinterpret_cast<float*>(at(9));
  v.half_precision = half;
  if (halves) {
    v.normals_half = at(10);
    v.controls_half = at(11);
  }
  return pool;
}

HyperTensorPool::~HyperTensorPool() { release(); }

void HyperTensorPool::release() noexcept {
  if (data_ == nullptr) return;
  if (backend_ == Backend::cpu) {
    std::free(data_);
  } else {
    int previous = 0;
    const bool switched = cudaGetDevice(&previous) == cudaSuccess && previous != device_ &&
                          cudaSetDevice(device_) == cudaSuccess;
    (void)cudaFree(data_);
    if (switched) (void)cudaSetDevice(previous);
  }
  data_ = nullptr;
  bytes_ = 0;
}

HyperTensorPool::HyperTensorPool(HyperTensorPool&& other) noexcept
    : backend_(other.backend_),
      device_(other.device_),
      data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      layout_(std::move(other.layout_)),
      view_(std::exchange(other.view_, PoolView{})) {}

HyperTensorPool& HyperTensorPool::operator=(HyperTensorPool&& other) noexcept {
  if (this != &other) {
    release();
    backend_ = other.backend_;
    device_ = other.device_;
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    layout_ = std::move(other.layout_);
    view_ = std::exchange(other.view_, PoolView{});
  }
  return *this;
}

PoolParameters HyperTensorPool::download(cudaStream_t stream) const {
  HTFR_NVTX_RANGE("htfr::HyperTensorPool::download");
  HTFR_REQUIRE(!empty(), InvalidArgument, "download() on an empty pool");
  PoolParameters p;
  p.num_tensors = num_tensors();
  p.input_dim = input_dim();
  p.output_dim = output_dim();
  const auto n = static_cast<std::size_t>(p.num_tensors);
  std::pair<std::vector<float>*, const float*> arrays[] = {
      {&p.normals, view_.normals},       {&p.offsets, view_.offsets},
      {&p.dneg, view_.dneg},             {&p.dpos, view_.dpos},
      {&p.tau, view_.tau},               {&p.controls, view_.controls},
      {&p.use_count, view_.use_count},   {&p.last_used, view_.last_used},
      {&p.mean_abs_d, view_.mean_abs_d}, {&p.loss_trace, view_.loss_trace}};
  p.normals.resize(n * p.input_dim);
  p.controls.resize(n * 3 * p.output_dim);
  for (auto& [vec, src] : arrays) {
    if (vec->empty()) vec->resize(n);
  }
  std::unique_ptr<detail::DeviceGuard> guard;
  if (backend_ == Backend::cuda) guard = std::make_unique<detail::DeviceGuard>(device_);
  for (auto& [vec, src] : arrays) {
    copy_bytes(vec->data(), src, vec->size() * sizeof(float), backend_, stream);
  }
  if (backend_ == Backend::cuda) HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
  return p;
}

void HyperTensorPool::upload(const PoolParameters& p, cudaStream_t stream) {
  HTFR_NVTX_RANGE("htfr::HyperTensorPool::upload");
  HTFR_REQUIRE(!empty(), InvalidArgument, "upload() on an empty pool");
  p.validate();
  HTFR_REQUIRE(p.num_tensors == num_tensors() && p.input_dim == input_dim() &&
                   p.output_dim == output_dim(),
               InvalidArgument,
               "upload() of N=" << p.num_tensors << " D=" << p.input_dim << " M=" << p.output_dim
                                << " into a pool of N=" << num_tensors() << " D=" << input_dim()
                                << " M=" << output_dim());
  std::pair<const std::vector<float>*, float*> arrays[] = {
      {&p.normals, view_.normals},       {&p.offsets, view_.offsets},
      {&p.dneg, view_.dneg},             {&p.dpos, view_.dpos},
      {&p.tau, view_.tau},               {&p.controls, view_.controls},
      {&p.use_count, view_.use_count},   {&p.last_used, view_.last_used},
      {&p.mean_abs_d, view_.mean_abs_d}, {&p.loss_trace, view_.loss_trace}};
  std::unique_ptr<detail::DeviceGuard> guard;
  if (backend_ == Backend::cuda) guard = std::make_unique<detail::DeviceGuard>(device_);
  for (auto& [vec, dst] : arrays) {
    copy_bytes(dst, vec->data(), vec->size() * sizeof(float), backend_, stream);
  }
  refresh_half(stream);
  if (backend_ == Backend::cuda) HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void HyperTensorPool::refresh_half(cudaStream_t stream) {
  if (view_.normals_half == nullptr) return;
  detail::DeviceGuard guard(device_);
  detail::launch_to_half(view_.normals, view_.normals_half, num_tensors() * input_dim(),
                         view_.half_precision, stream);
  detail::launch_to_half(view_.controls, view_.controls_half, num_tensors() * 3 * output_dim(),
                         view_.half_precision, stream);
}

HyperTensorPool HyperTensorPool::clone(Backend backend, int device, cudaStream_t stream) const {
  HTFR_NVTX_RANGE("htfr::HyperTensorPool::clone");
  HTFR_REQUIRE(!empty(), InvalidArgument, "clone() of an empty pool");
  HyperTensorPool copy =
      create(backend, num_tensors(), input_dim(), output_dim(), half_precision(), device);
  copy.upload(download(stream), stream);
  return copy;
}

void HyperTensorPool::init_random(uint64_t seed, float offset_scale, float band, float tau,
                                  float control_scale, cudaStream_t stream) {
  HTFR_NVTX_RANGE("htfr::HyperTensorPool::init_random");
  HTFR_REQUIRE(!empty(), InvalidArgument, "init_random() on an empty pool");
  HTFR_REQUIRE(band > 0.0f && tau > 0.0f && offset_scale >= 0.0f && control_scale >= 0.0f,
               InvalidArgument,
               "init_random needs band > 0, tau > 0 and non-negative scales; got band="
                   << band << " tau=" << tau << " offset_scale=" << offset_scale
                   << " control_scale=" << control_scale);
  const bool gpu = backend_ == Backend::cuda;
  std::unique_ptr<detail::DeviceGuard> guard;
  if (gpu) guard = std::make_unique<detail::DeviceGuard>(device_);

  curandGenerator_t gen = nullptr;
  if (gpu) {
    HTFR_CURAND_CHECK(curandCreateGenerator(&gen, CURAND_RNG_PSEUDO_PHILOX4_32_10));
  } else {
    HTFR_CURAND_CHECK(curandCreateGeneratorHost(&gen, CURAND_RNG_PSEUDO_PHILOX4_32_10));
  }
  struct GeneratorOwner {
    curandGenerator_t g;
    ~GeneratorOwner() { (void)curandDestroyGenerator(g); }
  } owner{gen};
  if (gpu) HTFR_CURAND_CHECK(curandSetStream(gen, stream));
  HTFR_CURAND_CHECK(curandSetPseudoRandomGeneratorSeed(gen, seed));
  HTFR_CURAND_CHECK(curandSetGeneratorOffset(gen, 0));

  // curandGenerateNormal needs an even count: an odd tail is drawn as a pair into scratch memory
  // and its first value kept.
  auto normal = [&](float* dst, int64_t count, float stddev) {
    const int64_t even = count & ~int64_t{1};
    if (even > 0) HTFR_CURAND_CHECK(curandGenerateNormal(gen, dst, even, 0.0f, stddev));
    if (count != even) {
      float pair_host[2];
      float* pair = pair_host;
      detail::DeviceBuffer scratch;
      if (gpu) {
        scratch.reserve(2 * sizeof(float));
        pair = static_cast<float*>(scratch.data());
      }
      HTFR_CURAND_CHECK(curandGenerateNormal(gen, pair, 2, 0.0f, stddev));
      copy_bytes(dst + even, pair, sizeof(float), backend_, stream);
      if (gpu) HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
  };
  const int64_t n = num_tensors();
  normal(view_.normals, n * input_dim(), 1.0f);
  normal(view_.offsets, n, offset_scale);
  normal(view_.controls, n * 3 * output_dim(), control_scale);

  float* stats[] = {view_.use_count, view_.last_used, view_.mean_abs_d, view_.loss_trace};
  if (gpu) {
    detail::launch_normalize_rows(view_.normals, n, input_dim(), stream);
    detail::launch_fill(view_.dneg, n, -band, stream);
    detail::launch_fill(view_.dpos, n, band, stream);
    detail::launch_fill(view_.tau, n, tau, stream);
    for (float* s : stats) detail::launch_fill(s, n, 0.0f, stream);
    refresh_half(stream);
    HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
  } else {
    normalize_host(view_.normals, n, input_dim());
    for (int64_t i = 0; i < n; ++i) {
      view_.dneg[i] = -band;
      view_.dpos[i] = band;
      view_.tau[i] = tau;
    }
    for (float* s : stats) std::fill(s, s + n, 0.0f);
  }
}

}  // namespace htfr

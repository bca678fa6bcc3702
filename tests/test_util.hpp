// Helpers shared by the test suites: seeded random data, tolerance comparison, device arrays that
// are poisoned before use, and the GPU skip.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <htfr/htfr.hpp>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace htfr::test {

inline bool have_gpu() { return cuda_device_count() > 0; }

#define HTFR_SKIP_WITHOUT_GPU() \
  if (!::htfr::test::have_gpu()) GTEST_SKIP() << "no CUDA device: GPU test skipped"

inline std::vector<float> random_normal(std::size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline std::vector<float> random_uniform(std::size_t n, uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

/// Rows of probabilities (each row sums to 1), from a softmax of Gaussian logits.
inline std::vector<float> random_distributions(int64_t rows, int64_t m, uint64_t seed) {
  std::vector<float> v = random_normal(static_cast<std::size_t>(rows * m), seed, 2.0f);
  for (int64_t r = 0; r < rows; ++r) {
    double z = 0;
    for (int64_t j = 0; j < m; ++j) z += std::exp(double(v[r * m + j]));
    for (int64_t j = 0; j < m; ++j) v[r * m + j] = float(std::exp(double(v[r * m + j])) / z);
  }
  return v;
}

/// Checks |a - e| <= atol + rtol |e| element-wise (NaN never passes) and reports the worst
/// element and the number of failures.
inline ::testing::AssertionResult all_close(const std::vector<float>& actual,
                                            const std::vector<float>& expected, double atol,
                                            double rtol) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure()
           << "size " << actual.size() << " != expected size " << expected.size();
  }
  std::size_t bad = 0, worst = 0;
  double worst_excess = -1.0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    const double a = actual[i], e = expected[i];
    const double limit = atol + rtol * std::fabs(e);
    const double err = std::fabs(a - e);
    const bool ok = std::isfinite(a) && err <= limit;
    if (!ok) ++bad;
    const double excess = std::isfinite(a) ? err - limit : INFINITY;
    if (excess > worst_excess) {
      worst_excess = excess;
      worst = i;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << actual.size() << " elements differ; worst at " << worst << ": "
         << actual[worst] << " vs " << expected[worst] << " (atol " << atol << ", rtol " << rtol
         << ")";
}

/// A non-blocking stream owned by a test.
struct Stream {
  cudaStream_t s = nullptr;
  Stream() {
    if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess)
      throw std::runtime_error("cudaStreamCreate failed");
  }
  ~Stream() { cudaStreamDestroy(s); }
};

/// Owning device array for tests; poisoned with NaN (0xFF bytes) on creation so an element the
/// code under test does not write is caught. Every transfer waits for the device, so work on
/// non-blocking streams never races the legacy stream's poisoning or a pageable upload whose DMA
/// is still in flight when cudaMemcpy returns.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(std::size_t n) : n_(n) {
    if (cudaMalloc(reinterpret_cast<void**>(&ptr_), bytes()) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
    poison();
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) { upload(host); }
  ~DeviceArray() { cudaFree(ptr_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  void poison() {
    if (cudaMemset(ptr_, 0xFF, bytes()) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess)
      throw std::runtime_error("memset");
  }
  void upload(const std::vector<T>& host) {
    if (cudaMemcpy(ptr_, host.data(), bytes(), cudaMemcpyHostToDevice) != cudaSuccess ||
        cudaDeviceSynchronize() != cudaSuccess)
      throw std::runtime_error("upload failed");
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    if (cudaMemcpy(host.data(), ptr_, bytes(), cudaMemcpyDeviceToHost) != cudaSuccess)
      throw std::runtime_error("download failed");
    return host;
  }
  T* get() const { return ptr_; }
  std::size_t size() const { return n_; }

 private:
  std::size_t bytes() const { return n_ * sizeof(T); }
  T* ptr_ = nullptr;
  std::size_t n_ = 0;
};

/// An array of n elements in the memory space a backend reads: a host vector for the CPU, a
/// DeviceArray (with a host mirror) for CUDA.
template <typename T>
class Staged {
 public:
  Staged(Backend backend, std::size_t n) : host_(n) {
    if (backend == Backend::cuda) device_ = std::make_unique<DeviceArray<T>>(n);
  }
  Staged(Backend backend, const std::vector<T>& values) : host_(values) {
    if (backend == Backend::cuda) device_ = std::make_unique<DeviceArray<T>>(values);
  }
  /// Copies `values` (n elements) in; returns the pointer to pass to the model.
  T* set(const std::vector<T>& values) {
    if (values.size() != host_.size()) throw std::runtime_error("Staged::set: size mismatch");
    host_ = values;
    if (device_) device_->upload(host_);
    return get();
  }
  T* get() { return device_ ? device_->get() : host_.data(); }
  /// The current contents (downloaded from the device for CUDA).
  const std::vector<T>& fetch() {
    if (device_) host_ = device_->download();
    return host_;
  }

 private:
  std::vector<T> host_;
  std::unique_ptr<DeviceArray<T>> device_;
};

/// A CPU pool of the config's shape with random parameters: bands [-band, band], temperature tau.
inline HyperTensorPool random_cpu_pool(const HtfrConfig& c, uint64_t seed, float offset_scale = 0.3f,
                                       float band = 1.0f, float tau = 0.5f,
                                       float control_scale = 0.5f) {
  auto pool = HyperTensorPool::create(Backend::cpu, c.num_tensors, c.input_dim, c.output_dim);
  pool.init_random(seed, offset_scale, band, tau, control_scale);
  return pool;
}

}  // namespace htfr::test

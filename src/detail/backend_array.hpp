// An owning array in the memory of a backend (host vector or device allocation), for host-side
// drivers such as the HFT trainer that run unchanged on either backend.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "detail/check.hpp"
#include "detail/device.hpp"
#include "htfr/config.hpp"

namespace htfr::detail {

template <typename T>
class BackendArray {
 public:
  BackendArray() = default;
  BackendArray(Backend backend, int device, int64_t size) : backend_(backend), device_(device) {
    resize(size);
  }
  ~BackendArray() { release(); }
  BackendArray(BackendArray&& o) noexcept
      : backend_(o.backend_),
        device_(o.device_),
        size_(std::exchange(o.size_, 0)),
        host_(std::move(o.host_)),
        device_ptr_(std::exchange(o.device_ptr_, nullptr)) {}
  BackendArray& operator=(BackendArray&& o) noexcept {
    if (this != &o) {
      release();
      backend_ = o.backend_;
      device_ = o.device_;
      size_ = std::exchange(o.size_, 0);
      host_ = std::move(o.host_);
      device_ptr_ = std::exchange(o.device_ptr_, nullptr);
    }
    return *this;
  }
  BackendArray(const BackendArray&) = delete;
  BackendArray& operator=(const BackendArray&) = delete;

  /// Reallocates to `size` elements when larger than now (contents are not preserved then).
  void reserve(int64_t size) {
    if (size > size_) resize(size);
  }
  /// Exactly `size` elements, zeroed. Synchronous.
  void resize(int64_t size) {
    release();
    size_ = size;
    if (size == 0) return;
    if (backend_ == Backend::cpu) {
      host_.assign(static_cast<std::size_t>(size), T{});
    } else {
      DeviceGuard guard(device_);
      HTFR_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&device_ptr_), static_cast<std::size_t>(size) * sizeof(T)));
      HTFR_CUDA_CHECK(cudaMemset(device_ptr_, 0, static_cast<std::size_t>(size) * sizeof(T)));
    }
  }
  T* data() { return backend_ == Backend::cpu ? host_.data() : device_ptr_; }
  const T* data() const { return backend_ == Backend::cpu ? host_.data() : device_ptr_; }
  int64_t size() const { return size_; }

  /// Copies `count` host elements to [offset, offset + count). Ordered on `stream`; the host
  /// array may be reused when the call returns.
  void upload(const T* src, int64_t count, int64_t offset, cudaStream_t stream) {
    if (count == 0) return;
    if (backend_ == Backend::cpu) {
      std::memcpy(host_.data() + offset, src, static_cast<std::size_t>(count) * sizeof(T));
      return;
    }
    DeviceGuard guard(device_);
    HTFR_CUDA_CHECK(cudaMemcpyAsync(device_ptr_ + offset, src,
                                    static_cast<std::size_t>(count) * sizeof(T),
                                    cudaMemcpyHostToDevice, stream));
  }
  /// The whole array on the host. Synchronises `stream`.
  std::vector<T> download(cudaStream_t stream) const { return download(0, size_, stream); }
  std::vector<T> download(int64_t offset, int64_t count, cudaStream_t stream) const {
    std::vector<T> out(static_cast<std::size_t>(count));
    if (count == 0) return out;
    if (backend_ == Backend::cpu) {
      std::memcpy(out.data(), host_.data() + offset, out.size() * sizeof(T));
      return out;
    }
    DeviceGuard guard(device_);
    HTFR_CUDA_CHECK(cudaMemcpyAsync(out.data(), device_ptr_ + offset, out.size() * sizeof(T),
                                    cudaMemcpyDeviceToHost, stream));
    HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
    return out;
  }
  /// Sets every element to zero bytes. Asynchronous on `stream`.
  void zero(cudaStream_t stream) {
    if (size_ == 0) return;
    if (backend_ == Backend::cpu) {
      std::fill(host_.begin(), host_.end(), T{});
      return;
    }
    DeviceGuard guard(device_);
    HTFR_CUDA_CHECK(
        cudaMemsetAsync(device_ptr_, 0, static_cast<std::size_t>(size_) * sizeof(T), stream));
  }

 private:
  void release() noexcept {
    host_.clear();
    host_.shrink_to_fit();
    if (device_ptr_) {
      DeviceGuard guard(device_);
      cudaFree(device_ptr_);
      device_ptr_ = nullptr;
    }
    size_ = 0;
  }
  Backend backend_ = Backend::cpu;
  int device_ = 0;
  int64_t size_ = 0;
  std::vector<T> host_;
  T* device_ptr_ = nullptr;
};

}  // namespace htfr::detail

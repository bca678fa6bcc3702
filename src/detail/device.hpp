// Small host-side helpers for device work: device selection, pointer checks and an owning
// device buffer used for workspaces.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "htfr/config.hpp"

namespace htfr::detail {

/// Makes `device` current for its lifetime and restores the previous device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

/// Throws NoDevice unless CUDA device `device` exists.
void require_cuda_device(int device);

/// Throws WrongDevice when `ptr` is not usable by `backend` on `device`: host memory for the CPU
/// backend, memory of `device` (device or managed) for the CUDA backend. `name` goes into the
/// message. A null `ptr` is accepted (callers check required pointers themselves).
void require_memory(const void* ptr, Backend backend, int device, const char* name);

/// Owning, move-only device allocation that grows on demand (contents are not preserved).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  /// Ensures at least `bytes` are allocated; reallocates (synchronously) when smaller.
  void reserve(std::size_t bytes);
  void* data() const { return data_; }
  std::size_t size() const { return bytes_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

/// Owning stream-ordered scratch allocation (cudaMallocAsync on construction, cudaFreeAsync on
/// destruction, both on `stream`), for temporaries of one call.
class StreamScratch {
 public:
  StreamScratch(std::size_t bytes, cudaStream_t stream);
  ~StreamScratch();
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

/// Rounds `bytes` up to a multiple of 128.
constexpr std::size_t align128(std::size_t bytes) { return (bytes + 127) / 128 * 128; }

/// Carves typed, 128-byte aligned pieces out of one buffer, in order.
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<char*>(base)) {}
  template <typename T>
  T* take(std::size_t count) {
    T* p = reinterpret_cast<T*>(base_ ? base_ + used_ : nullptr);
    used_ += align128(count * sizeof(T));
    return p;
  }
  std::size_t used() const { return used_; }

 private:
  char* base_;
  std::size_t used_ = 0;
};

}  // namespace htfr::detail

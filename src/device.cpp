// Device selection, pointer-location checks and the workspace buffer.
#include "detail/device.hpp"

#include <utility>

#include "detail/check.hpp"

namespace htfr {

int cuda_device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

namespace detail {

DeviceGuard::DeviceGuard(int device) {
  HTFR_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) HTFR_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::~DeviceGuard() {
  int current = -1;
  if (cudaGetDevice(&current) == cudaSuccess && current != previous_ && previous_ >= 0) {
    (void)cudaSetDevice(previous_);
  }
}

void require_cuda_device(int device) {
  const int count = cuda_device_count();
  HTFR_REQUIRE(count > 0, NoDevice, "the CUDA backend needs a GPU, but no CUDA device is usable");
  HTFR_REQUIRE(device >= 0 && device < count, NoDevice,
               "CUDA device " << device << " does not exist (" << count << " device(s) found)");
}

void require_memory(const void* ptr, Backend backend, int device, const char* name) {
  if (ptr == nullptr) return;
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    (void)cudaGetLastError();
    attr.type = cudaMemoryTypeUnregistered;  // no driver: it can only be host memory
  }
  const bool device_memory = attr.type == cudaMemoryTypeDevice;
  const bool managed = attr.type == cudaMemoryTypeManaged;
  if (backend == Backend::cpu) {
    HTFR_REQUIRE(!device_memory, WrongDevice,
                 name << " is device memory (GPU " << attr.device
                      << ") but the model uses the CPU backend; pass host memory");
    return;
  }
  HTFR_REQUIRE(device_memory || managed, WrongDevice,
               name << " is host memory but the model uses the CUDA backend on GPU " << device
                    << "; pass device memory");
  HTFR_REQUIRE(attr.device == device, WrongDevice,
               name << " lives on GPU " << attr.device << " but the model's pool is on GPU "
                    << device);
}

DeviceBuffer::~DeviceBuffer() {
  if (data_) (void)cudaFree(data_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_) (void)cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::reserve(std::size_t bytes) {
  if (bytes <= bytes_) return;
  if (data_) {
    HTFR_CUDA_CHECK(cudaFree(data_));
    data_ = nullptr;
    bytes_ = 0;
  }
  HTFR_CUDA_CHECK(cudaMalloc(&data_, bytes));
  bytes_ = bytes;
}

StreamScratch::StreamScratch(std::size_t bytes, cudaStream_t stream) : stream_(stream) {
  if (bytes > 0) HTFR_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream));
}

StreamScratch::~StreamScratch() {
  if (ptr_) (void)cudaFreeAsync(ptr_, stream_);
}

}  // namespace detail
}  // namespace htfr

// The HyperTensor pool: all parameters and statistics of N HyperTensors in one allocation on the
// CPU or one GPU, struct-of-arrays, described by one layout table.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "htfr/config.hpp"

namespace htfr {

enum class DType { f32, bf16, f16 };

/// One named array inside the pool's allocation. Offsets are 128-byte aligned.
struct PoolSlice {
  std::string name;
  std::size_t offset_bytes = 0;
  int64_t count = 0;  ///< number of elements
  DType dtype = DType::f32;
};

/// Non-owning view of a pool, trivially copyable, passed to kernels by value. Pointers are host
/// pointers for a CPU pool and device pointers for a CUDA pool.
///  normals   N x D        unit normals n_i
///  offsets   N            delta_i
///  dneg/dpos N            band edges, dneg < 0 < dpos
///  tau       N            temperatures (bandwidths of the compact kernels)
///  controls  N x 3 x M    C_i stored column by column: controls[(i*3 + j)*M + m] = C_i[m, j]
///  use_count, last_used, mean_abs_d, loss_trace   N   statistics (fp32)
///  normals_half / controls_half: copies in `half_precision` (bf16 or fp16), null otherwise
struct PoolView {
  int64_t num_tensors = 0;
  int64_t input_dim = 0;
  int64_t output_dim = 0;
  float* normals = nullptr;
  float* offsets = nullptr;
  float* dneg = nullptr;
  float* dpos = nullptr;
  float* tau = nullptr;
  float* controls = nullptr;
  float* use_count = nullptr;
  float* last_used = nullptr;
  float* mean_abs_d = nullptr;
  float* loss_trace = nullptr;
  void* normals_half = nullptr;
  void* controls_half = nullptr;
  Precision half_precision = Precision::fp32;
};

/// Host copy of a pool's contents, in the same layouts as PoolView. Used to initialise pools from
/// data, to compare backends and to save checkpoints.
struct PoolParameters {
  int64_t num_tensors = 0;
  int64_t input_dim = 0;
  int64_t output_dim = 0;
  std::vector<float> normals, offsets, dneg, dpos, tau, controls;
  std::vector<float> use_count, last_used, mean_abs_d, loss_trace;

  /// Throws InvalidArgument if any array's size disagrees with the dimensions.
  void validate() const;
};

/// Owning, move-only pool of N HyperTensors over R^D -> R^M.
class HyperTensorPool {
 public:
  HyperTensorPool() = default;
  /// Allocates a zero-initialised pool. `half` = bf16 or fp16 adds forward-pass copies of normals
  /// and controls (fp32/tf32 add none). `device` is the CUDA ordinal for Backend::cuda.
  /// Throws InvalidArgument (sizes), NoDevice (no GPU for Backend::cuda), OutOfMemory.
  static HyperTensorPool create(Backend backend, int64_t num_tensors, int64_t input_dim,
                                int64_t output_dim, Precision half = Precision::fp32,
                                int device = 0);
  ~HyperTensorPool();
  HyperTensorPool(HyperTensorPool&& other) noexcept;
  HyperTensorPool& operator=(HyperTensorPool&& other) noexcept;
  HyperTensorPool(const HyperTensorPool&) = delete;
  HyperTensorPool& operator=(const HyperTensorPool&) = delete;

  /// Explicit deep copy onto `backend` (and `device`). Synchronises `stream`.
  HyperTensorPool clone(Backend backend, int device = 0, cudaStream_t stream = nullptr) const;

  /// Random initialisation with cuRAND's Philox generator (the same numbers on both backends for a
  /// seed): Gaussian normals renormalised to unit length, offsets ~ N(0, offset_scale^2), bands
  /// [-band, band], temperatures tau, controls ~ N(0, control_scale^2), statistics zeroed.
  /// Synchronises `stream`.
  void init_random(uint64_t seed, float offset_scale, float band, float tau, float control_scale,
                   cudaStream_t stream = nullptr);

  /// Copies everything to the host. Synchronises `stream`.
  PoolParameters download(cudaStream_t stream = nullptr) const;
  /// Replaces the contents from host arrays (validated first; normals are used as given) and
  /// refreshes the half copies. Synchronises `stream`.
  void upload(const PoolParameters& params, cudaStream_t stream = nullptr);
  /// Recomputes the half copies from the fp32 masters. Asynchronous on `stream`.
  void refresh_half(cudaStream_t stream = nullptr);

  PoolView view() const { return view_; }
  const std::vector<PoolSlice>& layout() const { return layout_; }
  Backend backend() const { return backend_; }
  int device() const { return device_; }
  int64_t num_tensors() const { return view_.num_tensors; }
  int64_t input_dim() const { return view_.input_dim; }
  int64_t output_dim() const { return view_.output_dim; }
  Precision half_precision() const { return view_.half_precision; }
  std::size_t bytes() const { return bytes_; }
  bool empty() const { return data_ == nullptr; }

 private:
  void release() noexcept;
  Backend backend_ = Backend::cpu;
  int device_ = 0;
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  std::vector<PoolSlice> layout_;
  PoolView view_;
};

/// Number of CUDA devices usable by this process (0 when there is no driver or GPU).
int cuda_device_count() noexcept;

}  // namespace htfr

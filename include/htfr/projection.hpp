// The projection stack of the HyperField Transformer: CountSketch, block SRHT (fast
// Walsh–Hadamard transform per block) and PCA/whitening, each with its adjoint for end-to-end
// gradients, chained by ProjectionStack and saved to safetensors checkpoints bit for bit.
//
// Every map runs on the CPU (host arrays) or on one GPU (device arrays); calls take a stream and
// are asynchronous on it unless their comment says otherwise. Inputs and outputs are row-major
// batches of `rows` rows. Creating a CUDA map uploads its parameters and synchronises the device.
// A map or stack reuses its own scratch memory, so one object's calls must not overlap on
// different streams.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "htfr/config.hpp"
#include "htfr/pool.hpp"
#include "htfr/safetensors.hpp"

namespace htfr {

/// Largest Hadamard transform (and SRHT block): 2^17.
inline constexpr int64_t kMaxHadamardSize = int64_t{1} << 17;

/// y = H_n x for `rows` rows of n values, H_n the unnormalised Walsh–Hadamard matrix (entries
/// +-1, so applying it twice gives n x). n is a power of two in [2, 2^17]; x and y may be the same
/// array when x_type == y_type. Types: f32 or bf16; the arithmetic is fp32. Asynchronous on
/// `stream` for Backend::cuda (device memory of `device`). Above 2^15 the transform runs in two
/// passes over an fp32 copy: an fp32 y holds it; for a bf16 y pass `workspace` (device memory of
/// fwht_workspace_bytes bytes), or the stream-ordered allocator provides it per call. Throws
/// InvalidArgument, WrongDevice, NoDevice.
void fwht(Backend backend, const void* x, DType x_type, void* y, DType y_type, int64_t rows,
          int64_t n, cudaStream_t stream, int device = 0, void* workspace = nullptr);

/// Bytes of device scratch fwht uses for `rows` rows of n values written as `y_type` (0 when
/// none).
std::size_t fwht_workspace_bytes(int64_t rows, int64_t n, DType y_type);

/// CountSketch S: R^input_dim -> R^output_dim, (S x)[b] = sum over j with bucket(j) = b of
/// sign(j) x[j]. Linear; E[<Sx, Sy>] = <x, y> over the random hashes.
class CountSketch {
 public:
  /// Hashes from `seed` (the same on every backend and machine): bucket uniform in
  /// [0, output_dim), sign +-1 with probability 1/2.
  static CountSketch create(Backend backend, int64_t input_dim, int64_t output_dim, uint64_t seed,
                            int device = 0);
  /// Explicit hashes (e.g. from a checkpoint). Throws InvalidArgument when a bucket lies outside
  /// [0, output_dim), a sign is not +-1, or the two arrays differ in length.
  static CountSketch from_parameters(Backend backend, int64_t output_dim,
                                     std::vector<int32_t> bucket, std::vector<int8_t> sign,
                                     int device = 0);
  CountSketch(CountSketch&&) noexcept;
  CountSketch& operator=(CountSketch&&) noexcept;
  ~CountSketch();

  /// y (rows x output_dim) = S x (rows x input_dim). y is overwritten.
  void apply(const float* x, float* y, int64_t rows, cudaStream_t stream) const;
  /// The same for sparse rows in CSR form: row r holds entries row_offsets[r] ..
  /// row_offsets[r+1] - 1 of `indices` / `values` (nnz entries in all; repeated indices add up).
  /// The offsets and indices are validated first (InvalidArgument); on the CUDA backend that
  /// reads one flag back, so this call synchronises `stream`.
  void apply_sparse(const int64_t* row_offsets, const int32_t* indices, const float* values,
                    int64_t nnz, int64_t rows, float* y, cudaStream_t stream) const;
  /// x (rows x input_dim) = S^T y (rows x output_dim).
  void apply_adjoint(const float* y, float* x, int64_t rows, cudaStream_t stream) const;

  int64_t input_dim() const;
  int64_t output_dim() const;
  Backend backend() const;
  int device() const;
  const std::vector<int32_t>& buckets() const;
  const std::vector<int8_t>& signs() const;

  struct Impl;

 private:
  explicit CountSketch(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Block SRHT: input_dim coordinates are zero-padded to num_blocks blocks of block_size (a power
/// of two <= 2^17); each block is multiplied by random signs, Walsh–Hadamard transformed, and m_b
/// of its coordinates (a fixed random subset) are kept and scaled by 1/sqrt(m_b), so
/// E||P x||^2 = ||x||^2. The output_dim outputs are spread evenly over the blocks (the first
/// output_dim % num_blocks blocks keep one more), block by block.
class BlockSrht {
 public:
  /// block_size 0 chooses the smallest power of two >= input_dim, capped at 2^17. Throws
  /// InvalidArgument when block_size is not a power of two in [2, 2^17] or a block would keep
  /// more outputs than it has coordinates.
  static BlockSrht create(Backend backend, int64_t input_dim, int64_t output_dim,
                          int64_t block_size, uint64_t seed, int device = 0);
  /// Explicit parameters: signs (+-1, num_blocks * block_size) and sample (output_dim indices
  /// within their blocks, distinct within a block). Throws InvalidArgument when inconsistent.
  static BlockSrht from_parameters(Backend backend, int64_t input_dim, int64_t output_dim,
                                   int64_t block_size, std::vector<int8_t> signs,
                                   std::vector<int32_t> sample, int device = 0);
  BlockSrht(BlockSrht&&) noexcept;
  BlockSrht& operator=(BlockSrht&&) noexcept;
  ~BlockSrht();

  /// y (rows x output_dim, y_type f32 or bf16) = P x (rows x input_dim, fp32). Blocks above 2^15
  /// use a scratch buffer of the object that grows on demand (growing reallocates synchronously).
  void apply(const float* x, void* y, DType y_type, int64_t rows, cudaStream_t stream) const;
  /// x (rows x input_dim) = P^T y (rows x output_dim), fp32.
  void apply_adjoint(const float* y, float* x, int64_t rows, cudaStream_t stream) const;

  int64_t input_dim() const;
  int64_t output_dim() const;
  int64_t block_size() const;
  int64_t num_blocks() const;
  Backend backend() const;
  int device() const;
  const std::vector<int8_t>& signs() const;
  const std::vector<int32_t>& sample() const;

  struct Impl;

 private:
  explicit BlockSrht(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// PCA / whitening: y = W (x - mean), W (components x dim) holding the leading eigenvectors of
/// the sample covariance as rows (sign fixed so each row's largest-magnitude entry is positive),
/// divided by sqrt(eigenvalue + eps) when whitening. The adjoint of the linear part is W^T.
class Pca {
 public:
  /// Fits on `rows` sample rows of x (rows x dim; device memory for Backend::cuda). The CUDA
  /// backend uses cuBLAS (covariance) and cuSOLVER (eigendecomposition); the CPU backend a
  /// Jacobi eigensolver. Synchronises `stream`. Throws InvalidArgument (rows < 2,
  /// components outside [1, dim], eps < 0).
  static Pca fit(Backend backend, const float* x, int64_t rows, int64_t dim, int64_t components,
                 bool whiten, float eps, cudaStream_t stream, int device = 0);
  /// Explicit parameters: matrix (components x dim, row-major) and mean (dim).
  static Pca from_parameters(Backend backend, int64_t dim, std::vector<float> matrix,
                             std::vector<float> mean, int device = 0);
  Pca(Pca&&) noexcept;
  Pca& operator=(Pca&&) noexcept;
  ~Pca();

  /// y (rows x components) = W (x - mean), x rows x dim, fp32.
  void apply(const float* x, float* y, int64_t rows, cudaStream_t stream) const;
  /// x (rows x dim) = W^T y (rows x components): the adjoint of the linear part.
  void apply_adjoint(const float* y, float* x, int64_t rows, cudaStream_t stream) const;

  int64_t input_dim() const;
  int64_t output_dim() const;
  Backend backend() const;
  int device() const;
  const std::vector<float>& matrix() const;
  const std::vector<float>& mean() const;

  struct Impl;

 private:
  explicit Pca(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// A chain of projections applied in order, all on one backend and device.
class ProjectionStack {
 public:
  using Stage = std::variant<CountSketch, BlockSrht, Pca>;

  explicit ProjectionStack(Backend backend = Backend::cpu, int device = 0);
  ProjectionStack(ProjectionStack&&) noexcept;
  ProjectionStack& operator=(ProjectionStack&&) noexcept;
  ~ProjectionStack();

  /// Appends a stage. Throws InvalidArgument when its input_dim differs from the stack's current
  /// output_dim, or WrongDevice when it lives on another backend or device.
  void add(Stage stage);

  std::size_t size() const { return stages_.size(); }
  const Stage& stage(std::size_t i) const { return stages_.at(i); }
  int64_t input_dim() const;
  int64_t output_dim() const;
  Backend backend() const { return backend_; }
  int device() const { return device_; }

  /// y (rows x output_dim, y_type f32 or bf16) = the chain applied to x (rows x input_dim,
  /// fp32). Intermediate results live in the stack's workspace, which grows on demand (growing
  /// reallocates synchronously). Throws InvalidArgument for an empty stack.
  void apply(const float* x, void* y, DType y_type, int64_t rows, cudaStream_t stream) const;
  /// x (rows x input_dim) = the adjoints applied in reverse order to y (rows x output_dim), fp32.
  void apply_adjoint(const float* y, float* x, int64_t rows, cudaStream_t stream) const;

  /// Writes every stage's parameters to a safetensors checkpoint, atomically. Throws IoError.
  void save(const std::string& path) const;
  /// Restores a stack saved by save(), bit for bit, onto `backend`. Throws IoError (missing or
  /// unreadable file) or FormatError (not a projection checkpoint, inconsistent parameters).
  static ProjectionStack load(const std::string& path, Backend backend, int device = 0);
  /// The same parameters as entries of a larger safetensors file: tensors and metadata keys
  /// named `prefix` + "stage.<i>.<field>" and `prefix` + "stages".
  void save_to(SafetensorsWriter& writer, const std::string& prefix) const;
  static ProjectionStack load_from(const SafetensorsReader& reader, const std::string& prefix,
                                   Backend backend, int device = 0);

 private:
  struct Workspace;
  Backend backend_;
  int device_;
  std::vector<Stage> stages_;
  std::unique_ptr<Workspace> workspace_;
};

}  // namespace htfr

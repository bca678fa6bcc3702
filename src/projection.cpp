// The projection stack's host side: parameter generation and validation, dispatch to the CUDA
// kernels or the CPU reference, and the safetensors checkpoint.
#include "htfr/projection.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <type_traits>

#include "../kernels/count_sketch.cuh"
#include "../kernels/hadamard.cuh"
#include "../kernels/pca.cuh"
#include "../kernels/pool_ops.cuh"
#include "detail/check.hpp"
#include "detail/device.hpp"
#include "detail/handles.hpp"
#include "detail/nvtx.hpp"
#include "detail/projection_cpu.hpp"
#include "detail/random.hpp"
#include "htfr/error.hpp"
#include "htfr/safetensors.hpp"

namespace htfr {

namespace {

using detail::splitmix64;
using detail::uniform_below;

void require_backend(Backend backend, int device) {
  if (backend == Backend::cuda) detail::require_cuda_device(device);
}

bool is_power_of_two(int64_t n) { return n >= 2 && (n & (n - 1)) == 0; }

int log2_exact(int64_t n) {
  int l = 0;
  while ((int64_t{1} << l) < n) ++l;
  return l;
}

void require_rows(int64_t rows) {
  HTFR_REQUIRE(rows >= 0, InvalidArgument, "rows must be >= 0, got " << rows);
}

void require_pointer(const void* p, int64_t rows, const char* name) {
  HTFR_REQUIRE(p != nullptr || rows == 0, InvalidArgument, name << " is null");
}

// Copies host vectors into one device allocation and sets the device pointers; synchronous.
class DeviceUpload {
 public:
  explicit DeviceUpload(detail::DeviceBuffer& buffer) : buffer_(buffer) {}
  template <typename T>
  void add(const std::vector<T>& v, const T** out) {
    items_.push_back({v.data(), v.size() * sizeof(T), reinterpret_cast<const void**>(out)});
  }
  void run() {
    std::size_t total = 0;
    for (const auto& it : items_) total += detail::align128(it.bytes);
    buffer_.reserve(std::max<std::size_t>(total, 128));
    char* base = static_cast<char*>(buffer_.data());
    std::size_t offset = 0;
    for (const auto& it : items_) {
      HTFR_CUDA_CHECK(cudaMemcpy(base + offset, it.src, it.bytes, cudaMemcpyHostToDevice));
      *it.out = base + offset;
      offset += detail::align128(it.bytes);
    }
    // A pageable upload may return before its DMA lands; kernels on other streams must not race
    // it.
    HTFR_CUDA_CHECK(cudaDeviceSynchronize());
  }

 private:
  struct Item {
    const void* src;
    std::size_t bytes;
    const void** out;
  };
  detail::DeviceBuffer& buffer_;
  std::vector<Item> items_;
};

// Rows of fp32 -> `type` on the host (f32 copies, bf16 rounds).
void store_host(const float* src, void* dst, DType type, int64_t count) {
  if (type == DType::f32) {
    std::memcpy(dst, src, count * sizeof(float));
  } else {
    auto* out = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < count; ++i) out[i] = detail::float_to_bf16(src[i]);
  }
}

// A map's call: rows >= 0, and both arrays non-null (unless rows = 0) and in the memory the
// backend reads.
void check_io(int64_t rows, const void* in, const char* in_name, const void* out,
              const char* out_name, Backend backend, int device) {
  require_rows(rows);
  require_pointer(in, rows, in_name);
  require_pointer(out, rows, out_name);
  detail::require_memory(in, backend, device, in_name);
  detail::require_memory(out, backend, device, out_name);
}

void require_output_type(DType t) {
  HTFR_REQUIRE(t == DType::f32 || t == DType::bf16, InvalidArgument,
               "projection outputs are f32 or bf16");
}

}  // namespace

// -----------------------------------------------------------------------------------------------
// FWHT

std::size_t fwht_workspace_bytes(int64_t rows, int64_t n, DType y_type) {
  if (y_type == DType::f32 || !is_power_of_two(n) || n > kMaxHadamardSize || rows <= 0) return 0;
  return detail::fwht_workspace_bytes(rows, log2_exact(n));
}

void fwht(Backend backend, const void* x, DType x_type, void* y, DType y_type, int64_t rows,
          int64_t n, cudaStream_t stream, int device, void* workspace) {
  HTFR_NVTX_RANGE("htfr::fwht");
  HTFR_REQUIRE(is_power_of_two(n) && n <= kMaxHadamardSize, InvalidArgument,
               "the Hadamard size must be a power of two in [2, " << kMaxHadamardSize
                                                                 << "], got " << n);
  HTFR_REQUIRE((x_type == DType::f32 || x_type == DType::bf16) &&
                   (y_type == DType::f32 || y_type == DType::bf16),
               InvalidArgument, "the FWHT reads and writes f32 or bf16");
  HTFR_REQUIRE(x != y || x_type == y_type || rows == 0, InvalidArgument,
               "an in-place FWHT needs the same input and output type");
  require_backend(backend, device);
  check_io(rows, x, "x", y, "y", backend, device);
  if (backend == Backend::cuda) detail::require_memory(workspace, backend, device, "workspace");
  if (rows == 0) return;
  if (backend == Backend::cuda) {
    detail::DeviceGuard guard(device);
    detail::launch_fwht(x, x_type, y, y_type, rows, log2_exact(n), static_cast<float*>(workspace),
                        stream);
    return;
  }
  std::vector<float> v(static_cast<std::size_t>(rows * n));
  if (x_type == DType::f32) {
    std::memcpy(v.data(), x, v.size() * sizeof(float));
  } else {
    const auto* in = static_cast<const uint16_t*>(x);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = detail::bf16_to_float(in[i]);
  }
  detail::fwht_cpu(v.data(), rows, n);
  store_host(v.data(), y, y_type, rows * n);
}

// -----------------------------------------------------------------------------------------------
// CountSketch

struct CountSketch::Impl {
  Backend backend = Backend::cpu;
  int device = 0;
  int64_t input_dim = 0, output_dim = 0;
  std::vector<int32_t> bucket;
  std::vector<int8_t> sign;
  std::vector<int64_t> member_start;  // inverse map, used by the device kernels
  std::vector<int32_t> members;
  std::vector<int32_t> chunk_bucket, chunk_entry;  // per chunk, sorted by (bucket, input)
  detail::DeviceBuffer storage;
  detail::CountSketchView view;
};

CountSketch::CountSketch(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CountSketch::CountSketch(CountSketch&&) noexcept = default;
CountSketch& CountSketch::operator=(CountSketch&&) noexcept = default;
CountSketch::~CountSketch() = default;

CountSketch CountSketch::create(Backend backend, int64_t input_dim, int64_t output_dim,
                                uint64_t seed, int device) {
  HTFR_REQUIRE(input_dim >= 1 && input_dim <= INT32_MAX, InvalidArgument,
               "CountSketch input_dim must be in [1, 2^31), got " << input_dim);
  HTFR_REQUIRE(output_dim >= 1 && output_dim <= INT32_MAX, InvalidArgument,
               "CountSketch output_dim must be in [1, 2^31), got " << output_dim);
  std::vector<int32_t> bucket(static_cast<std::size_t>(input_dim));
  std::vector<int8_t> sign(static_cast<std::size_t>(input_dim));
  uint64_t state = seed;
  for (int64_t j = 0; j < input_dim; ++j) {
    const uint64_t r = splitmix64(state);
    bucket[j] = static_cast<int32_t>(uniform_below(r, output_dim));
    sign[j] = (splitmix64(state) >> 63) ? int8_t{1} : int8_t{-1};
  }
  return from_parameters(backend, output_dim, std::move(bucket), std::move(sign), device);
}

CountSketch CountSketch::from_parameters(Backend backend, int64_t output_dim,
                                         std::vector<int32_t> bucket, std::vector<int8_t> sign,
                                         int device) {
  HTFR_REQUIRE(!bucket.empty() && bucket.size() == sign.size(), InvalidArgument,
               "CountSketch needs equally many buckets and signs (got " << bucket.size() << " and "
                                                                      << sign.size() << ")");
  HTFR_REQUIRE(output_dim >= 1 && output_dim <= INT32_MAX, InvalidArgument,
               "CountSketch output_dim must be in [1, 2^31), got " << output_dim);
  for (std::size_t j = 0; j < bucket.size(); ++j) {
    HTFR_REQUIRE(bucket[j] >= 0 && bucket[j] < output_dim, InvalidArgument,
                 "CountSketch bucket " << j << " is " << bucket[j] << ", outside [0, "
                                       << output_dim << ")");
    HTFR_REQUIRE(sign[j] == 1 || sign[j] == -1, InvalidArgument,
                 "CountSketch sign " << j << " is " << int(sign[j]) << ", not +-1");
  }
  require_backend(backend, device);
  auto impl = std::make_unique<Impl>();
  impl->backend = backend;
  impl->device = device;
  impl->input_dim = static_cast<int64_t>(bucket.size());
  impl->output_dim = output_dim;
  impl->bucket = std::move(bucket);
  impl->sign = std::move(sign);
  if (backend == Backend::cuda) {
    // Counting sort of the inputs by bucket, in increasing input order within a bucket.
    impl->member_start.assign(static_cast<std::size_t>(output_dim + 1), 0);
    for (int32_t b : impl->bucket) ++impl->member_start[b + 1];
    std::partial_sum(impl->member_start.begin(), impl->member_start.end(),
                     impl->member_start.begin());
    impl->members.resize(impl->bucket.size());
    std::vector<int64_t> next(impl->member_start.begin(), impl->member_start.end() - 1);
    for (int64_t j = 0; j < impl->input_dim; ++j)
      impl->members[next[impl->bucket[j]]++] = static_cast<int32_t>(j);
    impl->chunk_bucket.resize(impl->bucket.size());
    impl->chunk_entry.resize(impl->bucket.size());
    std::vector<int32_t> order;
    for (int64_t begin = 0; begin < impl->input_dim; begin += detail::kCountSketchChunk) {
      const int64_t end = std::min(begin + detail::kCountSketchChunk, impl->input_dim);
      order.resize(static_cast<std::size_t>(end - begin));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
        return impl->bucket[begin + a] < impl->bucket[begin + b];
      });
      for (std::size_t k = 0; k < order.size(); ++k) {
        impl->chunk_bucket[begin + k] = impl->bucket[begin + order[k]];
        impl->chunk_entry[begin + k] = impl->sign[begin + order[k]] * (order[k] + 1);
      }
    }
    detail::DeviceGuard guard(device);
    auto& v = impl->view;
    v.input_dim = impl->input_dim;
    v.output_dim = output_dim;
    DeviceUpload up(impl->storage);
    up.add(impl->bucket, &v.bucket);
    up.add(impl->sign, &v.sign);
    up.add(impl->member_start, &v.member_start);
    up.add(impl->members, &v.members);
    up.add(impl->chunk_bucket, &v.chunk_bucket);
    up.add(impl->chunk_entry, &v.chunk_entry);
    up.run();
  }
  return CountSketch(std::move(impl));
}

void CountSketch::apply(const float* x, float* y, int64_t rows, cudaStream_t stream) const {
  HTFR_NVTX_RANGE("htfr::CountSketch::apply");
  const Impl& m = *impl_;
  check_io(rows, x, "x", y, "y", m.backend, m.device);
  if (m.backend == Backend::cuda) {
    detail::DeviceGuard guard(m.device);
    detail::launch_count_sketch(m.view, x, y, rows, stream);
  } else {
    detail::count_sketch_cpu(m.bucket.data(), m.sign.data(), m.input_dim, m.output_dim, x, y, rows);
  }
}

void CountSketch::apply_sparse(const int64_t* row_offsets, const int32_t* indices,
                               const float* values, int64_t nnz, int64_t rows, float* y,
                               cudaStream_t stream) const {
  HTFR_NVTX_RANGE("htfr::CountSketch::apply_sparse");
  const Impl& m = *impl_;
  require_rows(rows);
  HTFR_REQUIRE(nnz >= 0, InvalidArgument, "nnz must be >= 0, got " << nnz);
  require_pointer(row_offsets, 1, "row_offsets");
  require_pointer(indices, nnz, "indices");
  require_pointer(values, nnz, "values");
  require_pointer(y, rows, "y");
  for (const auto& [p, name] : {std::pair<const void*, const char*>{row_offsets, "row_offsets"},
                                {indices, "indices"}, {values, "values"}, {y, "y"}}) {
    detail::require_memory(p, m.backend, m.device, name);
  }
  if (m.backend == Backend::cuda) {
    detail::DeviceGuard guard(m.device);
    detail::StreamScratch flags(2 * sizeof(int), stream);
    HTFR_CUDA_CHECK(cudaMemsetAsync(flags.as<int>(), 0, 2 * sizeof(int), stream));
    detail::launch_check_row_offsets(row_offsets, rows, nnz, flags.as<int>(), stream);
    detail::launch_find_out_of_range(indices, nnz, static_cast<int32_t>(m.input_dim),
                                     flags.as<int>() + 1, stream);
    int host[2] = {0, 0};
    HTFR_CUDA_CHECK(cudaMemcpyAsync(host, flags.as<int>(), sizeof host, cudaMemcpyDeviceToHost,
                                    stream));
    HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
    HTFR_REQUIRE(host[0] == 0, InvalidArgument,
                 "row_offsets must start at 0, never decrease and end at nnz = " << nnz);
    HTFR_REQUIRE(host[1] == 0, InvalidArgument,
                 "a sparse index lies outside [0, " << m.input_dim << ")");
    detail::launch_count_sketch_sparse(m.view, row_offsets, indices, values, y, rows, stream);
    return;
  }
  HTFR_REQUIRE(row_offsets[0] == 0 && row_offsets[rows] == nnz, InvalidArgument,
               "row_offsets must start at 0, never decrease and end at nnz = " << nnz);
  for (int64_t r = 0; r < rows; ++r)
    HTFR_REQUIRE(row_offsets[r + 1] >= row_offsets[r], InvalidArgument,
                 "row_offsets must start at 0, never decrease and end at nnz = " << nnz);
  for (int64_t e = 0; e < nnz; ++e)
    HTFR_REQUIRE(indices[e] >= 0 && indices[e] < m.input_dim, InvalidArgument,
                 "sparse index " << indices[e] << " (entry " << e << ") lies outside [0, "
                                 << m.input_dim << ")");
  detail::count_sketch_sparse_cpu(m.bucket.data(), m.sign.data(), m.output_dim, row_offsets,
                                  indices, values, y, rows);
}

void CountSketch::apply_adjoint(const float* y, float* x, int64_t rows,
                                cudaStream_t stream) const {
  HTFR_NVTX_RANGE("htfr::CountSketch::apply_adjoint");
  const Impl& m = *impl_;
  check_io(rows, y, "y", x, "x", m.backend, m.device);
  if (m.backend == Backend::cuda) {
    detail::DeviceGuard guard(m.device);
    detail::launch_count_sketch_adjoint(m.view, y, x, rows, stream);
  } else {
    detail::count_sketch_adjoint_cpu(m.bucket.data(), m.sign.data(), m.input_dim, m.output_dim,
                                     y, x, rows);
  }
}

int64_t CountSketch::input_dim() const { return impl_->input_dim; }
int64_t CountSketch::output_dim() const { return impl_->output_dim; }
Backend CountSketch::backend() const { return impl_->backend; }
int CountSketch::device() const { return impl_->device; }
const std::vector<int32_t>& CountSketch::buckets() const { return impl_->bucket; }
const std::vector<int8_t>& CountSketch::signs() const { return impl_->sign; }

// -----------------------------------------------------------------------------------------------
// Block SRHT

struct BlockSrht::Impl {
  Backend backend = Backend::cpu;
  int device = 0;
  int64_t input_dim = 0, output_dim = 0, block_size = 0, num_blocks = 0;
  std::vector<int8_t> signs;
  std::vector<int32_t> sample;
  detail::DeviceBuffer storage;
  detail::SrhtView view;
  mutable detail::DeviceBuffer work;  // fp32 scratch of the two-pass transform (blocks > 2^15)

  float* workspace(int64_t rows) const {
    const std::size_t bytes = detail::fwht_workspace_bytes(rows * num_blocks, view.log_block);
    if (bytes == 0) return nullptr;
    work.reserve(bytes);
    return static_cast<float*>(work.data());
  }
};

BlockSrht::BlockSrht(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BlockSrht::BlockSrht(BlockSrht&&) noexcept = default;
BlockSrht& BlockSrht::operator=(BlockSrht&&) noexcept = default;
BlockSrht::~BlockSrht() = default;

namespace {

void require_srht_shape(int64_t input_dim, int64_t output_dim, int64_t block_size) {
  HTFR_REQUIRE(input_dim >= 1, InvalidArgument, "SRHT input_dim must be >= 1, got " << input_dim);
  HTFR_REQUIRE(is_power_of_two(block_size) && block_size <= kMaxHadamardSize, InvalidArgument,
               "SRHT block_size must be a power of two in [2, " << kMaxHadamardSize << "], got "
                                                                 << block_size);
  const int64_t blocks = (input_dim + block_size - 1) / block_size;
  HTFR_REQUIRE(output_dim >= blocks && output_dim <= blocks * block_size, InvalidArgument,
               "SRHT output_dim " << output_dim << " must lie in [" << blocks << ", "
                                  << blocks * block_size << "] for " << blocks
                                  << " block(s) of " << block_size);
}

}  // namespace

BlockSrht BlockSrht::create(Backend backend, int64_t input_dim, int64_t output_dim,
                            int64_t block_size, uint64_t seed, int device) {
  if (block_size == 0) {
    block_size = 2;
    while (block_size < input_dim && block_size < kMaxHadamardSize) block_size *= 2;
  }
  require_srht_shape(input_dim, output_dim, block_size);
  const int64_t blocks = (input_dim + block_size - 1) / block_size;
  uint64_t state = seed;
  std::vector<int8_t> signs(static_cast<std::size_t>(blocks * block_size));
  for (auto& s : signs) s = (splitmix64(state) >> 63) ? int8_t{1} : int8_t{-1};
  std::vector<int32_t> sample(static_cast<std::size_t>(output_dim));
  std::vector<int32_t> perm(static_cast<std::size_t>(block_size));
  for (int64_t b = 0; b < blocks; ++b) {
    int64_t start, count;
    detail::srht_block_outputs(output_dim, blocks, b, start, count);
    std::iota(perm.begin(), perm.end(), 0);
    for (int64_t k = 0; k < count; ++k) {  // partial Fisher-Yates: the first count of a shuffle
      const int64_t pick = k + uniform_below(splitmix64(state), block_size - k);
      std::swap(perm[k], perm[pick]);
    }
    std::sort(perm.begin(), perm.begin() + count);  // ascending: friendlier gathers
    std::copy(perm.begin(), perm.begin() + count, sample.begin() + start);
  }
  return from_parameters(backend, input_dim, output_dim, block_size, std::move(signs),
                         std::move(sample), device);
}

BlockSrht BlockSrht::from_parameters(Backend backend, int64_t input_dim, int64_t output_dim,
                                     int64_t block_size, std::vector<int8_t> signs,
                                     std::vector<int32_t> sample, int device) {
  require_srht_shape(input_dim, output_dim, block_size);
  const int64_t blocks = (input_dim + block_size - 1) / block_size;
  HTFR_REQUIRE(static_cast<int64_t>(signs.size()) == blocks * block_size, InvalidArgument,
               "SRHT needs " << blocks * block_size << " signs, got " << signs.size());
  HTFR_REQUIRE(static_cast<int64_t>(sample.size()) == output_dim, InvalidArgument,
               "SRHT needs " << output_dim << " sample indices, got " << sample.size());
  for (std::size_t i = 0; i < signs.size(); ++i)
    HTFR_REQUIRE(signs[i] == 1 || signs[i] == -1, InvalidArgument,
                 "SRHT sign " << i << " is " << int(signs[i]) << ", not +-1");
  std::vector<char> seen(static_cast<std::size_t>(block_size));
  for (int64_t b = 0; b < blocks; ++b) {
    int64_t start, count;
    detail::srht_block_outputs(output_dim, blocks, b, start, count);
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t k = start; k < start + count; ++k) {
      HTFR_REQUIRE(sample[k] >= 0 && sample[k] < block_size && !seen[sample[k]], InvalidArgument,
                   "SRHT sample " << k << " (" << sample[k]
                                  << ") is outside its block or repeated within it");
      seen[sample[k]] = 1;
    }
  }
  require_backend(backend, device);
  auto impl = std::make_unique<Impl>();
  impl->backend = backend;
  impl->device = device;
  impl->input_dim = input_dim;
  impl->output_dim = output_dim;
  impl->block_size = block_size;
  impl->num_blocks = blocks;
  impl->signs = std::move(signs);
  impl->sample = std::move(sample);
  if (backend == Backend::cuda) {
    detail::DeviceGuard guard(device);
    auto& v = impl->view;
    v.input_dim = input_dim;
    v.output_dim = output_dim;
    v.num_blocks = blocks;
    v.log_block = log2_exact(block_size);
    DeviceUpload up(impl->storage);
    up.add(impl->signs, &v.signs);
    up.add(impl->sample, &v.sample);
    up.run();
  }
  return BlockSrht(std::move(impl));
}

void BlockSrht::apply(const float* x, void* y, DType y_type, int64_t rows,
                      cudaStream_t stream) const {
  HTFR_NVTX_RANGE("htfr::BlockSrht::apply");
  const Impl& m = *impl_;
  require_output_type(y_type);
  check_io(rows, x, "x", y, "y", m.backend, m.device);
  if (rows == 0) return;
  if (m.backend == Backend::cuda) {
    detail::DeviceGuard guard(m.device);
    detail::launch_srht(m.view, x, y, y_type, rows, m.workspace(rows), stream);
    return;
  }
  if (y_type == DType::f32) {
    detail::srht_cpu(m.signs.data(), m.sample.data(), m.input_dim, m.output_dim, m.block_size, x,
                     static_cast<float*>(y), rows);
    return;
  }
  std::vector<float> tmp(static_cast<std::size_t>(rows * m.output_dim));
  detail::srht_cpu(m.signs.data(), m.sample.data(), m.input_dim, m.output_dim, m.block_size, x,
                   tmp.data(), rows);
  store_host(tmp.data(), y, y_type, rows * m.output_dim);
}

void BlockSrht::apply_adjoint(const float* y, float* x, int64_t rows, cudaStream_t stream) const {
  HTFR_NVTX_RANGE("htfr::BlockSrht::apply_adjoint");
  const Impl& m = *impl_;
  check_io(rows, y, "y", x, "x", m.backend, m.device);
  if (rows == 0) return;
  if (m.backend == Backend::cuda) {
    detail::DeviceGuard guard(m.device);
    detail::launch_srht_adjoint(m.view, y, x, rows, m.workspace(rows), stream);
  } else {
    detail::srht_adjoint_cpu(m.signs.data(), m.sample.data(), m.input_dim, m.output_dim,
                             m.block_size, y, x, rows);
  }
}

int64_t BlockSrht::input_dim() const { return impl_->input_dim; }
int64_t BlockSrht::output_dim() const { return impl_->output_dim; }
int64_t BlockSrht::block_size() const { return impl_->block_size; }
int64_t BlockSrht::num_blocks() const { return impl_->num_blocks; }
Backend BlockSrht::backend() const { return impl_->backend; }
int BlockSrht::device() const { return impl_->device; }
const std::vector<int8_t>& BlockSrht::signs() const { return impl_->signs; }
const std::vector<int32_t>& BlockSrht::sample() const { return impl_->sample; }

// -----------------------------------------------------------------------------------------------
// PCA

struct Pca::Impl {
  Backend backend = Backend::cpu;
  int device = 0;
  int64_t dim = 0, components = 0;
  std::vector<float> matrix, mean, bias;  // bias = W mean
  detail::DeviceBuffer storage;
  const float* d_matrix = nullptr;
  const float* d_bias = nullptr;
  std::unique_ptr<detail::CublasHandle> blas;
};

Pca::Pca(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Pca::Pca(Pca&&) noexcept = default;
Pca& Pca::operator=(Pca&&) noexcept = default;
Pca::~Pca() = default;

namespace {

// Rows of W from eigenpairs sorted by decreasing eigenvalue (vectors: rows of length dim).
std::vector<float> pca_matrix(const std::vector<double>& values, const std::vector<double>& vectors,
                              int64_t dim, int64_t components, bool whiten, float eps) {
  std::vector<float> w(static_cast<std::size_t>(components * dim));
  for (int64_t c = 0; c < components; ++c) {
    const double* v = vectors.data() + c * dim;
    int64_t big = 0;
    for (int64_t k = 1; k < dim; ++k)
      if (std::fabs(v[k]) > std::fabs(v[big])) big = k;
    const double sign = v[big] < 0 ? -1.0 : 1.0;
    const double scale = whiten ? 1.0 / std::sqrt(std::max(values[c], 0.0) + eps) : 1.0;
    for (int64_t k = 0; k < dim; ++k) w[c * dim + k] = static_cast<float>(sign * scale * v[k]);
  }
  return w;
}

}  // namespace

Pca Pca::fit(Backend backend, const float* x, int64_t rows, int64_t dim, int64_t components,
             bool whiten, float eps, cudaStream_t stream, int device) {
  HTFR_NVTX_RANGE("htfr::Pca::fit");
  HTFR_REQUIRE(dim >= 1 && dim <= INT32_MAX, InvalidArgument, "PCA dim must be >= 1, got " << dim);
  HTFR_REQUIRE(rows >= 2 && rows <= INT32_MAX, InvalidArgument,
               "PCA needs at least 2 sample rows, got " << rows);
  HTFR_REQUIRE(components >= 1 && components <= dim, InvalidArgument,
               "PCA components must lie in [1, " << dim << "], got " << components);
  HTFR_REQUIRE(eps >= 0.0f && std::isfinite(eps), InvalidArgument,
               "PCA eps must be finite and >= 0, got " << eps);
  require_pointer(x, rows, "x");
  require_backend(backend, device);
  detail::require_memory(x, backend, device, "x");
  std::vector<double> values, vectors, mean_d;
  if (backend == Backend::cpu) {
    std::vector<double> cov;
    detail::mean_covariance_cpu(x, rows, dim, mean_d, cov);
    detail::symmetric_eigen_cpu(cov, dim, values, vectors);
  } else {
    detail::DeviceGuard guard(device);
    const int n = static_cast<int>(dim);
    detail::StreamScratch mean(dim * sizeof(float), stream);
    detail::StreamScratch centered(rows * dim * sizeof(float), stream);
    detail::StreamScratch cov(dim * dim * sizeof(float), stream);
    detail::StreamScratch eig(dim * sizeof(float), stream);
    detail::StreamScratch info(sizeof(int), stream);
    detail::launch_column_mean(x, rows, dim, mean.as<float>(), stream);
    detail::launch_center(x, mean.as<float>(), rows, dim, centered.as<float>(), stream);
    detail::CublasHandle blas;
    HTFR_CUBLAS_CHECK(cublasSetStream(blas.handle, stream));
    const float alpha = 1.0f / float(rows - 1), beta = 0.0f;
    // Row-major centred samples are the column-major dim x rows matrix A; cov = A A^T / (rows-1).
    HTFR_CUBLAS_CHECK(cublasSsyrk(blas.handle, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, n,
                                  static_cast<int>(rows), &alpha, centered.as<float>(), n, &beta,
                                  cov.as<float>(), n));
    detail::CusolverHandle solver;
    HTFR_CUSOLVER_CHECK(cusolverDnSetStream(solver.handle, stream));
    int lwork = 0;
    HTFR_CUSOLVER_CHECK(cusolverDnSsyevd_bufferSize(solver.handle, CUSOLVER_EIG_MODE_VECTOR,
                                                    CUBLAS_FILL_MODE_LOWER, n, cov.as<float>(), n,
                                                    eig.as<float>(), &lwork));
    detail::StreamScratch work(static_cast<std::size_t>(lwork) * sizeof(float), stream);
    HTFR_CUSOLVER_CHECK(cusolverDnSsyevd(solver.handle, CUSOLVER_EIG_MODE_VECTOR,
                                         CUBLAS_FILL_MODE_LOWER, n, cov.as<float>(), n,
                                         eig.as<float>(), work.as<float>(), lwork,
                                         info.as<int>()));
    // Eigenvalues ascend; eigenvector i is column i of the column-major result.
    std::vector<float> eig_h(static_cast<std::size_t>(dim)), mean_h(static_cast<std::size_t>(dim));
    std::vector<float> top(static_cast<std::size_t>(components * dim));
    int info_h = 0;
    HTFR_CUDA_CHECK(cudaMemcpyAsync(eig_h.data(), eig.as<float>(), dim * sizeof(float),
                                    cudaMemcpyDeviceToHost, stream));
    HTFR_CUDA_CHECK(cudaMemcpyAsync(mean_h.data(), mean.as<float>(), dim * sizeof(float),
                                    cudaMemcpyDeviceToHost, stream));
    HTFR_CUDA_CHECK(cudaMemcpyAsync(top.data(), cov.as<float>() + (dim - components) * dim,
                                    components * dim * sizeof(float), cudaMemcpyDeviceToHost,
                                    stream));
    HTFR_CUDA_CHECK(cudaMemcpyAsync(&info_h, info.as<int>(), sizeof(int), cudaMemcpyDeviceToHost,
                                    stream));
    HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
    HTFR_REQUIRE(info_h == 0, CudaError,
                 "cusolverDnSsyevd did not converge (info " << info_h << ")");
    values.resize(static_cast<std::size_t>(components));
    vectors.resize(static_cast<std::size_t>(components * dim));
    for (int64_t c = 0; c < components; ++c) {
      const int64_t src = components - 1 - c;  // descending order
      values[c] = eig_h[dim - 1 - c];
      for (int64_t k = 0; k < dim; ++k) vectors[c * dim + k] = top[src * dim + k];
    }
    mean_d.assign(mean_h.begin(), mean_h.end());
  }
  std::vector<float> mean(mean_d.begin(), mean_d.end());
  return from_parameters(backend, dim, pca_matrix(values, vectors, dim, components, whiten, eps),
                         std::move(mean), device);
}

Pca Pca::from_parameters(Backend backend, int64_t dim, std::vector<float> matrix,
                         std::vector<float> mean, int device) {
  HTFR_REQUIRE(dim >= 1 && static_cast<int64_t>(mean.size()) == dim, InvalidArgument,
               "PCA mean has " << mean.size() << " entries for dim " << dim);
  HTFR_REQUIRE(!matrix.empty() && static_cast<int64_t>(matrix.size()) % dim == 0 &&
                   static_cast<int64_t>(matrix.size()) / dim <= dim,
               InvalidArgument,
               "PCA matrix has " << matrix.size() << " entries, not components x " << dim);
  for (float v : matrix)
    HTFR_REQUIRE(std::isfinite(v), InvalidArgument, "PCA matrix holds NaN or Inf");
  for (float v : mean) HTFR_REQUIRE(std::isfinite(v), InvalidArgument, "PCA mean holds NaN or Inf");
  require_backend(backend, device);
  auto impl = std::make_unique<Impl>();
  impl->backend = backend;
  impl->device = device;
  impl->dim = dim;
  impl->components = static_cast<int64_t>(matrix.size()) / dim;
  impl->bias.resize(static_cast<std::size_t>(impl->components));
  for (int64_t c = 0; c < impl->components; ++c) {
    double acc = 0.0;
    for (int64_t k = 0; k < dim; ++k) acc += double(matrix[c * dim + k]) * mean[k];
    impl->bias[c] = static_cast<float>(acc);
  }
  impl->matrix = std::move(matrix);
  impl->mean = std::move(mean);
  if (backend == Backend::cuda) {
    detail::DeviceGuard guard(device);
    DeviceUpload up(impl->storage);
    up.add(impl->matrix, &impl->d_matrix);
    up.add(impl->bias, &impl->d_bias);
    up.run();
    impl->blas = std::make_unique<detail::CublasHandle>();
  }
  return Pca(std::move(impl));
}

void Pca::apply(const float* x, float* y, int64_t rows, cudaStream_t stream) const {
  HTFR_NVTX_RANGE("htfr::Pca::apply");
  const Impl& m = *impl_;
  check_io(rows, x, "x", y, "y", m.backend, m.device);
  HTFR_REQUIRE(rows <= INT32_MAX, InvalidArgument, "PCA takes at most 2^31-1 rows per call");
  if (rows == 0) return;
  if (m.backend == Backend::cpu) {
    detail::affine_cpu(m.matrix.data(), m.bias.data(), m.components, m.dim, x, y, rows);
    return;
  }
  detail::DeviceGuard guard(m.device);
  const float one = 1.0f, zero = 0.0f;
  HTFR_CUBLAS_CHECK(cublasSetStream(m.blas->handle, stream));
  // Column-major: y^T (c x rows) = W (c x dim, i.e. W^T stored dim x c) ^T . x^T (dim x rows).
  HTFR_CUBLAS_CHECK(cublasSgemm(m.blas->handle, CUBLAS_OP_T, CUBLAS_OP_N,
                                static_cast<int>(m.components), static_cast<int>(rows),
                                static_cast<int>(m.dim), &one, m.d_matrix, static_cast<int>(m.dim),
                                x, static_cast<int>(m.dim), &zero, y,
                                static_cast<int>(m.components)));
  detail::launch_subtract_bias(y, m.d_bias, rows, m.components, stream);
}

void Pca::apply_adjoint(const float* y, float* x, int64_t rows, cudaStream_t stream) const {
  HTFR_NVTX_RANGE("htfr::Pca::apply_adjoint");
  const Impl& m = *impl_;
  check_io(rows, y, "y", x, "x", m.backend, m.device);
  HTFR_REQUIRE(rows <= INT32_MAX, InvalidArgument, "PCA takes at most 2^31-1 rows per call");
  if (rows == 0) return;
  if (m.backend == Backend::cpu) {
    detail::affine_adjoint_cpu(m.matrix.data(), m.components, m.dim, y, x, rows);
    return;
  }
  detail::DeviceGuard guard(m.device);
  const float one = 1.0f, zero = 0.0f;
  HTFR_CUBLAS_CHECK(cublasSetStream(m.blas->handle, stream));
  // Column-major: x^T (dim x rows) = W^T (dim x c) . y^T (c x rows).
  HTFR_CUBLAS_CHECK(cublasSgemm(m.blas->handle, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(m.dim),
                                static_cast<int>(rows), static_cast<int>(m.components), &one,
                                m.d_matrix, static_cast<int>(m.dim), y,
                                static_cast<int>(m.components), &zero, x,
                                static_cast<int>(m.dim)));
}

int64_t Pca::input_dim() const { return impl_->dim; }
int64_t Pca::output_dim() const { return impl_->components; }
Backend Pca::backend() const { return impl_->backend; }
int Pca::device() const { return impl_->device; }
const std::vector<float>& Pca::matrix() const { return impl_->matrix; }
const std::vector<float>& Pca::mean() const { return impl_->mean; }

// -----------------------------------------------------------------------------------------------
// Stack

namespace {

template <typename F>
decltype(auto) visit_stage(const ProjectionStack::Stage& s, F&& f) {
  return std::visit(std::forward<F>(f), s);
}

constexpr const char* kStackFormat = "htfr-projection-stack";

}  // namespace

// Intermediate results of a stack: two ping-pong buffers of the widest stage, reused across calls.
struct ProjectionStack::Workspace {
  std::vector<float> host;
  detail::DeviceBuffer device;

  // Two buffers of `floats` each on `backend`.
  std::pair<float*, float*> get(Backend backend, std::size_t floats) {
    if (backend == Backend::cpu) {
      if (host.size() < 2 * floats) host.resize(2 * floats);
      return {host.data(), host.data() + floats};
    }
    const std::size_t half = detail::align128(floats * sizeof(float));
    device.reserve(std::max<std::size_t>(2 * half, 128));
    char* base = static_cast<char*>(device.data());
    return {reinterpret_cast<float*>(base), reinterpret_cast<float*>(base + half)};
  }
};

ProjectionStack::ProjectionStack(Backend backend, int device)
    : backend_(backend), device_(device), workspace_(std::make_unique<Workspace>()) {
  require_backend(backend, device);
}
ProjectionStack::ProjectionStack(ProjectionStack&&) noexcept = default;
ProjectionStack& ProjectionStack::operator=(ProjectionStack&&) noexcept = default;
ProjectionStack::~ProjectionStack() = default;

void ProjectionStack::add(Stage stage) {
  const auto [in, b, dev] = visit_stage(stage, [](const auto& s) {
    return std::make_tuple(s.input_dim(), s.backend(), s.device());
  });
  HTFR_REQUIRE(b == backend_ && (b == Backend::cpu || dev == device_), WrongDevice,
               "a " << to_string(b) << " stage cannot join a " << to_string(backend_)
                    << " projection stack");
  HTFR_REQUIRE(stages_.empty() || in == output_dim(), InvalidArgument,
               "stage input_dim " << in << " does not match the stack's output_dim "
                                  << output_dim());
  stages_.push_back(std::move(stage));
}

int64_t ProjectionStack::input_dim() const {
  return stages_.empty() ? 0
                         : visit_stage(stages_.front(), [](const auto& s) { return s.input_dim(); });
}

int64_t ProjectionStack::output_dim() const {
  return stages_.empty() ? 0
                         : visit_stage(stages_.back(), [](const auto& s) { return s.output_dim(); });
}

void ProjectionStack::apply(const float* x, void* y, DType y_type, int64_t rows,
                            cudaStream_t stream) const {
  HTFR_NVTX_RANGE("htfr::ProjectionStack::apply");
  HTFR_REQUIRE(!stages_.empty(), InvalidArgument, "the projection stack is empty");
  require_output_type(y_type);
  check_io(rows, x, "x", y, "y", backend_, device_);
  if (rows == 0) return;
  int64_t widest = 0;
  for (const auto& s : stages_)
    widest = std::max(widest, visit_stage(s, [](const auto& v) { return v.output_dim(); }));
  const bool cuda = backend_ == Backend::cuda;
  std::unique_ptr<detail::DeviceGuard> guard;
  if (cuda) guard = std::make_unique<detail::DeviceGuard>(device_);
  const auto [a, b] = workspace_->get(backend_, static_cast<std::size_t>(rows * widest));
  const float* in = x;
  for (std::size_t i = 0; i < stages_.size(); ++i) {
    const bool last = i + 1 == stages_.size();
    float* out = in == a ? b : a;
    if (last && std::holds_alternative<BlockSrht>(stages_[i])) {
      std::get<BlockSrht>(stages_[i]).apply(in, y, y_type, rows, stream);
      return;
    }
    if (last && y_type == DType::f32) out = static_cast<float*>(y);
    std::visit(
        [&](const auto& s) {
          using S = std::decay_t<decltype(s)>;
          if constexpr (std::is_same_v<S, BlockSrht>) {
            s.apply(in, out, DType::f32, rows, stream);
          } else {
            s.apply(in, out, rows, stream);
          }
        },
        stages_[i]);
    in = out;
  }
  if (y_type == DType::f32) return;
  const int64_t count = rows * output_dim();
  if (cuda) {
    detail::launch_to_half(in, y, count, Precision::bf16, stream);
  } else {
    store_host(in, y, DType::bf16, count);
  }
}

void ProjectionStack::apply_adjoint(const float* y, float* x, int64_t rows,
                                    cudaStream_t stream) const {
  HTFR_NVTX_RANGE("htfr::ProjectionStack::apply_adjoint");
  HTFR_REQUIRE(!stages_.empty(), InvalidArgument, "the projection stack is empty");
  check_io(rows, y, "y", x, "x", backend_, device_);
  if (rows == 0) return;
  int64_t widest = 0;
  for (const auto& s : stages_)
    widest = std::max(widest, visit_stage(s, [](const auto& v) { return v.input_dim(); }));
  std::unique_ptr<detail::DeviceGuard> guard;
  if (backend_ == Backend::cuda) guard = std::make_unique<detail::DeviceGuard>(device_);
  const auto [a, b] = workspace_->get(backend_, static_cast<std::size_t>(rows * widest));
  const float* in = y;
  for (std::size_t i = stages_.size(); i-- > 0;) {
    float* out = i == 0 ? x : (in == a ? b : a);
    visit_stage(stages_[i], [&](const auto& s) { s.apply_adjoint(in, out, rows, stream); });
    in = out;
  }
}

void ProjectionStack::save(const std::string& path) const {
  HTFR_NVTX_RANGE("htfr::ProjectionStack::save");
  SafetensorsWriter w;
  w.set_metadata("format", kStackFormat);
  w.set_metadata("version", "1");
  save_to(w, "");
  w.write(path);
}

void ProjectionStack::save_to(SafetensorsWriter& w, const std::string& prefix) const {
  w.set_metadata(prefix + "stages", std::to_string(stages_.size()));
  for (std::size_t i = 0; i < stages_.size(); ++i) {
    const std::string p = prefix + "stage." + std::to_string(i) + ".";
    std::visit(
        [&](const auto& s) {
          using S = std::decay_t<decltype(s)>;
          w.set_metadata(p + "input_dim", std::to_string(s.input_dim()));
          w.set_metadata(p + "output_dim", std::to_string(s.output_dim()));
          if constexpr (std::is_same_v<S, CountSketch>) {
            w.set_metadata(p + "kind", "count_sketch");
            w.add(p + "bucket", ElementType::i32, {s.input_dim()}, s.buckets());
            w.add(p + "sign", ElementType::i8, {s.input_dim()}, s.signs());
          } else if constexpr (std::is_same_v<S, BlockSrht>) {
            w.set_metadata(p + "kind", "block_srht");
            w.set_metadata(p + "block_size", std::to_string(s.block_size()));
            w.add(p + "sign", ElementType::i8, {s.num_blocks() * s.block_size()}, s.signs());
            w.add(p + "sample", ElementType::i32, {s.output_dim()}, s.sample());
          } else {
            w.set_metadata(p + "kind", "pca");
            w.add(p + "matrix", ElementType::f32, {s.output_dim(), s.input_dim()}, s.matrix());
            w.add(p + "mean", ElementType::f32, {s.input_dim()}, s.mean());
          }
        },
        stages_[i]);
  }
}

ProjectionStack ProjectionStack::load(const std::string& path, Backend backend, int device) {
  HTFR_NVTX_RANGE("htfr::ProjectionStack::load");
  const SafetensorsReader r(path);
  const auto field = [&](const std::string& key) -> const std::string& {
    return r.metadata_value(key);
  };
  HTFR_REQUIRE(field("format") == kStackFormat, FormatError,
               path << " is not a projection-stack checkpoint (format '" << field("format")
                    << "')");
  HTFR_REQUIRE(field("version") == "1", FormatError,
               path << ": unsupported projection-stack version " << field("version"));
  ProjectionStack stack = load_from(r, "", backend, device);
  HTFR_REQUIRE(r.tensors().size() == 0 || stack.size() > 0, FormatError,
               path << " holds tensors but no stages");
  return stack;
}

ProjectionStack ProjectionStack::load_from(const SafetensorsReader& r, const std::string& prefix,
                                           Backend backend, int device) {
  const std::string& path = r.path();
  const auto field = [&](const std::string& key) -> const std::string& {
    return r.metadata_value(key);
  };
  const auto number = [&](const std::string& key) {
    const std::string& text = field(key);
    std::size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    HTFR_REQUIRE(used == text.size() && v >= 0, FormatError,
                 path << ": metadata '" << key << "' is not a non-negative integer: '" << text
                      << "'");
    return static_cast<int64_t>(v);
  };
  ProjectionStack stack(backend, device);
  const int64_t count = number(prefix + "stages");
  for (int64_t i = 0; i < count; ++i) {
    const std::string p = prefix + "stage." + std::to_string(i) + ".";
    const std::string& kind = field(p + "kind");
    const int64_t in = number(p + "input_dim"), out = number(p + "output_dim");
    try {
      if (kind == "count_sketch") {
        stack.add(CountSketch::from_parameters(
            backend, out, r.read_as<int32_t>(p + "bucket", ElementType::i32, {in}),
            r.read_as<int8_t>(p + "sign", ElementType::i8, {in}), device));
      } else if (kind == "block_srht") {
        const int64_t block = number(p + "block_size");
        HTFR_REQUIRE(block >= 1 && block <= kMaxHadamardSize, FormatError,
                     path << ": stage " << i << " has block_size " << block);
        const int64_t blocks = (in + block - 1) / block;
        stack.add(BlockSrht::from_parameters(
            backend, in, out, block,
            r.read_as<int8_t>(p + "sign", ElementType::i8, {blocks * block}),
            r.read_as<int32_t>(p + "sample", ElementType::i32, {out}), device));
      } else if (kind == "pca") {
        stack.add(Pca::from_parameters(
            backend, in, r.read_as<float>(p + "matrix", ElementType::f32, {out, in}),
            r.read_as<float>(p + "mean", ElementType::f32, {in}), device));
      } else {
        throw FormatError(path + ": stage " + std::to_string(i) + " has unknown kind '" + kind +
                          "'");
      }
    } catch (const InvalidArgument& e) {
      throw FormatError(path + ": stage " + std::to_string(i) + " (" + kind +
                        ") has inconsistent parameters: " + e.what());
    }
  }
  return stack;
}

}  // namespace htfr

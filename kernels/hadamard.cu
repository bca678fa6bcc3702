// Fast Walsh–Hadamard transform and block SRHT kernels.
//
// One thread block transforms whole rows of up to 2^15 values in shared memory. Each thread keeps
// E = 32 values in registers and applies the butterflies of 5 index bits at a time; between
// passes the row goes through shared memory so the next 5 bits become register-local. Rows are
// padded by one word per 32 so every pass is free of bank conflicts. Loading and storing are
// policies, which fuses the SRHT's sign flips, zero padding, subsampling and scaling into the
// same kernel. Blocks of 2^16 and 2^17 run as a 2^12-point pass over contiguous chunks followed by
// a strided pass over the remaining 4 or 5 bits.
#include <cuda_bf16.h>

#include <memory>
#include <type_traits>

#include "detail/check.hpp"
#include "detail/device.hpp"
#include "hadamard.cuh"
#include "half_pairs.cuh"
#include "launch.cuh"

namespace htfr::detail {

namespace {

constexpr int kChunkLog = 12;  // chunk size of the multi-pass scheme

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return __bfloat162float(v);
  }
}

template <typename T>
__device__ __forceinline__ T from_float(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return __float2bfloat16_rn(v);
  }
}

// 8-byte vectors: 2 fp32 or 4 bf16 values.
template <typename T>
__device__ __forceinline__ void unpack8(uint2 raw, float* out) {
  if constexpr (std::is_same_v<T, float>) {
    out[0] = __uint_as_float(raw.x);
    out[1] = __uint_as_float(raw.y);
  } else {
    unpack_half4<__nv_bfloat162>(raw, out);
  }
}

template <typename T>
__device__ __forceinline__ uint2 pack8(const float* v) {
  uint2 raw;
  if constexpr (std::is_same_v<T, float>) {
    raw.x = __float_as_uint(v[0]);
    raw.y = __float_as_uint(v[1]);
  } else {
    const __nv_bfloat162 a = __floats2bfloat162_rn(v[0], v[1]);
    const __nv_bfloat162 b = __floats2bfloat162_rn(v[2], v[3]);
    raw.x = *reinterpret_cast<const uint32_t*>(&a);
    raw.y = *reinterpret_cast<const uint32_t*>(&b);
  }
  return raw;
}

// A row in shared memory with one pad word per 32 values.
struct PaddedRow {
  float* p;
  __device__ float& operator[](int64_t i) const { return p[i + (i >> 5)]; }
};
// A row in global memory.
struct PlainRow {
  float* p;
  __device__ float& operator[](int64_t i) const { return p[i]; }
};

constexpr int padded_length(int n) { return n + n / 32; }

// ---- loading policies: element-wise (load) or scatter into a zeroed row (scatter) ----

// Element-wise policies move kVec consecutive values per access (load_vec / store_vec, i a
// multiple of kVec) and single values (load / store).

template <typename In, bool kVector>
struct LoadRows {  // plain FWHT input: item = row; 8-byte accesses when kVector
  static constexpr bool kElementwise = true;
  static constexpr int kVec = kVector ? 8 / int(sizeof(In)) : 1;
  const In* x;
  int64_t n;
  __device__ float load(int64_t item, int64_t i) const { return to_float(x[item * n + i]); }
  __device__ void load_vec(int64_t item, int64_t i, float* out) const {
    if constexpr (kVec == 1) {
      out[0] = load(item, i);
    } else {
      unpack8<In>(*reinterpret_cast<const uint2*>(x + item * n + i), out);
    }
  }
};

struct LoadSigned {  // SRHT input: item = row * num_blocks + block; signs and zero padding
  static constexpr bool kElementwise = true;
  const float* x;
  const int8_t* signs;
  int64_t input_dim, num_blocks;
  int log_block;
  static constexpr int kVec = 1;
  __device__ float load(int64_t item, int64_t i) const {
    const int64_t row = item / num_blocks, block = item - row * num_blocks;
    const int64_t col = (block << log_block) + i;
    return col < input_dim ? float(signs[col]) * x[row * input_dim + col] : 0.0f;
  }
  __device__ void load_vec(int64_t item, int64_t i, float* out) const { out[0] = load(item, i); }
};

// Output range of one SRHT block: [start, start + count).
__device__ __forceinline__ void srht_block_outputs(int64_t output_dim, int64_t num_blocks,
                                                  int64_t block, int64_t& start, int64_t& count) {
  const int64_t q = output_dim / num_blocks, r = output_dim % num_blocks;
  start = block * q + (block < r ? block : r);
  count = q + (block < r ? 1 : 0);
}

struct ScatterSampled {  // SRHT adjoint input: place the scaled outputs at their sample positions
  static constexpr bool kElementwise = false;
  const float* y;
  const int32_t* sample;
  int64_t output_dim, num_blocks;
  template <typename Row>
  __device__ void scatter(Row v, int64_t item, int tid, int threads) const {
    const int64_t row = item / num_blocks, block = item - row * num_blocks;
    int64_t start, count;
    srht_block_outputs(output_dim, num_blocks, block, start, count);
    const float scale = rsqrtf(float(count));
    for (int64_t k = tid; k < count; k += threads)
      v[sample[start + k]] = scale * y[row * output_dim + start + k];
  }
};

// ---- storing policies: element-wise (store) or gather from the row (gather) ----

template <typename Out, bool kVector>
struct StoreRows {
  static constexpr bool kElementwise = true;
  static constexpr int kVec = kVector ? 8 / int(sizeof(Out)) : 1;
  Out* y;
  int64_t n;
  __device__ void store(int64_t item, int64_t i, float v) const {
    y[item * n + i] = from_float<Out>(v);
  }
  __device__ void store_vec(int64_t item, int64_t i, const float* v) const {
    if constexpr (kVec == 1) {
      store(item, i, v[0]);
    } else {
      *reinterpret_cast<uint2*>(y + item * n + i) = pack8<Out>(v);
    }
  }
};

struct StoreSigned {  // SRHT adjoint output: signs, padding dropped
  static constexpr bool kElementwise = true;
  float* x;
  const int8_t* signs;
  int64_t input_dim, num_blocks;
  int log_block;
  static constexpr int kVec = 1;
  __device__ void store(int64_t item, int64_t i, float v) const {
    const int64_t row = item / num_blocks, block = item - row * num_blocks;
    const int64_t col = (block << log_block) + i;
    if (col < input_dim) x[row * input_dim + col] = float(signs[col]) * v;
  }
  __device__ void store_vec(int64_t item, int64_t i, const float* v) const { store(item, i, v[0]); }
};

template <typename Out>
struct GatherSampled {  // SRHT output: subsample and scale
  static constexpr bool kElementwise = false;
  Out* y;
  const int32_t* sample;
  int64_t output_dim, num_blocks;
  template <typename Row>
  __device__ void gather(Row v, int64_t item, int tid, int threads) const {
    const int64_t row = item / num_blocks, block = item - row * num_blocks;
    int64_t start, count;
    srht_block_outputs(output_dim, num_blocks, block, start, count);
    const float scale = rsqrtf(float(count));
    for (int64_t k = tid; k < count; k += threads)
      y[row * output_dim + start + k] = from_float<Out>(scale * v[sample[start + k]]);
  }
};

// Policies applied to chunks of 2^kChunkLog of an item's block (first pass of the multi-pass
// scheme): chunk item c covers values [(c % chunks) << kChunkLog, ...) of item c / chunks.
template <typename Load>
struct ChunkLoad {
  static constexpr bool kElementwise = true;
  static constexpr int kVec = Load::kVec;
  Load inner;
  int64_t chunks;
  __device__ float load(int64_t item, int64_t i) const {
    return inner.load(item / chunks, ((item % chunks) << kChunkLog) + i);
  }
  __device__ void load_vec(int64_t item, int64_t i, float* out) const {
    inner.load_vec(item / chunks, ((item % chunks) << kChunkLog) + i, out);
  }
};

// ---- the transform ----

// The pass over index bits [s, s + w): register q of thread `tid` holds the value whose index
// has q's w low bits at [s, s + w) and the remaining bits of (tid, q >> w) around them. The index
// splits into disjoint thread and register parts, and so does its padded form (the pad is
// index >> 5, which distributes over a disjoint OR): each pass computes the thread part once and
// the register parts are compile-time constants.
__device__ __forceinline__ constexpr int scatter_bits(int other, int s, int w) {
  return (other & ((1 << s) - 1)) | ((other >> s) << (s + w));
}
__device__ __forceinline__ constexpr int padded(int i) { return i + (i >> 5); }

// In-place unnormalised FWHT of one padded shared-memory row by its threads. Starts and ends with
// a __syncthreads (the whole block takes part).
template <int kLogN>
__device__ __forceinline__ void fwht_row(float* row, int tid) {
  constexpr int kLogE = kLogN < 5 ? kLogN : 5;
  constexpr int kE = 1 << kLogE;
  constexpr int kFirst = kLogN % kLogE == 0 ? kLogE : kLogN % kLogE;
  constexpr int kPasses = 1 + (kLogN - kFirst) / kLogE;
  float r[kE];
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    const int s = pass == 0 ? 0 : kFirst + (pass - 1) * kLogE;
    const int w = pass == 0 ? kFirst : kLogE;
    float* base = row + padded(scatter_bits(tid << (kLogE - w), s, w));
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kE; ++q)
      r[q] = base[padded(scatter_bits(q >> w, s, w) | ((q & ((1 << w) - 1)) << s))];
#pragma unroll
    for (int b = 0; b < kLogE; ++b) {
      if (b < w) {
#pragma unroll
        for (int q = 0; q < kE; ++q) {
          if ((q & (1 << b)) == 0) {
            const float a = r[q], c = r[q | (1 << b)];
            r[q] = a + c;
            r[q | (1 << b)] = a - c;
          }
        }
      }
    }
#pragma unroll
    for (int q = 0; q < kE; ++q)
      base[padded(scatter_bits(q >> w, s, w) | ((q & ((1 << w) - 1)) << s))] = r[q];
  }
  __syncthreads();
}

template <int kLogN>
struct FusedShape {
  static constexpr int kN = 1 << kLogN;
  static constexpr int kE = kN < 32 ? kN : 32;
  static constexpr int kThreads = kN / kE;                          // per row
  static constexpr int kRows = kThreads >= 256 ? 1 : 256 / kThreads;  // rows per block
  static constexpr int kBlock = kThreads * kRows;
  static constexpr std::size_t kSmem = sizeof(float) * padded_length(kN) * kRows;
  // 32 values per thread fit in 64 registers; ask for that many blocks per SM.
  static constexpr int kMinBlocks = kBlock >= 1024 ? 1 : 1024 / kBlock;
};

template <int kLogN, typename Load, typename Store>
__global__ void __launch_bounds__(FusedShape<kLogN>::kBlock, FusedShape<kLogN>::kMinBlocks)
    fwht_fused_kernel(Load load, Store store, int64_t items) {
  using Shape = FusedShape<kLogN>;
  extern __shared__ float smem[];
  const int tid = threadIdx.x % Shape::kThreads;
  const int slot = threadIdx.x / Shape::kThreads;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * Shape::kRows + slot;
  const bool active = item < items;
  PaddedRow v{smem + slot * padded_length(Shape::kN)};
  if constexpr (Load::kElementwise) {
    constexpr int kVec = Load::kVec <= Shape::kE ? Load::kVec : 1;
    if (active) {
#pragma unroll
      for (int k = 0; k < Shape::kE / kVec; ++k) {
        const int i = (tid + k * Shape::kThreads) * kVec;
        float vals[kVec];
        if constexpr (kVec == Load::kVec) {
          load.load_vec(item, i, vals);
        } else {
          vals[0] = load.load(item, i);
        }
#pragma unroll
        for (int u = 0; u < kVec; ++u) v[i + u] = vals[u];
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < Shape::kE; ++k) v[tid + k * Shape::kThreads] = 0.0f;
    __syncthreads();
    if (active) load.scatter(v, item, tid, Shape::kThreads);
  }
  fwht_row<kLogN>(v.p, tid);
  if (!active) return;
  if constexpr (Store::kElementwise) {
    constexpr int kVec = Store::kVec <= Shape::kE ? Store::kVec : 1;
#pragma unroll
    for (int k = 0; k < Shape::kE / kVec; ++k) {
      const int i = (tid + k * Shape::kThreads) * kVec;
      float vals[kVec];
#pragma unroll
      for (int u = 0; u < kVec; ++u) vals[u] = v[i + u];
      if constexpr (kVec == Store::kVec) {
        store.store_vec(item, i, vals);
      } else {
        store.store(item, i, vals[0]);
      }
    }
  } else {
    store.gather(v, item, tid, Shape::kThreads);
  }
}

template <int kLogN, typename Load, typename Store>
void launch_fused(const Load& load, const Store& store, int64_t items, cudaStream_t stream) {
  using Shape = FusedShape<kLogN>;
  if (items == 0) return;
  auto kernel = fwht_fused_kernel<kLogN, Load, Store>;
  if (Shape::kSmem > 48 * 1024) {
    HTFR_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(Shape::kSmem)));
  }
  const int64_t blocks = (items + Shape::kRows - 1) / Shape::kRows;
  kernel<<<static_cast<unsigned>(blocks), Shape::kBlock, Shape::kSmem, stream>>>(load, store,
                                                                                  items);
  HTFR_LAUNCH_CHECK();
}

// Strided pass of the multi-pass scheme: for each item and each j2 < 2^kChunkLog, the 2^kLogOuter
// values work[item][j1 * 2^kChunkLog + j2] are transformed over j1 and stored through `store`
// (element-wise) or back into `work`.
template <int kLogOuter, typename Store>
__global__ void __launch_bounds__(256)
    fwht_strided_kernel(float* work, Store store, int64_t items, bool to_work) {
  constexpr int kOuter = 1 << kLogOuter;
  constexpr int64_t kChunk = int64_t{1} << kChunkLog;
  constexpr int64_t kN = kChunk << kLogOuter;
  HTFR_GRID_STRIDE(t, items * kChunk) {
    const int64_t item = t >> kChunkLog, j2 = t & (kChunk - 1);
    float* base = work + item * kN + j2;
    float r[kOuter];
#pragma unroll
    for (int j = 0; j < kOuter; ++j) r[j] = base[j * kChunk];
#pragma unroll
    for (int b = 0; b < kLogOuter; ++b) {
#pragma unroll
      for (int q = 0; q < kOuter; ++q) {
        if ((q & (1 << b)) == 0) {
          const float a = r[q], c = r[q | (1 << b)];
          r[q] = a + c;
          r[q | (1 << b)] = a - c;
        }
      }
    }
    if constexpr (Store::kElementwise) {
      if (!to_work) {
#pragma unroll
        for (int j = 0; j < kOuter; ++j) store.store(item, j * kChunk + j2, r[j]);
        continue;
      }
    }
#pragma unroll
    for (int j = 0; j < kOuter; ++j) base[j * kChunk] = r[j];
  }
}

constexpr int kEdgeThreads = 1024;

// Scatter-type loading into a zeroed global row (multi-pass scheme).
template <typename Load>
__global__ void __launch_bounds__(kEdgeThreads)
    scatter_kernel(Load load, float* work, int64_t n) {
  const int64_t item = blockIdx.x;
  load.scatter(PlainRow{work + item * n}, item, threadIdx.x, kEdgeThreads);
}

// Gather-type storing from a transformed global row (multi-pass scheme).
template <typename Store>
__global__ void __launch_bounds__(kEdgeThreads)
    gather_kernel(Store store, float* work, int64_t n) {
  const int64_t item = blockIdx.x;
  store.gather(PlainRow{work + item * n}, item, threadIdx.x, kEdgeThreads);
}

template <int kLogN, typename Load, typename Store>
void launch_multipass(const Load& load, const Store& store, int64_t items, float* work,
                      cudaStream_t stream) {
  constexpr int kLogOuter = kLogN - kChunkLog;
  constexpr int64_t kN = int64_t{1} << kLogN;
  if (items == 0) return;
  const int64_t chunks = int64_t{1} << kLogOuter;
  const StoreRows<float, true> to_work{work, int64_t{1} << kChunkLog};
  if constexpr (Load::kElementwise) {
    launch_fused<kChunkLog>(ChunkLoad<Load>{load, chunks}, to_work, items * chunks, stream);
  } else {
    HTFR_CUDA_CHECK(cudaMemsetAsync(work, 0, items * kN * sizeof(float), stream));
    scatter_kernel<<<static_cast<unsigned>(items), kEdgeThreads, 0, stream>>>(load, work,
                                                                             kN);
    HTFR_LAUNCH_CHECK();
    launch_fused<kChunkLog>(LoadRows<float, true>{work, int64_t{1} << kChunkLog}, to_work,
                            items * chunks, stream);
  }
  const int64_t columns = items << kChunkLog;
  fwht_strided_kernel<kLogOuter><<<grid_for(columns, 256), 256, 0, stream>>>(
      work, store, items, !Store::kElementwise);
  HTFR_LAUNCH_CHECK();
  if constexpr (!Store::kElementwise) {
    gather_kernel<<<static_cast<unsigned>(items), kEdgeThreads, 0, stream>>>(store, work,
                                                                            kN);
    HTFR_LAUNCH_CHECK();
  }
}

// One switch from the runtime size to the instantiations.
template <typename Load, typename Store>
void dispatch(int log_n, const Load& load, const Store& store, int64_t items, float* work,
              cudaStream_t stream) {
  switch (log_n) {
#define HTFR_FWHT_CASE(L) \
  case L:                 \
    return launch_fused<L>(load, store, items, stream);
    HTFR_FWHT_CASE(1) HTFR_FWHT_CASE(2) HTFR_FWHT_CASE(3) HTFR_FWHT_CASE(4) HTFR_FWHT_CASE(5)
    HTFR_FWHT_CASE(6) HTFR_FWHT_CASE(7) HTFR_FWHT_CASE(8) HTFR_FWHT_CASE(9) HTFR_FWHT_CASE(10)
    HTFR_FWHT_CASE(11) HTFR_FWHT_CASE(12) HTFR_FWHT_CASE(13) HTFR_FWHT_CASE(14)
    HTFR_FWHT_CASE(15)
#undef HTFR_FWHT_CASE
    case 16:
      return launch_multipass<16>(load, store, items, work, stream);
    case 17:
      return launch_multipass<17>(load, store, items, work, stream);
    default:
      throw InvalidArgument("Hadamard size 2^" + std::to_string(log_n) +
                            " is outside the supported 2^1 .. 2^" + std::to_string(kFwhtMaxLog));
  }
}

template <bool kVector, typename In>
void fwht_from(const In* x, void* y, DType y_type, int64_t rows, int log_n, float* work,
               cudaStream_t stream) {
  const int64_t n = int64_t{1} << log_n;
  const LoadRows<In, kVector> load{x, n};
  if (y_type == DType::f32) {
    dispatch(log_n, load, StoreRows<float, kVector>{static_cast<float*>(y), n}, rows, work,
             stream);
  } else {
    dispatch(log_n, load,
             StoreRows<__nv_bfloat16, kVector>{static_cast<__nv_bfloat16*>(y), n}, rows, work,
             stream);
  }
}

// 8-byte vector accesses need 8-byte aligned rows: both pointers aligned and rows of >= 4 values.
template <typename In>
void fwht_from(const In* x, void* y, DType y_type, int64_t rows, int log_n, float* work,
               cudaStream_t stream) {
  const bool aligned = log_n >= 2 && reinterpret_cast<uintptr_t>(x) % 8 == 0 &&
                       reinterpret_cast<uintptr_t>(y) % 8 == 0;
  if (aligned) {
    fwht_from<true>(x, y, y_type, rows, log_n, work, stream);
  } else {
    fwht_from<false>(x, y, y_type, rows, log_n, work, stream);
  }
}

void require_f32_or_bf16(DType t, const char* what) {
  HTFR_REQUIRE(t == DType::f32 || t == DType::bf16, InvalidArgument,
               what << " must be f32 or bf16");
}

}  // namespace

void launch_fwht(const void* x, DType x_type, void* y, DType y_type, int64_t rows, int log_n,
                 float* work, cudaStream_t stream) {
  require_f32_or_bf16(x_type, "the FWHT input type");
  require_f32_or_bf16(y_type, "the FWHT output type");
  // Above one block's size, an fp32 output holds the intermediate result itself.
  std::unique_ptr<StreamScratch> scratch;
  if (log_n > kFwhtMaxFusedLog && work == nullptr) {
    if (y_type == DType::f32) {
      work = static_cast<float*>(y);
    } else {
      scratch = std::make_unique<StreamScratch>(fwht_workspace_bytes(rows, log_n), stream);
      work = scratch->as<float>();
    }
  }
  if (x_type == DType::f32) {
    fwht_from(static_cast<const float*>(x), y, y_type, rows, log_n, work, stream);
  } else {
    fwht_from(static_cast<const __nv_bfloat16*>(x), y, y_type, rows, log_n, work, stream);
  }
}

std::size_t fwht_workspace_bytes(int64_t items, int log_n) {
  return log_n > kFwhtMaxFusedLog ? static_cast<std::size_t>(items << log_n) * sizeof(float) : 0;
}

void launch_srht(const SrhtView& s, const float* x, void* y, DType y_type, int64_t rows,
                 float* work, cudaStream_t stream) {
  require_f32_or_bf16(y_type, "the SRHT output type");
  const LoadSigned load{x, s.signs, s.input_dim, s.num_blocks, s.log_block};
  const int64_t items = rows * s.num_blocks;
  if (y_type == DType::f32) {
    dispatch(s.log_block, load,
             GatherSampled<float>{static_cast<float*>(y), s.sample, s.output_dim, s.num_blocks},
             items, work, stream);
  } else {
    dispatch(s.log_block, load,
             GatherSampled<__nv_bfloat16>{static_cast<__nv_bfloat16*>(y), s.sample, s.output_dim,
                                          s.num_blocks},
             items, work, stream);
  }
}

void launch_srht_adjoint(const SrhtView& s, const float* y, float* x, int64_t rows,
                         float* work, cudaStream_t stream) {
  const ScatterSampled load{y, s.sample, s.output_dim, s.num_blocks};
  const StoreSigned store{x, s.signs, s.input_dim, s.num_blocks, s.log_block};
  dispatch(s.log_block, load, store, rows * s.num_blocks, work, stream);
}

}  // namespace htfr::detail

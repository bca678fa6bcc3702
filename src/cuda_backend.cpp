// The CUDA backend: owns the cuBLAS handle, the per-batch workspace and the optimiser state, and
// sequences the kernels of a forward pass and a training step on the caller's stream.
#include <cublas_v2.h>

#include <algorithm>
#include <memory>

#include "../kernels/blend.cuh"
#include "../kernels/distance.cuh"
#include "../kernels/loss.cuh"
#include "../kernels/pool_ops.cuh"
#include "../kernels/select_topk.cuh"
#include "../kernels/update.cuh"
#include "detail/backend.hpp"
#include "detail/check.hpp"
#include "detail/device.hpp"
#include "detail/handles.hpp"
#include "detail/nvtx.hpp"

namespace htfr::detail {

namespace {

/// Pointers into the workspace for one batch size.
struct Workspace {
  void* x_half = nullptr;
  float* dots = nullptr;
  int32_t* idx = nullptr;
  float* dist = nullptr;
  ActiveCoef* coef = nullptr;
  float* y = nullptr;
  float* g = nullptr;
  void* g_half = nullptr;
  float* row_loss = nullptr;
  float* gy = nullptr;
  int32_t *pair_ids = nullptr, *sorted_keys = nullptr, *sorted_pairs = nullptr;
  int32_t *run_tensor = nullptr, *run_count = nullptr, *run_offset = nullptr;
  int32_t* num_runs = nullptr;
  float* pair_dots = nullptr;
  PairGradient* pair_grad = nullptr;
  void* sort_temp = nullptr;
  std::size_t sort_temp_bytes = 0;
  int* flags = nullptr;
};

/// Owning pinned host array of `n` ints (the flags read back by the input checks).
struct PinnedFlags {
  int* data = nullptr;
  explicit PinnedFlags(std::size_t n) {
    HTFR_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&data), n * sizeof(int)));
  }
  ~PinnedFlags() { (void)cudaFreeHost(data); }
  PinnedFlags(const PinnedFlags&) = delete;
  PinnedFlags& operator=(const PinnedFlags&) = delete;
};

class CudaBackend final : public ModelBackend {
 public:
  CudaBackend(const HtfrConfig& config, HyperTensorPool&& pool)
      : ModelBackend(config, std::move(pool)) {
    DeviceGuard guard(pool_.device());
    cublas_ = std::make_unique<CublasHandle>();
    host_flags_ = std::make_unique<PinnedFlags>(4);
  }

  std::vector<float> optimizer_state(cudaStream_t stream) const override {
    std::vector<float> out;
    if (config_.optimizer != Optimizer::adam) return out;
    out.assign(adam_floats(), 0.0f);  // zero moments until the first training step
    if (!adam_.data()) return out;
    DeviceGuard guard(pool_.device());
    HTFR_CUDA_CHECK(cudaMemcpyAsync(out.data(), adam_.data(), out.size() * sizeof(float),
                                    cudaMemcpyDeviceToHost, stream));
    HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
    return out;
  }

  void set_optimizer_state(const std::vector<float>& state, cudaStream_t stream) override {
    if (config_.optimizer != Optimizer::adam) return;
    DeviceGuard guard(pool_.device());
    allocate_adam(stream);
    HTFR_CUDA_CHECK(cudaMemcpyAsync(adam_.data(), state.data(), adam_floats() * sizeof(float),
                                    cudaMemcpyHostToDevice, stream));
    HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  /// The Adam moments live on the device only once a model trains (or restores them): a model
  /// that only runs forward never holds them.
  void allocate_adam(cudaStream_t stream) {
    if (adam_.data()) return;
    const std::size_t floats = adam_floats();
    adam_.reserve(floats * sizeof(float));
    HTFR_CUDA_CHECK(cudaMemsetAsync(adam_.data(), 0, floats * sizeof(float), stream));
  }

  std::size_t adam_floats() const {
    const int64_t N = config_.num_tensors;
    return 2 * static_cast<std::size_t>(N * 3 * config_.output_dim + N * config_.input_dim + 2 * N);
  }

  void select(const float* x, int64_t rows, int32_t* indices, float* distances,
              cudaStream_t stream) override {
    DeviceGuard guard(pool_.device());
    check_inputs(x, rows, nullptr, nullptr, stream);
    const Workspace ws = reserve(rows, false);
    distances_and_selection(x, rows, ws, indices, distances, stream);
  }

  void forward(const float* x, int64_t rows, float* y, cudaStream_t stream) override {
    DeviceGuard guard(pool_.device());
    check_inputs(x, rows, nullptr, nullptr, stream);
    const Workspace ws = reserve(rows, false);
    distances_and_selection(x, rows, ws, ws.idx, ws.dist, stream);
    blend(rows, ws, y, false, stream);
  }

  void train_step(const Batch& batch, const StepOutputs& out, cudaStream_t stream) override {
    DeviceGuard guard(pool_.device());
    const HtfrConfig& c = config_;
    const int64_t B = batch.rows, K = c.top_k;
    HTFR_REQUIRE(B * K < (int64_t{1} << 31), InvalidArgument,
                 "rows * top_k = " << B * K << " must stay below 2^31");
    check_inputs(batch.x, B, batch.target, batch.target_index, stream);
    const Workspace ws = reserve(B, true);
    distances_and_selection(batch.x, B, ws, ws.idx, ws.dist, stream);
    float* y = out.prediction ? out.prediction : ws.y;
    blend(B, ws, y, true, stream);

    float* row_loss = out.row_loss ? out.row_loss : ws.row_loss;
    {
      HTFR_NVTX_RANGE("htfr::loss_gradient");
      LossParams lp;
      lp.loss = c.loss;
      lp.ce_weight = c.ce_weight;
      lp.kl_weight = c.kl_weight;
      lp.scale = c.reduction == Reduction::mean ? 1.0f / static_cast<float>(B) : 1.0f;
      lp.g_half = ws.g_half;
      lp.half_precision = c.precision;
      launch_loss_gradient(lp, B, c.output_dim, y, batch.target, batch.target_index, ws.g,
                           row_loss, ws.gy, stream);
    }
    const int64_t pairs = B * K;
    {
      HTFR_NVTX_RANGE("htfr::group_pairs");
      launch_group_pairs(ws.idx, pairs, c.num_tensors, ws.sort_temp, ws.sort_temp_bytes,
                         ws.pair_ids, ws.sorted_keys, ws.sorted_pairs, ws.run_tensor,
                         ws.run_count, ws.run_offset, ws.num_runs, stream);
    }
    UpdateArgs a;
    a.pool = pool_.view();
    a.step = step_params(c, step_);
    a.k = static_cast<int>(K);
    a.pairs = pairs;
    a.locality_gradient = c.locality_gradient;
    a.x = batch.x;
    a.g = ws.g;
    a.g_half = ws.g_half;
    a.x_half = ws.x_half;
    a.gy = ws.gy;
    a.row_loss = row_loss;
    a.distances = ws.dist;
    a.coef = ws.coef;
    a.sorted_pairs = ws.sorted_pairs;
    a.run_tensor = ws.run_tensor;
    a.run_offset = ws.run_offset;
    a.run_count = ws.run_count;
    a.num_runs = ws.num_runs;
    a.pair_dots = ws.pair_dots;
    a.pair_grad = ws.pair_grad;
    if (c.optimizer == Optimizer::adam) {
      allocate_adam(stream);
      const int64_t N = c.num_tensors, D = c.input_dim, M = c.output_dim;
      float* base = static_cast<float*>(adam_.data());
      a.m_controls = base;
      a.v_controls = a.m_controls + N * 3 * M;
      a.m_normals = a.v_controls + N * 3 * M;
      a.v_normals = a.m_normals + N * D;
      a.m_scalars = a.v_normals + N * D;
      a.v_scalars = a.m_scalars + 2 * N;
    }
    const int64_t max_runs = std::min<int64_t>(pairs, c.num_tensors);
    {
      HTFR_NVTX_RANGE("htfr::control_update");
      launch_control_update(a, max_runs, stream);
    }
    {
      HTFR_NVTX_RANGE("htfr::geometry_update");
      launch_pair_gradients(a, stream);
      if (out.input_grad) launch_input_grad(a, ws.idx, B, out.input_grad, stream);
      launch_geometry_update(a, max_runs, stream);
    }
    ++step_;
  }

 private:
  void distances_and_selection(const float* x, int64_t rows, const Workspace& ws,
                               int32_t* indices, float* distances, cudaStream_t stream) {
    const PoolView p = pool_.view();
    {
      HTFR_NVTX_RANGE("htfr::distance_gemm");
      launch_distance_gemm(cublas_->handle, x, ws.x_half, rows, p, config_.precision, ws.dots, stream);
    }
    {
      HTFR_NVTX_RANGE("htfr::select_topk");
      launch_select_topk(ws.dots, p.offsets, rows, p.num_tensors, static_cast<int>(config_.top_k),
                         indices, distances, stream);
    }
  }

  /// The fused weights + coefficients + blend; the coefficients are kept when `keep_coef` (for
  /// the training step).
  void blend(int64_t rows, const Workspace& ws, float* y, bool keep_coef, cudaStream_t stream) {
    HTFR_NVTX_RANGE("htfr::blend");
    launch_blend(field_params(config_), rows, static_cast<int>(config_.top_k), ws.idx, ws.dist,
                 pool_.view(), config_.precision, keep_coef ? ws.coef : nullptr, y, stream);
  }

  /// NaN/Inf in x or target, negative teacher probabilities and class indices out of range, checked on the device before anything
  /// changes; one small read-back, so this synchronises `stream`.
  void check_inputs(const float* x, int64_t rows, const float* target, const int32_t* index,
                    cudaStream_t stream) {
    const bool finite = config_.check_finite;
    if (!finite && index == nullptr) return;
    HTFR_NVTX_RANGE("htfr::check_inputs");
    flags_.reserve(4 * sizeof(int));
    int* flags = static_cast<int*>(flags_.data());
    HTFR_CUDA_CHECK(cudaMemsetAsync(flags, 0, 4 * sizeof(int), stream));
    if (finite) {
      launch_find_nonfinite(x, rows * config_.input_dim, flags, stream);
      if (target) launch_find_nonfinite(target, rows * config_.output_dim, flags + 1, stream);
      if (target && config_.loss != Loss::mse) {
        launch_find_negative(target, rows * config_.output_dim, flags + 3, stream);
      }
    }
    if (index) {
      launch_find_out_of_range(index, rows, static_cast<int32_t>(config_.output_dim), flags + 2,
                               stream);
    }
    int* host_flags = host_flags_->data;
    HTFR_CUDA_CHECK(cudaMemcpyAsync(host_flags, flags, 4 * sizeof(int), cudaMemcpyDeviceToHost,
                                    stream));
    HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
    HTFR_REQUIRE(host_flags[0] == 0, NonFiniteInput,
                 "x (" << rows << " x " << config_.input_dim
                       << ") contains NaN or Inf; nothing was changed");
    HTFR_REQUIRE(host_flags[1] == 0, NonFiniteInput,
                 "target (" << rows << " x " << config_.output_dim
                            << ") contains NaN or Inf; nothing was changed");
    HTFR_REQUIRE(host_flags[3] == 0, InvalidArgument,
                 "target holds a negative teacher probability; nothing was changed");
    HTFR_REQUIRE(host_flags[2] == 0, InvalidArgument,
                 "target_index holds a class index outside [0, " << config_.output_dim
                                                                 << "); nothing was changed");
  }

  /// Lays the workspace out for `rows` rows (the training buffers only when `train`), growing
  /// the allocation when needed.
  Workspace reserve(int64_t rows, bool train) {
    const int64_t N = config_.num_tensors, D = config_.input_dim, M = config_.output_dim;
    const int64_t K = config_.top_k, pairs = rows * K;
    const bool half = config_.precision == Precision::bf16 || config_.precision == Precision::fp16;
    auto layout = [&](Carver& cv, Workspace& ws) {
      ws.x_half = half ? cv.take<uint16_t>(rows * D) : nullptr;
      ws.dots = cv.take<float>(rows * N);
      ws.idx = cv.take<int32_t>(pairs);
      ws.dist = cv.take<float>(pairs);
      ws.coef = cv.take<ActiveCoef>(pairs);
      if (!train) return;
      ws.y = cv.take<float>(rows * M);
      ws.g = cv.take<float>(rows * M);
      ws.g_half = half ? cv.take<uint16_t>(rows * M) : nullptr;
      ws.row_loss = cv.take<float>(rows);
      ws.gy = cv.take<float>(rows);
      ws.pair_ids = cv.take<int32_t>(pairs);
      ws.sorted_keys = cv.take<int32_t>(pairs);
      ws.sorted_pairs = cv.take<int32_t>(pairs);
      ws.run_tensor = cv.take<int32_t>(pairs);
      ws.run_count = cv.take<int32_t>(pairs);
      ws.run_offset = cv.take<int32_t>(pairs);
      ws.num_runs = cv.take<int32_t>(1);
      ws.pair_dots = cv.take<float>(pairs * kDotParts * 3);
      ws.pair_grad = cv.take<PairGradient>(pairs);
      ws.sort_temp_bytes = group_pairs_temp_bytes(pairs, N);
      ws.sort_temp = cv.take<char>(ws.sort_temp_bytes);
    };
    Workspace ws;
    Carver sizing(nullptr);
    layout(sizing, ws);
    workspace_.reserve(sizing.used());
    Carver carve(workspace_.data());
    layout(carve, ws);
    return ws;
  }

  std::unique_ptr<CublasHandle> cublas_;
  std::unique_ptr<PinnedFlags> host_flags_;
  DeviceBuffer workspace_;
  DeviceBuffer adam_;
  DeviceBuffer flags_;
};

}  // namespace

std::unique_ptr<ModelBackend> make_cuda_backend(const HtfrConfig& config, HyperTensorPool&& pool) {
  require_cuda_device(pool.device());
  return std::make_unique<CudaBackend>(config, std::move(pool));
}

}  // namespace htfr::detail

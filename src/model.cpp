// HtfrModel: argument validation shared by both backends, NVTX ranges, dispatch.
#include "htfr/model.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "detail/backend.hpp"
#include "detail/check.hpp"
#include "detail/device.hpp"
#include "detail/nvtx.hpp"

namespace htfr {

namespace detail {

StepParams step_params(const HtfrConfig& c, int64_t step) {
  StepParams s;
  s.optimizer = c.optimizer;
  s.lr = c.lr;
  s.lr_geometry = c.lr_geometry;
  s.lr_tau = c.weighting == Weighting::inverse_distance ? 0.0f : c.lr_tau;
  s.beta1 = c.adam_beta1;
  s.beta2 = c.adam_beta2;
  s.eps = c.adam_eps;
  const double t = static_cast<double>(step + 1);
  s.bias1 = static_cast<float>(1.0 - std::pow(double(c.adam_beta1), t));
  s.bias2 = static_cast<float>(1.0 - std::pow(double(c.adam_beta2), t));
  s.band_gamma = c.band_gamma;
  s.band_min = c.band_min;
  s.tau_min = c.tau_min;
  s.geometry_clip = c.geometry_clip;
  s.step = static_cast<float>(t);
  return s;
}

}  // namespace detail

namespace {

void check_rows(int64_t rows) {
  HTFR_REQUIRE(rows > 0, InvalidArgument, "the batch is empty (rows = " << rows << ")");
  HTFR_REQUIRE(rows <= (int64_t{1} << 24), InvalidArgument,
               "rows = " << rows << " exceeds the supported batch size 2^24");
}

void check_pointer(const void* p, const char* name) {
  HTFR_REQUIRE(p != nullptr, InvalidArgument, name << " is null");
}

}  // namespace

HtfrModel::HtfrModel(const HtfrConfig& config, HyperTensorPool&& pool) {
  HTFR_NVTX_RANGE("htfr::HtfrModel::HtfrModel");
  config.validate();
  HTFR_REQUIRE(!pool.empty(), InvalidArgument, "the pool is empty");
  HTFR_REQUIRE(pool.num_tensors() == config.num_tensors && pool.input_dim() == config.input_dim &&
                   pool.output_dim() == config.output_dim,
               InvalidArgument,
               "pool shape N=" << pool.num_tensors() << " D=" << pool.input_dim()
                               << " M=" << pool.output_dim() << " does not match the config N="
                               << config.num_tensors << " D=" << config.input_dim
                               << " M=" << config.output_dim);
  const bool half = config.precision == Precision::bf16 || config.precision == Precision::fp16;
  HTFR_REQUIRE(!half || pool.backend() == Backend::cpu ||
                   pool.half_precision() == config.precision,
               InvalidArgument,
               "config.precision is " << to_string(config.precision)
                                      << " but the pool holds "
                                      << to_string(pool.half_precision())
                                      << " copies; create the pool with the same precision");
  if (pool.backend() == Backend::cpu) {
    impl_ = detail::make_cpu_backend(config, std::move(pool));
  } else {
    impl_ = detail::make_cuda_backend(config, std::move(pool));
  }
}

HtfrModel::~HtfrModel() = default;
HtfrModel::HtfrModel(HtfrModel&&) noexcept = default;
HtfrModel& HtfrModel::operator=(HtfrModel&&) noexcept = default;

void HtfrModel::select(const float* x, int64_t rows, int32_t* indices, float* distances,
                       cudaStream_t stream) {
  HTFR_NVTX_RANGE("htfr::HtfrModel::select");
  check_rows(rows);
  check_pointer(x, "x");
  check_pointer(indices, "indices");
  check_pointer(distances, "distances");
  const Backend b = impl_->pool_.backend();
  const int dev = impl_->pool_.device();
  detail::require_memory(x, b, dev, "x");
  detail::require_memory(indices, b, dev, "indices");
  detail::require_memory(distances, b, dev, "distances");
  impl_->select(x, rows, indices, distances, stream);
}

void HtfrModel::forward(const float* x, int64_t rows, float* y, cudaStream_t stream) {
  HTFR_NVTX_RANGE("htfr::HtfrModel::forward");
  check_rows(rows);
  check_pointer(x, "x");
  check_pointer(y, "y");
  const Backend b = impl_->pool_.backend();
  const int dev = impl_->pool_.device();
  detail::require_memory(x, b, dev, "x");
  detail::require_memory(y, b, dev, "y");
  impl_->forward(x, rows, y, stream);
}

void HtfrModel::train_step(const Batch& batch, const StepOutputs& outputs, cudaStream_t stream) {
  HTFR_NVTX_RANGE("htfr::HtfrModel::train_step");
  const HtfrConfig& c = impl_->config_;
  check_rows(batch.rows);
  check_pointer(batch.x, "batch.x");
  const bool needs_values = c.loss != Loss::cross_entropy;
  const bool needs_index = c.loss == Loss::cross_entropy || c.loss == Loss::mixed;
  HTFR_REQUIRE(!needs_values || batch.target, InvalidArgument,
               "loss " << to_string(c.loss) << " needs batch.target (B x M), which is null");
  HTFR_REQUIRE(!needs_index || batch.target_index, InvalidArgument,
               "loss " << to_string(c.loss) << " needs batch.target_index (B), which is null");
  const Backend b = impl_->pool_.backend();
  const int dev = impl_->pool_.device();
  detail::require_memory(batch.x, b, dev, "batch.x");
  detail::require_memory(batch.target, b, dev, "batch.target");
  detail::require_memory(batch.target_index, b, dev, "batch.target_index");
  detail::require_memory(outputs.prediction, b, dev, "outputs.prediction");
  detail::require_memory(outputs.row_loss, b, dev, "outputs.row_loss");
  detail::require_memory(outputs.input_grad, b, dev, "outputs.input_grad");
  Batch used = batch;
  if (!needs_values) used.target = nullptr;
  if (!needs_index) used.target_index = nullptr;
  impl_->train_step(used, outputs, stream);
}

PoolStatistics HtfrModel::statistics(cudaStream_t stream) const {
  HTFR_NVTX_RANGE("htfr::HtfrModel::statistics");
  const PoolParameters p = impl_->pool_.download(stream);
  PoolStatistics s;
  s.steps = impl_->step_;
  s.num_tensors = p.num_tensors;
  double sum = 0, sum_d = 0;
  for (std::size_t i = 0; i < p.use_count.size(); ++i) {
    const double u = p.use_count[i];
    if (u > 0) {
      ++s.used_tensors;
      sum_d += p.mean_abs_d[i];
    }
    sum += u;
    s.max_use = std::max(s.max_use, u);
  }
  s.active_fraction = double(s.used_tensors) / double(p.num_tensors);
  s.mean_use = sum / double(p.num_tensors);
  s.mean_abs_distance = s.used_tensors ? sum_d / double(s.used_tensors) : 0.0;
  return s;
}

const HtfrConfig& HtfrModel::config() const { return impl_->config_; }
const HyperTensorPool& HtfrModel::pool() const { return impl_->pool_; }
HyperTensorPool& HtfrModel::pool() { return impl_->pool_; }
int64_t HtfrModel::step() const { return impl_->step_; }

std::vector<float> HtfrModel::optimizer_state(cudaStream_t stream) const {
  HTFR_NVTX_RANGE("htfr::HtfrModel::optimizer_state");
  return impl_->optimizer_state(stream);
}

void HtfrModel::restore_state(int64_t step, const std::vector<float>& state, cudaStream_t stream) {
  HTFR_NVTX_RANGE("htfr::HtfrModel::restore_state");
  const HtfrConfig& c = impl_->config_;
  const std::size_t expected =
      c.optimizer == Optimizer::adam
          ? 2 * static_cast<std::size_t>(c.num_tensors * 3 * c.output_dim +
                                         c.num_tensors * c.input_dim + 2 * c.num_tensors)
          : 0;
  HTFR_REQUIRE(step >= 0, InvalidArgument, "restore_state: step must be >= 0, got " << step);
  HTFR_REQUIRE(state.size() == expected, InvalidArgument,
               "restore_state: optimiser state has " << state.size() << " values, the "
               << to_string(c.optimizer) << " optimiser of this model needs " << expected);
  impl_->set_optimizer_state(state, stream);
  impl_->step_ = step;
}
Backend HtfrModel::backend() const { return impl_->pool_.backend(); }

}  // namespace htfr

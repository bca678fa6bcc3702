// CUDA backend against the CPU reference: selection, forward, training step, dL/dx, optimiser
// variants and determinism, on odd shapes, poisoned outputs and a non-default stream.
// Every test here skips without a GPU.
#include <algorithm>
#include <cstring>
#include <memory>
#include <set>

#include "test_util.hpp"

namespace htfr::test {
namespace {

struct Case {
  std::string name;
  int64_t B, D, M, N, K;
  Weighting weighting = Weighting::softmax;
  Interpolation interpolation = Interpolation::linear;
  Loss loss = Loss::mse;
  Optimizer optimizer = Optimizer::sgd;
  Reduction reduction = Reduction::sum;
  bool locality_gradient = false;
  float lr_tau = 0.0f, band_gamma = 0.0f, geometry_clip = 0.0f;
};

std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.name; }

HtfrConfig config_of(const Case& c) {
  HtfrConfig cfg;
  cfg.input_dim = c.D;
  cfg.output_dim = c.M;
  cfg.num_tensors = c.N;
  cfg.top_k = c.K;
  cfg.weighting = c.weighting;
  cfg.interpolation = c.interpolation;
  cfg.loss = c.loss;
  cfg.optimizer = c.optimizer;
  cfg.reduction = c.reduction;
  cfg.locality_gradient = c.locality_gradient;
  cfg.lr_tau = c.lr_tau;
  cfg.band_gamma = c.band_gamma;
  cfg.geometry_clip = c.geometry_clip;
  cfg.lr = 0.05f;
  cfg.lr_geometry = 0.01f;
  if (c.optimizer == Optimizer::adam) {
    cfg.lr = 1e-2f;
    cfg.lr_geometry = 1e-3f;
  }
  return cfg;
}

/// All N signed distances of each row, accumulated in fp64 from the pool's parameters.
std::vector<double> reference_distances(const PoolParameters& p, const std::vector<float>& x,
                                        int64_t rows) {
  const int64_t N = p.num_tensors, D = p.input_dim;
  std::vector<double> d(rows * N);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < N; ++i) {
      double acc = p.offsets[i];
      for (int64_t j = 0; j < D; ++j) acc += double(p.normals[i * D + j]) * x[r * D + j];
      d[r * N + i] = acc;
    }
  }
  return d;
}

/// The K-th smallest |d| of each row.
std::vector<double> kth_smallest(const std::vector<double>& d, int64_t rows, int64_t n,
                                 int64_t k) {
  std::vector<double> out(rows);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<double> a(n);
    for (int64_t i = 0; i < n; ++i) a[i] = std::fabs(d[r * n + i]);
    std::nth_element(a.begin(), a.begin() + (k - 1), a.end());
    out[r] = a[k - 1];
  }
  return out;
}

/// Rows whose K-th and (K+1)-th smallest |d| (fp64) are closer than `gap`: there two correct
/// implementations may select different sets, so parity is undefined.
std::vector<bool> ambiguous_rows(const HtfrConfig& cfg, const HyperTensorPool& cpu_pool,
                                 const std::vector<float>& x, int64_t rows, double gap) {
  std::vector<bool> out(rows, false);
  if (cfg.top_k == cfg.num_tensors) return out;  // every tensor is selected
  const auto d = reference_distances(cpu_pool.download(), x, rows);
  const auto kth = kth_smallest(d, rows, cfg.num_tensors, cfg.top_k);
  const auto next = kth_smallest(d, rows, cfg.num_tensors, cfg.top_k + 1);
  for (int64_t r = 0; r < rows; ++r) out[r] = next[r] - kth[r] < gap;
  return out;
}

struct Targets {
  std::vector<float> values;
  std::vector<int32_t> index;
};

Targets make_targets(const Case& c, uint64_t seed) {
  Targets t;
  if (c.loss == Loss::mse) t.values = random_normal(c.B * c.M, seed);
  if (c.loss == Loss::kl || c.loss == Loss::mixed) t.values = random_distributions(c.B, c.M, seed);
  if (c.loss == Loss::cross_entropy || c.loss == Loss::mixed) {
    std::mt19937 rng(static_cast<uint32_t>(seed));
    for (int64_t r = 0; r < c.B; ++r) t.index.push_back(static_cast<int32_t>(rng() % c.M));
  }
  return t;
}

void expect_pools_close(const PoolParameters& gpu, const PoolParameters& cpu, double atol,
                        double rtol) {
  EXPECT_TRUE(all_close(gpu.normals, cpu.normals, atol, rtol)) << "normals";
  EXPECT_TRUE(all_close(gpu.offsets, cpu.offsets, atol, rtol)) << "offsets";
  EXPECT_TRUE(all_close(gpu.dneg, cpu.dneg, atol, rtol)) << "dneg";
  EXPECT_TRUE(all_close(gpu.dpos, cpu.dpos, atol, rtol)) << "dpos";
  EXPECT_TRUE(all_close(gpu.tau, cpu.tau, atol, rtol)) << "tau";
  EXPECT_TRUE(all_close(gpu.controls, cpu.controls, atol, rtol)) << "controls";
  EXPECT_TRUE(all_close(gpu.use_count, cpu.use_count, 0, 0)) << "use_count";
  EXPECT_TRUE(all_close(gpu.last_used, cpu.last_used, 0, 0)) << "last_used";
  EXPECT_TRUE(all_close(gpu.mean_abs_d, cpu.mean_abs_d, atol, rtol)) << "mean_abs_d";
  EXPECT_TRUE(all_close(gpu.loss_trace, cpu.loss_trace, atol, rtol)) << "loss_trace";
}

/// Values k / scale with integer k in [-range, range]: with these, every partial sum of a
/// distance dot product is exactly representable in fp32, so the GPU and the CPU compute identical
/// distances and must select identical tensors, ties included (broken by the smaller index).
std::vector<float> quantized(std::size_t n, uint64_t seed, int range, float scale) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> dist(-range, range);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(dist(rng)) / scale;
  return v;
}

/// A random CPU pool whose normals (k/256, |k| <= 16) and offsets (k/4096) are quantized.
HyperTensorPool quantized_pool(const HtfrConfig& cfg, uint64_t seed) {
  HyperTensorPool pool = random_cpu_pool(cfg, seed);
  PoolParameters p = pool.download();
  p.normals = quantized(p.normals.size(), seed + 1, 16, 256.0f);
  p.offsets = quantized(p.offsets.size(), seed + 2, 2048, 4096.0f);
  pool.upload(p);
  return pool;
}

class CudaParity : public ::testing::TestWithParam<Case> {};

// fp32 everywhere: distances differ from the fp64-accumulated reference by ~1e-7 * sqrt(D) * |x|,
// which moves weights, losses and one step's parameter change by a few 1e-6 relative; 1e-4
// absolute plus 1e-3 relative leaves a wide margin while still catching any wrong term (a missing
// or duplicated pair changes parameters by >= lr * |g| ~ 1e-2).
constexpr double kAtol = 1e-4, kRtol = 1e-3;

// Step 0 runs on quantized inputs (identical selection by construction). Later steps use random
// inputs on parameters that now differ by rounding; they are compared while every row's top-K is
// separated from the next candidate by more than that rounding can move a distance (1e-4), and
// the comparison stops at the first step where that does not hold (reported).
TEST_P(CudaParity, TrainStepsMatchCpu) {
  HTFR_SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  const HtfrConfig cfg = config_of(c);
  Stream stream;
  HyperTensorPool cpu_pool = quantized_pool(cfg, 1234 + c.N);
  HyperTensorPool gpu_pool = cpu_pool.clone(Backend::cuda, 0, stream.s);
  HtfrModel cpu(cfg, std::move(cpu_pool));
  HtfrModel gpu(cfg, std::move(gpu_pool));

  constexpr int kSteps = 3;
  int compared = 0;
  for (int step = 0; step < kSteps; ++step) {
    const std::vector<float> x = step == 0 ? quantized(c.B * c.D, 77, 32, 16.0f)
                                           : random_normal(c.B * c.D, 77 + step);
    if (step > 0) {
      const auto ambiguous = ambiguous_rows(cfg, cpu.pool(), x, c.B, 1e-4);
      if (std::count(ambiguous.begin(), ambiguous.end(), true) > 0) break;
    }
    const Targets t = make_targets(c, 99 + step);
    DeviceArray<float> dx(x), dy(c.B * c.M), dloss(c.B), dgrad(c.B * c.D);
    std::unique_ptr<DeviceArray<float>> dtarget;
    std::unique_ptr<DeviceArray<int32_t>> dindex;
    Batch gb{dx.get(), c.B, nullptr, nullptr};
    Batch cb{x.data(), c.B, nullptr, nullptr};
    if (!t.values.empty()) {
      dtarget = std::make_unique<DeviceArray<float>>(t.values);
      gb.target = dtarget->get();
      cb.target = t.values.data();
    }
    if (!t.index.empty()) {
      dindex = std::make_unique<DeviceArray<int32_t>>(t.index);
      gb.target_index = dindex->get();
      cb.target_index = t.index.data();
    }
    std::vector<float> y(c.B * c.M), loss(c.B), grad(c.B * c.D);
    cpu.train_step(cb, {y.data(), loss.data(), grad.data()});
    gpu.train_step(gb, {dy.get(), dloss.get(), dgrad.get()}, stream.s);
    ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
    EXPECT_TRUE(all_close(dy.download(), y, kAtol, kRtol)) << "prediction, step " << step;
    EXPECT_TRUE(all_close(dloss.download(), loss, kAtol, kRtol)) << "row loss, step " << step;
    EXPECT_TRUE(all_close(dgrad.download(), grad, kAtol, kRtol)) << "dL/dx, step " << step;
    ++compared;
  }
  RecordProperty("steps_compared", compared);
  std::cout << c.name << ": " << compared << " step(s) compared\n";
  expect_pools_close(gpu.pool().download(stream.s), cpu.pool().download(), kAtol, kRtol);
  EXPECT_EQ(gpu.step(), compared);
}

TEST_P(CudaParity, ForwardAndSelectMatchCpu) {
  HTFR_SKIP_WITHOUT_GPU();
  const Case c = GetParam();
  const HtfrConfig cfg = config_of(c);
  Stream stream;
  HyperTensorPool cpu_pool = random_cpu_pool(cfg, 42 + c.N);
  HtfrModel gpu(cfg, cpu_pool.clone(Backend::cuda, 0, stream.s));
  HtfrModel cpu(cfg, std::move(cpu_pool));
  const std::vector<float> x = random_normal(c.B * c.D, 5);
  const auto ambiguous = ambiguous_rows(cfg, cpu.pool(), x, c.B, 1e-5);

  std::vector<float> y(c.B * c.M), d(c.B * c.K);
  std::vector<int32_t> idx(c.B * c.K);
  cpu.forward(x.data(), c.B, y.data());
  cpu.select(x.data(), c.B, idx.data(), d.data());
  DeviceArray<float> dx(x), dy(c.B * c.M), dd(c.B * c.K);
  DeviceArray<int32_t> didx(c.B * c.K);
  gpu.forward(dx.get(), c.B, dy.get(), stream.s);
  gpu.select(dx.get(), c.B, didx.get(), dd.get(), stream.s);
  ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
  const auto gy = dy.download(), gd = dd.download();
  const auto gidx = didx.download();
  int64_t compared = 0;
  for (int64_t r = 0; r < c.B; ++r) {
    if (ambiguous[r]) continue;
    ++compared;
    // Same set; the order inside it may differ only between near-equal |d|.
    const std::set<int32_t> a(gidx.begin() + r * c.K, gidx.begin() + (r + 1) * c.K);
    const std::set<int32_t> b(idx.begin() + r * c.K, idx.begin() + (r + 1) * c.K);
    ASSERT_EQ(a, b) << "row " << r;
    for (int64_t k = 1; k < c.K; ++k) {
      ASSERT_LE(std::fabs(gd[r * c.K + k - 1]), std::fabs(gd[r * c.K + k])) << "row " << r;
    }
    const std::vector<float> row_g(gy.begin() + r * c.M, gy.begin() + (r + 1) * c.M);
    const std::vector<float> row_c(y.begin() + r * c.M, y.begin() + (r + 1) * c.M);
    ASSERT_TRUE(all_close(row_g, row_c, kAtol, kRtol)) << "row " << r;
  }
  EXPECT_GE(compared, c.B * 9 / 10) << "too many ambiguous rows for a meaningful comparison";
}

const Case kCases[] = {
    {"B1_online", 1, 7, 3, 11, 4},
    {"K1_M1", 37, 33, 1, 50, 1},
    {"K_equals_N", 45, 19, 6, 16, 16},
    {"odd_many_tiles", 77, 130, 67, 3001, 24},
    {"K128_big_N", 40, 65, 33, 9000, 128},
    {"K256_big_N", 35, 70, 21, 12001, 256},
    // Enough (row, output tile) pairs for the vectorised blend, with a partial last tile.
    {"many_rows_vector_blend", 520, 24, 264, 700, 9},
    // Long normals: 16,388 inputs (a multiple of 4, not of 8).
    {"wide_D", 13, 16388, 12, 57, 5},
    {"hermite_inverse", 50, 31, 9, 200, 7, Weighting::inverse_distance, Interpolation::hermite},
    {"triangular_ce", 61, 40, 32, 300, 8, Weighting::triangular, Interpolation::linear,
     Loss::cross_entropy},
    {"epanechnikov_kl_mean", 33, 24, 20, 150, 5, Weighting::epanechnikov,
     Interpolation::hermite, Loss::kl, Optimizer::sgd, Reduction::mean},
    {"mixed_adam_exact", 29, 50, 40, 400, 12, Weighting::softmax, Interpolation::linear,
     Loss::mixed, Optimizer::adam, Reduction::sum, true},
    {"tau_bands_clip", 53, 45, 8, 120, 6, Weighting::softmax, Interpolation::linear, Loss::mse,
     Optimizer::sgd, Reduction::sum, true, 0.01f, 0.05f, 0.5f},
};

INSTANTIATE_TEST_SUITE_P(Shapes, CudaParity, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return info.param.name; });

TEST(CudaDeterminism, TwoRunsAreBitwiseIdentical) {
  HTFR_SKIP_WITHOUT_GPU();
  Case c{"det", 513, 96, 64, 2048, 16};
  c.optimizer = Optimizer::adam;
  const HtfrConfig cfg = config_of(c);
  Stream stream;
  const HyperTensorPool base = random_cpu_pool(cfg, 3);
  std::vector<PoolParameters> results;
  for (int run = 0; run < 2; ++run) {
    HtfrModel gpu(cfg, base.clone(Backend::cuda, 0, stream.s));
    for (int step = 0; step < 5; ++step) {
      DeviceArray<float> dx(random_normal(c.B * c.D, 10 + step));
      DeviceArray<float> dt(random_normal(c.B * c.M, 20 + step));
      gpu.train_step({dx.get(), c.B, dt.get(), nullptr}, {}, stream.s);
    }
    results.push_back(gpu.pool().download(stream.s));
  }
  const auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
  };
  EXPECT_TRUE(same(results[0].controls, results[1].controls));
  EXPECT_TRUE(same(results[0].normals, results[1].normals));
  EXPECT_TRUE(same(results[0].offsets, results[1].offsets));
  EXPECT_TRUE(same(results[0].use_count, results[1].use_count));
  // and the run really trained: parameters moved away from the start
  EXPECT_FALSE(same(results[0].controls, base.download().controls));
}

TEST(CudaPool, RandomInitMatchesCpu) {
  HTFR_SKIP_WITHOUT_GPU();
  auto cpu = HyperTensorPool::create(Backend::cpu, 101, 37, 13);
  auto gpu = HyperTensorPool::create(Backend::cuda, 101, 37, 13, Precision::bf16);
  cpu.init_random(11, 0.3f, 1.5f, 0.7f, 0.2f);
  gpu.init_random(11, 0.3f, 1.5f, 0.7f, 0.2f);
  const PoolParameters a = gpu.download(), b = cpu.download();
  // Same Philox stream on host and device; normalisation in fp32 (device) vs fp64 (host).
  EXPECT_TRUE(all_close(a.normals, b.normals, 1e-6, 1e-5));
  EXPECT_TRUE(all_close(a.offsets, b.offsets, 1e-6, 1e-5));
  EXPECT_TRUE(all_close(a.controls, b.controls, 1e-6, 1e-5));
  EXPECT_TRUE(all_close(a.dpos, b.dpos, 0, 0));
  EXPECT_TRUE(all_close(a.tau, b.tau, 0, 0));
}

/// bf16/fp16 operands: distances carry 8 (bf16) or 11 (fp16) significant bits, so near-ties
/// may swap. Correct up to its operands' precision means: every selected tensor's exact |d| is
/// within the rounding bound of the exact K-th smallest |d|. The overlap with the exact selection
/// is reported (a property of the data and the precision, measured at the benchmark shapes too),
/// and the blend is compared where the sets agree.
TEST(CudaHalfPrecision, SelectionIsOptimalUpToRounding) {
  HTFR_SKIP_WITHOUT_GPU();
  for (Precision prec : {Precision::bf16, Precision::fp16}) {
    // 1,100 rows: enough (row, tile) pairs for the vectorised half-precision blend.
    Case c{"half", 1100, 256, 64, 4000, 16};
    HtfrConfig cfg = config_of(c);
    HyperTensorPool cpu_pool = random_cpu_pool(cfg, 8);
    const PoolParameters params = cpu_pool.download();
    HtfrModel ref(cfg, cpu_pool.clone(Backend::cpu));
    cfg.precision = prec;
    auto gpu_pool = HyperTensorPool::create(Backend::cuda, c.N, c.D, c.M, prec);
    gpu_pool.upload(params);
    HtfrModel gpu(cfg, std::move(gpu_pool));
    const std::vector<float> x = random_normal(c.B * c.D, 6);
    const auto exact = reference_distances(params, x, c.B);
    const auto kth = kth_smallest(exact, c.B, c.N, c.K);
    std::vector<int32_t> idx(c.B * c.K);
    std::vector<float> d(idx.size()), y(c.B * c.M);
    ref.select(x.data(), c.B, idx.data(), d.data());
    ref.forward(x.data(), c.B, y.data());
    DeviceArray<float> dx(x), dd(idx.size()), dy(y.size());
    DeviceArray<int32_t> didx(idx.size());
    gpu.select(dx.get(), c.B, didx.get(), dd.get());
    gpu.forward(dx.get(), c.B, dy.get());
    const auto gidx = didx.download();
    const auto gy = dy.download();
    // Rounding both operands to `bits` significant bits moves n.x by at most
    // 2 * 2^-bits * sum_j |n_j x_j| <= 2^(1-bits) * ||x|| (unit normals); the offset is exact.
    const double unit = prec == Precision::bf16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
    int64_t hits = 0, same_rows = 0;
    for (int64_t r = 0; r < c.B; ++r) {
      double xnorm = 0;
      for (int64_t j = 0; j < c.D; ++j) xnorm += double(x[r * c.D + j]) * x[r * c.D + j];
      const double bound = 2.0 * unit * std::sqrt(xnorm);
      const std::set<int32_t> b(idx.begin() + r * c.K, idx.begin() + (r + 1) * c.K);
      int64_t common = 0;
      for (int64_t k = 0; k < c.K; ++k) {
        const int32_t i = gidx[r * c.K + k];
        ASSERT_GE(i, 0);
        ASSERT_LT(i, c.N);
        ASSERT_LE(std::fabs(exact[r * c.N + i]), kth[r] + 2.0 * bound)
            << to_string(prec) << " row " << r << " selected tensor " << i;
        common += b.count(i);
      }
      hits += common;
      if (common == c.K) {
        ++same_rows;
        const std::vector<float> row_g(gy.begin() + r * c.M, gy.begin() + (r + 1) * c.M);
        const std::vector<float> row_c(y.begin() + r * c.M, y.begin() + (r + 1) * c.M);
        // weights from half-precision distances and half controls: ~1e-2 relative at most.
        EXPECT_TRUE(all_close(row_g, row_c, 3e-2, 3e-2)) << to_string(prec) << " row " << r;
      }
    }
    const double overlap = double(hits) / double(c.B * c.K);
    std::cout << to_string(prec) << " top-K overlap with the exact selection: " << overlap
              << " (" << same_rows << " of " << c.B << " rows identical)\n";
    RecordProperty(std::string("overlap_") + to_string(prec), std::to_string(overlap));
  }
}

/// At the benchmark's S2 width (D = 4096, N = 16384, K = 24): the fp32 GPU selection equals the
/// exact one on every well-separated row, and the half-precision selections are reported as
/// overlap with it and as the mean exact |d| of what they selected.
TEST(CudaHalfPrecision, WideShapeSelection) {
  HTFR_SKIP_WITHOUT_GPU();
  Case c{"wide", 24, 4096, 8, 16384, 24};
  HtfrConfig cfg = config_of(c);
  HyperTensorPool cpu_pool = random_cpu_pool(cfg, 21);
  const PoolParameters params = cpu_pool.download();
  const std::vector<float> x = random_normal(c.B * c.D, 22);
  const auto exact = reference_distances(params, x, c.B);
  const auto kth = kth_smallest(exact, c.B, c.N, c.K);
  const auto next = kth_smallest(exact, c.B, c.N, c.K + 1);
  std::vector<std::vector<int32_t>> selections;
  for (Precision prec : {Precision::fp32, Precision::bf16, Precision::fp16}) {
    HtfrConfig pc = cfg;
    pc.precision = prec;
    auto pool = HyperTensorPool::create(Backend::cuda, c.N, c.D, c.M, prec);
    pool.upload(params);
    HtfrModel gpu(pc, std::move(pool));
    DeviceArray<float> dx(x), dd(c.B * c.K);
    DeviceArray<int32_t> didx(c.B * c.K);
    gpu.select(dx.get(), c.B, didx.get(), dd.get());
    selections.push_back(didx.download());
    double mean_abs = 0;
    for (int32_t i : selections.back()) ASSERT_TRUE(i >= 0 && i < c.N);
    for (int64_t r = 0; r < c.B; ++r) {
      for (int64_t k = 0; k < c.K; ++k) {
        mean_abs += std::fabs(exact[r * c.N + selections.back()[r * c.K + k]]);
      }
    }
    mean_abs /= double(c.B * c.K);
    int64_t hits = 0;
    for (int64_t r = 0; r < c.B; ++r) {
      const std::set<int32_t> a(selections[0].begin() + r * c.K,
                                selections[0].begin() + (r + 1) * c.K);
      for (int64_t k = 0; k < c.K; ++k) hits += a.count(selections.back()[r * c.K + k]);
    }
    double mean_kth = 0;
    for (double v : kth) mean_kth += v / double(c.B);
    std::cout << to_string(prec) << ": overlap with fp32 " << double(hits) / double(c.B * c.K)
              << ", mean exact |d| of the selection " << mean_abs << " (mean K-th exact |d| "
              << mean_kth << ")\n";
  }
  for (int64_t r = 0; r < c.B; ++r) {
    if (next[r] - kth[r] < 1e-4) continue;
    for (int64_t k = 0; k < c.K; ++k) {
      ASSERT_LE(std::fabs(exact[r * c.N + selections[0][r * c.K + k]]), kth[r] + 1e-5)
          << "fp32 row " << r;
    }
  }
}

/// Every tensor shares one normal (the first axis, so each distance is x_0 + offset exactly, on
/// both backends) and the offsets take `levels` values: thousands of equal distances per row with
/// 3 levels (the selection's candidate buffer overflows and it takes its general path), tens with
/// 400. Equal distances go to the smaller index, so the GPU must match the CPU exactly, with one
/// block per row and with rows split into slices (5 rows).
TEST(CudaSelection, EqualDistancesGoToTheSmallerIndex) {
  HTFR_SKIP_WITHOUT_GPU();
  for (int levels : {3, 400}) {
    for (int64_t rows : {int64_t{70}, int64_t{5}}) {
      Case c{"ties", rows, 8, 3, 20001, 24};
      const HtfrConfig cfg = config_of(c);
      Stream stream;
      HyperTensorPool cpu_pool = random_cpu_pool(cfg, 77);
      PoolParameters p = cpu_pool.download();
      for (int64_t i = 0; i < c.N; ++i) {
        for (int64_t j = 0; j < c.D; ++j) p.normals[i * c.D + j] = j == 0 ? 1.0f : 0.0f;
        p.offsets[i] = static_cast<float>((i * 7919) % levels) / 64.0f;
      }
      cpu_pool.upload(p);
      HtfrModel gpu(cfg, cpu_pool.clone(Backend::cuda, 0, stream.s));
      HtfrModel cpu(cfg, std::move(cpu_pool));
      const std::vector<float> x = random_normal(c.B * c.D, 9);
      std::vector<float> d(c.B * c.K);
      std::vector<int32_t> idx(c.B * c.K);
      cpu.select(x.data(), c.B, idx.data(), d.data());
      DeviceArray<float> dx(x), dd(c.B * c.K);
      DeviceArray<int32_t> didx(c.B * c.K);
      gpu.select(dx.get(), c.B, didx.get(), dd.get(), stream.s);
      ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
      EXPECT_EQ(didx.download(), idx) << levels << " levels, " << rows << " rows";
      EXPECT_EQ(dd.download(), d) << levels << " levels, " << rows << " rows";
    }
  }
}

}  // namespace
}  // namespace htfr::test

// Pool maintenance: a reseeded tensor's hyperplane passes through its row and the tensor predicts
// the row's target there; the least-used choice is by use count; pruning removes exactly the
// unused tensors and leaves the forward pass over the rest unchanged; CUDA agrees with the CPU.
#include <gtest/gtest.h>
#include <htfr/htfr.hpp>
#include <htfr/maintenance.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "test_util.hpp"

namespace htfr::test {
namespace {

constexpr int64_t kN = 30, kD = 13, kM = 5;

HtfrConfig config(int64_t n, int64_t k) {
  HtfrConfig cfg;
  cfg.input_dim = kD;
  cfg.output_dim = kM;
  cfg.num_tensors = n;
  cfg.top_k = k;
  return cfg;
}

HyperTensorPool random_pool(uint64_t seed, int64_t n = kN) {
  auto pool = HyperTensorPool::create(Backend::cpu, n, kD, kM);
  pool.init_random(seed, 0.3f, 1.0f, 0.5f, 0.5f);
  return pool;
}

// One prediction per row through a model that takes a copy of `pool`.
std::vector<float> predict(const HyperTensorPool& pool, int64_t k, const std::vector<float>& x,
                           Precision precision = Precision::fp32) {
  HtfrConfig cfg = config(pool.num_tensors(), k);
  cfg.precision = precision;
  HtfrModel model(cfg, pool.clone(pool.backend()));
  const int64_t rows = static_cast<int64_t>(x.size()) / kD;
  Staged<float> xs(pool.backend(), x), y(pool.backend(), static_cast<std::size_t>(rows * kM));
  model.forward(xs.get(), rows, y.get());
  return y.fetch();
}

TEST(ReseedCpu, PutsTheHyperplaneThroughTheRowAndPredictsItsTarget) {
  auto pool = random_pool(1);
  const std::vector<int64_t> tensors = {11, 3};
  const auto x = random_normal(2 * kD, 2), targets = random_normal(2 * kM, 3);
  reseed_tensors(pool, tensors, x.data(), targets.data(), {0.7f, 0.4f, 9}, nullptr);
  const PoolParameters p = pool.download();
  for (int r = 0; r < 2; ++r) {
    const int64_t i = tensors[r];
    double d = p.offsets[i], norm = 0.0;
    for (int64_t j = 0; j < kD; ++j) {
      d += double(p.normals[i * kD + j]) * x[r * kD + j];
      norm += double(p.normals[i * kD + j]) * p.normals[i * kD + j];
    }
    EXPECT_NEAR(d, 0.0, 1e-5) << "tensor " << i;
    EXPECT_NEAR(norm, 1.0, 1e-6);
    EXPECT_EQ(p.dneg[i], -0.7f);
    EXPECT_EQ(p.dpos[i], 0.7f);
    EXPECT_EQ(p.tau[i], 0.4f);
    EXPECT_EQ(p.use_count[i], 0.0f);
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t m = 0; m < kM; ++m)
        EXPECT_EQ(p.controls[(i * 3 + c) * kM + m], targets[r * kM + m]);
  }
  // With top-1 the reseeded tensor (|d| = 0) answers at its row: the target, exactly blended.
  EXPECT_TRUE(all_close(predict(pool, 1, x), targets, 1e-5, 1e-5));
}

TEST(ReseedCpu, IsDeterministicAndRejectsBadInputsWithoutChanges) {
  auto a = random_pool(4), b = random_pool(4);
  const auto x = random_normal(kD, 5), targets = random_normal(kM, 6);
  reseed_tensors(a, {7}, x.data(), targets.data(), {}, nullptr);
  reseed_tensors(b, {7}, x.data(), targets.data(), {}, nullptr);
  EXPECT_EQ(a.download().normals, b.download().normals);

  const PoolParameters before = a.download();
  auto bad_x = x;
  bad_x[2] = NAN;
  EXPECT_THROW(reseed_tensors(a, {kN}, x.data(), targets.data(), {}, nullptr), InvalidArgument);
  EXPECT_THROW(reseed_tensors(a, {-1}, x.data(), targets.data(), {}, nullptr), InvalidArgument);
  EXPECT_THROW(reseed_tensors(a, {2, 2}, x.data(), targets.data(), {}, nullptr), InvalidArgument);
  EXPECT_THROW(reseed_tensors(a, {2}, nullptr, targets.data(), {}, nullptr), InvalidArgument);
  EXPECT_THROW(reseed_tensors(a, {2}, x.data(), targets.data(), {0.0f, 0.5f, 0}, nullptr),
               InvalidArgument);
  EXPECT_THROW(reseed_tensors(a, {2}, bad_x.data(), targets.data(), {}, nullptr), NonFiniteInput);
  const PoolParameters after = a.download();
  EXPECT_EQ(after.normals, before.normals);
  EXPECT_EQ(after.offsets, before.offsets);
  EXPECT_EQ(after.controls, before.controls);
}

TEST(LeastUsedCpu, OrdersByUseCountThenIndex) {
  auto pool = random_pool(7, 6);
  PoolParameters p = pool.download();
  p.use_count = {5, 0, 3, 0, 9, 3};
  pool.upload(p);
  EXPECT_EQ(least_used_tensors(pool, 4, nullptr), (std::vector<int64_t>{1, 3, 2, 5}));
  EXPECT_THROW(least_used_tensors(pool, 7, nullptr), InvalidArgument);
}

// A pool where tensors with index % 3 == 1 were never used and sit far from the data (offset
// 100), so no row selects them.
HyperTensorPool partly_used_pool() {
  auto pool = random_pool(8);
  PoolParameters p = pool.download();
  for (int64_t i = 0; i < kN; ++i) {
    p.use_count[i] = i % 3 == 1 ? 0.0f : float(1 + i);
    if (i % 3 == 1) p.offsets[i] = 100.0f;
  }
  pool.upload(p);
  return pool;
}

TEST(PruneCpu, RemovesExactlyTheUnusedTensorsAndKeepsTheForward) {
  const auto pool = partly_used_pool();
  PruneReport report;
  const auto pruned = prune_unused(pool, 0.0f, &report, nullptr);
  std::vector<int64_t> kept, removed;
  for (int64_t i = 0; i < kN; ++i) (i % 3 == 1 ? removed : kept).push_back(i);
  EXPECT_EQ(report.kept, kept);
  EXPECT_EQ(report.removed, removed);
  EXPECT_EQ(report.before, kN);
  ASSERT_EQ(report.after, static_cast<int64_t>(kept.size()));
  ASSERT_EQ(pruned.num_tensors(), report.after);
  const PoolParameters p = pool.download(), q = pruned.download();
  for (std::size_t k = 0; k < kept.size(); ++k) {
    const int64_t i = kept[k];
    EXPECT_EQ(q.offsets[k], p.offsets[i]);
    EXPECT_EQ(q.use_count[k], p.use_count[i]);
    for (int64_t j = 0; j < kD; ++j) EXPECT_EQ(q.normals[k * kD + j], p.normals[i * kD + j]);
    for (int64_t j = 0; j < 3 * kM; ++j)
      EXPECT_EQ(q.controls[k * 3 * kM + j], p.controls[i * 3 * kM + j]);
  }
  const auto x = random_normal(41 * kD, 9);
  EXPECT_EQ(predict(pruned, 4, x), predict(pool, 4, x));
}

TEST(PruneCpu, KeepsTheMostUsedTensorWhenNoneQualifies) {
  auto pool = random_pool(10, 5);
  PoolParameters p = pool.download();
  p.use_count = {0, 2, 0, 2, 1};
  pool.upload(p);
  PruneReport report;
  const auto pruned = prune_unused(pool, 5.0f, &report, nullptr);
  EXPECT_EQ(report.kept, (std::vector<int64_t>{1}));
  EXPECT_EQ(pruned.num_tensors(), 1);
}

TEST(MaintenanceCuda, ReseedAndPruneMatchCpu) {
  HTFR_SKIP_WITHOUT_GPU();
  Stream stream;
  // Reseeding: identical parameters on both backends (the offset's dot product may round
  // differently), half copies refreshed by the kernel itself.
  const auto cpu_pool = partly_used_pool();
  auto cpu = cpu_pool.clone(Backend::cpu);
  auto gpu = HyperTensorPool::create(Backend::cuda, kN, kD, kM, Precision::bf16);
  gpu.upload(cpu_pool.download(), stream.s);
  const std::vector<int64_t> tensors = {1, 4, 29};
  const auto x = random_normal(3 * kD, 12), targets = random_normal(3 * kM, 13);
  reseed_tensors(cpu, tensors, x.data(), targets.data(), {}, nullptr);
  DeviceArray<float> dx(x), dt(targets);
  reseed_tensors(gpu, tensors, dx.get(), dt.get(), {}, stream.s);
  const PoolParameters c = cpu.download(), g = gpu.download(stream.s);
  EXPECT_EQ(g.normals, c.normals);
  EXPECT_EQ(g.controls, c.controls);
  EXPECT_EQ(g.use_count, c.use_count);
  EXPECT_TRUE(all_close(g.offsets, c.offsets, 1e-6, 1e-6));
  auto refreshed = HyperTensorPool::create(Backend::cuda, kN, kD, kM, Precision::bf16);
  refreshed.upload(g, stream.s);  // half copies recomputed from the masters
  const auto rows = random_normal(17 * kD, 14);
  EXPECT_EQ(predict(gpu, 3, rows, Precision::bf16), predict(refreshed, 3, rows, Precision::bf16));
  EXPECT_TRUE(all_close(predict(gpu, 1, x), targets, 1e-5, 1e-5));
  EXPECT_EQ(least_used_tensors(gpu, 5, stream.s), least_used_tensors(cpu, 5, nullptr));

  // Pruning on the device keeps the same tensors, bit for bit.
  PruneReport rc, rg;
  const auto pc = prune_unused(cpu_pool, 0.0f, &rc, nullptr);
  auto g2 = HyperTensorPool::create(Backend::cuda, kN, kD, kM);
  g2.upload(cpu_pool.download(), stream.s);
  const auto pg = prune_unused(g2, 0.0f, &rg, stream.s);
  EXPECT_EQ(rg.kept, rc.kept);
  EXPECT_EQ(pg.backend(), Backend::cuda);
  EXPECT_EQ(pg.download(stream.s).normals, pc.download().normals);

  // Host rows handed to a CUDA pool are refused.
  EXPECT_THROW(reseed_tensors(gpu, {2}, x.data(), targets.data(), {}, stream.s), WrongDevice);
}

// A few MSE training steps of a small model with a maintainer beside it, on `backend`. Returns
// the per-step batches (x, y) and row losses so a test can check what the maintainer chose.
struct MaintainedRun {
  std::vector<std::vector<float>> x, y, loss;
  std::vector<float> usage, queue;
  MaintenanceStatistics stats;
  PoolParameters pool;
};

MaintainedRun run_maintained(Backend backend, const MaintenanceConfig& mc, int steps) {
  constexpr int64_t kB = 10;
  HtfrConfig cfg = config(16, 2);
  cfg.loss = Loss::mse;
  auto host_pool = random_pool(21, 16);
  HtfrModel model(cfg, host_pool.clone(backend));
  PoolMaintainer maintainer(model.pool(), mc, kB);
  MaintainedRun run;
  Staged<float> x(backend, kB * kD), y(backend, kB * kM), loss(backend, kB);
  for (int s = 0; s < steps; ++s) {
    run.x.push_back(random_normal(kB * kD, 100 + s));
    run.y.push_back(random_normal(kB * kM, 200 + s));
    Batch batch{x.set(run.x.back()), kB, y.set(run.y.back()), nullptr};
    StepOutputs out;
    out.row_loss = loss.get();
    model.train_step(batch, out);
    maintainer.after_step(model.pool(), batch, loss.get(), nullptr);
    if (backend == Backend::cuda) {
      EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    }
    run.loss.push_back(loss.fetch());
  }
  run.usage = maintainer.decayed_usage(nullptr);
  run.queue = maintainer.queue_losses(nullptr);
  run.stats = maintainer.statistics(nullptr);
  run.pool = model.pool().download();
  return run;
}

// The reseeded tensors sit on the highest-loss queued rows: hyperplane through the row, controls
// equal to its target, usage restarted.
void expect_reseeded_onto_worst_rows(const MaintainedRun& run, int per_step, int count) {
  struct Row {
    float loss;
    int step, row;
  };
  std::vector<Row> queued;
  for (std::size_t s = 0; s < run.loss.size(); ++s) {
    std::vector<int> order(run.loss[s].size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return run.loss[s][a] > run.loss[s][b]; });
    for (int r = 0; r < per_step; ++r) queued.push_back({run.loss[s][order[r]], int(s), order[r]});
  }
  std::stable_sort(queued.begin(), queued.end(),
                   [](const Row& a, const Row& b) { return a.loss > b.loss; });
  const PoolParameters& p = run.pool;
  for (int k = 0; k < count; ++k) {
    const float* x = run.x[queued[k].step].data() + queued[k].row * kD;
    const float* y = run.y[queued[k].step].data() + queued[k].row * kM;
    int found = 0;
    for (int64_t i = 0; i < p.num_tensors; ++i) {
      double d = p.offsets[i];
      for (int64_t j = 0; j < kD; ++j) d += double(p.normals[i * kD + j]) * x[j];
      bool same = std::fabs(d) < 1e-5 && p.use_count[i] == 0.0f;
      for (int64_t m = 0; m < kM && same; ++m) same = p.controls[(i * 3 + 1) * kM + m] == y[m];
      found += same;
    }
    EXPECT_EQ(found, 1) << "queued row " << k << " (loss " << queued[k].loss << ")";
  }
  EXPECT_EQ(run.stats.tensors_reseeded, count);
  const auto finite = std::count_if(run.queue.begin(), run.queue.end(),
                                    [](float v) { return std::isfinite(v); });
  EXPECT_EQ(finite, static_cast<long>(per_step * run.loss.size()) - count);
}

// Three rows queued per step, two tensors reseeded every second step.
MaintenanceConfig reseed_every_second_step() {
  MaintenanceConfig mc;
  mc.queue_capacity = 32;
  mc.queue_per_step = 3;
  mc.reseed_every = 2;
  mc.reseed_count = 2;
  return mc;
}

TEST(MaintainerCpu, DecaysUsageAndQueuesTheWorstRows) {
  MaintenanceConfig mc;
  mc.usage_decay = 0.5f;
  mc.queue_capacity = 6;
  mc.queue_per_step = 3;
  mc.reseed_every = 0;
  const auto one = run_maintained(Backend::cpu, mc, 1);
  EXPECT_EQ(one.usage, one.pool.use_count);  // from zero, the first step's counts
  const auto two = run_maintained(Backend::cpu, mc, 2);
  for (int64_t i = 0; i < 16; ++i) {
    const float expected = 0.5f * one.pool.use_count[i] + (two.pool.use_count[i] - one.pool.use_count[i]);
    EXPECT_EQ(two.usage[i], expected) << "tensor " << i;
  }
  // The queue holds each step's three highest losses.
  std::vector<float> expected;
  for (const auto& l : two.loss) {
    auto sorted = l;
    std::sort(sorted.rbegin(), sorted.rend());
    expected.insert(expected.end(), sorted.begin(), sorted.begin() + 3);
  }
  auto queue = two.queue;
  std::sort(queue.rbegin(), queue.rend());
  std::sort(expected.rbegin(), expected.rend());
  EXPECT_EQ(queue, expected);
  EXPECT_EQ(two.stats.rows_queued, 6);
  EXPECT_EQ(two.stats.steps, 2);
  MaintenanceConfig bad;
  bad.usage_decay = 0.0f;
  EXPECT_THROW(PoolMaintainer(random_pool(1), bad, 4), InvalidArgument);
  EXPECT_THROW(PoolMaintainer(random_pool(1), mc, 0), InvalidArgument);
}

TEST(MaintainerCpu, ReseedsTheLeastUsedTensorsOntoTheWorstRows) {
  const MaintenanceConfig mc = reseed_every_second_step();
  const auto run = run_maintained(Backend::cpu, mc, 2);
  EXPECT_EQ(run.stats.reseed_events, 1);
  expect_reseeded_onto_worst_rows(run, 3, 2);
}

TEST(MaintainerCuda, MatchesCpu) {
  HTFR_SKIP_WITHOUT_GPU();
  const MaintenanceConfig mc = reseed_every_second_step();
  const auto gpu = run_maintained(Backend::cuda, mc, 2);
  const auto cpu = run_maintained(Backend::cpu, mc, 2);
  expect_reseeded_onto_worst_rows(gpu, 3, 2);
  EXPECT_EQ(gpu.usage, cpu.usage);  // selection counts: integers on both backends
  EXPECT_EQ(gpu.stats.tensors_reseeded, cpu.stats.tensors_reseeded);
  // The same slots are filled (or used: -inf) and hold the same losses up to rounding.
  ASSERT_EQ(gpu.queue.size(), cpu.queue.size());
  for (std::size_t k = 0; k < cpu.queue.size(); ++k) {
    EXPECT_EQ(std::isfinite(gpu.queue[k]), std::isfinite(cpu.queue[k])) << "slot " << k;
    if (std::isfinite(cpu.queue[k])) {
      EXPECT_NEAR(gpu.queue[k], cpu.queue[k], 1e-5 + 1e-4 * std::fabs(cpu.queue[k]));
    }
  }
}

}  // namespace
}  // namespace htfr::test

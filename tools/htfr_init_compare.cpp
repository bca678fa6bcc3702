// htfr_init_compare: random versus data-driven pool initialisation, each with and without
// reseeding during training (PoolMaintainer), on the synthetic tasks of the test suite (smooth
// field R^64 -> R^8, 256 clustered classes): same hyperparameters, same training rows, several
// seeds. The held-out error after a fixed number of steps decides the defaults. Runs on the CPU
// backend; prints a table and writes JSON.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "htfr/htfr.hpp"
#include "htfr/init.hpp"
#include "htfr/maintenance.hpp"
#include "htfr/synthetic.hpp"

namespace {

using namespace htfr;

constexpr uint64_t kInitStream = 2;  // beside the library's training and test streams
constexpr int64_t kInitRows = 4096;

// Reseeding as measured: every 100 steps the 4 least-used tensors move onto the worst of the
// last rows (8 per step, 256 queued).
MaintenanceConfig reseeding() {
  MaintenanceConfig mc;
  mc.queue_capacity = 256;
  mc.queue_per_step = 8;
  mc.reseed_every = 100;
  mc.reseed_count = 4;
  return mc;
}

std::string label(bool data_init, bool reseed) {
  return std::string(data_init ? "data" : "random") + (reseed ? "+reseed" : "");
}

struct Curve {
  std::string task, init;
  uint64_t seed = 0;
  std::vector<int64_t> steps;
  std::vector<double> error;
};

HyperTensorPool random_pool(const HtfrConfig& cfg, uint64_t seed) {
  auto pool = HyperTensorPool::create(Backend::cpu, cfg.num_tensors, cfg.input_dim,
                                      cfg.output_dim);
  pool.init_random(seed, 0.3f, 1.0f, 0.5f, 0.0f);  // the test suite's initialisation
  return pool;
}

HyperTensorPool data_pool(const HtfrConfig& cfg, uint64_t seed, const std::vector<float>& x,
                          const std::vector<float>& targets) {
  auto pool = random_pool(cfg, seed);
  DataInitOptions opt;
  opt.kmeans.seed = seed;
  opt.kmeans.iterations = 10;
  init_pool_from_data(pool, x.data(), kInitRows, cfg.input_dim, targets.data(), cfg.output_dim,
                      opt, nullptr);
  return pool;
}

Curve smooth_field(bool data_init, bool reseed, uint64_t seed,
                   const std::vector<int64_t>& report) {
  const SmoothFieldTask task(SmoothFieldSpec{});
  const HtfrConfig cfg = smooth_field_config(task.spec());
  const RegressionData init = task.sample(kInitStream, 0, kInitRows);
  HtfrModel model(cfg, data_init ? data_pool(cfg, seed, init.x, init.y) : random_pool(cfg, seed));
  const RegressionData test = task.sample(kTestStream, 0, 2048);
  std::vector<float> y(test.y.size());
  Curve c{"smooth_field", label(data_init, reseed), seed, {}, {}};
  const int64_t batch = 256;
  PoolMaintainer maintainer(model.pool(), reseeding(), batch);
  std::vector<float> loss(static_cast<std::size_t>(batch));
  for (int64_t step = 0; step <= report.back(); ++step) {
    for (int64_t r : report) {
      if (r != step) continue;
      model.forward(test.x.data(), test.rows, y.data());
      double sum = 0.0;
      for (std::size_t i = 0; i < y.size(); ++i) sum += std::pow(double(y[i]) - test.y[i], 2);
      c.steps.push_back(step);
      c.error.push_back(std::sqrt(sum / double(y.size())));
    }
    if (step == report.back()) break;
    const RegressionData rows = task.sample(kTrainStream, step * batch, batch);
    const Batch b{rows.x.data(), batch, rows.y.data(), nullptr};
    model.train_step(b, {nullptr, loss.data(), nullptr});
    if (reseed) maintainer.after_step(model.pool(), b, loss.data(), nullptr);
  }
  return c;
}

Curve classes(bool data_init, bool reseed, uint64_t seed, const std::vector<int64_t>& report) {
  const ClusterTask task(ClusterSpec{});
  const int64_t C = task.spec().num_classes;
  const HtfrConfig cfg = cluster_task_config(task.spec());
  // Data init: the controls start at each cluster's mean of 4 x one-hot labels (log-odds 4 for a
  // pure cluster's class).
  const ClassificationData init = task.sample(kInitStream, 0, kInitRows);
  std::vector<float> onehot(static_cast<std::size_t>(kInitRows * C), 0.0f);
  for (int64_t r = 0; r < kInitRows; ++r) onehot[r * C + init.label[r]] = 4.0f;
  HtfrModel model(cfg, data_init ? data_pool(cfg, seed, init.x, onehot) : random_pool(cfg, seed));
  const ClassificationData test = task.sample(kTestStream, 0, 1024);
  std::vector<float> logits(static_cast<std::size_t>(test.rows * C));
  Curve c{"classes256", label(data_init, reseed), seed, {}, {}};
  const int64_t batch = 128;
  PoolMaintainer maintainer(model.pool(), reseeding(), batch);
  std::vector<float> loss(static_cast<std::size_t>(batch));
  for (int64_t step = 0; step <= report.back(); ++step) {
    for (int64_t r : report) {
      if (r != step) continue;
      model.forward(test.x.data(), test.rows, logits.data());
      double sum = 0.0;
      for (int64_t i = 0; i < test.rows; ++i) {
        const float* row = logits.data() + i * C;
        double top = row[0];
        for (int64_t k = 1; k < C; ++k) top = std::max(top, double(row[k]));
        double z = 0.0;
        for (int64_t k = 0; k < C; ++k) z += std::exp(double(row[k]) - top);
        sum += top + std::log(z) - row[test.label[i]];
      }
      c.steps.push_back(step);
      c.error.push_back(sum / double(test.rows));
    }
    if (step == report.back()) break;
    const ClassificationData rows = task.sample(kTrainStream, step * batch, batch);
    const Batch b{rows.x.data(), batch, nullptr, rows.label.data()};
    model.train_step(b, {nullptr, loss.data(), nullptr});
    if (reseed) maintainer.after_step(model.pool(), b, loss.data(), nullptr);
  }
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string out = argc > 1 ? argv[1] : "init_compare.json";
    const std::vector<int64_t> smooth_report = {0, 100, 250, 500, 1000, 2000};
    const std::vector<int64_t> class_report = {0, 50, 100, 250, 500, 1000};
    std::vector<Curve> curves;
    for (uint64_t seed : {1, 2, 3}) {
      for (bool data : {false, true}) {
        for (bool reseed : {false, true}) {
          curves.push_back(smooth_field(data, reseed, seed, smooth_report));
          curves.push_back(classes(data, reseed, seed, class_report));
        }
      }
    }
    std::ofstream json(out);
    json << "{\"backend\": \"cpu\", \"curves\": [\n";
    for (std::size_t i = 0; i < curves.size(); ++i) {
      const Curve& c = curves[i];
      std::printf("%-12s %-14s seed %llu:", c.task.c_str(), c.init.c_str(),
                  (unsigned long long)c.seed);
      json << "  {\"task\": \"" << c.task << "\", \"init\": \"" << c.init << "\", \"seed\": "
           << c.seed << ", \"steps\": [";
      for (std::size_t k = 0; k < c.steps.size(); ++k) {
        std::printf("  %lld: %.4f", (long long)c.steps[k], c.error[k]);
        json << (k ? ", " : "") << c.steps[k];
      }
      json << "], \"error\": [";
      for (std::size_t k = 0; k < c.error.size(); ++k) json << (k ? ", " : "") << c.error[k];
      json << "]}" << (i + 1 < curves.size() ? "," : "") << "\n";
      std::printf("\n");
    }
    json << "]}\n";
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "htfr_init_compare: %s\n", e.what());
    return 1;
  }
}

// htfr_demo: trains an HTFR on the synthetic smooth field and prints the test RMSE falling and
// the throughput, so a new user sees the library work end to end on either backend in a minute.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "htfr/htfr.hpp"
#include "htfr/synthetic.hpp"

namespace {

constexpr const char* kUsage =
    "usage: htfr_demo [--backend cpu|cuda] [--steps N] [--batch B] [--tensors N] [--seed S]\n"
    "\n"
    "Trains an HTFR (Adam, top-8 softmax blend) on a smooth field R^64 -> R^8 and prints the\n"
    "test RMSE every few hundred steps, then the training and forward throughput.\n"
    "\n"
    "  --backend cpu|cuda  where the model runs (default: cuda when a GPU is visible, else cpu)\n"
    "  --steps N           training steps (default 4000)\n"
    "  --batch B           rows per step (default 256)\n"
    "  --tensors N         HyperTensors in the pool (default 64; top-K is min(8, N))\n"
    "  --seed S            seed of the task and of the pool initialisation (default 1)\n"
    "  --help              print this message\n";

struct Options {
  htfr::Backend backend = htfr::Backend::cpu;
  int64_t steps = 4000;
  int64_t batch = 256;
  int64_t tensors = 64;
  uint64_t seed = 1;
};

/// Thrown for a malformed command line; main prints it with the usage and exits with 2.
struct UsageError {
  std::string message;
};

int64_t parse_count(const std::string& flag, const std::string& text, int64_t max) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || v < 1 || v > max) {
    throw UsageError{flag + " needs an integer in [1, " + std::to_string(max) + "], got '" + text +
                     "'"};
  }
  return static_cast<int64_t>(v);
}

uint64_t parse_seed(const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
  if (text.empty() || text[0] == '-' || *end != '\0' || errno != 0) {
    throw UsageError{"--seed needs a non-negative integer, got '" + text + "'"};
  }
  return static_cast<uint64_t>(v);
}

/// Accepts "--flag value" and "--flag=value". Returns false for --help.
bool parse(int argc, char** argv, Options& opt) {
  opt.backend = htfr::cuda_device_count() > 0 ? htfr::Backend::cuda : htfr::Backend::cpu;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i], value;
    if (flag == "--help" || flag == "-h") return false;
    const std::size_t eq = flag.find('=');
    if (eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
    } else if (flag.rfind("--", 0) == 0 && i + 1 < argc) {
      value = argv[++i];
    } else {
      throw UsageError{flag.rfind("--", 0) == 0 ? flag + " needs a value"
                                                : "unexpected argument '" + flag + "'"};
    }
    if (flag == "--backend") {
      if (value == "cpu") {
        opt.backend = htfr::Backend::cpu;
      } else if (value == "cuda") {
        opt.backend = htfr::Backend::cuda;
      } else {
        throw UsageError{"--backend must be cpu or cuda, got '" + value + "'"};
      }
    } else if (flag == "--steps") {
      opt.steps = parse_count(flag, value, int64_t{1} << 40);
    } else if (flag == "--batch") {
      opt.batch = parse_count(flag, value, int64_t{1} << 24);
    } else if (flag == "--tensors") {
      opt.tensors = parse_count(flag, value, int64_t{1} << 30);
    } else if (flag == "--seed") {
      opt.seed = parse_seed(value);
    } else {
      throw UsageError{"unknown option '" + flag + "'"};
    }
  }
  return true;
}

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw htfr::CudaError(std::string(what) + " failed: " + cudaGetErrorName(status) + " (" +
                          cudaGetErrorString(status) + ")");
  }
}

/// A float array in the memory the backend reads: host memory for the CPU, cudaMalloc'd device
/// memory for CUDA, filled from and read back into host vectors on `stream`.
class Buffer {
 public:
  Buffer(htfr::Backend backend, std::size_t n, cudaStream_t stream) : host_(n), stream_(stream) {
    if (backend == htfr::Backend::cuda) {
      check_cuda(cudaMalloc(reinterpret_cast<void**>(&device_), n * sizeof(float)), "cudaMalloc");
    }
  }
  ~Buffer() {
    if (device_) (void)cudaFree(device_);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  std::vector<float>& host() { return host_; }
  float* data() { return device_ ? device_ : host_.data(); }
  /// Host vector -> device (no-op on the CPU). Pageable memory: returns once the copy is staged,
  /// so the host vector may be refilled right away.
  void upload() {
    if (device_) {
      check_cuda(cudaMemcpyAsync(device_, host_.data(), host_.size() * sizeof(float),
                                 cudaMemcpyHostToDevice, stream_),
                 "cudaMemcpyAsync (upload)");
    }
  }
  /// Device -> host vector, synchronising the stream.
  const std::vector<float>& download() {
    if (device_) {
      check_cuda(cudaMemcpyAsync(host_.data(), device_, host_.size() * sizeof(float),
                                 cudaMemcpyDeviceToHost, stream_),
                 "cudaMemcpyAsync (download)");
      check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    }
    return host_;
  }

 private:
  std::vector<float> host_;
  float* device_ = nullptr;
  cudaStream_t stream_;
};

/// Wall time of GPU work on a stream (CUDA events) or of host work (steady clock).
class Timer {
 public:
  Timer(htfr::Backend backend, cudaStream_t stream) : stream_(stream) {
    if (backend == htfr::Backend::cuda) {
      check_cuda(cudaEventCreate(&start_), "cudaEventCreate");
      check_cuda(cudaEventCreate(&stop_), "cudaEventCreate");
    }
  }
  ~Timer() {
    if (start_) (void)cudaEventDestroy(start_);
    if (stop_) (void)cudaEventDestroy(stop_);
  }
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  void start() {
    if (start_) {
      check_cuda(cudaEventRecord(start_, stream_), "cudaEventRecord");
    } else {
      host_start_ = std::chrono::steady_clock::now();
    }
  }
  /// Seconds since start(); waits for the stream's work to finish.
  double stop() {
    if (!start_) {
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - host_start_).count();
    }
    check_cuda(cudaEventRecord(stop_, stream_), "cudaEventRecord");
    check_cuda(cudaEventSynchronize(stop_), "cudaEventSynchronize");
    float ms = 0.0f;
    check_cuda(cudaEventElapsedTime(&ms, start_, stop_), "cudaEventElapsedTime");
    return 1e-3 * ms;
  }

 private:
  cudaStream_t stream_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  std::chrono::steady_clock::time_point host_start_;
};

/// Owns the CUDA stream the demo runs on (none on the CPU).
struct Stream {
  cudaStream_t s = nullptr;
  explicit Stream(htfr::Backend backend) {
    if (backend == htfr::Backend::cuda) {
      check_cuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    }
  }
  ~Stream() {
    if (s) (void)cudaStreamDestroy(s);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
};

double rmse(const std::vector<float>& y, const std::vector<float>& target) {
  double sum = 0.0;
  for (std::size_t i = 0; i < y.size(); ++i) sum += std::pow(double(y[i]) - target[i], 2);
  return std::sqrt(sum / double(y.size()));
}

void run(const Options& opt) {
  htfr::SmoothFieldSpec spec;  // D = 64, M = 8
  spec.seed = opt.seed;
  const htfr::SmoothFieldTask task(spec);
  const int64_t D = spec.input_dim, M = spec.output_dim;

  // The hyperparameters of tests/test_learning.cpp, where they were chosen by measurement.
  htfr::HtfrConfig cfg;
  cfg.input_dim = D;
  cfg.output_dim = M;
  cfg.num_tensors = opt.tensors;
  cfg.top_k = std::min<int64_t>(8, opt.tensors);
  cfg.loss = htfr::Loss::mse;
  cfg.reduction = htfr::Reduction::mean;
  cfg.optimizer = htfr::Optimizer::adam;
  cfg.lr = 0.02f;
  cfg.lr_geometry = 0.002f;

  if (opt.backend == htfr::Backend::cuda && htfr::cuda_device_count() == 0) {
    throw htfr::NoDevice("--backend cuda needs a GPU, but no CUDA device is usable");
  }
  Stream stream(opt.backend);
  // Drawn on the CPU and cloned, so both backends start from the same parameters for a seed.
  htfr::HyperTensorPool pool =
      htfr::HyperTensorPool::create(htfr::Backend::cpu, cfg.num_tensors, D, M);
  pool.init_random(opt.seed, 0.3f, 1.0f, 0.5f, 0.0f);
  if (opt.backend == htfr::Backend::cuda) pool = pool.clone(htfr::Backend::cuda, 0, stream.s);
  htfr::HtfrModel model(cfg, std::move(pool));

  std::string device = "CPU reference backend";
  if (opt.backend == htfr::Backend::cuda) {
    cudaDeviceProp prop{};
    check_cuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    device = std::string("CUDA backend on ") + prop.name;
  }
  std::printf("htfr_demo: %s\n", device.c_str());
  std::printf(
      "task: smooth field R^%lld -> R^%lld, seed %llu; model: N=%lld K=%lld, Adam "
      "lr=%g lr_geometry=%g; batch %lld, %lld steps\n",
      (long long)D, (long long)M, (unsigned long long)opt.seed, (long long)cfg.num_tensors,
      (long long)cfg.top_k, cfg.lr, cfg.lr_geometry, (long long)opt.batch, (long long)opt.steps);

  constexpr int64_t kTestRows = 4096;
  const htfr::RegressionData test = task.sample(htfr::kTestStream, 0, kTestRows);
  Buffer test_x(opt.backend, test.x.size(), stream.s), test_y(opt.backend, test.y.size(), stream.s);
  test_x.host() = test.x;
  test_x.upload();
  auto test_rmse = [&] {
    model.forward(test_x.data(), kTestRows, test_y.data(), stream.s);
    return rmse(test_y.download(), test.y);
  };

  const double initial = test_rmse();
  std::printf("step %8lld  test RMSE %.5f\n", 0LL, initial);
  std::fflush(stdout);

  Buffer x(opt.backend, static_cast<std::size_t>(opt.batch * D), stream.s);
  Buffer y(opt.backend, static_cast<std::size_t>(opt.batch * M), stream.s);
  Timer timer(opt.backend, stream.s);
  const int64_t report = opt.steps <= 5000 ? 500 : 1000 * ((opt.steps + 9999) / 10000);
  double train_seconds = 0.0, last = initial;
  for (int64_t step = 0; step < opt.steps; ++step) {
    task.fill(htfr::kTrainStream, step * opt.batch, opt.batch, x.host().data(), y.host().data());
    x.upload();
    y.upload();
    htfr::Batch batch;
    batch.x = x.data();
    batch.rows = opt.batch;
    batch.target = y.data();
    timer.start();
    model.train_step(batch, {}, stream.s);
    train_seconds += timer.stop();
    if ((step + 1) % report == 0 || step + 1 == opt.steps) {
      last = test_rmse();
      std::printf("step %8lld  test RMSE %.5f  (%.1fx lower)  train %.0f rows/s\n",
                  (long long)step + 1, last, initial / last,
                  double(step + 1) * double(opt.batch) / train_seconds);
      std::fflush(stdout);
    }
  }

  // Forward throughput on the test set, after one warm-up call.
  model.forward(test_x.data(), kTestRows, test_y.data(), stream.s);
  const int repeats = opt.backend == htfr::Backend::cuda ? 50 : 5;
  timer.start();
  for (int r = 0; r < repeats; ++r) {
    model.forward(test_x.data(), kTestRows, test_y.data(), stream.s);
  }
  const double forward_seconds = timer.stop();

  const htfr::PoolStatistics stats = model.statistics(stream.s);
  std::printf("\ntest RMSE %.5f -> %.5f (%.1fx lower); %.1f %% of the tensors were used\n", initial,
              last, initial / last, 100.0 * stats.active_fraction);
  std::printf("training: %.0f rows/s (%lld rows in %.2f s of train_step)\n",
              double(opt.steps) * double(opt.batch) / train_seconds,
              (long long)(opt.steps * opt.batch), train_seconds);
  std::printf("forward:  %.0f rows/s (%d calls of %lld rows in %.3f s)\n",
              double(repeats) * double(kTestRows) / forward_seconds, repeats, (long long)kTestRows,
              forward_seconds);
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  try {
    if (!parse(argc, argv, opt)) {
      std::fputs(kUsage, stdout);
      return 0;
    }
  } catch (const UsageError& e) {
    std::fprintf(stderr, "htfr_demo: %s\n\n%s", e.message.c_str(), kUsage);
    return 2;
  }
  try {
    run(opt);
  } catch (const htfr::Error& e) {
    std::fprintf(stderr, "htfr_demo: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "htfr_demo: unexpected error: %s\n", e.what());
    return 1;
  }
  return 0;
}

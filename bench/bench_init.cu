// Scale benchmark of the data-driven initialisation: k-means and init_pool_from_data at up to
// N = 131,072 clusters over D = 16,384 on random rows generated on the device. Both calls
// synchronise, so wall-clock time is the measure; after an untimed first call, one Lloyd iteration
// is the difference between runs of 1 and 3 iterations, halved. Writes one JSON object.
#include <cuda_runtime_api.h>
#include <curand.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <htfr/htfr.hpp>
#include <htfr/init.hpp>
#include <iostream>
#include <string>

#include "bench_common.cuh"

namespace {

using namespace htfr;

double seconds_of(const std::function<void()>& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  try {
    int64_t rows = 262144, dim = 16384, k = 131072, out_dim = 1024;
    std::string precision = "tf32", out = "bench_init.json";
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string a = argv[i], v = argv[i + 1];
      if (a == "--rows") rows = std::stoll(v);
      else if (a == "--dim") dim = std::stoll(v);
      else if (a == "--k") k = std::stoll(v);
      else if (a == "--out-dim") out_dim = std::stoll(v);
      else if (a == "--precision") precision = v;
      else if (a == "--out") out = v;
      else throw InvalidArgument("unknown option " + a);
    }
    if (cuda_device_count() == 0) {
      std::cerr << "bench_init needs a CUDA device\n";
      return 2;
    }
    cudaStream_t stream;
    HTFR_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    float *x = nullptr, *targets = nullptr;
    HTFR_CUDA_CHECK(cudaMalloc(&x, sizeof(float) * rows * dim));
    HTFR_CUDA_CHECK(cudaMalloc(&targets, sizeof(float) * rows * out_dim));
    curandGenerator_t gen;
    HTFR_CURAND_CHECK(curandCreateGenerator(&gen, CURAND_RNG_PSEUDO_PHILOX4_32_10));
    HTFR_CURAND_CHECK(curandSetPseudoRandomGeneratorSeed(gen, 1));
    HTFR_CURAND_CHECK(curandGenerateNormal(gen, x, rows * dim, 0.0f, 1.0f));
    HTFR_CURAND_CHECK(curandGenerateNormal(gen, targets, rows * out_dim, 0.0f, 1.0f));
    HTFR_CURAND_CHECK(curandDestroyGenerator(gen));
    HTFR_CUDA_CHECK(cudaDeviceSynchronize());

    KMeansOptions km;
    km.seed = 3;
    km.stop_when_stable = false;
    km.seeding = KMeansSeeding::random_rows;
    km.precision = precision == "tf32" ? Precision::tf32 : Precision::fp32;
    km.check_finite = true;
    const auto run = [&](int iterations) {
      km.iterations = iterations;
      return seconds_of([&] { (void)kmeans(Backend::cuda, x, rows, dim, k, km, stream); });
    };
    const double warmup = run(1);  // library start-up, allocator growth: not part of the figures
    const double t1 = run(1), t3 = run(3);
    const double per_iteration = (t3 - t1) / 2.0;
    const double gemm_tflops = 2.0 * rows * k * dim / per_iteration / 1e12;
    std::printf("kmeans rows=%lld dim=%lld k=%lld %s: first call %.2f s; then 1 iteration %.2f s, "
                "3 iterations %.2f s, %.2f s per iteration (distance GEMM %.0f TFLOP/s)\n",
                (long long)rows, (long long)dim, (long long)k, precision.c_str(), warmup, t1, t3,
                per_iteration, gemm_tflops);
    auto pool = HyperTensorPool::create(Backend::cuda, k, dim, out_dim, Precision::bf16);
    DataInitOptions opt;
    opt.kmeans = km;
    opt.kmeans.iterations = 3;
    const double t_init = seconds_of([&] {
      (void)init_pool_from_data(pool, x, rows, dim, targets, out_dim, opt, stream);
    });
    std::printf("init_pool_from_data (3 Lloyd iterations, %d power iterations): %.2f s\n",
                opt.power_iterations, t_init);
    cudaDeviceProp prop{};
    HTFR_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    const std::time_t now = std::time(nullptr);
    char date[32];
    std::strftime(date, sizeof(date), "%Y-%m-%d", std::gmtime(&now));
    const char* commit = std::getenv("HTFR_COMMIT");
    std::ofstream(out) << "{\"device\": \"" << bench::json_escape(prop.name) << "\", \"commit\": \""
                       << bench::json_escape(commit ? commit : "unknown") << "\", \"date\": \""
                       << date << "\", \"rows\": " << rows << ", \"dim\": " << dim
                       << ", \"k\": " << k << ", \"out_dim\": " << out_dim
                       << ", \"precision\": \"" << precision << "\", \"first_call_s\": " << warmup
                       << ", \"kmeans_1_iter_s\": " << t1
                       << ", \"kmeans_3_iter_s\": " << t3 << ", \"seconds_per_iteration\": "
                       << per_iteration << ", \"iteration_gemm_tflops\": " << gemm_tflops
                       << ", \"init_pool_3_iter_s\": " << t_init << "}\n";
    HTFR_CUDA_CHECK(cudaFree(x));
    HTFR_CUDA_CHECK(cudaFree(targets));
    HTFR_CUDA_CHECK(cudaStreamDestroy(stream));
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "bench_init: " << e.what() << "\n";
    return 1;
  }
}

// End-to-end and per-stage benchmark of the CUDA backend at the DESIGN §7 shapes: measures the
// device's copy and GEMM ceilings in the same run, times each operation with CUDA events on its
// stream after warm-up (median of many), and writes JSON for bench/make_results.py.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <ctime>
#include <fstream>
#include <functional>
#include <htfr/htfr.hpp>
#include <iostream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "bench_common.cuh"
#include "blend.cuh"
#include "detail/check.hpp"
#include "distance.cuh"
#include "pool_ops.cuh"
#include "select_topk.cuh"

namespace {

using namespace htfr;
using namespace htfr::bench;

struct Shape {
  std::string name;
  int64_t D, N, M, K;
};

struct Options {
  std::vector<std::string> shapes = {"S1", "S2"};
  std::vector<int64_t> rows = {256, 1024, 4096};
  std::vector<std::string> precisions = {"fp32", "bf16"};
  bool big = true;
  bool profile = false;  ///< only train steps at the first shape/precision/rows, for profilers
  int warmup = 5;
  int iters = 25;
  std::string out = "bench_htfr.json";
};

const Shape kShapes[] = {{"S1", 16384, 8192, 1024, 16},
                         {"S2", 4096, 16384, 4096, 24},
                         {"BIG", 4096, 131072, 4096, 32}};

Precision parse_precision(const std::string& s) {
  if (s == "fp32") return Precision::fp32;
  if (s == "tf32") return Precision::tf32;
  if (s == "bf16") return Precision::bf16;
  if (s == "fp16") return Precision::fp16;
  throw InvalidArgument("unknown precision " + s);
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(item);
  return out;
}

struct Ceilings {
  double copy_gbps = 0, gemm_bf16_tflops = 0, gemm_fp32_tflops = 0, gemm_tf32_tflops = 0;
};

Ceilings measure_ceilings(cudaStream_t stream) {
  Ceilings c;
  c.copy_gbps = measure_copy_gbps(stream);

  const int m = 4096, n = 4096, k = 16384;
  cublasHandle_t h;
  HTFR_CUBLAS_CHECK(cublasCreate(&h));
  HTFR_CUBLAS_CHECK(cublasSetStream(h, stream));
  RandomBuffer A(std::size_t(m) * k, 1, stream), B(std::size_t(k) * n, 2, stream);
  float* C = nullptr;
  void *Ah = nullptr, *Bh = nullptr;
  HTFR_CUDA_CHECK(cudaMalloc(&C, sizeof(float) * m * n));
  HTFR_CUDA_CHECK(cudaMalloc(&Ah, 2 * std::size_t(m) * k));
  HTFR_CUDA_CHECK(cudaMalloc(&Bh, 2 * std::size_t(k) * n));
  detail::launch_to_half(A.ptr, Ah, std::int64_t(m) * k, Precision::bf16, stream);
  detail::launch_to_half(B.ptr, Bh, std::int64_t(k) * n, Precision::bf16, stream);
  const float alpha = 1, beta = 0;
  const double flops = 2.0 * m * n * k;
  auto gemm = [&](cudaDataType_t type, cublasComputeType_t compute, const void* pa,
                  const void* pb) {
    return time_op(stream, 3, 10, [&] {
      HTFR_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, pa, type, k,
                                     pb, type, k, &beta, C, CUDA_R_32F, m, compute,
                                     CUBLAS_GEMM_DEFAULT));
    });
  };
  c.gemm_fp32_tflops = flops / (gemm(CUDA_R_32F, CUBLAS_COMPUTE_32F, A.ptr, B.ptr).median_ms * 1e9);
  c.gemm_tf32_tflops =
      flops / (gemm(CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32, A.ptr, B.ptr).median_ms * 1e9);
  c.gemm_bf16_tflops = flops / (gemm(CUDA_R_16BF, CUBLAS_COMPUTE_32F, Ah, Bh).median_ms * 1e9);
  HTFR_CUDA_CHECK(cudaFree(C));
  HTFR_CUDA_CHECK(cudaFree(Ah));
  HTFR_CUDA_CHECK(cudaFree(Bh));
  HTFR_CUBLAS_CHECK(cublasDestroy(h));
  return c;
}

/// The benchmarked model: cross-entropy, SGD at the white paper's rates, random pool (seed 7),
/// no per-call NaN/Inf read-back so calls stay asynchronous.
HtfrModel bench_model(const Shape& s, Precision prec, cudaStream_t stream) {
  HtfrConfig cfg;
  cfg.input_dim = s.D;
  cfg.output_dim = s.M;
  cfg.num_tensors = s.N;
  cfg.top_k = s.K;
  cfg.loss = Loss::cross_entropy;
  cfg.lr = 0.05f;
  cfg.lr_geometry = 0.005f;
  cfg.precision = prec;
  cfg.check_finite = false;
  auto pool = HyperTensorPool::create(Backend::cuda, s.N, s.D, s.M, prec);
  pool.init_random(7, 0.3f, 1.0f, 1.0f, 0.1f, stream);
  return HtfrModel(cfg, std::move(pool));
}

/// Device array of `rows` class indices spread over [0, M).
int32_t* make_targets(int64_t rows, int64_t m) {
  std::vector<int32_t> host(rows);
  for (int64_t r = 0; r < rows; ++r) host[r] = int32_t((r * 7919) % m);
  int32_t* targets = nullptr;
  HTFR_CUDA_CHECK(cudaMalloc(&targets, sizeof(int32_t) * rows));
  HTFR_CUDA_CHECK(
      cudaMemcpy(targets, host.data(), sizeof(int32_t) * rows, cudaMemcpyHostToDevice));
  return targets;
}

struct Result {
  std::string op, shape, precision;
  int64_t rows, N, D, M, K;
  Timing t;
  double flops, bytes, floor_ms;
};

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "missing value after " << a << "\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--shapes") opt.shapes = split(next());
    else if (a == "--rows") {
      opt.rows.clear();
      for (auto& r : split(next())) opt.rows.push_back(std::stoll(r));
    } else if (a == "--precisions") opt.precisions = split(next());
    else if (a == "--no-big") opt.big = false;
    else if (a == "--profile") opt.profile = true;
    else if (a == "--iters") opt.iters = std::stoi(next());
    else if (a == "--warmup") opt.warmup = std::stoi(next());
    else if (a == "--out") opt.out = next();
    else {
      std::cerr << "usage: bench_htfr [--shapes S1,S2] [--rows 256,1024,4096] "
                   "[--precisions fp32,bf16] [--no-big] [--iters N] [--warmup N] [--out F]\n";
      return 2;
    }
  }
  try {
    if (cuda_device_count() == 0) {
      std::cerr << "bench_htfr needs a CUDA device\n";
      return 1;
    }
    cudaStream_t stream;
    HTFR_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaDeviceProp prop{};
    HTFR_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    Ceilings ceil;
    if (opt.profile) {
      // A few training steps and nothing else, so a profiler sees only their kernels.
      const Shape& s = *std::find_if(std::begin(kShapes), std::end(kShapes),
                                     [&](const Shape& sh) { return sh.name == opt.shapes[0]; });
      const int64_t rows = opt.rows[0];
      const Precision prec = parse_precision(opt.precisions[0]);
      HtfrModel model = bench_model(s, prec, stream);
      RandomBuffer x(std::size_t(rows) * s.D, 11, stream);
      int32_t* targets = make_targets(rows, s.M);
      const Timing t = time_op(stream, 1, opt.iters, [&] {
        model.train_step({x.ptr, rows, nullptr, targets}, {}, stream);
      });
      std::printf("profile: train %s %s rows=%lld median %.3f ms\n", s.name.c_str(),
                  opt.precisions[0].c_str(), (long long)rows, t.median_ms);
      HTFR_CUDA_CHECK(cudaFree(targets));
      return 0;
    }
    ceil = measure_ceilings(stream);
    std::printf("device %s: copy %.0f GB/s, GEMM bf16 %.0f / tf32 %.0f / fp32 %.1f TFLOP/s\n",
                prop.name, ceil.copy_gbps, ceil.gemm_bf16_tflops, ceil.gemm_tf32_tflops,
                ceil.gemm_fp32_tflops);

    std::vector<Result> results;
    std::vector<std::tuple<std::string, std::string, double>> overlaps;
    for (const Shape& s : kShapes) {
      const bool wanted = std::find(opt.shapes.begin(), opt.shapes.end(), s.name) !=
                              opt.shapes.end() || (s.name == "BIG" && opt.big);
      if (!wanted) continue;
      const int64_t max_rows = *std::max_element(opt.rows.begin(), opt.rows.end());
      RandomBuffer x(std::size_t(max_rows) * s.D, 11, stream);
      int32_t* targets = make_targets(max_rows, s.M);
      float* y = nullptr;
      HTFR_CUDA_CHECK(cudaMalloc(&y, sizeof(float) * max_rows * s.M));
      std::vector<int32_t> fp32_sel;
      for (const std::string& pname : opt.precisions) {
        const Precision prec = parse_precision(pname);
        HtfrModel model = bench_model(s, prec, stream);
        const HtfrConfig& cfg = model.config();
        const double s_param = (prec == Precision::bf16 || prec == Precision::fp16) ? 2 : 4;
        const double gemm_rate =
            (prec == Precision::fp32 ? ceil.gemm_fp32_tflops
                                     : prec == Precision::tf32 ? ceil.gemm_tf32_tflops
                                                               : ceil.gemm_bf16_tflops) * 1e12;
        const double bw = ceil.copy_gbps * 1e9;

        // top-K overlap of this precision's selection with fp32's, on the same rows.
        {
          const int64_t rows = std::min<int64_t>(max_rows, 4096);
          int32_t* idx = nullptr;
          float* dist = nullptr;
          HTFR_CUDA_CHECK(cudaMalloc(&idx, sizeof(int32_t) * rows * s.K));
          HTFR_CUDA_CHECK(cudaMalloc(&dist, sizeof(float) * rows * s.K));
          model.select(x.ptr, rows, idx, dist, stream);
          std::vector<int32_t> sel(rows * s.K);
          // The stream is non-blocking: copy on it and wait, never through the legacy stream.
          HTFR_CUDA_CHECK(cudaMemcpyAsync(sel.data(), idx, sizeof(int32_t) * sel.size(),
                                          cudaMemcpyDeviceToHost, stream));
          HTFR_CUDA_CHECK(cudaStreamSynchronize(stream));
          if (prec == Precision::fp32) {
            fp32_sel = sel;
          } else if (!fp32_sel.empty()) {
            int64_t hits = 0;
            for (int64_t r = 0; r < rows; ++r) {
              std::set<int32_t> a(fp32_sel.begin() + r * s.K, fp32_sel.begin() + (r + 1) * s.K);
              for (int64_t k = 0; k < s.K; ++k) hits += a.count(sel[r * s.K + k]);
            }
            overlaps.emplace_back(s.name, pname, double(hits) / double(rows * s.K));
          }
          HTFR_CUDA_CHECK(cudaFree(idx));
          HTFR_CUDA_CHECK(cudaFree(dist));
        }

        for (int64_t rows : opt.rows) {
          if (s.name == "BIG" && rows != 4096) continue;
          const double gemm_flops = 2.0 * rows * s.N * s.D;
          const double touched = std::min<double>(double(s.N), double(rows * s.K));
          const double fwd_bytes = rows * s.D * 4.0 + s.N * s.D * s_param +
                                   touched * 2 * s.M * s_param + rows * s.M * 4.0;
          const double fwd_floor = (gemm_flops / gemm_rate + fwd_bytes / bw) * 1e3;
          const double blend_flops = 2.0 * rows * s.K * 2 * s.M;
          Timing tf = time_op(stream, opt.warmup, opt.iters,
                              [&] { model.forward(x.ptr, rows, y, stream); });
          results.push_back({"forward", s.name, pname, rows, s.N, s.D, s.M, s.K, tf,
                             gemm_flops + blend_flops, fwd_bytes, fwd_floor});
          if (s.name == "BIG") continue;
          // Training floor: forward, the loss gradient written and read once, the touched
          // tensors' fp32 controls and normals read and written, x read again for the normals.
          const double train_bytes = fwd_bytes + rows * s.M * 4.0 * 2 +
                                     touched * (3 * s.M + s.D) * 4.0 * 2 + rows * s.D * 4.0;
          const double train_floor = (gemm_flops / gemm_rate + train_bytes / bw) * 1e3;
          Batch batch{x.ptr, rows, nullptr, targets};
          Timing tt = time_op(stream, opt.warmup, opt.iters,
                              [&] { model.train_step(batch, {}, stream); });
          results.push_back({"train", s.name, pname, rows, s.N, s.D, s.M, s.K, tt,
                             gemm_flops + 3 * blend_flops, train_bytes, train_floor});
        }
        // Where the forward time goes, at 4096 rows: the GEMM, the selection, the blend.
        if (std::find(opt.rows.begin(), opt.rows.end(), 4096) != opt.rows.end()) {
          const int64_t rows = 4096;
          const PoolView v = model.pool().view();
          float* dots = nullptr;
          void* xh = nullptr;
          int32_t* idx = nullptr;
          float* dist = nullptr;
          detail::ActiveCoef* coef = nullptr;
          HTFR_CUDA_CHECK(cudaMalloc(&dots, sizeof(float) * rows * s.N));
          HTFR_CUDA_CHECK(cudaMalloc(&xh, 2 * rows * s.D));
          HTFR_CUDA_CHECK(cudaMalloc(&idx, sizeof(int32_t) * rows * s.K));
          HTFR_CUDA_CHECK(cudaMalloc(&dist, sizeof(float) * rows * s.K));
          HTFR_CUDA_CHECK(cudaMalloc(&coef, sizeof(detail::ActiveCoef) * rows * s.K));
          cublasHandle_t h;
          HTFR_CUBLAS_CHECK(cublasCreate(&h));
          const double gemm_flops = 2.0 * rows * s.N * s.D;
          Timing tg = time_op(stream, opt.warmup, opt.iters, [&] {
            detail::launch_distance_gemm(h, x.ptr, xh, rows, v, prec, dots, stream);
          });
          results.push_back({"stage:gemm", s.name, pname, rows, s.N, s.D, s.M, s.K, tg,
                             gemm_flops, rows * s.D * 4.0 + s.N * s.D * s_param +
                                             rows * s.N * 4.0,
                             gemm_flops / gemm_rate * 1e3});
          Timing ts = time_op(stream, opt.warmup, opt.iters, [&] {
            detail::launch_select_topk(dots, v.offsets, rows, s.N, int(s.K), idx, dist, stream);
          });
          results.push_back({"stage:select", s.name, pname, rows, s.N, s.D, s.M, s.K, ts, 0,
                             rows * s.N * 4.0, rows * s.N * 4.0 / bw * 1e3});
          Timing tb = time_op(stream, opt.warmup, opt.iters, [&] {
            detail::launch_blend(detail::field_params(cfg), rows, int(s.K), idx, dist, v, prec,
                                 coef, y, stream);
          });
          const double touched = std::min<double>(double(s.N), double(rows * s.K));
          const double blend_bytes = touched * 2 * s.M * s_param + rows * s.M * 4.0;
          results.push_back({"stage:blend", s.name, pname, rows, s.N, s.D, s.M, s.K, tb,
                             2.0 * rows * s.K * 2 * s.M, blend_bytes, blend_bytes / bw * 1e3});
          HTFR_CUBLAS_CHECK(cublasDestroy(h));
          for (void* p : {(void*)dots, xh, (void*)idx, (void*)dist, (void*)coef}) {
            HTFR_CUDA_CHECK(cudaFree(p));
          }
        }
      }
      HTFR_CUDA_CHECK(cudaFree(targets));
      HTFR_CUDA_CHECK(cudaFree(y));
    }

    char date[32];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof(date), "%Y-%m-%d", std::gmtime(&now));
    const char* commit = std::getenv("HTFR_COMMIT");
    int runtime = 0;
    cudaRuntimeGetVersion(&runtime);
    std::ofstream out(opt.out + ".tmp");
    out << "{\"impl\": \"htfr\", \"device\": \"" << json_escape(prop.name) << "\", \"commit\": \""
        << (commit ? commit : "unknown") << "\", \"date\": \"" << date << "\", \"cuda\": \""
        << runtime / 1000 << "." << (runtime % 1000) / 10 << "\",\n \"ceilings\": {\"copy_gbps\": "
        << ceil.copy_gbps << ", \"gemm_bf16_tflops\": " << ceil.gemm_bf16_tflops
        << ", \"gemm_tf32_tflops\": " << ceil.gemm_tf32_tflops
        << ", \"gemm_fp32_tflops\": " << ceil.gemm_fp32_tflops << "},\n \"results\": [\n";
    std::printf("\n%-13s %-4s %-5s %6s %10s %12s %8s %8s %9s %7s\n", "op", "shp", "prec", "rows",
                "median_ms", "rows/s", "TFLOP/s", "GB/s", "floor_ms", "x_floor");
    for (std::size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      const double sec = r.t.median_ms * 1e-3;
      const double rps = r.rows / sec, tflops = r.flops / sec / 1e12, gbps = r.bytes / sec / 1e9;
      out << "  {\"op\": \"" << r.op << "\", \"shape\": \"" << r.shape << "\", \"precision\": \""
          << r.precision << "\", \"rows\": " << r.rows << ", \"N\": " << r.N << ", \"D\": " << r.D
          << ", \"M\": " << r.M << ", \"K\": " << r.K << ", \"median_ms\": " << r.t.median_ms
          << ", \"p90_ms\": " << r.t.p90_ms << ", \"min_ms\": " << r.t.min_ms
          << ", \"rows_per_s\": " << rps << ", \"tflops\": " << tflops << ", \"gbps\": " << gbps
          << ", \"floor_ms\": " << r.floor_ms << ", \"over_floor\": "
          << r.t.median_ms / r.floor_ms << "}" << (i + 1 < results.size() ? "," : "") << "\n";
      std::printf("%-13s %-4s %-5s %6lld %10.3f %12.0f %8.1f %8.0f %9.3f %7.2f\n", r.op.c_str(),
                  r.shape.c_str(), r.precision.c_str(), (long long)r.rows, r.t.median_ms, rps,
                  tflops, gbps, r.floor_ms, r.t.median_ms / r.floor_ms);
    }
    out << " ],\n \"topk_overlap\": [";
    for (std::size_t i = 0; i < overlaps.size(); ++i) {
      const auto& [shape, prec, ov] = overlaps[i];
      out << (i ? ", " : "") << "{\"shape\": \"" << shape << "\", \"precision\": \"" << prec
          << "\", \"overlap\": " << ov << "}";
      std::printf("top-K overlap %s %s vs fp32: %.4f\n", shape.c_str(), prec.c_str(), ov);
    }
    out << "]}\n";
    out.close();
    if (!out) throw Error("cannot write " + opt.out);
    std::rename((opt.out + ".tmp").c_str(), opt.out.c_str());
    HTFR_CUDA_CHECK(cudaStreamDestroy(stream));
  } catch (const htfr::Error& e) {
    std::cerr << "bench_htfr: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

// Benchmark of the projection stack on the GPU: the FWHT at 2^10 .. 2^17 (fp32 and bf16) against
// the copy bandwidth measured in the same run, CountSketch (dense and sparse) rows/s, and the
// Stage 1 and Stage 2 stacks of DESIGN §4. CUDA-event medians after warm-up; writes JSON for
// bench/make_results.py.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <htfr/htfr.hpp>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "bench_common.cuh"

namespace {

using namespace htfr;
using namespace htfr::bench;

struct Result {
  std::string op, name, dtype;
  int64_t rows = 0, n = 0;
  double bytes = 0;  // bytes that must move at least once (read + written)
  Timing t;
};

// Stage shapes (DESIGN §4): Stage 1 raw window features 98,560 -> CountSketch 32,768 -> SRHT
// 16,384; Stage 2 input [1,024 embedding, 16 x 640 token embeddings, 64 metadata] = 11,328 ->
// CountSketch 8,192 -> SRHT 4,096.
struct StackShape {
  const char* name;
  int64_t raw, sketch, out;
};
constexpr StackShape kStacks[] = {{"stage1", 98560, 32768, 16384}, {"stage2", 11328, 8192, 4096}};

struct Options {
  int warmup = 5;
  int iters = 30;
  int64_t fwht_bytes = int64_t{256} << 20;  // input bytes per FWHT call (fp32)
  int64_t stack_rows = 4096;
  std::string out = "bench_projection.json";
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw InvalidArgument("missing value after " + a);
      return argv[++i];
    };
    if (a == "--warmup") o.warmup = std::stoi(next());
    else if (a == "--iters") o.iters = std::stoi(next());
    else if (a == "--fwht-mib") o.fwht_bytes = std::stoll(next()) << 20;
    else if (a == "--rows") o.stack_rows = std::stoll(next());
    else if (a == "--out") o.out = next();
    else throw InvalidArgument("unknown option " + a);
  }
  return o;
}

template <typename T>
struct DeviceVector {
  T* ptr = nullptr;
  explicit DeviceVector(std::size_t n) { HTFR_CUDA_CHECK(cudaMalloc(&ptr, std::max<std::size_t>(n, 1) * sizeof(T))); }
  explicit DeviceVector(const std::vector<T>& v) : DeviceVector(v.size()) {
    HTFR_CUDA_CHECK(cudaMemcpy(ptr, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    HTFR_CUDA_CHECK(cudaDeviceSynchronize());  // the pageable copy's DMA may still be in flight
  }
  ~DeviceVector() { cudaFree(ptr); }
  DeviceVector(const DeviceVector&) = delete;
  DeviceVector& operator=(const DeviceVector&) = delete;
};

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options opt = parse(argc, argv);
    if (cuda_device_count() == 0) {
      std::cerr << "bench_projection needs a CUDA device\n";
      return 2;
    }
    cudaStream_t stream;
    HTFR_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaDeviceProp prop{};
    HTFR_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    const double copy_gbps = measure_copy_gbps(stream);
    std::printf("device %s: copy %.0f GB/s\n", prop.name, copy_gbps);
    std::vector<Result> results;
    const auto record = [&](Result r) {
      const double gbps = r.bytes / (r.t.median_ms * 1e-3) / 1e9;
      std::printf("%-12s %-8s %-5s rows=%-9lld n=%-7lld median %8.4f ms  %7.0f GB/s  %5.1f%% of copy  %.3g rows/s\n",
                  r.op.c_str(), r.name.c_str(), r.dtype.c_str(), (long long)r.rows,
                  (long long)r.n, r.t.median_ms, gbps, 100.0 * gbps / copy_gbps,
                  r.rows / (r.t.median_ms * 1e-3));
      results.push_back(std::move(r));
    };

    // FWHT: enough rows to move fwht_bytes of fp32 input per call (every SM busy many times).
    {
      const int64_t elems = opt.fwht_bytes / 4;
      RandomBuffer x(static_cast<std::size_t>(elems), 1, stream);
      DeviceVector<float> y(static_cast<std::size_t>(elems));
      DeviceVector<__nv_bfloat16> xb(static_cast<std::size_t>(elems)), yb(static_cast<std::size_t>(elems));
      // Random bf16 rows (a transform of the random fp32 data; any non-trivial values do).
      fwht(Backend::cuda, x.ptr, DType::f32, xb.ptr, DType::bf16, elems / 1024, 1024, stream);
      DeviceVector<char> scratch(fwht_workspace_bytes(elems / (int64_t{1} << 17), int64_t{1} << 17,
                                                      DType::bf16));
      for (int log_n = 10; log_n <= 17; ++log_n) {
        const int64_t n = int64_t{1} << log_n, rows = elems / n;
        Result r{"fwht", "2^" + std::to_string(log_n), "fp32", rows, n, 8.0 * rows * n, {}};
        r.t = time_op(stream, opt.warmup, opt.iters, [&] {
          fwht(Backend::cuda, x.ptr, DType::f32, y.ptr, DType::f32, rows, n, stream);
        });
        record(r);
        Result b{"fwht", "2^" + std::to_string(log_n), "bf16", rows, n, 4.0 * rows * n, {}};
        b.t = time_op(stream, opt.warmup, opt.iters, [&] {
          fwht(Backend::cuda, xb.ptr, DType::bf16, yb.ptr, DType::bf16, rows, n, stream, 0,
               scratch.ptr);
        });
        record(b);
      }
    }

    const int64_t rows = opt.stack_rows;
    for (const StackShape& s : kStacks) {
      RandomBuffer raw(static_cast<std::size_t>(rows * s.raw), 2, stream);
      DeviceVector<float> sketch(static_cast<std::size_t>(rows * s.sketch));
      DeviceVector<__nv_bfloat16> out(static_cast<std::size_t>(rows * s.out));
      const auto cs = CountSketch::create(Backend::cuda, s.raw, s.sketch, 11);
      const auto srht = BlockSrht::create(Backend::cuda, s.sketch, s.out, 0, 12);
      Result c{"countsketch", s.name, "fp32", rows, s.raw,
               4.0 * rows * (s.raw + s.sketch), {}};
      c.t = time_op(stream, opt.warmup, opt.iters,
                    [&] { cs.apply(raw.ptr, sketch.ptr, rows, stream); });
      record(c);
      Result h{"srht", s.name, "bf16", rows, s.sketch, 4.0 * rows * s.sketch + 2.0 * rows * s.out, {}};
      h.t = time_op(stream, opt.warmup, opt.iters,
                    [&] { srht.apply(sketch.ptr, out.ptr, DType::bf16, rows, stream); });
      record(h);
      ProjectionStack stack(Backend::cuda);
      stack.add(CountSketch::create(Backend::cuda, s.raw, s.sketch, 11));
      stack.add(BlockSrht::create(Backend::cuda, s.sketch, s.out, 0, 12));
      Result st{"stack", s.name, "bf16", rows, s.raw, 4.0 * rows * s.raw + 2.0 * rows * s.out, {}};
      st.t = time_op(stream, opt.warmup, opt.iters,
                     [&] { stack.apply(raw.ptr, out.ptr, DType::bf16, rows, stream); });
      record(st);
    }

    // Sparse CountSketch: hashed indicators, 1,024 non-zeros per row out of 2^20 features.
    {
      const int64_t nnz_per_row = 1024, features = int64_t{1} << 20, width = 32768;
      std::vector<int64_t> offsets(static_cast<std::size_t>(rows + 1));
      std::vector<int32_t> indices(static_cast<std::size_t>(rows * nnz_per_row));
      uint64_t state = 5;
      for (int64_t r = 0; r <= rows; ++r) offsets[r] = r * nnz_per_row;
      for (auto& i : indices) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        i = static_cast<int32_t>((state >> 33) % features);
      }
      DeviceVector<int64_t> doff(offsets);
      DeviceVector<int32_t> didx(indices);
      RandomBuffer vals(indices.size(), 3, stream);
      DeviceVector<float> y(static_cast<std::size_t>(rows * width));
      const auto cs = CountSketch::create(Backend::cuda, features, width, 13);
      Result r{"countsketch_sparse", "1024/2^20", "fp32", rows, features,
               double(rows) * nnz_per_row * 8.0 + 4.0 * rows * width, {}};
      r.t = time_op(stream, opt.warmup, opt.iters, [&] {
        cs.apply_sparse(doff.ptr, didx.ptr, vals.ptr, rows * nnz_per_row, rows, y.ptr, stream);
      });
      record(r);
    }

    const std::time_t now = std::time(nullptr);
    char date[32];
    std::strftime(date, sizeof(date), "%Y-%m-%d", std::gmtime(&now));
    const char* commit = std::getenv("HTFR_COMMIT");
    int runtime = 0;
    HTFR_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
    std::ofstream out(opt.out);
    out << "{\"impl\": \"htfr\", \"device\": \"" << json_escape(prop.name) << "\", \"commit\": \""
        << json_escape(commit ? commit : "unknown") << "\", \"date\": \"" << date
        << "\", \"cuda\": \"" << runtime / 1000 << "." << (runtime % 1000) / 10
        << "\", \"copy_gbps\": " << copy_gbps << ", \"results\": [\n";
    for (std::size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      const double sec = r.t.median_ms * 1e-3;
      out << "  {\"op\": \"" << r.op << "\", \"name\": \"" << r.name << "\", \"dtype\": \""
          << r.dtype << "\", \"rows\": " << r.rows << ", \"n\": " << r.n
          << ", \"median_ms\": " << r.t.median_ms << ", \"p90_ms\": " << r.t.p90_ms
          << ", \"bytes\": " << r.bytes << ", \"gbps\": " << r.bytes / sec / 1e9
          << ", \"rows_per_s\": " << r.rows / sec
          << ", \"floor_ms\": " << r.bytes / (copy_gbps * 1e9) * 1e3 << "}"
          << (i + 1 < results.size() ? "," : "") << "\n";
    }
    out << "]}\n";
    HTFR_CUDA_CHECK(cudaStreamDestroy(stream));
    std::printf("wrote %s\n", opt.out.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "bench_projection: " << e.what() << "\n";
    return 1;
  }
}

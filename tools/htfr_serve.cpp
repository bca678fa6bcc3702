// htfr generate / serve-bench: teacher-free text generation from a checkpoint with Gemma's
// tokenizer (read from the teacher's GGUF), and the latency/throughput benchmark of the
// incremental inference sessions.
#include "htfr_serve.hpp"

#include <cuda_runtime_api.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "htfr/capture.hpp"
#include "htfr/error.hpp"
#include "htfr/htfr.hpp"
#include "htfr/session.hpp"
#include "htfr/tokenizer.hpp"

namespace htfr_cli {
namespace {

using json = nlohmann::json;

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw htfr::CudaError(std::string(what) + ": " + cudaGetErrorString(e));
}

/// An int32 array of n entries where a session's backend reads it.
class TokenBuffer {
 public:
  TokenBuffer(htfr::Backend backend, int64_t n) : backend_(backend), host_(n) {
    if (backend_ == htfr::Backend::cuda)
      cuda_check(cudaMalloc(reinterpret_cast<void**>(&device_), n * sizeof(int32_t)), "cudaMalloc");
  }
  ~TokenBuffer() {
    if (device_) cudaFree(device_);
  }
  TokenBuffer(const TokenBuffer&) = delete;
  TokenBuffer& operator=(const TokenBuffer&) = delete;
  int32_t* get() { return device_ ? device_ : host_.data(); }
  void set(const std::vector<int32_t>& v, cudaStream_t stream) {
    host_ = v;
    if (device_)
      cuda_check(cudaMemcpyAsync(device_, host_.data(), host_.size() * sizeof(int32_t),
                                 cudaMemcpyHostToDevice, stream),
                 "cudaMemcpyAsync");
  }
  /// Reads the array back (synchronises `stream`).
  const std::vector<int32_t>& fetch(cudaStream_t stream) {
    if (device_) {
      cuda_check(cudaMemcpyAsync(host_.data(), device_, host_.size() * sizeof(int32_t),
                                 cudaMemcpyDeviceToHost, stream),
                 "cudaMemcpyAsync");
      cuda_check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    }
    return host_;
  }

 private:
  htfr::Backend backend_;
  std::vector<int32_t> host_;
  int32_t* device_ = nullptr;
};

std::string read_whole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw htfr::IoError("cannot open " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const std::size_t i = std::min(v.size() - 1, static_cast<std::size_t>(q * (v.size() - 1) + 0.5));
  return v[i];
}

}  // namespace

int run_generate(const GenerateArgs& a) {
  const htfr::Backend backend = a.backend;
  htfr::HftSessionOptions o;
  o.seed = a.seed;
  o.use_graph = !a.no_graph;
  htfr::HftSession session = htfr::HftSession::load(a.checkpoint, backend, 0, o);
  const htfr::TokenizerVocab vocab = htfr::read_gguf_vocab(a.gguf);
  if (!a.any_gguf) {
    if (htfr::sha256_hex(read_whole(a.gguf)) != session.model_sha256())
      throw htfr::InvalidArgument(a.gguf + " is not the teacher file this checkpoint was "
                                  "distilled from (SHA-256 differs); pass --any-gguf to use its "
                                  "tokenizer anyway");
  }
  if (static_cast<int64_t>(vocab.tokens.size()) != session.teacher_vocab_size())
    throw htfr::InvalidArgument("the GGUF's vocabulary has " + std::to_string(vocab.tokens.size()) +
                                " tokens, the checkpoint's teacher " +
                                std::to_string(session.teacher_vocab_size()));
  const htfr::SpmTokenizer tok(vocab);
  const std::vector<int32_t> prompt = tok.encode(a.prompt, vocab.add_bos);
  if (prompt.empty()) throw htfr::InvalidArgument("the prompt has no tokens");
  htfr::SamplingConfig sc;
  sc.temperature = a.temperature;
  sc.top_p = a.top_p;
  sc.validate();

  cudaStream_t stream = nullptr;
  TokenBuffer in(backend, 1), next(backend, 1);
  std::vector<int32_t> generated;
  std::string printed = a.prompt;
  std::cout << a.prompt << std::flush;
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i + 1 < prompt.size(); ++i) {  // the prompt: state only
    in.set({prompt[i]}, stream);
    session.step(in.get(), nullptr, stream);
  }
  in.set({prompt.back()}, stream);
  const auto decode_start = std::chrono::steady_clock::now();
  for (int64_t t = 0; t < a.max_tokens; ++t) {
    session.step_and_sample(in.get(), sc, in.get(), nullptr, nullptr, stream);
    const int32_t id = in.fetch(stream)[0];
    if (id == vocab.eos_id) break;
    generated.push_back(id);
    // Print what the generated ids decode to so far (byte tokens complete across steps).
    std::vector<int32_t> shown;
    for (int32_t g : generated)
      if (g >= 0) shown.push_back(g);
    const std::string text = a.prompt + tok.decode(shown);
    if (text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0) {
      std::cout << text.substr(printed.size()) << std::flush;
      printed = text;
    }
  }
  const auto end = std::chrono::steady_clock::now();
  std::cout << std::endl;
  const double prompt_s = std::chrono::duration<double>(decode_start - start).count();
  const double decode_s = std::chrono::duration<double>(end - decode_start).count();
  std::fprintf(stderr,
               "[%s] prompt %zu tokens in %.1f ms, %zu generated in %.1f ms (%.3f ms/token, "
               "including the read-back of each token)\n",
               backend == htfr::Backend::cuda ? "cuda" : "cpu", prompt.size(), prompt_s * 1e3,
               generated.size(), decode_s * 1e3,
               generated.empty() ? 0.0 : decode_s * 1e3 / generated.size());
  return 0;
}

int run_serve_bench(const ServeBenchArgs& a) {
  if (htfr::cuda_device_count() == 0) throw htfr::NoDevice("serve-bench needs a CUDA device");
  if (!a.untrained_from.empty()) {
    const htfr::CaptureReader capture(a.untrained_from);
    // Speed and memory do not depend on the weights: the random start, without k-means.
    htfr::HftConfig config = htfr::default_hft_config();
    config.stage1.init = config.stage2.init = htfr::HftInit::random;
    std::vector<float> embedding(
        static_cast<std::size_t>(config.context.vocab_size * capture.manifest().model.hidden_size));
    std::mt19937_64 rng(1234);
    std::normal_distribution<float> normal;
    for (float& v : embedding) v = normal(rng);
    htfr::HftModel::create(config, embedding, capture, htfr::Backend::cuda).save(a.checkpoint);
    std::fprintf(stderr, "wrote an untrained default-size model to %s\n", a.checkpoint.c_str());
  }
  cuda_check(cudaSetDevice(0), "cudaSetDevice");
  size_t free0 = 0, total = 0;
  cuda_check(cudaMemGetInfo(&free0, &total), "cudaMemGetInfo");
  cudaDeviceProp prop{};
  cuda_check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  json out;
  out["device"] = prop.name;
  out["commit"] = a.commit;
  {
    const std::time_t now = std::time(nullptr);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    out["date"] = buf;
  }
  out["checkpoint"] = a.checkpoint;
  out["weights"] = a.untrained_from.empty() ? "trained checkpoint" : "untrained (random)";
  out["settings"] = {{"steps", a.steps}, {"warmup", a.warmup}, {"context", a.context}};
  cudaStream_t stream = nullptr;
  cuda_check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  cudaEvent_t e0, e1;
  cuda_check(cudaEventCreate(&e0), "cudaEventCreate");
  cuda_check(cudaEventCreate(&e1), "cudaEventCreate");
  json runs = json::array();
  for (const int64_t batch : a.batches) {
    for (const bool graph : {true, false}) {
      if (!graph && batch != 1 && !a.eager_all) continue;
      htfr::HftSessionOptions o;
      o.sessions = batch;
      o.use_graph = graph;
      o.seed = 5;
      size_t free1 = 0;
      std::unique_ptr<htfr::HftSession> s;
      json run{{"batch", batch}, {"graph", graph}};
      try {
        s = std::make_unique<htfr::HftSession>(
            htfr::HftSession::load(a.checkpoint, htfr::Backend::cuda, 0, o));
        const auto& ids = s->compact_token_ids();
        TokenBuffer tokens(htfr::Backend::cuda, batch);
        std::vector<int32_t> host(static_cast<std::size_t>(batch));
        // Fill every session's window with `context` tokens first (latency does not depend on
        // the text, only on the sizes), then time greedy decode steps that feed back.
        for (int64_t t = 0; t < a.context; ++t) {
          for (int64_t b = 0; b < batch; ++b)
            host[b] = ids[(b * 7919 + t * 104729) % ids.size()];
          tokens.set(host, stream);
          s->step(tokens.get(), nullptr, stream);
        }
        std::vector<double> ms;
        for (int64_t t = 0; t < a.warmup + a.steps; ++t) {
          cuda_check(cudaEventRecord(e0, stream), "cudaEventRecord");
          s->step_and_sample(tokens.get(), htfr::SamplingConfig{}, tokens.get(), nullptr,
                             nullptr, stream);
          cuda_check(cudaEventRecord(e1, stream), "cudaEventRecord");
          cuda_check(cudaEventSynchronize(e1), "cudaEventSynchronize");
          float step_ms = 0;
          cuda_check(cudaEventElapsedTime(&step_ms, e0, e1), "cudaEventElapsedTime");
          if (t >= a.warmup) ms.push_back(step_ms);
        }
        cuda_check(cudaMemGetInfo(&free1, &total), "cudaMemGetInfo");
        const double med = percentile(ms, 0.5);
        run["median_ms"] = med;
        run["p99_ms"] = percentile(ms, 0.99);
        run["min_ms"] = percentile(ms, 0.0);
        run["tokens_per_s"] = batch / (med * 1e-3);
        run["parameter_bytes"] = s->parameter_bytes();
        run["session_state_bytes"] = s->state_bytes();
        run["device_bytes_in_use"] = free0 - free1;
      } catch (const htfr::OutOfMemory& e) {
        run["error"] = std::string("out of memory: ") + e.what();
      }
      std::fprintf(stderr, "batch %6lld %-5s %s\n", static_cast<long long>(batch),
                   graph ? "graph" : "eager", run.dump().c_str());
      runs.push_back(run);
    }
  }
  out["runs"] = runs;
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamDestroy(stream);
  if (!a.json_out.empty()) {
    const std::string text = out.dump(2) + "\n";
    htfr::write_file_atomic(a.json_out, text);
  }
  std::cout << out.dump(2) << "\n";
  return 0;
}

}  // namespace htfr_cli

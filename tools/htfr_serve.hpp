// The inference subcommands of the htfr command line (tools/htfr_serve.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "htfr/config.hpp"

namespace htfr_cli {

struct GenerateArgs {
  std::string checkpoint, gguf, prompt;
  htfr::Backend backend = htfr::Backend::cpu;
  int64_t max_tokens = 64;
  float temperature = 0.8f, top_p = 0.95f;
  uint64_t seed = 0;
  bool no_graph = false, any_gguf = false;
};
/// Prints the prompt and its teacher-free continuation. Returns the exit status.
int run_generate(const GenerateArgs& a);

struct ServeBenchArgs {
  std::string checkpoint, json_out, commit = "unknown";
  /// When set: first write an untrained model of the default sizes to `checkpoint`, its
  /// statistics from this capture and a random compact embedding (speed and memory do not
  /// depend on the weights).
  std::string untrained_from;
  std::vector<int64_t> batches = {1, 64, 256, 1024};
  int64_t steps = 200, warmup = 20, context = 128;
  bool eager_all = false;
};
/// Times greedy decode steps of the sessions at each batch size (CUDA events, median and p99).
int run_serve_bench(const ServeBenchArgs& a);

}  // namespace htfr_cli

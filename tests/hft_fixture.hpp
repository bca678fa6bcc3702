// The small HFT every HFT test builds on: a tiny configuration of the full structure, a fixed
// random compact embedding, and the capture fixture (tests/data/capture_fixture: 3 windows of 16
// tokens of Gemma 3 270M).
#pragma once

#include <unistd.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "htfr/capture.hpp"
#include "htfr/hft.hpp"
#include "test_util.hpp"

namespace htfr::test {

namespace fs = std::filesystem;
inline const fs::path kFixture = fs::path(HTFR_TEST_DATA_DIR) / "capture_fixture";

inline HftConfig tiny_config() {
  HftConfig c = small_hft_config();
  c.context.window = 16;
  c.context.history_dim = 64;
  c.context.history = 2;
  c.context.tail = 4;
  c.context.bloom_size = 512;
  auto& s1 = c.stage1;
  s1.htfr.input_dim = 512;
  s1.htfr.output_dim = 64;
  s1.htfr.num_tensors = 64;
  s1.htfr.top_k = 4;
  s1.sketch_dim = 1024;
  s1.srht_block = 1024;
  auto& s2 = c.stage2;
  s2.htfr.input_dim = 256;
  s2.htfr.num_tensors = 96;
  s2.htfr.top_k = 6;
  s2.sketch_dim = 512;
  s2.srht_block = 512;
  c.batch_streams = 2;
  c.pretrain_epochs = 2;
  c.finetune_epochs = 1;
  return c;
}

inline const std::vector<float>& test_embedding() {
  static const std::vector<float> e = random_normal(4096 * 640, 99);
  return e;
}

inline fs::path temp_path(const std::string& name) {
  return fs::temp_directory_path() / ("htfr_test_hft_" + name);
}

/// Checkpoint files of this test process, removed when it exits.
struct TempFiles {
  std::map<Precision, std::string> paths;
  ~TempFiles() {
    for (const auto& [precision, path] : paths) std::filesystem::remove(path);
  }
};

/// A tiny model trained for one epoch on the fixture, saved once per precision and process.
inline std::string trained_checkpoint(Precision precision) {
  static TempFiles files;
  auto& paths = files.paths;
  auto it = paths.find(precision);
  if (it != paths.end()) return it->second;
  const CaptureReader reader(kFixture.string());
  HftConfig c = tiny_config();
  for (auto* s : {&c.stage1.htfr, &c.stage2.htfr}) s->precision = precision;
  HftModel model = HftModel::create(c, test_embedding(), reader, Backend::cpu);
  model.train_epoch(model.load_data(reader), false);
  const std::string path =
      temp_path("trained_" + std::to_string(::getpid()) + "_" +
                std::to_string(static_cast<int>(precision)) + ".safetensors")
          .string();
  model.save(path);
  return paths[precision] = path;
}

}  // namespace htfr::test

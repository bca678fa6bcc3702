// Teacher captures: a toy capture written here reads back exactly, every kind of damage gives the
// typed error that names the file and field at fault, and the committed fixture written by
// tools/capture is internally consistent.
#include <gtest/gtest.h>
#include <htfr/capture.hpp>
#include <htfr/error.hpp>
#include <htfr/safetensors.hpp>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <ostream>
#include <random>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// ---------------------------------------------------------------------------------------------
// Helpers

/// A fresh directory named after the running test, removed when the test ends.
class TempDir {
 public:
  TempDir() {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = "htfr_capture_" + std::to_string(::getpid()) + "_" +
                       test->test_suite_name() + "_" + test->name();
    std::replace(name.begin(), name.end(), '/', '_');
    path_ = fs::temp_directory_path() / name;
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

/// Success when `action` throws exactly an E whose message contains every one of `needles`.
template <typename E>
::testing::AssertionResult throws_naming(const std::function<void()>& action,
                                         const std::vector<std::string>& needles) {
  try {
    action();
  } catch (const E& e) {
    const std::string message = e.what();
    for (const std::string& needle : needles) {
      if (message.find(needle) == std::string::npos)
        return ::testing::AssertionFailure() << "message lacks '" << needle << "': " << message;
    }
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw another exception type: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

/// Success when opening the capture at `directory` throws an E naming every one of `needles`.
template <typename E>
::testing::AssertionResult opening_fails(const fs::path& directory,
                                         const std::vector<std::string>& needles) {
  return throws_naming<E>([&] { htfr::CaptureReader reader(directory.string()); }, needles);
}

std::string manifest_path(const fs::path& directory) {
  return (directory / "manifest.json").string();
}

json load_manifest(const fs::path& directory) {
  return json::parse(htfr::read_file(manifest_path(directory)));
}

void save_manifest(const fs::path& directory, const json& manifest) {
  htfr::write_file_atomic(manifest_path(directory), manifest.dump(1));
}

/// Changes the tensor name "scored" to "Scored" inside a shard's header: the header stays valid
/// JSON of the same length, so only its checksum reveals the change.
void flip_header_letter(const std::string& shard) {
  std::string bytes = htfr::read_file(shard);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i)
    header_len = (header_len << 8) | static_cast<unsigned char>(bytes[i]);
  const std::size_t at = bytes.find("\"scored\"", 8);
  ASSERT_NE(at, std::string::npos);
  ASSERT_LT(at, 8 + header_len);
  bytes[at + 1] = 'S';
  htfr::write_file_atomic(shard, bytes);
}

template <typename T>
std::string bytes_of(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

/// One tensor of a shard as it will be written.
struct TestTensor {
  std::string name;
  htfr::ElementType type;
  std::vector<int64_t> shape;
  std::string bytes;
};

// ---------------------------------------------------------------------------------------------
// The toy capture: a 2-layer model (hidden 8, 2 query heads and 1 key/value head of 4, 40 tokens),
// a compact vocabulary of 5 tokens + unk, windows of 4, hidden states of layers 1 and 2, q/k/v of
// layer 2, and two shards of 8 and 4 positions.

constexpr int64_t kWindow = 4;
constexpr int64_t kLayers = 2;
constexpr int64_t kHidden = 8;
constexpr int64_t kHeads = 2;
constexpr int64_t kKvHeads = 1;
constexpr int64_t kHeadDim = 4;
constexpr int64_t kVocab = 40;
constexpr int32_t kBos = 2;
const std::vector<int32_t> kCompactIds = {3, 7, 11, 19, 23};
constexpr int32_t kUnk = 5;
constexpr int64_t kCompact = 6;
const std::vector<int> kHiddenLayers = {1, 2};
const std::vector<int> kQkvLayers = {2};
const std::vector<int64_t> kShardPositions = {8, 4};

std::string shard_file(std::size_t index) {
  char name[48];  // room for any size_t
  std::snprintf(name, sizeof(name), "shard-%05zu.safetensors", index);
  return name;
}

std::vector<uint16_t> random_bits(std::size_t n, std::mt19937& rng) {
  std::vector<uint16_t> bits(n);
  for (auto& b : bits) b = static_cast<uint16_t>(rng() & 0xFFFF);
  return bits;
}

/// The shards' rows: capture position g is position g % 4 of window g / 4; its target is corpus
/// token g and its input the previous one (BOS at position 0). `scored` (0 at position 0, else 1)
/// and the half-precision tensors (random bit patterns) are arbitrary: the reader returns them
/// untouched.
std::vector<htfr::CaptureShard> toy_shards(uint64_t seed) {
  std::mt19937 rng(static_cast<std::mt19937::result_type>(seed));
  int64_t total = 0;
  for (int64_t p : kShardPositions) total += p;
  std::vector<int32_t> corpus(static_cast<std::size_t>(total));
  for (auto& t : corpus) {  // about half the tokens are in the compact vocabulary
    t = rng() % 2 ? kCompactIds[rng() % kCompactIds.size()] : static_cast<int32_t>(rng() % kVocab);
  }
  std::vector<htfr::CaptureShard> shards;
  int64_t first = 0;
  for (std::size_t index = 0; index < kShardPositions.size(); ++index) {
    htfr::CaptureShard s;
    s.index = index;
    s.first_position = first;
    s.positions = kShardPositions[index];
    const auto rows = static_cast<std::size_t>(s.positions);
    for (int64_t g = first; g < first + s.positions; ++g) {
      const auto position = static_cast<int32_t>(g % kWindow);
      const int32_t target = corpus[static_cast<std::size_t>(g)];
      const auto compact = std::find(kCompactIds.begin(), kCompactIds.end(), target);
      s.window.push_back(static_cast<int32_t>(g / kWindow));
      s.position.push_back(position);
      s.token.push_back(position == 0 ? kBos : corpus[static_cast<std::size_t>(g - 1)]);
      s.target.push_back(target);
      s.target_compact.push_back(compact == kCompactIds.end()
                                     ? kUnk
                                     : static_cast<int32_t>(compact - kCompactIds.begin()));
      s.scored.push_back(position == 0 ? 0 : 1);
      s.true_logprob.push_back(-0.125f * static_cast<float>(g + 1));
    }
    s.compact_logprobs = random_bits(rows * kCompact, rng);
    for (int layer : kHiddenLayers) s.hidden[layer] = random_bits(rows * kHidden, rng);
    for (int layer : kQkvLayers) {
      s.q[layer] = random_bits(rows * kHeads * kHeadDim, rng);
      s.k[layer] = random_bits(rows * kKvHeads * kHeadDim, rng);
      s.v[layer] = random_bits(rows * kKvHeads * kHeadDim, rng);
    }
    shards.push_back(std::move(s));
    first += kShardPositions[index];
  }
  return shards;
}

/// The tensors of a shard, as the format specifies them.
std::vector<TestTensor> toy_tensors(const htfr::CaptureShard& s) {
  using htfr::ElementType;
  const int64_t p = s.positions;
  std::vector<TestTensor> tensors = {
      {"window", ElementType::i32, {p}, bytes_of(s.window)},
      {"position", ElementType::i32, {p}, bytes_of(s.position)},
      {"token", ElementType::i32, {p}, bytes_of(s.token)},
      {"target", ElementType::i32, {p}, bytes_of(s.target)},
      {"target_compact", ElementType::i32, {p}, bytes_of(s.target_compact)},
      {"scored", ElementType::u8, {p}, bytes_of(s.scored)},
      {"true_logprob", ElementType::f32, {p}, bytes_of(s.true_logprob)},
      {"compact_logprobs", ElementType::f16, {p, kCompact}, bytes_of(s.compact_logprobs)},
  };
  for (const auto& [layer, bits] : s.hidden)
    tensors.push_back(
        {"hidden." + std::to_string(layer), ElementType::f16, {p, kHidden}, bytes_of(bits)});
  for (const auto& [layer, bits] : s.q)
    tensors.push_back(
        {"q." + std::to_string(layer), ElementType::f16, {p, kHeads, kHeadDim}, bytes_of(bits)});
  for (const auto& [layer, bits] : s.k)
    tensors.push_back(
        {"k." + std::to_string(layer), ElementType::f16, {p, kKvHeads, kHeadDim}, bytes_of(bits)});
  for (const auto& [layer, bits] : s.v)
    tensors.push_back(
        {"v." + std::to_string(layer), ElementType::f16, {p, kKvHeads, kHeadDim}, bytes_of(bits)});
  return tensors;
}

json toy_manifest() {
  const std::string digest(64, 'a');
  json shards = json::array();
  int64_t first = 0;
  for (std::size_t i = 0; i < kShardPositions.size(); ++i) {
    // bytes and header_sha256 are filled in when the shard is written.
    shards.push_back({{"file", shard_file(i)},
                      {"first_position", first},
                      {"positions", kShardPositions[i]},
                      {"bytes", 0},
                      {"header_sha256", ""}});
    first += kShardPositions[i];
  }
  return {
      {"format", "htfr-capture"},
      {"version", 1},
      {"complete", true},
      {"model",
       {{"file", "toy.gguf"},
        {"sha256", digest},
        {"architecture", "toy"},
        {"n_layers", kLayers},
        {"hidden_size", kHidden},
        {"n_heads", kHeads},
        {"n_kv_heads", kKvHeads},
        {"head_dim", kHeadDim},
        {"vocab_size", kVocab}}},
      {"tokenizer",
       {{"source", "gguf"},
        {"model", "toy"},
        {"vocab_size", kVocab},
        {"bos_id", kBos},
        {"eos_id", 1},
        {"add_bos", true}}},
      {"corpus",
       {{"file", "toy.txt"}, {"sha256", digest}, {"tokens_total", 20}, {"tokens_used", first}}},
      {"window", kWindow},
      {"stride", kWindow},
      {"layers", kHiddenLayers},
      {"qkv_layers", kQkvLayers},
      {"dtypes",
       {{"hidden", "F16"}, {"qkv", "F16"}, {"compact_logprobs", "F16"}, {"true_logprob", "F32"}}},
      {"compact_vocab",
       {{"size", kCompact}, {"unk_index", kUnk}, {"token_ids", kCompactIds}, {"source", "toy"}}},
      {"positions", first},
      {"engine", {{"name", "test"}, {"version", "1"}, {"device", "cpu"}}},
      {"shards", shards},
  };
}

/// A toy capture written to a temporary directory; tests damage it and reopen it.
class CaptureToyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    shards_ = toy_shards(7);
    manifest_ = toy_manifest();
    for (std::size_t i = 0; i < shards_.size(); ++i) write_shard(i, toy_tensors(shards_[i]));
    save_manifest(dir_.path(), manifest_);
  }

  std::string shard_path(std::size_t index) const {
    return (dir_.path() / shard_file(index)).string();
  }

  /// Writes shard `index` and records its size and header checksum in manifest_, so that a
  /// damaged tensor set is reported as such and not as a checksum mismatch.
  void write_shard(std::size_t index, const std::vector<TestTensor>& tensors) {
    htfr::SafetensorsWriter writer;
    for (const TestTensor& t : tensors)
      writer.add(t.name, t.type, t.shape, t.bytes.data(), t.bytes.size());
    const std::string path = shard_path(index);
    writer.write(path);
    json& entry = manifest_["shards"][index];
    entry["bytes"] = fs::file_size(path);
    entry["header_sha256"] = htfr::sha256_hex(htfr::SafetensorsReader(path).header_bytes());
  }

  /// Rewrites shard 0 with `tensors` and the manifest to match.
  void replace_shard0(const std::vector<TestTensor>& tensors) {
    write_shard(0, tensors);
    save_manifest(dir_.path(), manifest_);
  }

  TempDir dir_;
  std::vector<htfr::CaptureShard> shards_;
  json manifest_;
};

void expect_same_shard(const htfr::CaptureShard& actual, const htfr::CaptureShard& expected) {
  EXPECT_EQ(actual.index, expected.index);
  EXPECT_EQ(actual.first_position, expected.first_position);
  EXPECT_EQ(actual.positions, expected.positions);
  EXPECT_EQ(actual.window, expected.window);
  EXPECT_EQ(actual.position, expected.position);
  EXPECT_EQ(actual.token, expected.token);
  EXPECT_EQ(actual.target, expected.target);
  EXPECT_EQ(actual.target_compact, expected.target_compact);
  EXPECT_EQ(actual.scored, expected.scored);
  EXPECT_EQ(actual.true_logprob, expected.true_logprob);
  EXPECT_EQ(actual.compact_logprobs, expected.compact_logprobs);
  EXPECT_EQ(actual.hidden, expected.hidden);
  EXPECT_EQ(actual.q, expected.q);
  EXPECT_EQ(actual.k, expected.k);
  EXPECT_EQ(actual.v, expected.v);
}

TEST_F(CaptureToyTest, ReadsBackExactlyWhatWasWritten) {
  const htfr::CaptureReader reader(dir_.path().string());
  const htfr::CaptureManifest& m = reader.manifest();
  EXPECT_EQ(m.version, 1);
  EXPECT_TRUE(m.complete);
  EXPECT_EQ(m.model.n_layers, kLayers);
  EXPECT_EQ(m.model.hidden_size, kHidden);
  EXPECT_EQ(m.model.n_heads, kHeads);
  EXPECT_EQ(m.model.n_kv_heads, kKvHeads);
  EXPECT_EQ(m.model.head_dim, kHeadDim);
  EXPECT_EQ(m.model.vocab_size, kVocab);
  EXPECT_EQ(m.model.sha256, std::string(64, 'a'));
  EXPECT_EQ(m.tokenizer.bos_id, kBos);
  EXPECT_TRUE(m.tokenizer.add_bos);
  EXPECT_EQ(m.corpus.tokens_total, 20);
  EXPECT_EQ(m.window, kWindow);
  EXPECT_EQ(m.stride, kWindow);
  EXPECT_EQ(m.layers, kHiddenLayers);
  EXPECT_EQ(m.qkv_layers, kQkvLayers);
  EXPECT_EQ(m.dtypes.hidden, htfr::ElementType::f16);
  EXPECT_EQ(m.dtypes.true_logprob, htfr::ElementType::f32);
  EXPECT_EQ(m.compact_vocab.size, kCompact);
  EXPECT_EQ(m.compact_vocab.unk_index, kUnk);
  EXPECT_EQ(m.compact_vocab.token_ids, kCompactIds);
  EXPECT_EQ(m.engine.device, "cpu");
  EXPECT_EQ(reader.positions(), 12);
  ASSERT_EQ(reader.shard_count(), 2u);
  for (std::size_t i = 0; i < reader.shard_count(); ++i) {
    SCOPED_TRACE("shard " + std::to_string(i));
    EXPECT_EQ(m.shards[i].file, shard_file(i));
    EXPECT_EQ(m.shards[i].first_position, shards_[i].first_position);
    EXPECT_EQ(m.shards[i].positions, shards_[i].positions);
    EXPECT_EQ(m.shards[i].bytes, fs::file_size(shard_path(i)));
    EXPECT_EQ(reader.shard_path(i), shard_path(i));
    expect_same_shard(reader.read_shard(i), shards_[i]);
    for (int layer : kHiddenLayers)
      EXPECT_EQ(reader.read_hidden(i, layer), shards_[i].hidden.at(layer));
  }
}

TEST_F(CaptureToyTest, BadShardIndexOrLayerIsAnInvalidArgument) {
  const htfr::CaptureReader reader(dir_.path().string());
  EXPECT_TRUE(
      throws_naming<htfr::InvalidArgument>([&] { reader.read_shard(2); }, {"shard index 2"}));
  EXPECT_TRUE(
      throws_naming<htfr::InvalidArgument>([&] { reader.shard_path(2); }, {"shard index 2"}));
  EXPECT_TRUE(
      throws_naming<htfr::InvalidArgument>([&] { reader.read_hidden(2, 1); }, {"shard index 2"}));
  EXPECT_TRUE(throws_naming<htfr::InvalidArgument>([&] { reader.read_hidden(0, 3); }, {"layer 3"}));
}

TEST_F(CaptureToyTest, MissingManifestIsAnIoError) {
  fs::remove(manifest_path(dir_.path()));
  EXPECT_TRUE(opening_fails<htfr::IoError>(dir_.path(), {"manifest.json"}));
  EXPECT_TRUE(opening_fails<htfr::IoError>(dir_.path() / "no_such_capture", {"manifest.json"}));
}

TEST_F(CaptureToyTest, ManifestThatIsNotJsonIsAFormatError) {
  htfr::write_file_atomic(manifest_path(dir_.path()), "{\"format\": \"htfr-capture\", ");
  EXPECT_TRUE(opening_fails<htfr::FormatError>(dir_.path(), {"manifest.json", "not valid JSON"}));
}

TEST_F(CaptureToyTest, IncompleteCaptureIsAFormatErrorSayingSo) {
  manifest_["complete"] = false;
  save_manifest(dir_.path(), manifest_);
  EXPECT_TRUE(opening_fails<htfr::FormatError>(dir_.path(), {"manifest.json", "incomplete"}));
  // A capture being written may not list its shards yet: still reported as incomplete.
  manifest_.erase("shards");
  manifest_.erase("positions");
  save_manifest(dir_.path(), manifest_);
  EXPECT_TRUE(opening_fails<htfr::FormatError>(dir_.path(), {"incomplete"}));
}

TEST_F(CaptureToyTest, MissingShardIsAnIoError) {
  fs::remove(shard_path(1));
  EXPECT_TRUE(opening_fails<htfr::IoError>(dir_.path(), {shard_file(1), "does not exist"}));
}

TEST_F(CaptureToyTest, ShardOfTheWrongSizeIsAFormatError) {
  const std::string path = shard_path(1);
  const std::string good = htfr::read_file(path);
  fs::resize_file(path, good.size() - 1);
  EXPECT_TRUE(opening_fails<htfr::FormatError>(dir_.path(), {shard_file(1), "truncated"}));
  htfr::write_file_atomic(path, good + "x");
  EXPECT_TRUE(opening_fails<htfr::FormatError>(dir_.path(), {shard_file(1), "grew"}));
  // Truncated with the manifest updated to its size: the safetensors check still catches it.
  fs::resize_file(path, good.size() - 1);
  manifest_["shards"][1]["bytes"] = good.size() - 1;
  save_manifest(dir_.path(), manifest_);
  EXPECT_TRUE(
      opening_fails<htfr::FormatError>(dir_.path(), {shard_file(1), "not a valid safetensors"}));
}

TEST_F(CaptureToyTest, ChangedShardHeaderIsAChecksumFormatError) {
  flip_header_letter(shard_path(0));
  EXPECT_TRUE(opening_fails<htfr::FormatError>(dir_.path(), {shard_file(0), "header sha256"}));
}

TEST_F(CaptureToyTest, ShardTensorSetMustMatchTheFormatExactly) {
  using htfr::ElementType;
  const auto tensor = [](std::vector<TestTensor>& ts, const std::string& name) -> TestTensor& {
    for (auto& t : ts)
      if (t.name == name) return t;
    throw std::runtime_error("no tensor " + name);
  };
  struct Case {
    const char* what;
    std::function<void(std::vector<TestTensor>&)> damage;
    std::vector<std::string> needles;
  };
  const int64_t rows = shards_[0].positions;
  const std::vector<Case> cases = {
      {"missing tensor",
       [](auto& ts) {
         ts.erase(std::remove_if(ts.begin(), ts.end(), [](auto& t) { return t.name == "scored"; }),
                  ts.end());
       },
       {"lacks tensor 'scored'"}},
      {"missing qkv tensor",
       [](auto& ts) {
         ts.erase(std::remove_if(ts.begin(), ts.end(), [](auto& t) { return t.name == "v.2"; }),
                  ts.end());
       },
       {"lacks tensor 'v.2'"}},
      {"wrong shape",
       [&](auto& ts) {
         tensor(ts, "hidden.1").shape = {rows, kHidden / 2, 2};
       },
       {"'hidden.1'"}},
      {"too few rows",
       [&](auto& ts) {
         TestTensor& t = tensor(ts, "token");
         t.shape = {rows - 1};
         t.bytes.resize((rows - 1) * sizeof(int32_t));
       },
       {"'token'"}},
      {"wrong kv heads",
       [&](auto& ts) {
         tensor(ts, "k.2").shape = {rows, 2 * kKvHeads, kHeadDim / 2};
       },
       {"'k.2'"}},
      {"wrong dtype",
       [&](auto& ts) { tensor(ts, "true_logprob").type = ElementType::i32; },
       {"'true_logprob'"}},
      {"bf16 instead of f16",
       [&](auto& ts) { tensor(ts, "compact_logprobs").type = ElementType::bf16; },
       {"'compact_logprobs'"}},
      {"extra tensor",
       [&](auto& ts) {
         const auto bytes = static_cast<std::size_t>(rows * kHidden) * sizeof(uint16_t);
         ts.push_back({"hidden.0", ElementType::f16, {rows, kHidden}, std::string(bytes, '\0')});
       },
       {"holds tensor 'hidden.0'", "not part of the capture format"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::vector<TestTensor> tensors = toy_tensors(shards_[0]);
    c.damage(tensors);
    replace_shard0(tensors);
    std::vector<std::string> needles = c.needles;
    needles.push_back(shard_file(0));
    EXPECT_TRUE(opening_fails<htfr::FormatError>(dir_.path(), needles));
  }
}

TEST_F(CaptureToyTest, OutOfRangeValuesAreFormatErrorsOnRead) {
  struct Case {
    const char* what;
    std::function<void(htfr::CaptureShard&)> damage;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {"token beyond vocabulary", [](auto& s) { s.token[3] = kVocab; },
       "'token' holds 40 at row 3"},
      {"negative target", [](auto& s) { s.target[5] = -1; }, "'target' holds -1 at row 5"},
      {"target_compact beyond compact vocabulary", [](auto& s) { s.target_compact[2] = kCompact; },
       "'target_compact' holds 6 at row 2"},
      {"position beyond window", [](auto& s) { s.position[1] = kWindow; },
       "'position' holds 4 at row 1"},
      {"negative window", [](auto& s) { s.window[0] = -1; }, "'window' holds -1 at row 0"},
      {"scored neither 0 nor 1", [](auto& s) { s.scored[6] = 2; }, "'scored' holds 2 at row 6"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    htfr::CaptureShard damaged = shards_[0];
    c.damage(damaged);
    replace_shard0(toy_tensors(damaged));
    const htfr::CaptureReader reader(dir_.path().string());  // cheap checks happen on read
    EXPECT_TRUE(
        throws_naming<htfr::FormatError>([&] { reader.read_shard(0); }, {shard_file(0), c.needle}));
    expect_same_shard(reader.read_shard(1), shards_[1]);
  }
}

// Each case damages one manifest field of the toy capture; opening must fail with a FormatError
// naming manifest.json and the field.
struct ManifestCase {
  const char* name;
  std::function<void(json&)> damage;
  const char* field;
};

void PrintTo(const ManifestCase& c, std::ostream* os) { *os << c.name; }

class CaptureManifestTest : public CaptureToyTest,
                            public ::testing::WithParamInterface<ManifestCase> {};

TEST_P(CaptureManifestTest, DamagedFieldIsAFormatErrorNamingIt) {
  GetParam().damage(manifest_);
  save_manifest(dir_.path(), manifest_);
  EXPECT_TRUE(opening_fails<htfr::FormatError>(dir_.path(), {"manifest.json", GetParam().field}));
}

const ManifestCase kManifestCases[] = {
    {"TopLevelNotAnObject", [](json& m) { m = json::parse("[1, 2]"); }, "top level"},
    {"WrongFormat", [](json& m) { m["format"] = "safetensors"; }, "'format'"},
    {"WrongVersion", [](json& m) { m["version"] = 2; }, "'version'"},
    {"VersionAsString", [](json& m) { m["version"] = "1"; }, "'version'"},
    {"CompleteAsNumber", [](json& m) { m["complete"] = 1; }, "'complete'"},
    {"MissingModelField", [](json& m) { m["model"].erase("hidden_size"); }, "'model.hidden_size'"},
    {"MissingTokenizer", [](json& m) { m.erase("tokenizer"); }, "'tokenizer'"},
    {"MissingShards", [](json& m) { m.erase("shards"); }, "'shards'"},
    {"WindowAsString", [](json& m) { m["window"] = "4"; }, "'window'"},
    {"WindowAsFloat", [](json& m) { m["window"] = 4.0; }, "'window'"},
    {"ZeroWindow", [](json& m) { m["window"] = 0; }, "'window'"},
    {"ZeroStride", [](json& m) { m["stride"] = 0; }, "'stride'"},
    {"StrideAboveWindow", [](json& m) { m["stride"] = kWindow + 1; }, "'stride'"},
    {"LayersNotAnArray", [](json& m) { m["layers"] = 1; }, "'layers'"},
    {"LayerAboveModel", [](json& m) { m["layers"] = json::parse("[1, 3]"); }, "'layers[1]'"},
    {"LayerZero", [](json& m) { m["layers"] = json::parse("[0, 1]"); }, "'layers[0]'"},
    {"RepeatedLayer", [](json& m) { m["layers"] = json::parse("[2, 2]"); }, "'layers[1]'"},
    {"DescendingLayers", [](json& m) { m["layers"] = json::parse("[2, 1]"); }, "'layers[1]'"},
    {"QkvLayerAboveModel", [](json& m) { m["qkv_layers"] = json::parse("[3]"); },
     "'qkv_layers[0]'"},
    {"KvHeadsNotDividingHeads",
     [](json& m) {
       m["model"]["n_heads"] = 3;
       m["model"]["n_kv_heads"] = 2;
     },
     "'model.n_kv_heads'"},
    {"BadModelDigest", [](json& m) { m["model"]["sha256"] = "ABC"; }, "'model.sha256'"},
    {"BosOutsideVocabulary", [](json& m) { m["tokenizer"]["bos_id"] = kVocab; },
     "'tokenizer.bos_id'"},
    {"TokensUsedAboveTotal", [](json& m) { m["corpus"]["tokens_used"] = 21; },
     "'corpus.tokens_used'"},
    {"UnknownDtype", [](json& m) { m["dtypes"]["hidden"] = "F17"; }, "'dtypes.hidden'"},
    {"UnsupportedDtype", [](json& m) { m["dtypes"]["true_logprob"] = "F16"; },
     "'dtypes.true_logprob'"},
    {"WrongUnkIndex", [](json& m) { m["compact_vocab"]["unk_index"] = 0; },
     "'compact_vocab.unk_index'"},
    {"CompactSizeDisagreesWithTokens",
     [](json& m) {
       m["compact_vocab"]["size"] = 7;
       m["compact_vocab"]["unk_index"] = 6;
     },
     "'compact_vocab.token_ids'"},
    {"CompactTokenOutsideVocabulary", [](json& m) { m["compact_vocab"]["token_ids"][0] = kVocab; },
     "'compact_vocab.token_ids[0]'"},
    {"RepeatedCompactToken", [](json& m) { m["compact_vocab"]["token_ids"][1] = kCompactIds[0]; },
     "'compact_vocab.token_ids[1]'"},
    {"ShardsNotContiguous", [](json& m) { m["shards"][1]["first_position"] = 7; },
     "'shards[1].first_position'"},
    {"PositionsDisagreeWithShards", [](json& m) { m["positions"] = 13; }, "'positions'"},
    {"ShardWithoutDigest", [](json& m) { m["shards"][0].erase("header_sha256"); },
     "'shards[0].header_sha256'"},
    {"ShardOutsideDirectory", [](json& m) { m["shards"][0]["file"] = "../" + shard_file(0); },
     "'shards[0].file'"},
    {"RepeatedShardFile", [](json& m) { m["shards"][1]["file"] = shard_file(0); },
     "'shards[1].file'"},
    {"EmptyShard", [](json& m) { m["shards"][1]["positions"] = 0; }, "'shards[1].positions'"},
};

INSTANTIATE_TEST_SUITE_P(Capture, CaptureManifestTest, ::testing::ValuesIn(kManifestCases),
                         [](const ::testing::TestParamInfo<ManifestCase>& info) {
                           return std::string(info.param.name);
                         });

// ---------------------------------------------------------------------------------------------
// binary16 conversion and SHA-256

/// The value of binary16 `bits` from the definition: (-1)^s 2^(e-15) (1 + m/1024) for normal
/// numbers, (-1)^s 2^-14 (m/1024) for subnormals.
double half_reference(uint16_t bits) {
  const int sign = bits >> 15, exponent = (bits >> 10) & 0x1F, mantissa = bits & 0x3FF;
  double magnitude;
  if (exponent == 0x1F) {
    magnitude = mantissa == 0 ? INFINITY : NAN;
  } else if (exponent == 0) {
    magnitude = std::ldexp(mantissa, -24);
  } else {
    magnitude = std::ldexp(1024 + mantissa, exponent - 25);
  }
  return sign ? -magnitude : magnitude;
}

TEST(CaptureHalfToFloat, KnownValues) {
  EXPECT_EQ(htfr::half_to_float(0x3C00), 1.0f);
  EXPECT_EQ(htfr::half_to_float(0xC000), -2.0f);
  EXPECT_EQ(htfr::half_to_float(0x3555), 0.333251953125f);
  EXPECT_EQ(htfr::half_to_float(0x7BFF), 65504.0f);
  EXPECT_EQ(htfr::half_to_float(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(htfr::half_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(htfr::half_to_float(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(htfr::half_to_float(0x7C00), INFINITY);
  EXPECT_EQ(htfr::half_to_float(0xFC00), -INFINITY);
  EXPECT_TRUE(std::signbit(htfr::half_to_float(0x8000)));
  EXPECT_EQ(htfr::half_to_float(0x8000), 0.0f);
  EXPECT_TRUE(std::isnan(htfr::half_to_float(0x7E00)));
  EXPECT_EQ(htfr::half_to_float(std::vector<uint16_t>{0x3C00, 0xBC00, 0x0000}),
            (std::vector<float>{1.0f, -1.0f, 0.0f}));
}

TEST(CaptureHalfToFloat, MatchesTheDefinitionForEveryBitPattern) {
  int mismatches = 0;
  for (uint32_t bits = 0; bits <= 0xFFFF; ++bits) {
    const float actual = htfr::half_to_float(static_cast<uint16_t>(bits));
    const double expected = half_reference(static_cast<uint16_t>(bits));
    bool same = std::isnan(expected)
                    ? std::isnan(actual)
                    : actual == expected && std::signbit(actual) == std::signbit(expected);
    if (std::isnan(expected)) {  // the NaN payload (the 10 mantissa bits) is kept
      uint32_t out;
      std::memcpy(&out, &actual, sizeof(out));
      same = same && ((out >> 13) & 0x3FF) == (bits & 0x3FF) && (out >> 31) == (bits >> 15);
    }
    if (!same && ++mismatches <= 5)
      ADD_FAILURE() << "bits 0x" << std::hex << bits << ": " << actual << " vs " << expected;
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(CaptureSha256, KnownDigests) {
  EXPECT_EQ(htfr::sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(htfr::sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // FIPS 180-2's long message: a million 'a'.
  EXPECT_EQ(htfr::sha256_hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Every byte counts, embedded NULs included.
  EXPECT_EQ(htfr::sha256_hex(std::string("a\0b", 3)),
            "59b271ae1bbcb1d31d41929817f4b16fb439eb4f31520b5ad1d5ce98920a7138");
}

// ---------------------------------------------------------------------------------------------
// The committed fixture, written by tools/capture from the real teacher

const fs::path kFixture = fs::path(HTFR_TEST_DATA_DIR) / "capture_fixture";

/// Counts the rows that break each named property and keeps the first offender's description.
class PropertyLog {
 public:
  void check(bool ok, const std::string& property, const std::string& row) {
    if (ok) return;
    auto& entry = failures_[property];
    if (entry.first++ == 0) entry.second = row;
  }
  ::testing::AssertionResult result() const {
    if (failures_.empty()) return ::testing::AssertionSuccess();
    auto failure = ::testing::AssertionFailure();
    for (const auto& [property, entry] : failures_)
      failure << "\n  " << property << ": " << entry.first << " rows, first " << entry.second;
    return failure;
  }

 private:
  std::map<std::string, std::pair<int64_t, std::string>> failures_;
};

TEST(CaptureFixture, OpensAndIsInternallyConsistent) {
  ASSERT_TRUE(fs::is_directory(kFixture)) << "the committed fixture " << kFixture << " is missing";
  const htfr::CaptureReader reader(kFixture.string());
  const htfr::CaptureManifest& m = reader.manifest();
  ASSERT_GT(reader.shard_count(), 0u);
  ASSERT_GT(reader.positions(), 0);
  std::map<int32_t, int32_t> compact_class;  // token id -> compact class
  for (std::size_t i = 0; i < m.compact_vocab.token_ids.size(); ++i)
    compact_class[m.compact_vocab.token_ids[i]] = static_cast<int32_t>(i);
  const int64_t classes = m.compact_vocab.size;

  const int64_t used = m.corpus.tokens_used;  // N
  PropertyLog log;
  std::map<int32_t, int64_t> rows_in_window;
  int64_t next_position = 0, scored = 0;
  int32_t previous_window = -1, previous_position = -1, previous_target = -1;
  for (std::size_t i = 0; i < reader.shard_count(); ++i) {
    const htfr::CaptureShard s = reader.read_shard(i);
    EXPECT_EQ(s.first_position, next_position);
    ASSERT_EQ(static_cast<int64_t>(s.window.size()), s.positions);
    ASSERT_EQ(static_cast<int64_t>(s.compact_logprobs.size()), s.positions * classes);
    for (int layer : m.layers)
      EXPECT_EQ(static_cast<int64_t>(s.hidden.at(layer).size()), s.positions * m.model.hidden_size);
    const std::vector<float> logprobs = htfr::half_to_float(s.compact_logprobs);
    for (int64_t r = 0; r < s.positions; ++r) {
      const auto row = static_cast<std::size_t>(r);
      const std::string where = "shard " + std::to_string(i) + " row " + std::to_string(r);
      const int32_t w = s.window[row], p = s.position[row];
      // Windows follow each other; positions count up from 0 within a window.
      const bool continues = w == previous_window && p == previous_position + 1;
      const bool starts = w == previous_window + 1 && p == 0;
      log.check(continues || starts, "windows and positions in order", where);
      // Position 0 reads BOS (when the tokenizer adds one); later positions read the previous
      // position's target.
      if (continues) log.check(s.token[row] == previous_target, "token = previous target", where);
      if (starts && m.tokenizer.add_bos)
        log.check(s.token[row] == m.tokenizer.bos_id, "window starts with BOS", where);
      previous_window = w;
      previous_position = p;
      previous_target = s.target[row];
      ++rows_in_window[w];
      // Only the first window that predicts a corpus token scores it; every window but the last
      // is full, so window w > 0 repeats the first window - stride tokens of window w - 1.
      const bool first_prediction = w == 0 || p >= m.window - m.stride;
      log.check(s.scored[row] == (first_prediction ? 1 : 0),
                "scored on the first window predicting the token", where);

      const auto found = compact_class.find(s.target[row]);
      const int32_t expected_class = found == compact_class.end()
                                         ? static_cast<int32_t>(m.compact_vocab.unk_index)
                                         : found->second;
      log.check(s.target_compact[row] == expected_class, "target_compact matches token_ids", where);

      // The compact distribution sums to 1; binary16 rounds each log-probability x by at most
      // |x| 2^-11, which moves exp(x) by about exp(x) |x| 2^-11.
      double mass = 0, rounding = 0;
      bool finite = true;
      for (int64_t c = 0; c < classes; ++c) {
        const double x = logprobs[static_cast<std::size_t>(r * classes + c)];
        finite = finite && !std::isnan(x) && x <= 0;
        mass += std::exp(x);
        rounding += std::exp(x) * std::fabs(x) * std::ldexp(1.0, -11);
      }
      log.check(finite, "compact log-probabilities are <= 0 and not NaN", where);
      log.check(std::fabs(mass - 1.0) <= 1e-3 + rounding, "compact probabilities sum to 1",
                where + " (sum " + std::to_string(mass) + ")");

      const float truth = s.true_logprob[row];
      log.check(truth <= 0.0f, "true_logprob <= 0", where + " (" + std::to_string(truth) + ")");
      // A compact target's class holds exactly its log-probability; an unk target's
      // probability is part of the unk mass.
      const double in_class =
          logprobs[static_cast<std::size_t>(r * classes + s.target_compact[row])];
      const double tolerance = 1e-3 + std::fabs(in_class) * std::ldexp(1.0, -11);
      if (s.target_compact[row] == m.compact_vocab.unk_index) {
        log.check(truth <= in_class + tolerance, "unk target within the unk mass", where);
      } else {
        log.check(std::fabs(truth - in_class) <= tolerance, "compact class holds true_logprob",
                  where + " (" + std::to_string(truth) + " vs " + std::to_string(in_class) + ")");
      }
      scored += s.scored[row];
    }
    next_position += s.positions;
  }
  EXPECT_EQ(next_position, reader.positions());
  EXPECT_TRUE(log.result());
  // Window w starts at token w * stride and is cut at the N used tokens; the last one reaches
  // token N - 1, and every one of the N tokens is scored exactly once.
  ASSERT_FALSE(rows_in_window.empty());
  for (const auto& [w, rows] : rows_in_window)
    EXPECT_EQ(rows, std::min(m.window, used - w * m.stride)) << "window " << w;
  const auto& [last_window, last_rows] = *rows_in_window.rbegin();
  EXPECT_EQ(last_window * m.stride + last_rows, used);
  EXPECT_EQ(scored, used);
}

TEST(CaptureFixture, DamagedCopiesFailWithTypedErrors) {
  ASSERT_TRUE(fs::is_directory(kFixture)) << "the committed fixture " << kFixture << " is missing";
  const htfr::CaptureReader original(kFixture.string());
  const std::string first_shard = original.manifest().shards.front().file;
  const std::string last_shard = original.manifest().shards.back().file;
  const TempDir temp;
  // A fresh copy of the fixture for each kind of damage.
  const auto copy = [&](const std::string& name) {
    const fs::path to = temp.path() / name;
    fs::copy(kFixture, to, fs::copy_options::recursive);
    for (const auto& entry : fs::directory_iterator(to))  // the checkout may be read-only
      fs::permissions(entry.path(), fs::perms::owner_write, fs::perm_options::add);
    return to;
  };

  const fs::path truncated = copy("truncated");
  fs::resize_file(truncated / first_shard, fs::file_size(truncated / first_shard) - 1);
  EXPECT_TRUE(opening_fails<htfr::FormatError>(truncated, {first_shard, "truncated"}));

  const fs::path flipped = copy("flipped");
  flip_header_letter((flipped / first_shard).string());
  EXPECT_TRUE(opening_fails<htfr::FormatError>(flipped, {first_shard, "header sha256"}));

  const fs::path deleted = copy("deleted");
  fs::remove(deleted / last_shard);
  EXPECT_TRUE(opening_fails<htfr::IoError>(deleted, {last_shard, "does not exist"}));

  const fs::path incomplete = copy("incomplete");
  json manifest = load_manifest(incomplete);
  manifest["complete"] = false;
  save_manifest(incomplete, manifest);
  EXPECT_TRUE(opening_fails<htfr::FormatError>(incomplete, {"manifest.json", "incomplete"}));
}

}  // namespace

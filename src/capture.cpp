// Capture reading: the manifest is parsed field by field and every shard is checked against it
// before a reader is handed out, so a training run never meets a damaged capture halfway through.
#include "htfr/capture.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <system_error>

#include "detail/check.hpp"
#include "htfr/error.hpp"

namespace htfr {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kManifestFile = "manifest.json";
constexpr const char* kFormatName = "htfr-capture";
constexpr int64_t kFormatVersion = 1;
constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

/// One value of the manifest together with its path ("shards[1].bytes"), so that every complaint
/// names the file and the field.
class Field {
 public:
  Field(const json& value, std::string path, const std::string& file)
      : value_(value), path_(std::move(path)), file_(file) {}

  /// Member `key` of this object; FormatError when this is not an object or lacks the key.
  Field operator[](const std::string& key) const {
    if (!value_.is_object()) fail("is " + kind() + ", expected an object");
    const std::string path = path_.empty() ? key : path_ + "." + key;
    const auto it = value_.find(key);
    if (it == value_.end()) throw FormatError(file_ + ": field '" + path + "' is missing");
    return Field(*it, path, file_);
  }

  /// The elements of this array.
  std::vector<Field> elements() const {
    if (!value_.is_array()) fail("is " + kind() + ", expected an array");
    std::vector<Field> out;
    for (std::size_t i = 0; i < value_.size(); ++i)
      out.emplace_back(value_[i], path_ + "[" + std::to_string(i) + "]", file_);
    return out;
  }

  std::string text() const {
    if (!value_.is_string()) fail("is " + kind() + ", expected a string");
    return value_.get<std::string>();
  }

  /// A SHA-256 digest: 64 lowercase hex digits.
  std::string sha256() const {
    const std::string digest = text();
    const bool hex = std::all_of(digest.begin(), digest.end(), [](char c) {
      return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
    });
    require(digest.size() == 64 && hex,
            "is '" + digest + "', expected a SHA-256 digest (64 lowercase hex digits)");
    return digest;
  }

  /// An integer in [lo, hi].
  int64_t integer(int64_t lo, int64_t hi = kInt64Max) const {
    if (!value_.is_number_integer()) fail("is " + kind() + ", expected an integer");
    if (value_.is_number_unsigned())
      require(value_.get<uint64_t>() <= static_cast<uint64_t>(kInt64Max), "is too large");
    const int64_t v = value_.get<int64_t>();
    require(v >= lo && v <= hi, "is " + std::to_string(v) + ", expected " +
                                    (hi == kInt64Max ? "at least " + std::to_string(lo)
                                                     : "a value in [" + std::to_string(lo) + ", " +
                                                           std::to_string(hi) + "]"));
    return v;
  }

  bool boolean() const {
    if (!value_.is_boolean()) fail("is " + kind() + ", expected true or false");
    return value_.get<bool>();
  }

  /// FormatError "<file>: field '<path>' <problem>" unless `ok`.
  void require(bool ok, const std::string& problem) const {
    if (!ok) fail(problem);
  }

  [[noreturn]] void fail(const std::string& problem) const {
    throw FormatError(file_ + ": " + (path_.empty() ? "the top level" : "field '" + path_ + "'") +
                      " " + problem);
  }

 private:
  std::string kind() const { return std::string("a JSON ") + value_.type_name(); }

  const json& value_;
  std::string path_;
  const std::string& file_;
};

/// A strictly ascending list of layer numbers in [1, n_layers].
std::vector<int> parse_layers(const Field& field, int64_t n_layers) {
  std::vector<int> layers;
  for (const Field& element : field.elements()) {
    const int layer = static_cast<int>(element.integer(1, n_layers));
    element.require(layers.empty() || layer > layers.back(),
                    "is " + std::to_string(layer) +
                        ", expected more than the layer before it (distinct, ascending)");
    layers.push_back(layer);
  }
  return layers;
}

/// A dtype name that must be `supported`, the only one version 1 allows for this tensor.
ElementType parse_dtype(const Field& field, ElementType supported) {
  const std::string name = field.text();
  field.require(name == element_type_name(supported), "is '" + name + "', expected '" +
                                                          element_type_name(supported) +
                                                          "' (the only dtype of format version 1)");
  return supported;
}

/// A shard file name: a plain name inside the capture directory.
std::string parse_shard_file(const Field& field) {
  const std::string name = field.text();
  field.require(!name.empty() && name != "." && name != ".." &&
                    name.find('/') == std::string::npos && name.find('\0') == std::string::npos,
                "is '" + name + "', expected a file name inside the capture directory");
  return name;
}

CaptureModel parse_model(const Field& f) {
  CaptureModel m;
  m.file = f["file"].text();
  m.sha256 = f["sha256"].sha256();
  m.architecture = f["architecture"].text();
  m.n_layers = f["n_layers"].integer(1, kInt32Max);
  m.hidden_size = f["hidden_size"].integer(1, kInt32Max);
  m.n_heads = f["n_heads"].integer(1, kInt32Max);
  m.n_kv_heads = f["n_kv_heads"].integer(1, m.n_heads);
  f["n_kv_heads"].require(m.n_heads % m.n_kv_heads == 0,
                          "is " + std::to_string(m.n_kv_heads) +
                              ", which does not divide n_heads = " + std::to_string(m.n_heads));
  m.head_dim = f["head_dim"].integer(1, kInt32Max);
  // Token ids are stored as I32, so the largest id is INT32_MAX.
  m.vocab_size = f["vocab_size"].integer(1, kInt32Max + 1);
  return m;
}

CaptureTokenizer parse_tokenizer(const Field& f) {
  CaptureTokenizer t;
  t.source = f["source"].text();
  t.model = f["model"].text();
  t.vocab_size = f["vocab_size"].integer(1, kInt32Max + 1);
  t.bos_id = f["bos_id"].integer(0, t.vocab_size - 1);
  t.eos_id = f["eos_id"].integer(0, t.vocab_size - 1);
  t.add_bos = f["add_bos"].boolean();
  return t;
}

CaptureCorpus parse_corpus(const Field& f) {
  CaptureCorpus c;
  c.file = f["file"].text();
  c.sha256 = f["sha256"].sha256();
  c.tokens_total = f["tokens_total"].integer(0);
  c.tokens_used = f["tokens_used"].integer(0, c.tokens_total);
  return c;
}

CaptureDtypes parse_dtypes(const Field& f) {
  const CaptureDtypes supported;
  CaptureDtypes d;
  d.hidden = parse_dtype(f["hidden"], supported.hidden);
  d.qkv = parse_dtype(f["qkv"], supported.qkv);
  d.compact_logprobs = parse_dtype(f["compact_logprobs"], supported.compact_logprobs);
  d.true_logprob = parse_dtype(f["true_logprob"], supported.true_logprob);
  return d;
}

CaptureCompactVocab parse_compact_vocab(const Field& f, int64_t vocab_size) {
  CaptureCompactVocab v;
  v.size = f["size"].integer(1, kInt32Max);
  v.unk_index = f["unk_index"].integer(0);
  f["unk_index"].require(
      v.unk_index == v.size - 1,
      "is " + std::to_string(v.unk_index) + ", expected size - 1 = " + std::to_string(v.size - 1));
  const Field ids = f["token_ids"];
  const std::vector<Field> elements = ids.elements();
  ids.require(static_cast<int64_t>(elements.size()) == v.size - 1,
              "has " + std::to_string(elements.size()) +
                  " entries, expected size - 1 = " + std::to_string(v.size - 1));
  std::set<int32_t> seen;
  for (const Field& element : elements) {
    const auto id = static_cast<int32_t>(element.integer(0, vocab_size - 1));
    element.require(seen.insert(id).second, "repeats token " + std::to_string(id));
    v.token_ids.push_back(id);
  }
  v.source = f["source"].text();
  return v;
}

CaptureEngine parse_engine(const Field& f) {
  CaptureEngine e;
  e.name = f["name"].text();
  e.version = f["version"].text();
  e.device = f["device"].text();
  return e;
}

/// The shard list: plain, distinct file names; contiguous positions adding up to `positions`.
std::vector<CaptureShardInfo> parse_shards(const Field& f, const Field& positions_field,
                                           int64_t positions) {
  std::vector<CaptureShardInfo> shards;
  std::set<std::string> files;
  int64_t next_position = 0;
  for (const Field& entry : f.elements()) {
    CaptureShardInfo s;
    s.file = parse_shard_file(entry["file"]);
    entry["file"].require(files.insert(s.file).second, "repeats shard file '" + s.file + "'");
    s.first_position = entry["first_position"].integer(0);
    entry["first_position"].require(
        s.first_position == next_position,
        "is " + std::to_string(s.first_position) + ", expected " + std::to_string(next_position) +
            " (the sum of the previous shards' positions: shards must be contiguous)");
    s.positions = entry["positions"].integer(1, kInt64Max - next_position);
    s.bytes = static_cast<uint64_t>(entry["bytes"].integer(8));
    s.header_sha256 = entry["header_sha256"].sha256();
    next_position += s.positions;
    shards.push_back(std::move(s));
  }
  positions_field.require(
      next_position == positions,
      "is " + std::to_string(positions) + " but the shards hold " + std::to_string(next_position));
  return shards;
}

CaptureManifest parse_manifest(const std::string& text, const std::string& file) {
  json document;
  try {
    document = json::parse(text);
  } catch (const json::exception& e) {
    throw FormatError(file + " is not valid JSON: " + e.what());
  }
  const Field root(document, "", file);
  root.require(document.is_object(), "is not a JSON object");

  // Identity and completeness first: a capture being written may lack later fields.
  const std::string format = root["format"].text();
  root["format"].require(format == kFormatName,
                         "is '" + format + "', expected '" + kFormatName + "'");
  CaptureManifest m;
  m.version = root["version"].integer(0);
  root["version"].require(m.version == kFormatVersion, "is " + std::to_string(m.version) +
                                                           "; this reader reads version " +
                                                           std::to_string(kFormatVersion));
  m.complete = root["complete"].boolean();
  if (!m.complete) {
    throw FormatError(file +
                      ": the capture is incomplete (\"complete\" is false): it is still "
                      "being written, or its writer stopped before finishing");
  }

  m.model = parse_model(root["model"]);
  m.tokenizer = parse_tokenizer(root["tokenizer"]);
  m.corpus = parse_corpus(root["corpus"]);
  m.window = root["window"].integer(1, kInt32Max);
  m.stride = root["stride"].integer(1, m.window);
  m.layers = parse_layers(root["layers"], m.model.n_layers);
  m.qkv_layers = parse_layers(root["qkv_layers"], m.model.n_layers);
  m.dtypes = parse_dtypes(root["dtypes"]);
  m.compact_vocab = parse_compact_vocab(root["compact_vocab"], m.model.vocab_size);
  m.positions = root["positions"].integer(0);
  m.engine = parse_engine(root["engine"]);
  m.shards = parse_shards(root["shards"], root["positions"], m.positions);
  return m;
}

/// One tensor every shard must hold.
struct TensorSpec {
  std::string name;
  ElementType type;
  std::vector<int64_t> shape;
};

std::string layer_tensor_name(const char* kind, int layer) {
  return std::string(kind) + "." + std::to_string(layer);
}

/// The exact tensor set of a shard of `rows` positions.
std::vector<TensorSpec> shard_layout(const CaptureManifest& m, int64_t rows) {
  std::vector<TensorSpec> specs;
  for (const char* name : {"window", "position", "token", "target", "target_compact"})
    specs.push_back({name, ElementType::i32, {rows}});
  specs.push_back({"scored", ElementType::u8, {rows}});
  specs.push_back({"true_logprob", m.dtypes.true_logprob, {rows}});
  specs.push_back({"compact_logprobs", m.dtypes.compact_logprobs, {rows, m.compact_vocab.size}});
  for (int layer : m.layers)
    specs.push_back(
        {layer_tensor_name("hidden", layer), m.dtypes.hidden, {rows, m.model.hidden_size}});
  const std::vector<int64_t> q_shape = {rows, m.model.n_heads, m.model.head_dim};
  const std::vector<int64_t> kv_shape = {rows, m.model.n_kv_heads, m.model.head_dim};
  for (int layer : m.qkv_layers) {
    specs.push_back({layer_tensor_name("q", layer), m.dtypes.qkv, q_shape});
    specs.push_back({layer_tensor_name("k", layer), m.dtypes.qkv, kv_shape});
    specs.push_back({layer_tensor_name("v", layer), m.dtypes.qkv, kv_shape});
  }
  return specs;
}

/// Opens the shard at `path` and checks it against its manifest entry and the format.
SafetensorsReader open_shard(const std::string& path, const CaptureShardInfo& info,
                             const CaptureManifest& manifest) {
  std::error_code error;
  if (!fs::exists(path, error))
    throw IoError("capture shard " + path + " (listed in " + kManifestFile + ") does not exist");
  if (!fs::is_regular_file(path, error))
    throw IoError("capture shard " + path + " is not a regular file");
  const uint64_t size = fs::file_size(path, error);
  if (error) throw IoError("cannot read the size of " + path + ": " + error.message());
  if (size != info.bytes) {
    throw FormatError(path + " has " + std::to_string(size) + " bytes but " + kManifestFile +
                      " records " + std::to_string(info.bytes) +
                      (size < info.bytes ? " (truncated)" : " (the file grew)"));
  }
  SafetensorsReader reader(path);
  const std::string digest = sha256_hex(reader.header_bytes());
  if (digest != info.header_sha256) {
    throw FormatError(path + ": header sha256 " + digest + " differs from " + info.header_sha256 +
                      " recorded in " + kManifestFile +
                      " (the shard was modified or belongs to another capture)");
  }
  const std::vector<TensorSpec> layout = shard_layout(manifest, info.positions);
  for (const TensorSpec& spec : layout) {
    if (!reader.contains(spec.name))
      throw FormatError(path + " lacks tensor '" + spec.name + "' of the capture format");
    reader.require(spec.name, spec.type, spec.shape, element_size(spec.type));
  }
  for (const TensorRecord& tensor : reader.tensors()) {
    const bool expected = std::any_of(layout.begin(), layout.end(),
                                      [&](const TensorSpec& s) { return s.name == tensor.name; });
    if (!expected) {
      throw FormatError(path + " holds tensor '" + tensor.name +
                        "', which is not part of the capture format");
    }
  }
  return reader;
}

/// Reads a tensor whose dtype and shape were validated when the shard was opened.
template <typename T>
std::vector<T> read_tensor(const SafetensorsReader& reader, const std::string& name) {
  std::vector<T> out(static_cast<std::size_t>(reader.tensor(name).elements()));
  reader.read(name, out.data(), out.size() * sizeof(T));
  return out;
}

/// FormatError naming the shard, tensor and row of the first value outside [lo, end).
template <typename T>
void check_range(const SafetensorsReader& reader, const CaptureShardInfo& info, const char* tensor,
                 const std::vector<T>& values, int64_t lo, int64_t end) {
  for (std::size_t row = 0; row < values.size(); ++row) {
    const int64_t value = values[row];
    if (value < lo || value >= end) {
      throw FormatError(reader.path() + ": tensor '" + tensor + "' holds " + std::to_string(value) +
                        " at row " + std::to_string(row) + " (capture position " +
                        std::to_string(info.first_position + static_cast<int64_t>(row)) +
                        "), outside [" + std::to_string(lo) + ", " + std::to_string(end) + ")");
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Reader

CaptureReader::CaptureReader(const std::string& directory) : directory_(directory) {
  const std::string manifest_path = (fs::path(directory_) / kManifestFile).string();
  manifest_ = parse_manifest(read_file(manifest_path), manifest_path);
  shards_.reserve(manifest_.shards.size());
  for (std::size_t i = 0; i < manifest_.shards.size(); ++i)
    shards_.push_back(open_shard(shard_path(i), manifest_.shards[i], manifest_));
}

void CaptureReader::check_shard_index(std::size_t index) const {
  HTFR_REQUIRE(index < manifest_.shards.size(), InvalidArgument,
               "shard index " << index << " out of range: " << directory_ << " has "
                              << manifest_.shards.size() << " shards");
}

std::string CaptureReader::shard_path(std::size_t index) const {
  check_shard_index(index);
  return (fs::path(directory_) / manifest_.shards[index].file).string();
}

CaptureShard CaptureReader::read_shard(std::size_t index) const {
  check_shard_index(index);
  const SafetensorsReader& reader = shards_[index];
  const CaptureShardInfo& info = manifest_.shards[index];
  CaptureShard s;
  s.index = index;
  s.first_position = info.first_position;
  s.positions = info.positions;
  s.window = read_tensor<int32_t>(reader, "window");
  s.position = read_tensor<int32_t>(reader, "position");
  s.token = read_tensor<int32_t>(reader, "token");
  s.target = read_tensor<int32_t>(reader, "target");
  s.target_compact = read_tensor<int32_t>(reader, "target_compact");
  s.scored = read_tensor<uint8_t>(reader, "scored");
  check_range(reader, info, "window", s.window, 0, kInt32Max + 1);
  check_range(reader, info, "position", s.position, 0, manifest_.window);
  check_range(reader, info, "token", s.token, 0, manifest_.model.vocab_size);
  check_range(reader, info, "target", s.target, 0, manifest_.model.vocab_size);
  check_range(reader, info, "target_compact", s.target_compact, 0, manifest_.compact_vocab.size);
  check_range(reader, info, "scored", s.scored, 0, 2);
  s.true_logprob = read_tensor<float>(reader, "true_logprob");
  s.compact_logprobs = read_tensor<uint16_t>(reader, "compact_logprobs");
  for (int layer : manifest_.layers)
    s.hidden[layer] = read_tensor<uint16_t>(reader, layer_tensor_name("hidden", layer));
  for (int layer : manifest_.qkv_layers) {
    s.q[layer] = read_tensor<uint16_t>(reader, layer_tensor_name("q", layer));
    s.k[layer] = read_tensor<uint16_t>(reader, layer_tensor_name("k", layer));
    s.v[layer] = read_tensor<uint16_t>(reader, layer_tensor_name("v", layer));
  }
  return s;
}

std::vector<uint16_t> CaptureReader::read_hidden(std::size_t index, int layer) const {
  check_shard_index(index);
  const auto& layers = manifest_.layers;
  HTFR_REQUIRE(std::find(layers.begin(), layers.end(), layer) != layers.end(), InvalidArgument,
               "layer " << layer << " is not among the hidden-state layers of " << directory_);
  return read_tensor<uint16_t>(shards_[index], layer_tensor_name("hidden", layer));
}

// ---------------------------------------------------------------------------------------------
// Conversions and checksums

float half_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1Fu;
  uint32_t mantissa = bits & 0x3FFu;
  uint32_t out;
  if (exponent == 0x1F) {  // infinity or NaN, payload kept
    out = sign | 0x7F800000u | (mantissa << 13);
  } else if (exponent != 0) {  // normal: rebias 15 -> 127
    out = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {  // signed zero
    out = sign;
  } else {  // subnormal m * 2^-24: normalise so the leading one becomes the implicit bit
    uint32_t biased = 113;  // exponent field of 2^-14, the value of mantissa bit 10
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --biased;
    }
    out = sign | (biased << 23) | ((mantissa & 0x3FFu) << 13);
  }
  float value;
  std::memcpy(&value, &out, sizeof(value));
  return value;
}

std::vector<float> half_to_float(const std::vector<uint16_t>& bits) {
  std::vector<float> out(bits.size());
  std::transform(bits.begin(), bits.end(), out.begin(),
                 [](uint16_t b) { return half_to_float(b); });
  return out;
}

std::string sha256_hex(const std::string& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr) != 1)
    throw Error("SHA-256 could not be computed (OpenSSL EVP_Digest failed)");
  static const char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * length);
  for (unsigned int i = 0; i < length; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 0x0F]);
  }
  return hex;
}

}  // namespace htfr

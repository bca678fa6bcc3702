// The GGUF vocabulary reader (header and key/value section only, every length and count checked
// against the bytes left in the file before it is used) and the SPM encoder and decoder that
// reproduce tools/capture/tokenizer.py id for id.
#include "htfr/tokenizer.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <queue>
#include <set>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "detail/check.hpp"
#include "detail/nvtx.hpp"
#include "htfr/error.hpp"

namespace htfr {

namespace {

// ---------------------------------------------------------------------------------------------
// GGUF metadata

// GGUF value types, as numbered by the format.
enum GgufType : uint32_t {
  kGgufU8 = 0,
  kGgufI8 = 1,
  kGgufU16 = 2,
  kGgufI16 = 3,
  kGgufU32 = 4,
  kGgufI32 = 5,
  kGgufF32 = 6,
  kGgufBool = 7,
  kGgufString = 8,
  kGgufArray = 9,
  kGgufU64 = 10,
  kGgufI64 = 11,
  kGgufF64 = 12,
};
constexpr uint32_t kGgufTypeCount = 13;

// Arrays of arrays deeper than this are taken as corrupt: a level costs only 12 bytes, so a hostile
// file could otherwise recurse deep enough to exhaust the stack.
constexpr int kMaxArrayDepth = 16;

// Smallest encodings, used to check a count against the bytes left before looping over it: a
// string is at least its 8-byte length, a nested array its 4-byte type and 8-byte count, and a
// key/value pair a key length, a value type and a 1-byte value.
constexpr uint64_t kMinStringBytes = 8;
constexpr uint64_t kMinArrayBytes = 12;
constexpr uint64_t kMinPairBytes = 8 + 4 + 1;
// A tensor description: name length, dimension count, type and offset.
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;

const char* type_name(uint32_t type) {
  static constexpr const char* kNames[kGgufTypeCount] = {
      "uint8", "int8",   "uint16", "int16",  "uint32", "int32",  "float32",
      "bool",  "string", "array",  "uint64", "int64",  "float64"};
  return type < kGgufTypeCount ? kNames[type] : "unknown";
}

// Bytes of one value of a fixed-size type; 0 for string, array and unknown types.
uint64_t fixed_size(uint32_t type) {
  switch (type) {
    case kGgufU8:
    case kGgufI8:
    case kGgufBool:
      return 1;
    case kGgufU16:
    case kGgufI16:
      return 2;
    case kGgufU32:
    case kGgufI32:
    case kGgufF32:
      return 4;
    case kGgufU64:
    case kGgufI64:
    case kGgufF64:
      return 8;
    default:
      return 0;
  }
}

bool is_integer_type(uint32_t type) {
  return type <= kGgufI32 || type == kGgufU64 || type == kGgufI64;
}

bool is_numeric_type(uint32_t type) {
  return is_integer_type(type) || type == kGgufF32 || type == kGgufF64;
}

// Sequential reader of the front of a file through a buffer of its own, so that the many small
// reads and skips of the key/value section cost neither a system call nor a seek each. Every read
// and skip is checked against the file size first and fails with a FormatError that names the
// file, the item and the offset.
class GgufCursor {
 public:
  explicit GgufCursor(std::string path) : path_(std::move(path)) {
    in_.open(path_, std::ios::binary | std::ios::ate);
    if (!in_) throw IoError("cannot open " + path_ + ": " + std::strerror(errno));
    const std::streamoff end = in_.tellg();
    if (end < 0) throw IoError("cannot read the size of " + path_);
    size_ = static_cast<uint64_t>(end);
  }

  uint64_t remaining() const { return size_ - pos_; }

  FormatError fail(const std::string& what) const {
    return FormatError(path_ + " is not a valid GGUF file: " + what);
  }

  // Checks that `bytes` more bytes exist; `what` names the item in the error.
  void require(uint64_t bytes, const std::string& what) const {
    if (bytes > remaining()) {
      throw fail(what + " needs " + std::to_string(bytes) + " bytes at offset " +
                 std::to_string(pos_) + " but the file has only " + std::to_string(remaining()) +
                 " left (truncated or corrupt)");
    }
  }

  // Checks a count of items of at least `min_bytes` each against the bytes left.
  void require_count(uint64_t count, uint64_t min_bytes, const std::string& what) const {
    if (count > remaining() / min_bytes) {
      throw fail(what + " claims " + std::to_string(count) + " items at offset " +
                 std::to_string(pos_) + " but the file has only " + std::to_string(remaining()) +
                 " bytes left (truncated or corrupt)");
    }
  }

  void read(void* dst, uint64_t bytes, const std::string& what) {
    require(bytes, what);
    char* out = static_cast<char*>(dst);
    while (bytes > 0) {
      if (pos_ < buffer_offset_ || pos_ >= buffer_offset_ + buffer_.size()) fill();
      const uint64_t at = pos_ - buffer_offset_;
      const uint64_t n = std::min<uint64_t>(bytes, buffer_.size() - at);
      std::memcpy(out, buffer_.data() + at, static_cast<std::size_t>(n));
      out += n;
      pos_ += n;
      bytes -= n;
    }
  }

  void skip(uint64_t bytes, const std::string& what) {
    require(bytes, what);
    pos_ += bytes;
  }

  // Little-endian unsigned integer of `bytes` (1, 2, 4 or 8) bytes.
  uint64_t unsigned_le(int bytes, const std::string& what) {
    unsigned char raw[8];
    read(raw, static_cast<uint64_t>(bytes), what);
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | raw[i];
    return v;
  }
  uint32_t u32(const std::string& what) { return static_cast<uint32_t>(unsigned_le(4, what)); }
  uint64_t u64(const std::string& what) { return unsigned_le(8, what); }

  std::string read_string(const std::string& what) {
    const uint64_t length = u64(what);
    require(length, what);
    std::string s(static_cast<std::size_t>(length), '\0');
    read(s.data(), length, what);
    return s;
  }

  void skip_string(const std::string& what) { skip(u64(what), what); }

 private:
  static constexpr uint64_t kBufferBytes = uint64_t{1} << 20;

  // Loads the buffer from pos_ on (pos_ < size_: every caller checked the bytes it needs).
  void fill() {
    const uint64_t n = std::min(kBufferBytes, size_ - pos_);
    buffer_.resize(static_cast<std::size_t>(n));
    in_.clear();
    in_.seekg(static_cast<std::streamoff>(pos_));
    if (!in_ || !in_.read(buffer_.data(), static_cast<std::streamsize>(n))) {
      buffer_.clear();
      throw IoError("cannot read " + path_ + " at offset " + std::to_string(pos_));
    }
    buffer_offset_ = pos_;
  }

  std::string path_;
  std::ifstream in_;
  uint64_t size_ = 0;
  uint64_t pos_ = 0;
  std::vector<char> buffer_;
  uint64_t buffer_offset_ = 0;
};

// Skips one value of `type`; `depth` counts the enclosing arrays.
void skip_value(GgufCursor& in, uint32_t type, const std::string& what, int depth) {
  if (const uint64_t size = fixed_size(type)) {
    in.skip(size, what);
    return;
  }
  if (type == kGgufString) {
    in.skip_string(what);
    return;
  }
  if (type != kGgufArray) throw in.fail(what + " has unknown value type " + std::to_string(type));
  if (depth >= kMaxArrayDepth) {
    throw in.fail(what + " nests arrays deeper than " + std::to_string(kMaxArrayDepth));
  }
  const uint32_t element = in.u32(what + " (element type)");
  const uint64_t count = in.u64(what + " (element count)");
  if (const uint64_t size = fixed_size(element)) {
    in.require_count(count, size, what);
    in.skip(count * size, what);
  } else if (element == kGgufString) {
    in.require_count(count, kMinStringBytes, what);
    for (uint64_t i = 0; i < count; ++i) in.skip_string(what);
  } else if (element == kGgufArray) {
    in.require_count(count, kMinArrayBytes, what);
    for (uint64_t i = 0; i < count; ++i) skip_value(in, element, what, depth + 1);
  } else {
    throw in.fail(what + " has unknown element type " + std::to_string(element));
  }
}

// One integer of integer type `type`, as int64.
int64_t read_integer(GgufCursor& in, uint32_t type, const std::string& what) {
  const int bytes = static_cast<int>(fixed_size(type));
  const uint64_t raw = in.unsigned_le(bytes, what);
  switch (type) {
    case kGgufI8:
      return static_cast<int8_t>(raw);
    case kGgufI16:
      return static_cast<int16_t>(raw);
    case kGgufI32:
      return static_cast<int32_t>(raw);
    case kGgufI64:
      return static_cast<int64_t>(raw);
    case kGgufU64:
      if (raw > uint64_t(std::numeric_limits<int64_t>::max()))
        throw in.fail(what + " holds " + std::to_string(raw) + ", beyond int64");
      return static_cast<int64_t>(raw);
    default:  // uint8, uint16, uint32
      return static_cast<int64_t>(raw);
  }
}

// One number of numeric type `type`, as float (what tools/capture reads scores into).
float read_float(GgufCursor& in, uint32_t type, const std::string& what) {
  if (type == kGgufF32) {
    const uint32_t raw = in.u32(what);
    float v;
    std::memcpy(&v, &raw, sizeof v);
    return v;
  }
  if (type == kGgufF64) {
    const uint64_t raw = in.u64(what);
    double v;
    std::memcpy(&v, &raw, sizeof v);
    return static_cast<float>(v);
  }
  return static_cast<float>(read_integer(in, type, what));
}

// Reads the element type and count of an array value (whose type was checked to be array) and
// checks the element type with `accepts`; `expected` describes what it accepts.
template <typename Accepts>
std::pair<uint32_t, uint64_t> array_header(GgufCursor& in, const std::string& key, Accepts accepts,
                                           const char* expected) {
  const uint32_t element = in.u32(key + " (element type)");
  const uint64_t count = in.u64(key + " (element count)");
  if (!accepts(element)) {
    throw in.fail("key " + key + " is an array of " + type_name(element) +
                  ", expected an array of " + expected);
  }
  const uint64_t min_bytes = element == kGgufString ? kMinStringBytes : fixed_size(element);
  in.require_count(count, min_bytes, key);
  if (count > uint64_t(std::numeric_limits<int32_t>::max())) {
    throw in.fail("key " + key + " has " + std::to_string(count) + " entries, more than 2^31 - 1");
  }
  return {element, count};
}

void require_type(const GgufCursor& in, const std::string& key, uint32_t type, bool ok,
                  const char* expected) {
  if (!ok) {
    throw in.fail("key " + key + " has type " + type_name(type) + " (" + std::to_string(type) +
                  "), expected " + expected);
  }
}

// ---------------------------------------------------------------------------------------------
// SPM

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's space

// "XX": two upper-case hex digits, as in the byte token <0xXX>.
std::string hex_byte(int byte) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  return {kHex[(byte >> 4) & 15], kHex[byte & 15]};
}

// Bytes of the UTF-8 character that starts at s[i]: the length its lead byte announces when that
// many bytes follow and all are continuation bytes, else 1 (a stray byte is a character of its
// own).
std::size_t utf8_length(std::string_view s, std::size_t i) {
  const auto lead = static_cast<unsigned char>(s[i]);
  const std::size_t n = lead < 0x80   ? 1
                        : lead < 0xC0 ? 0
                        : lead < 0xE0 ? 2
                        : lead < 0xF0 ? 3
                        : lead < 0xF8 ? 4
                                      : 0;
  if (n == 0 || i + n > s.size()) return 1;
  for (std::size_t k = 1; k < n; ++k)
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 1;
  return n;
}

// The byte of a byte token's text "<0xXX>" (upper- or lower-case hex), or -1.
int parse_byte_token(std::string_view text) {
  if (text.size() != 6 || text.substr(0, 3) != "<0x" || text[5] != '>') return -1;
  int value = 0;
  for (std::size_t k = 3; k < 5; ++k) {
    const char c = text[k];
    const int digit = c >= '0' && c <= '9'   ? c - '0'
                      : c >= 'A' && c <= 'F' ? c - 'A' + 10
                      : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                             : -1;
    if (digit < 0) return -1;
    value = 16 * value + digit;
  }
  return value;
}

// A piece of the text after the user-defined split: raw text (token < 0) or a user-defined token.
struct Fragment {
  std::string_view text;
  int32_t token;
};

// A candidate merge of the adjacent symbols left and right into a token of score `score`; `bytes`
// is the length of the merged text, which tells a stale candidate (one of whose symbols has grown
// since) from a current one.
struct Candidate {
  float score;
  int32_t left;
  int32_t right;
  std::size_t bytes;
};

// Priority of the merge queue: the highest score first, then the leftmost pair (the order of the
// Python heap of (-score, left, right, length) tuples). True when a pops after b.
struct PopsAfter {
  bool operator()(const Candidate& a, const Candidate& b) const {
    if (a.score != b.score) return a.score < b.score;
    if (a.left != b.left) return a.left > b.left;
    if (a.right != b.right) return a.right > b.right;
    return a.bytes > b.bytes;
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Reader

TokenizerVocab read_gguf_vocab(const std::string& path) {
  HTFR_NVTX_RANGE("htfr::read_gguf_vocab");
  GgufCursor in(path);

  char magic[4];
  in.read(magic, 4, "the magic");
  if (std::memcmp(magic, "GGUF", 4) != 0) {
    std::string found;
    for (const char c : magic) found += hex_byte(static_cast<unsigned char>(c));
    throw in.fail("bad magic 0x" + found + " (expected \"GGUF\", 0x47475546)");
  }
  const uint32_t version = in.u32("the version");
  if (version != 2 && version != 3) {
    throw in.fail("unsupported version " + std::to_string(version) +
                  " (this reader handles versions 2 and 3, little-endian)");
  }
  const uint64_t tensor_count = in.u64("the tensor count");
  const uint64_t pair_count = in.u64("the key/value count");
  in.require_count(pair_count, kMinPairBytes, "the key/value section");
  in.require_count(tensor_count, kMinTensorInfoBytes, "the tensor count");

  TokenizerVocab vocab;
  bool have_model = false, have_tokens = false, have_scores = false, have_types = false;
  bool have_bos = false, have_eos = false;
  std::set<std::string> seen;
  for (uint64_t pair = 0; pair < pair_count; ++pair) {
    const std::string key = in.read_string("key " + std::to_string(pair));
    if (!seen.insert(key).second) throw in.fail("duplicate key " + key);
    const uint32_t type = in.u32("the value type of key " + key);
    const auto read_id = [&](int32_t& id) {
      require_type(in, key, type, is_integer_type(type), "an integer");
      const int64_t v = read_integer(in, type, key);
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
        throw in.fail("key " + key + " holds " + std::to_string(v) + ", beyond int32");
      id = static_cast<int32_t>(v);
    };
    const auto read_flag = [&](bool& flag) {
      require_type(in, key, type, type == kGgufBool || is_integer_type(type), "bool");
      flag = read_integer(in, type == kGgufBool ? kGgufU8 : type, key) != 0;
    };

    if (key == "tokenizer.ggml.model") {
      require_type(in, key, type, type == kGgufString, "string");
      vocab.model = in.read_string(key);
      have_model = true;
    } else if (key == "tokenizer.ggml.tokens") {
      require_type(in, key, type, type == kGgufArray, "an array of strings");
      const auto [element, count] = array_header(
          in, key, [](uint32_t t) { return t == kGgufString; }, "strings");
      (void)element;
      vocab.tokens.resize(static_cast<std::size_t>(count));
      for (uint64_t i = 0; i < count; ++i) vocab.tokens[i] = in.read_string(key);
      have_tokens = true;
    } else if (key == "tokenizer.ggml.scores") {
      require_type(in, key, type, type == kGgufArray, "an array of numbers");
      const auto [element, count] = array_header(in, key, is_numeric_type, "numbers");
      vocab.scores.resize(static_cast<std::size_t>(count));
      for (uint64_t i = 0; i < count; ++i) vocab.scores[i] = read_float(in, element, key);
      have_scores = true;
    } else if (key == "tokenizer.ggml.token_type") {
      require_type(in, key, type, type == kGgufArray, "an array of integers");
      const auto [element, count] = array_header(in, key, is_integer_type, "integers");
      vocab.types.resize(static_cast<std::size_t>(count));
      for (uint64_t i = 0; i < count; ++i) {
        const int64_t v = read_integer(in, element, key);
        if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
          throw in.fail("key " + key + " holds " + std::to_string(v) + ", beyond int32");
        vocab.types[i] = static_cast<int32_t>(v);
      }
      have_types = true;
    } else if (key == "tokenizer.ggml.bos_token_id") {
      read_id(vocab.bos_id);
      have_bos = true;
    } else if (key == "tokenizer.ggml.eos_token_id") {
      read_id(vocab.eos_id);
      have_eos = true;
    } else if (key == "tokenizer.ggml.unknown_token_id") {
      read_id(vocab.unk_id);
    } else if (key == "tokenizer.ggml.add_bos_token") {
      read_flag(vocab.add_bos);
    } else if (key == "tokenizer.ggml.add_space_prefix") {
      read_flag(vocab.add_space_prefix);
    } else {
      skip_value(in, type, "the value of key " + key, 0);
    }
  }

  const auto missing = [&](const char* key) {
    return FormatError(path + " has no " + key + " key (not a model file with a tokenizer?)");
  };
  if (!have_model) throw missing("tokenizer.ggml.model");
  if (vocab.model != "llama") {
    throw FormatError(path + ": tokenizer model \"" + vocab.model +
                      "\" is not supported (only \"llama\", the SentencePiece vocabulary)");
  }
  if (!have_tokens) throw missing("tokenizer.ggml.tokens");
  if (!have_scores) throw missing("tokenizer.ggml.scores");
  if (!have_types) throw missing("tokenizer.ggml.token_type");
  if (!have_bos) throw missing("tokenizer.ggml.bos_token_id");
  if (!have_eos) throw missing("tokenizer.ggml.eos_token_id");
  const std::size_t n = vocab.tokens.size();
  HTFR_REQUIRE(vocab.scores.size() == n && vocab.types.size() == n, FormatError,
               path << ": tokenizer.ggml.tokens has " << n << " entries but .scores has "
                    << vocab.scores.size() << " and .token_type " << vocab.types.size());
  // The unknown id may be -1 (absent); bos and eos must be tokens.
  const auto check_id = [&](const char* key, int32_t id, bool may_be_absent) {
    HTFR_REQUIRE(
        (id >= 0 && std::size_t(id) < n) || (may_be_absent && id == -1), FormatError,
        path << ": " << key << " " << id << " is outside the vocabulary of " << n << " tokens");
  };
  check_id("tokenizer.ggml.bos_token_id", vocab.bos_id, false);
  check_id("tokenizer.ggml.eos_token_id", vocab.eos_id, false);
  check_id("tokenizer.ggml.unknown_token_id", vocab.unk_id, true);
  return vocab;
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

struct SpmTokenizer::Impl {
  TokenizerVocab vocab;
  // Views into vocab.tokens, which never changes after construction. Later duplicates win, as in
  // llama.cpp's token-to-id map.
  std::unordered_map<std::string_view, int32_t> token_to_id;
  // Non-empty user-defined tokens, longest text first, equal lengths by id.
  std::vector<std::pair<std::string_view, int32_t>> user_defined;
  // Token of each byte for the fallback, or -1.
  std::array<int32_t, 256> byte_ids{};

  int32_t find(std::string_view text) const {
    const auto it = token_to_id.find(text);
    return it == token_to_id.end() ? -1 : it->second;
  }

  std::vector<Fragment> partition(std::string_view text) const;
  void merge(std::string_view text, std::vector<int32_t>& out) const;
};

// Splits the user-defined tokens out of `text`, each token over all raw fragments in turn.
std::vector<Fragment> SpmTokenizer::Impl::partition(std::string_view text) const {
  std::vector<Fragment> fragments;
  if (!text.empty()) fragments.push_back({text, -1});
  std::vector<Fragment> split;
  for (const auto& [token_text, token_id] : user_defined) {
    if (text.find(token_text) == std::string_view::npos) continue;
    split.clear();
    for (const Fragment& f : fragments) {
      if (f.token >= 0 || f.text.find(token_text) == std::string_view::npos) {
        split.push_back(f);
        continue;
      }
      std::size_t begin = 0;
      for (;;) {
        const std::size_t at = f.text.find(token_text, begin);
        const std::size_t stop = at == std::string_view::npos ? f.text.size() : at;
        if (stop > begin) split.push_back({f.text.substr(begin, stop - begin), -1});
        if (at == std::string_view::npos) break;
        split.push_back({std::string_view(), token_id});
        begin = at + token_text.size();
      }
    }
    fragments.swap(split);
  }
  return fragments;
}

// Greedy highest-score pair merging over the characters of one escaped raw fragment; appends the
// resulting ids (byte tokens for symbols that are no token) to `out`.
void SpmTokenizer::Impl::merge(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  // Symbol i covers text[start[i], end[i]); the live symbols form a list through prev/next.
  std::vector<std::size_t> start, end;
  for (std::size_t i = 0; i < text.size(); i = end.back()) {
    start.push_back(i);
    end.push_back(i + utf8_length(text, i));
  }
  const auto n = static_cast<int32_t>(start.size());
  std::vector<int32_t> prev(static_cast<std::size_t>(n)), next(static_cast<std::size_t>(n));
  for (int32_t i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  std::vector<char> alive(static_cast<std::size_t>(n), 1);

  std::priority_queue<Candidate, std::vector<Candidate>, PopsAfter> queue;
  const auto push = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const std::size_t bytes = end[right] - start[left];
    const int32_t token = find(text.substr(start[left], bytes));
    if (token >= 0) queue.push({vocab.scores[token], left, right, bytes});
  };
  for (int32_t i = 1; i < n; ++i) push(i - 1, i);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right ||
        end[c.right] - start[c.left] != c.bytes)
      continue;
    end[c.left] = end[c.right];
    alive[c.right] = 0;
    next[c.left] = next[c.right];
    if (next[c.right] >= 0) prev[next[c.right]] = c.left;
    push(prev[c.left], c.left);
    push(c.left, next[c.left]);
  }

  for (int32_t i = 0; i != -1; i = next[i]) {
    const std::string_view piece = text.substr(start[i], end[i] - start[i]);
    const int32_t token = find(piece);
    if (token >= 0) {
      out.push_back(token);
      continue;
    }
    for (const char c : piece) {
      const auto byte = static_cast<unsigned char>(c);
      HTFR_REQUIRE(byte_ids[byte] >= 0, InvalidArgument,
                   "SpmTokenizer::encode: the vocabulary has no byte token <0x"
                       << hex_byte(byte) << "> for a character of the text");
      out.push_back(byte_ids[byte]);
    }
  }
}

SpmTokenizer::SpmTokenizer(TokenizerVocab vocab) {
  auto impl = std::make_shared<Impl>();
  impl->vocab = std::move(vocab);
  const TokenizerVocab& v = impl->vocab;
  const std::size_t n = v.tokens.size();
  HTFR_REQUIRE(v.scores.size() == n && v.types.size() == n, InvalidArgument,
               "SpmTokenizer: tokens, scores and types must have equal lengths, got "
                   << n << ", " << v.scores.size() << " and " << v.types.size());
  HTFR_REQUIRE(n <= std::size_t(std::numeric_limits<int32_t>::max()), InvalidArgument,
               "SpmTokenizer: " << n << " tokens, more than 2^31 - 1");
  HTFR_REQUIRE(
      v.model == "llama", InvalidArgument,
      "SpmTokenizer: tokenizer model \"" << v.model << "\" is not supported (only \"llama\")");
  for (std::size_t i = 0; i < n; ++i) {
    HTFR_REQUIRE(!std::isnan(v.scores[i]), InvalidArgument,
                 "SpmTokenizer: the score of token " << i << " is NaN");
  }
  const auto in_vocab = [n](int32_t id) { return id >= 0 && std::size_t(id) < n; };
  HTFR_REQUIRE(in_vocab(v.bos_id), InvalidArgument,
               "SpmTokenizer: bos_id " << v.bos_id << " is outside [0, " << n << ")");
  HTFR_REQUIRE(in_vocab(v.eos_id), InvalidArgument,
               "SpmTokenizer: eos_id " << v.eos_id << " is outside [0, " << n << ")");
  HTFR_REQUIRE(v.unk_id == -1 || in_vocab(v.unk_id), InvalidArgument,
               "SpmTokenizer: unk_id " << v.unk_id << " is outside [-1, " << n << ")");

  impl->token_to_id.reserve(n);
  for (std::size_t i = 0; i < n; ++i)
    impl->token_to_id[std::string_view(v.tokens[i])] = static_cast<int32_t>(i);

  std::vector<int32_t> user_defined;
  for (std::size_t i = 0; i < n; ++i)
    if (v.types[i] == kTokenTypeUserDefined && !v.tokens[i].empty())
      user_defined.push_back(static_cast<int32_t>(i));
  std::sort(user_defined.begin(), user_defined.end(), [&](int32_t a, int32_t b) {
    const std::size_t la = v.tokens[a].size(), lb = v.tokens[b].size();
    return la != lb ? la > lb : a < b;
  });
  for (const int32_t id : user_defined) impl->user_defined.emplace_back(v.tokens[id], id);

  for (int byte = 0; byte < 256; ++byte) {
    int32_t id = impl->find("<0x" + hex_byte(byte) + ">");
    if (id < 0 && byte < 0x80) id = impl->find(std::string(1, static_cast<char>(byte)));
    impl->byte_ids[byte] = id;
  }
  impl_ = std::move(impl);
}

std::vector<int32_t> SpmTokenizer::encode(const std::string& text, bool add_bos) const {
  HTFR_NVTX_RANGE("htfr::SpmTokenizer::encode");
  const Impl& impl = *impl_;
  std::vector<int32_t> out;
  if (add_bos) out.push_back(impl.vocab.bos_id);
  bool previous_special = true;
  std::string escaped;
  for (const Fragment& f : impl.partition(text)) {
    if (f.token >= 0) {
      out.push_back(f.token);
      previous_special = true;
      continue;
    }
    escaped.clear();
    if (impl.vocab.add_space_prefix && previous_special) escaped += kSpaceMark;
    for (const char c : f.text) {
      if (c == ' ')
        escaped += kSpaceMark;
      else
        escaped += c;
    }
    impl.merge(escaped, out);
    previous_special = false;
  }
  return out;
}

std::string SpmTokenizer::decode(const std::vector<int32_t>& ids) const {
  const TokenizerVocab& v = impl_->vocab;
  std::string out;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    HTFR_REQUIRE(id >= 0 && std::size_t(id) < v.tokens.size(), InvalidArgument,
                 "SpmTokenizer::decode: id " << id << " at position " << i
                                             << " is outside the vocabulary [0, " << v.tokens.size()
                                             << ")");
    const std::string& text = v.tokens[id];
    const int32_t type = v.types[id];
    if (type == kTokenTypeControl) continue;
    if (type == kTokenTypeByte) {
      const int byte = parse_byte_token(text);
      if (byte >= 0) {
        out += static_cast<char>(byte);
        continue;
      }
    }
    if (type == kTokenTypeUserDefined) {
      out += text;
      continue;
    }
    for (std::size_t k = 0; k < text.size();) {
      if (text.compare(k, kSpaceMark.size(), kSpaceMark) == 0) {
        out += ' ';
        k += kSpaceMark.size();
      } else {
        out += text[k++];
      }
    }
  }
  return out;
}

std::string SpmTokenizer::token_text(int32_t id) const {
  const TokenizerVocab& v = impl_->vocab;
  HTFR_REQUIRE(id >= 0 && std::size_t(id) < v.tokens.size(), InvalidArgument,
               "SpmTokenizer::token_text: id " << id << " is outside the vocabulary [0, "
                                               << v.tokens.size() << ")");
  return v.tokens[id];
}

const TokenizerVocab& SpmTokenizer::vocab() const { return impl_->vocab; }

}  // namespace htfr

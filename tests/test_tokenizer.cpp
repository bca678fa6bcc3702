// Gemma 3 tokenizer: a GGUF file written here byte by byte (with keys of every kind around the
// tokenizer's) reads back to the vocabulary it was written from; encode() gives the ids worked out
// by hand from the SPM rules (highest score first, leftmost on ties, user-defined tokens split
// first and longest first, U+2581 for spaces, byte fallback); decode() inverts it; damaged files
// and bad ids throw typed errors. With HTFR_TEST_GGUF naming the Gemma 3 270M GGUF, ids match the
// capture tool's Python tokenizer on fixed strings.
#include <gtest/gtest.h>
#include <htfr/error.hpp>
#include <htfr/tokenizer.hpp>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace htfr::test {
namespace {

namespace fs = std::filesystem;

// GGUF value types, as numbered by the format.
enum : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

// GGUF metadata serialised by hand, little-endian, straight from the format description: the magic
// "GGUF", the version (u32), the tensor count (u64), the key/value count (u64), then per pair the
// key (u64 length + bytes), the value type (u32) and the value; an array value is its element type
// (u32), its count (u64) and the elements. No tensors follow.
class GgufBuilder {
 public:
  void add_string(const std::string& key, const std::string& value) {
    pair(key, kString);
    put_string(body_, value);
  }
  void add_u32(const std::string& key, uint32_t value) {
    pair(key, kU32);
    put_le(body_, value, 4);
  }
  void add_i8(const std::string& key, int8_t value) {
    pair(key, kI8);
    put_le(body_, uint8_t(value), 1);
  }
  void add_u64(const std::string& key, uint64_t value) {
    pair(key, kU64);
    put_le(body_, value, 8);
  }
  void add_f32(const std::string& key, float value) {
    pair(key, kF32);
    put_f32(body_, value);
  }
  void add_f64(const std::string& key, double value) {
    pair(key, kF64);
    uint64_t raw;
    std::memcpy(&raw, &value, 8);
    put_le(body_, raw, 8);
  }
  void add_bool(const std::string& key, bool value) {
    pair(key, kBool);
    body_ += char(value ? 1 : 0);
  }
  void add_strings(const std::string& key, const std::vector<std::string>& values) {
    array_header(key, kString, values.size());
    for (const std::string& v : values) put_string(body_, v);
  }
  void add_f32s(const std::string& key, const std::vector<float>& values) {
    array_header(key, kF32, values.size());
    for (const float v : values) put_f32(body_, v);
  }
  void add_i32s(const std::string& key, const std::vector<int32_t>& values) {
    array_header(key, kI32, values.size());
    for (const int32_t v : values) put_le(body_, uint32_t(v), 4);
  }
  // An array of arrays: {{1, 2, 3}, {}} of int16, then {{"x", "yz"}} of strings.
  void add_nested(const std::string& key) {
    array_header(key, kArray, 3);
    put_le(body_, kI16, 4);
    put_le(body_, 3, 8);
    for (const uint16_t v : {1, 2, 3}) put_le(body_, v, 2);
    put_le(body_, kI16, 4);
    put_le(body_, 0, 8);
    put_le(body_, kString, 4);
    put_le(body_, 2, 8);
    put_string(body_, "x");
    put_string(body_, "yz");
  }
  // Arrays nested `depth` deep, the innermost one empty (of uint8).
  void add_deep(const std::string& key, int depth) {
    array_header(key, kArray, 1);
    for (int level = 1; level < depth; ++level) {
      put_le(body_, kArray, 4);
      put_le(body_, 1, 8);
    }
    put_le(body_, kU8, 4);
    put_le(body_, 0, 8);
  }
  // A pair whose value is only an array header: the elements are left to the caller (or absent).
  void array_header(const std::string& key, uint32_t element_type, uint64_t count) {
    pair(key, kArray);
    put_le(body_, element_type, 4);
    put_le(body_, count, 8);
  }
  // A pair of any declared type followed by raw value bytes.
  void add_raw(const std::string& key, uint32_t type, const std::string& value_bytes) {
    pair(key, type);
    body_ += value_bytes;
  }

  std::string bytes(uint32_t version = 3, const std::string& magic = "GGUF") const {
    std::string out = magic;
    put_le(out, version, 4);
    put_le(out, 0, 8);  // tensors
    put_le(out, pairs_, 8);
    return out + body_;
  }

 private:
  static void put_le(std::string& out, uint64_t value, int bytes) {
    for (int i = 0; i < bytes; ++i) out += char((value >> (8 * i)) & 0xFF);
  }
  static void put_f32(std::string& out, float value) {
    uint32_t raw;
    std::memcpy(&raw, &value, 4);
    put_le(out, raw, 4);
  }
  static void put_string(std::string& out, const std::string& s) {
    put_le(out, s.size(), 8);
    out += s;
  }
  void pair(const std::string& key, uint32_t type) {
    put_string(body_, key);
    put_le(body_, type, 4);
    ++pairs_;
  }

  std::string body_;
  uint64_t pairs_ = 0;
};

const std::string kMark = "\xE2\x96\x81";  // U+2581

// A small SPM vocabulary: <pad> <eos> <bos>, the 256 byte tokens, then the tokens below. The
// scores are chosen so that each rule of the algorithm decides one of the examples.
TokenizerVocab small_vocab() {
  TokenizerVocab v;
  const auto add = [&](const std::string& text, float score, int32_t type) {
    v.tokens.push_back(text);
    v.scores.push_back(score);
    v.types.push_back(type);
  };
  add("<pad>", 0.0f, kTokenTypeControl);
  add("<eos>", 0.0f, kTokenTypeControl);
  add("<bos>", 0.0f, kTokenTypeControl);
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b)
    add(std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">", 0.0f, kTokenTypeByte);
  for (const char* c : {"a", "b", "c", "d", "x", "y"}) add(c, -1.0f, kTokenTypeNormal);
  add(kMark, -1.0f, kTokenTypeNormal);
  add("ab", -2.0f, kTokenTypeNormal);
  add("bc", -1.5f, kTokenTypeNormal);
  add("cd", -3.0f, kTokenTypeNormal);
  add("bcd", -4.0f, kTokenTypeNormal);
  add("xy", -1.0f, kTokenTypeNormal);
  add("yx", -1.0f, kTokenTypeNormal);
  add(kMark + "a", -0.5f, kTokenTypeNormal);
  add("\xE6\x97\xA5", -1.0f, kTokenTypeNormal);              // 日
  add("\xE6\x9C\xAC", -1.0f, kTokenTypeNormal);              // 本
  add("\xE6\x97\xA5\xE6\x9C\xAC", -1.2f, kTokenTypeNormal);  // 日本
  add("\n", 0.0f, kTokenTypeUserDefined);
  add("\n\n", 0.0f, kTokenTypeUserDefined);
  add("  ", 0.0f, kTokenTypeUserDefined);
  add("<mark>", 0.0f, kTokenTypeUserDefined);
  v.bos_id = 2;
  v.eos_id = 1;
  v.unk_id = -1;
  v.add_bos = true;
  v.add_space_prefix = false;
  v.model = "llama";
  return v;
}

// Id of `text` in `v` (the test fails when it is missing).
int32_t id_of(const TokenizerVocab& v, const std::string& text) {
  for (std::size_t i = 0; i < v.tokens.size(); ++i)
    if (v.tokens[i] == text) return int32_t(i);
  ADD_FAILURE() << "no token \"" << text << "\" in the test vocabulary";
  return -1;
}

int32_t byte_id(int byte) { return 3 + byte; }

// The tokenizer keys of `v` written into `g`, with keys of other types between them.
void add_vocab(GgufBuilder& g, const TokenizerVocab& v) {
  g.add_string("tokenizer.ggml.model", v.model);
  g.add_strings("general.tags", {"text", "test"});
  g.add_strings("tokenizer.ggml.tokens", v.tokens);
  g.add_nested("general.nested");
  g.add_f32s("tokenizer.ggml.scores", v.scores);
  g.add_i8("general.small", -5);
  g.add_i32s("tokenizer.ggml.token_type", v.types);
  g.add_u32("tokenizer.ggml.bos_token_id", uint32_t(v.bos_id));
  g.add_u32("tokenizer.ggml.eos_token_id", uint32_t(v.eos_id));
  g.add_bool("tokenizer.ggml.add_bos_token", v.add_bos);
  g.add_bool("tokenizer.ggml.add_space_prefix", v.add_space_prefix);
}

// A whole file: general keys first (of several types), then the vocabulary, then more keys.
std::string vocab_file_bytes(const TokenizerVocab& v) {
  GgufBuilder g;
  g.add_string("general.architecture", "gemma3");
  g.add_u32("general.alignment", 32);
  g.add_f32("gemma3.attention.layer_norm_rms_epsilon", 1e-6f);
  g.add_bool("general.flag", true);
  g.add_u64("general.count", 1ull << 40);
  g.add_f64("general.ratio", 0.25);
  add_vocab(g, v);
  g.add_u32("tokenizer.ggml.padding_token_id", 0);
  g.add_strings("tokenizer.ggml.merges", {});
  return g.bytes();
}

class TokenizerFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("htfr_tok_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& bytes) const {
    const std::string p = (dir_ / name).string();
    std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
    return p;
  }

  // The FormatError message of reading `bytes`, or "" (with a test failure) when none is thrown.
  std::string format_error(const std::string& bytes) const {
    const std::string p = write("bad.gguf", bytes);
    try {
      read_gguf_vocab(p);
    } catch (const FormatError& e) {
      return e.what();
    }
    ADD_FAILURE() << "no FormatError for a file of " << bytes.size() << " bytes";
    return "";
  }

  fs::path dir_;
};

TEST_F(TokenizerFile, ReadsBackTheVocabularyItWasWrittenFrom) {
  const TokenizerVocab v = small_vocab();
  const TokenizerVocab r = read_gguf_vocab(write("vocab.gguf", vocab_file_bytes(v)));
  EXPECT_EQ(r.model, "llama");
  EXPECT_EQ(r.tokens, v.tokens);
  EXPECT_EQ(r.scores, v.scores);
  EXPECT_EQ(r.types, v.types);
  EXPECT_EQ(r.bos_id, 2);
  EXPECT_EQ(r.eos_id, 1);
  EXPECT_EQ(r.unk_id, -1);
  EXPECT_TRUE(r.add_bos);
  EXPECT_FALSE(r.add_space_prefix);
}

TEST_F(TokenizerFile, OptionalKeysTakeTheirDefaults) {
  const TokenizerVocab v = small_vocab();
  GgufBuilder g;
  g.add_string("tokenizer.ggml.model", "llama");
  g.add_strings("tokenizer.ggml.tokens", v.tokens);
  g.add_f32s("tokenizer.ggml.scores", v.scores);
  g.add_i32s("tokenizer.ggml.token_type", v.types);
  g.add_u32("tokenizer.ggml.bos_token_id", 2);
  g.add_u32("tokenizer.ggml.eos_token_id", 1);
  const TokenizerVocab r = read_gguf_vocab(write("vocab.gguf", g.bytes(2)));  // version 2
  EXPECT_EQ(r.unk_id, -1);
  EXPECT_TRUE(r.add_bos);
  EXPECT_TRUE(r.add_space_prefix);
  EXPECT_EQ(r.tokens.size(), v.tokens.size());
}

TEST_F(TokenizerFile, ReadsTheUnknownId) {
  GgufBuilder g;
  add_vocab(g, small_vocab());
  g.add_u32("tokenizer.ggml.unknown_token_id", 0);
  EXPECT_EQ(read_gguf_vocab(write("vocab.gguf", g.bytes())).unk_id, 0);
}

TEST_F(TokenizerFile, MissingFileIsAnIoError) {
  EXPECT_THROW(read_gguf_vocab((dir_ / "absent.gguf").string()), IoError);
}

TEST_F(TokenizerFile, BadMagicIsAFormatError) {
  std::string bytes = vocab_file_bytes(small_vocab());
  bytes[0] = 'X';
  EXPECT_NE(format_error(bytes).find("magic"), std::string::npos);
}

TEST_F(TokenizerFile, UnsupportedVersionIsAFormatError) {
  GgufBuilder g;
  add_vocab(g, small_vocab());
  for (const uint32_t version : {1u, 4u, 0x03000000u}) {
    EXPECT_NE(format_error(g.bytes(version)).find("version " + std::to_string(version)),
              std::string::npos);
  }
}

TEST_F(TokenizerFile, EveryTruncationIsAFormatError) {
  // The file ends with its last value (no tensors), so every proper prefix cuts a value short.
  const std::string bytes = vocab_file_bytes(small_vocab());
  for (std::size_t cut = 0; cut < bytes.size(); ++cut) {
    const std::string message = format_error(bytes.substr(0, cut));
    EXPECT_NE(message.find("truncated"), std::string::npos) << "cut at " << cut << ": " << message;
  }
}

TEST_F(TokenizerFile, AbsurdLengthsAreFormatErrors) {
  const uint64_t huge = uint64_t{1} << 62;
  {
    GgufBuilder g;
    g.array_header("tokenizer.ggml.tokens", kString, huge);
    EXPECT_NE(format_error(g.bytes()).find("tokenizer.ggml.tokens"), std::string::npos);
  }
  {
    GgufBuilder g;
    g.array_header("general.skipped", kF64, huge);  // huge * 8 wraps around 2^64
    EXPECT_NE(format_error(g.bytes()).find("general.skipped"), std::string::npos);
  }
  {
    GgufBuilder g;
    g.array_header("general.skipped", kArray, huge);
    EXPECT_NE(format_error(g.bytes()).find("general.skipped"), std::string::npos);
  }
  {
    GgufBuilder g;
    std::string length(8, '\xFF');  // a string of 2^64 - 1 bytes
    g.add_raw("general.name", kString, length + "abc");
    EXPECT_NE(format_error(g.bytes()).find("general.name"), std::string::npos);
  }
  {
    std::string bytes = GgufBuilder().bytes();
    std::memset(&bytes[16], 0x7F, 8);  // the key/value count
    EXPECT_NE(format_error(bytes).find("key/value"), std::string::npos);
  }
}

TEST_F(TokenizerFile, MalformedValuesAreFormatErrors) {
  {
    GgufBuilder g;
    g.add_raw("general.odd", 13, "");
    EXPECT_NE(format_error(g.bytes()).find("unknown value type 13"), std::string::npos);
  }
  {
    GgufBuilder g;
    g.add_deep("general.deep", 40);
    EXPECT_NE(format_error(g.bytes()).find("deeper"), std::string::npos);
  }
  {
    GgufBuilder g;
    add_vocab(g, small_vocab());
    g.add_u32("general.alignment", 32);
    g.add_u32("general.alignment", 64);
    EXPECT_NE(format_error(g.bytes()).find("duplicate key general.alignment"), std::string::npos);
  }
  {
    GgufBuilder g;
    g.add_i32s("tokenizer.ggml.tokens", {1, 2});
    EXPECT_NE(format_error(g.bytes()).find("array of int32"), std::string::npos);
  }
}

TEST_F(TokenizerFile, WrongModelIsAFormatErrorNamingIt) {
  TokenizerVocab v = small_vocab();
  v.model = "gpt2";
  EXPECT_NE(format_error(vocab_file_bytes(v)).find("\"gpt2\""), std::string::npos);
}

TEST_F(TokenizerFile, MissingOrInconsistentVocabularyIsAFormatError) {
  const TokenizerVocab v = small_vocab();
  {
    GgufBuilder g;
    g.add_string("tokenizer.ggml.model", "llama");
    g.add_f32s("tokenizer.ggml.scores", v.scores);
    g.add_i32s("tokenizer.ggml.token_type", v.types);
    g.add_u32("tokenizer.ggml.bos_token_id", 2);
    g.add_u32("tokenizer.ggml.eos_token_id", 1);
    EXPECT_NE(format_error(g.bytes()).find("tokenizer.ggml.tokens"), std::string::npos);
  }
  {
    GgufBuilder g;
    g.add_string("general.architecture", "gemma3");
    EXPECT_NE(format_error(g.bytes()).find("tokenizer.ggml.model"), std::string::npos);
  }
  {
    TokenizerVocab shorter = v;
    shorter.scores.pop_back();
    EXPECT_NE(format_error(vocab_file_bytes(shorter)).find(".scores has"), std::string::npos);
  }
  {
    TokenizerVocab bad_bos = v;
    bad_bos.bos_id = int32_t(v.tokens.size());
    EXPECT_NE(format_error(vocab_file_bytes(bad_bos)).find("bos_token_id"), std::string::npos);
  }
}

class TokenizerEncode : public ::testing::Test {
 protected:
  TokenizerEncode() : vocab_(small_vocab()), tok_(vocab_) {}

  int32_t id(const std::string& text) const { return id_of(vocab_, text); }
  std::vector<int32_t> encode(const std::string& text) const { return tok_.encode(text, false); }

  TokenizerVocab vocab_;
  SpmTokenizer tok_;
};

TEST_F(TokenizerEncode, HighestScorePairMergesFirst) {
  // bc (-1.5) beats ab (-2); a + bc is no token, so nothing more merges.
  EXPECT_EQ(encode("abc"), (std::vector<int32_t>{id("a"), id("bc")}));
  EXPECT_EQ(encode("ab"), (std::vector<int32_t>{id("ab")}));
}

TEST_F(TokenizerEncode, MergesContinueWhilePairsFormTokens) {
  // abcd: bc (-1.5) first, then of a+bc (no token) and bc+d (bcd, -4) only bcd is left; cd (-3)
  // went stale when c joined bc.
  EXPECT_EQ(encode("bcd"), (std::vector<int32_t>{id("bcd")}));
  EXPECT_EQ(encode("abcd"), (std::vector<int32_t>{id("a"), id("bcd")}));
}

TEST_F(TokenizerEncode, EqualScoresMergeLeftmostFirst) {
  // xy and yx both score -1: the leftmost pair wins.
  EXPECT_EQ(encode("xyx"), (std::vector<int32_t>{id("xy"), id("x")}));
  EXPECT_EQ(encode("yxy"), (std::vector<int32_t>{id("yx"), id("y")}));
}

TEST_F(TokenizerEncode, SpacesBecomeMarks) {
  EXPECT_EQ(encode("a a"), (std::vector<int32_t>{id("a"), id(kMark + "a")}));
  EXPECT_EQ(encode("b a"), (std::vector<int32_t>{id("b"), id(kMark + "a")}));
  EXPECT_EQ(encode("a b"), (std::vector<int32_t>{id("a"), id(kMark), id("b")}));
  EXPECT_EQ(encode(" "), (std::vector<int32_t>{id(kMark)}));
}

TEST_F(TokenizerEncode, SpacePrefixBeforeTextAndAfterUserDefinedTokens) {
  TokenizerVocab v = small_vocab();
  v.add_space_prefix = true;
  const SpmTokenizer tok(v);
  EXPECT_EQ(tok.encode("a", false), (std::vector<int32_t>{id(kMark + "a")}));
  EXPECT_EQ(tok.encode("a\nb", false),
            (std::vector<int32_t>{id(kMark + "a"), id("\n"), id(kMark), id("b")}));
  EXPECT_EQ(tok.encode("\na", false), (std::vector<int32_t>{id("\n"), id(kMark + "a")}));
}

TEST_F(TokenizerEncode, UserDefinedTokensSplitFirstLongestFirst) {
  EXPECT_EQ(encode("a\n\n\nb"), (std::vector<int32_t>{id("a"), id("\n\n"), id("\n"), id("b")}));
  EXPECT_EQ(encode("a  b"), (std::vector<int32_t>{id("a"), id("  "), id("b")}));
  EXPECT_EQ(encode("a   b"), (std::vector<int32_t>{id("a"), id("  "), id(kMark), id("b")}));
  EXPECT_EQ(encode("a<mark>b<mark>"),
            (std::vector<int32_t>{id("a"), id("<mark>"), id("b"), id("<mark>")}));
  // A user-defined token never merges with its neighbours: "a" and "b" stay apart from "ab".
  EXPECT_EQ(encode("a\nb"), (std::vector<int32_t>{id("a"), id("\n"), id("b")}));
  // Control tokens are not parsed from the text: "<bos>" is spelled with byte tokens.
  EXPECT_EQ(encode("<bos>").size(), 5u);
}

TEST_F(TokenizerEncode, MultibyteCharactersMergeAsWholeCharacters) {
  const std::string ri = "\xE6\x97\xA5", ben = "\xE6\x9C\xAC";  // 日, 本
  EXPECT_EQ(encode(ri + ben), (std::vector<int32_t>{id(ri + ben)}));
  EXPECT_EQ(encode(ben + ri), (std::vector<int32_t>{id(ben), id(ri)}));
  EXPECT_EQ(encode("a" + ri + ben + " a"),
            (std::vector<int32_t>{id("a"), id(ri + ben), id(kMark + "a")}));
}

TEST_F(TokenizerEncode, CharactersWithoutATokenFallBackToBytes) {
  // é (C3 A9) and an emoji (F0 9F 99 82) are not in the vocabulary.
  EXPECT_EQ(encode("\xC3\xA9"), (std::vector<int32_t>{byte_id(0xC3), byte_id(0xA9)}));
  EXPECT_EQ(
      encode("a\xF0\x9F\x99\x82"),
      (std::vector<int32_t>{id("a"), byte_id(0xF0), byte_id(0x9F), byte_id(0x99), byte_id(0x82)}));
  EXPECT_EQ(encode("q"), (std::vector<int32_t>{byte_id('q')}));
  // Invalid UTF-8: each stray byte is a character of its own.
  EXPECT_EQ(encode(std::string("\xA9") + "a\xE6\x97"),
            (std::vector<int32_t>{byte_id(0xA9), id("a"), byte_id(0xE6), byte_id(0x97)}));
}

TEST_F(TokenizerEncode, BosOnRequestAndEmptyText) {
  EXPECT_EQ(tok_.encode("b", true), (std::vector<int32_t>{2, id("b")}));
  EXPECT_EQ(tok_.encode("", false), std::vector<int32_t>{});
  EXPECT_EQ(tok_.encode("", true), std::vector<int32_t>{2});
}

TEST_F(TokenizerEncode, MissingByteTokenIsAnInvalidArgument) {
  TokenizerVocab v;
  v.tokens = {"<bos>", "<eos>", "a"};
  v.scores = {0.0f, 0.0f, -1.0f};
  v.types = {kTokenTypeControl, kTokenTypeControl, kTokenTypeNormal};
  v.bos_id = 0;
  v.eos_id = 1;
  v.add_space_prefix = false;
  const SpmTokenizer tok(v);
  EXPECT_EQ(tok.encode("aa", false), (std::vector<int32_t>{2, 2}));
  EXPECT_THROW(tok.encode("ab", false), InvalidArgument);
}

TEST_F(TokenizerEncode, DecodeInvertsEncode) {
  for (const std::string text :
       {"abcd xyx", "a\n\n\nb  c   d\n", " a a ", "\xE6\x97\xA5\xE6\x9C\xAC \xC3\xA9!",
        "\xF0\x9F\x99\x82<mark>q", ""}) {
    EXPECT_EQ(tok_.decode(encode(text)), text);
  }
  // Control tokens vanish; the stored texts stay available.
  EXPECT_EQ(tok_.decode({2, id("a"), id(kMark + "a"), 1}), "a a");
  EXPECT_EQ(tok_.token_text(2), "<bos>");
  EXPECT_EQ(tok_.token_text(byte_id(0xC3)), "<0xC3>");
  EXPECT_EQ(tok_.token_text(id(kMark + "a")), kMark + "a");
}

TEST_F(TokenizerEncode, IdsOutsideTheVocabularyAreInvalidArguments) {
  const auto n = int32_t(vocab_.tokens.size());
  EXPECT_THROW(tok_.decode({id("a"), n}), InvalidArgument);
  EXPECT_THROW(tok_.decode({-1}), InvalidArgument);
  EXPECT_THROW(tok_.token_text(n), InvalidArgument);
  EXPECT_THROW(tok_.token_text(-1), InvalidArgument);
}

TEST_F(TokenizerEncode, InconsistentVocabulariesAreInvalidArguments) {
  TokenizerVocab v = small_vocab();
  v.scores.pop_back();
  EXPECT_THROW(SpmTokenizer{v}, InvalidArgument);
  v = small_vocab();
  v.bos_id = int32_t(v.tokens.size());
  EXPECT_THROW(SpmTokenizer{v}, InvalidArgument);
  v = small_vocab();
  v.model = "gpt2";
  EXPECT_THROW(SpmTokenizer{v}, InvalidArgument);
}

TEST_F(TokenizerFile, EncodesFromAFileAsFromTheVocabulary) {
  const TokenizerVocab v = small_vocab();
  const SpmTokenizer from_file(read_gguf_vocab(write("vocab.gguf", vocab_file_bytes(v))));
  const SpmTokenizer direct(v);
  const std::string text = "abcd  xyx\n\xE6\x97\xA5\xE6\x9C\xAC \xC3\xA9 a<mark>";
  EXPECT_EQ(from_file.encode(text, true), direct.encode(text, true));
}

// The real Gemma 3 vocabulary, against ids from the capture tool's Python tokenizer.
TEST(TokenizerRealGguf, MatchesThePythonReference) {
  const char* path = std::getenv("HTFR_TEST_GGUF");
  if (path == nullptr || *path == '\0') {
    GTEST_SKIP() << "set HTFR_TEST_GGUF to a Gemma 3 GGUF file (gemma-3-270m-q4_k_m.gguf) to run";
  }
  const SpmTokenizer tok(read_gguf_vocab(path));
  EXPECT_EQ(tok.vocab().tokens.size(), 262144u);
  EXPECT_EQ(tok.vocab().bos_id, 2);
  EXPECT_EQ(tok.vocab().eos_id, 1);
  EXPECT_TRUE(tok.vocab().add_bos);
  EXPECT_FALSE(tok.vocab().add_space_prefix);

  // Produced by tools/capture/tokenizer.py (SpmTokenizer.from_gguf(GgufFile(path).vocab()),
  // encode without BOS) on gemma-3-270m-q4_k_m.gguf.
  const std::vector<std::pair<std::string, std::vector<int32_t>>> cases = {
      {"Hello, world!", {9259, 236764, 1902, 236888}},
      {"The quick brown fox jumps over the lazy dog.\nSecond line:  two spaces,\tand a tab.",
       {818,  3823,   8864, 37423, 38167, 1024,   506,    31770, 4799, 236761, 107,   12400,
        1757, 236787, 138,  13498, 9952,  236764, 255968, 624,   496,  6937,   236761}},
      {"In 2024, 3.14159 x 42 = 131.95 (approx.); 1,000,000!",
       {902,    236743, 236778, 236771, 236778, 236812, 236764, 236743, 236800, 236761, 236770,
        236812, 236770, 236810, 236819, 1123,   236743, 236812, 236778, 578,    236743, 236770,
        236800, 236770, 236761, 236819, 236810, 568,    17868,  40763,  236743, 236770, 236764,
        236771, 236771, 236771, 236764, 236771, 236771, 236771, 236888}},
      {"Grüße aus München – naïve café", {9322, 236959, 16756, 5581, 67772, 1271, 120362, 33443}},
      {"日本語のテキスト", {94951, 236945, 95830}},
      // 🫨 and 𠀀 have no token of their own: byte fallback.
      {"I love pizza 🍕🎉! Rare: 🫨 𠀀",
       {236777, 2765, 19406, 236743, 245414, 242061, 236888, 59782, 236787, 236743, 478, 397, 409,
        406, 236743, 478, 398, 366, 366}},
      {"  leading spaces, trailing space \n\n\nparagraph\n\n",
       {138, 26016, 9952, 236764, 45330, 2557, 236743, 109, 35781, 108}},
      {"<start_of_image> markup, <b>bold</b> & \"quotes\"",
       {255999, 71911, 236764, 236743, 200, 15640, 209, 833, 623, 52231, 236775}},
  };
  for (const auto& [text, expected] : cases) {
    EXPECT_EQ(tok.encode(text, false), expected) << text;
    EXPECT_EQ(tok.decode(expected), text);
  }
  EXPECT_EQ(tok.encode("Hello", true), (std::vector<int32_t>{2, 9259}));
}

}  // namespace
}  // namespace htfr::test

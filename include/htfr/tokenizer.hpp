// Gemma 3 tokenization in C++: the vocabulary comes straight from the metadata of a GGUF model
// file, and text is encoded exactly as the capture tool's tokenizer (tools/capture/tokenizer.py,
// llama.cpp's SentencePiece "llama" vocabulary) does, so that ids agree with captured data. Host
// only, no GPU.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace htfr {

/// GGUF token types (the values of tokenizer.ggml.token_type), numbered as llama.cpp numbers them.
inline constexpr int32_t kTokenTypeNormal = 1;
inline constexpr int32_t kTokenTypeUnknown = 2;
/// Control tokens (<bos>, <eos>, <pad>, ...): never produced by encode(), dropped by decode().
inline constexpr int32_t kTokenTypeControl = 3;
/// User-defined tokens (for Gemma: runs of newlines, spaces and tabs, and a few markup tokens):
/// split out of the raw text before any merging.
inline constexpr int32_t kTokenTypeUserDefined = 4;
inline constexpr int32_t kTokenTypeUnused = 5;
/// Byte tokens <0x00> .. <0xFF>: the fallback for characters that have no token of their own.
inline constexpr int32_t kTokenTypeByte = 6;

/// The tokenizer section of a GGUF file. tokens, scores and types are indexed by token id and
/// have one entry per token. The member defaults are what read_gguf_vocab() assumes for an
/// optional key that the file lacks.
struct TokenizerVocab {
  /// Token texts (UTF-8; spaces appear as U+2581 "▁" in ordinary tokens).
  std::vector<std::string> tokens;
  /// Merge scores: the higher the score, the earlier a pair merges into this token.
  std::vector<float> scores;
  /// GGUF token types, kTokenType*.
  std::vector<int32_t> types;
  /// tokenizer.ggml.bos_token_id, .eos_token_id (both required in a file) and .unknown_token_id
  /// (-1 when absent; encode() never emits it: unknown characters become byte tokens).
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  /// tokenizer.ggml.add_bos_token: whether the model expects <bos> first. Informational; the
  /// caller passes its choice to SpmTokenizer::encode().
  bool add_bos = true;
  /// tokenizer.ggml.add_space_prefix: whether encode() puts a U+2581 before the text and after
  /// every user-defined token (Gemma 3: false).
  bool add_space_prefix = true;
  /// tokenizer.ggml.model; only "llama" (SentencePiece) is supported.
  std::string model = "llama";
};

/// Reads the tokenizer section of the GGUF file at `path` (GGUF version 2 or 3, little-endian).
/// Only the header and the key/value section are parsed; values of other keys (of any type,
/// nested arrays included) are skipped, and tensor information and data are never read, so the
/// cost is that of the vocabulary alone. Keys: tokenizer.ggml.model (must be "llama"),
/// .tokens, .scores, .token_type, .bos_token_id and .eos_token_id are required;
/// .unknown_token_id, .add_bos_token and .add_space_prefix are optional (see TokenizerVocab).
/// Integer keys may have any GGUF integer type, scores any numeric type.
/// Throws IoError when the file cannot be opened or read, and FormatError naming the file and the
/// problem for a bad magic, a version other than 2 or 3, a truncated file, a length or count
/// larger than the rest of the file, an unknown value type, a duplicate key, a required key that
/// is missing or has the wrong type, a model other than "llama", tokens/scores/token_type of
/// different lengths, or a bos/eos/unknown id outside the vocabulary.
TokenizerVocab read_gguf_vocab(const std::string& path);

/// llama.cpp's SentencePiece (SPM) tokenizer over a TokenizerVocab, without special-token parsing
/// (text that spells "<bos>" is encoded as ordinary characters). encode():
///  1. splits the user-defined tokens out of the raw text, longest token text first (equal
///     lengths by id), each one over all remaining raw fragments, left to right;
///  2. in every remaining raw fragment replaces each space by U+2581 (and puts one U+2581 in
///     front of a fragment that starts the text or follows a user-defined token, when
///     add_space_prefix is set), splits it into UTF-8 characters and repeatedly merges the
///     adjacent pair whose concatenation is a token of the highest score, the leftmost on ties;
///  3. emits each final symbol's token, or, for a symbol that is no token, the byte token
///     <0xXX> of each of its bytes (for an ASCII byte without one, the one-character token).
/// decode() inverts encode() on valid UTF-8 when add_space_prefix is false and the text holds no
/// U+2581 of its own. The const members only read, so one tokenizer may be shared by threads.
/// Copies share the (immutable) tables; a moved-from tokenizer may only be assigned or destroyed.
class SpmTokenizer {
 public:
  /// Builds the lookup tables. Throws InvalidArgument when tokens, scores and types differ in
  /// length, there are more than 2^31 - 1 tokens, the model is not "llama", a score is NaN, bos_id
  /// or eos_id is outside [0, n) or unk_id outside [-1, n).
  explicit SpmTokenizer(TokenizerVocab vocab);

  /// Token ids of the UTF-8 `text`, after bos_id when `add_bos`. A byte sequence that is not valid
  /// UTF-8 counts one character per byte. O(n log n) in the length of each raw fragment. Throws
  /// InvalidArgument when a character needs a byte token that the vocabulary lacks.
  std::vector<int32_t> encode(const std::string& text, bool add_bos) const;

  /// The text of `ids`: byte tokens give their byte, control tokens nothing, user-defined tokens
  /// their text as is, every other token its text with U+2581 turned back into a space. Throws
  /// InvalidArgument, naming the position and the value, for an id outside [0, n).
  std::string decode(const std::vector<int32_t>& ids) const;

  /// The vocabulary text of token `id` (U+2581 and <0xXX> as stored). Throws InvalidArgument for
  /// an id outside [0, n).
  std::string token_text(int32_t id) const;

  const TokenizerVocab& vocab() const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace htfr

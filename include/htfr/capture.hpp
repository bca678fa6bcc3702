// Teacher captures: what the teacher model computed over a corpus (hidden states, per-head
// attention projections, next-token distributions on the compact vocabulary), stored as a JSON
// manifest plus safetensors shards by tools/capture, and read here after complete validation.
// docs/capture-format.md specifies the format.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "htfr/safetensors.hpp"

namespace htfr {

/// The teacher model a capture was taken from.
struct CaptureModel {
  std::string file;          ///< Model file name, e.g. "gemma-3-270m-q4_k_m.gguf".
  std::string sha256;        ///< SHA-256 of the model file: 64 lowercase hex digits.
  std::string architecture;  ///< e.g. "gemma3".
  int64_t n_layers = 0;      ///< Transformer blocks.
  int64_t hidden_size = 0;
  int64_t n_heads = 0;     ///< Query heads.
  int64_t n_kv_heads = 0;  ///< Key/value heads; divides n_heads.
  int64_t head_dim = 0;
  int64_t vocab_size = 0;  ///< Every token id of the capture lies in [0, vocab_size).
};

/// The tokenizer that turned the corpus into token ids.
struct CaptureTokenizer {
  std::string source;  ///< Where it came from, e.g. "gguf".
  std::string model;   ///< Tokenizer model name.
  int64_t vocab_size = 0;
  int64_t bos_id = 0;  ///< In [0, vocab_size).
  int64_t eos_id = 0;  ///< In [0, vocab_size).
  bool add_bos = false;
};

/// The corpus the windows were cut from.
struct CaptureCorpus {
  std::string file;
  std::string sha256;        ///< SHA-256 of the corpus file: 64 lowercase hex digits.
  int64_t tokens_total = 0;  ///< Tokens in the whole corpus.
  int64_t tokens_used = 0;   ///< Tokens the capture predicts; <= tokens_total.
};

/// Element types of the captured tensors. Version 1 stores hidden states, q/k/v and compact
/// log-probabilities as F16 and true log-probabilities as F32; the reader accepts nothing else.
struct CaptureDtypes {
  ElementType hidden = ElementType::f16;
  ElementType qkv = ElementType::f16;
  ElementType compact_logprobs = ElementType::f16;
  ElementType true_logprob = ElementType::f32;
};

/// The compact vocabulary: `size - 1` teacher tokens plus one `unk` bucket (index size - 1) that
/// holds the probability mass of every other token.
struct CaptureCompactVocab {
  int64_t size = 0;       ///< Classes, unk included; >= 1.
  int64_t unk_index = 0;  ///< Always size - 1.
  std::vector<int32_t>
      token_ids;       ///< size - 1 distinct teacher token ids; class i is token_ids[i].
  std::string source;  ///< How the tokens were chosen.
};

/// The program that wrote the capture.
struct CaptureEngine {
  std::string name;
  std::string version;
  std::string device;  ///< e.g. "cpu" or "cuda".
};

/// One shard file of a capture, holding the capture positions
/// [first_position, first_position + positions).
struct CaptureShardInfo {
  std::string file;  ///< File name inside the capture directory (no directory part).
  int64_t first_position = 0;
  int64_t positions = 0;  ///< P >= 1.
  uint64_t bytes = 0;     ///< Size of the file in bytes.
  /// SHA-256 (64 lowercase hex digits) of the file's 8-byte header length and JSON header, i.e.
  /// of SafetensorsReader::header_bytes().
  std::string header_sha256;
};

/// The contents of a capture's manifest.json. Layer numbers count from 1: hidden layer L is the
/// residual stream after the first L transformer blocks, except that L == n_layers is the output
/// of the final norm; q/k/v of layer L are those of the L-th block.
struct CaptureManifest {
  int64_t version = 0;    ///< Format version; this reader reads version 1.
  bool complete = false;  ///< False while the capture is being written.
  CaptureModel model;
  CaptureTokenizer tokenizer;
  CaptureCorpus corpus;
  int64_t window = 0;  ///< Tokens per window (the last one may be shorter); >= 1.
  int64_t stride = 0;  ///< Tokens between the starts of consecutive windows; in [1, window].
  /// Hidden-state layers captured: strictly ascending, in [1, n_layers].
  std::vector<int> layers;
  /// Layers whose q/k/v are captured (possibly none): strictly ascending, in [1, n_layers].
  std::vector<int> qkv_layers;
  CaptureDtypes dtypes;
  CaptureCompactVocab compact_vocab;
  int64_t positions = 0;  ///< Rows over all shards.
  CaptureEngine engine;
  std::vector<CaptureShardInfo> shards;  ///< Contiguous, in order of first_position.
};

/// The rows of one shard, P = positions of them. Half-precision tensors are returned as raw IEEE
/// 754 binary16 bit patterns (convert with half_to_float); multi-dimensional tensors are
/// row-major with the position first.
struct CaptureShard {
  std::size_t index = 0;          ///< Shard number.
  int64_t first_position = 0;     ///< Capture-wide number of row 0.
  int64_t positions = 0;          ///< P.
  std::vector<int32_t> window;    ///< [P] index of the corpus window the row belongs to.
  std::vector<int32_t> position;  ///< [P] position of the row inside its window, in [0, window).
  std::vector<int32_t> token;     ///< [P] input token, in [0, model.vocab_size).
  std::vector<int32_t> target;    ///< [P] next token, in [0, model.vocab_size).
  /// [P] class of `target` in the compact vocabulary, in [0, compact_vocab.size); unk_index when
  /// the target is not one of compact_vocab.token_ids.
  std::vector<int32_t> target_compact;
  /// [P] 1 when the row counts toward perplexity (the first window that predicts its target),
  /// else 0.
  std::vector<uint8_t> scored;
  std::vector<float> true_logprob;  ///< [P] teacher's natural-log probability of `target`.
  /// [P, compact_vocab.size] binary16: teacher's natural-log probabilities of the compact classes
  /// (unk holding the mass of all other tokens).
  std::vector<uint16_t> compact_logprobs;
  std::map<int, std::vector<uint16_t>> hidden;  ///< layer -> [P, hidden_size] binary16.
  std::map<int, std::vector<uint16_t>> q;       ///< layer -> [P, n_heads, head_dim] binary16.
  std::map<int, std::vector<uint16_t>> k;       ///< layer -> [P, n_kv_heads, head_dim] binary16.
  std::map<int, std::vector<uint16_t>> v;       ///< layer -> [P, n_kv_heads, head_dim] binary16.
};

/// A capture directory, opened read-only. Copyable; reads open the shard files anew, so one
/// reader may be used from several threads.
class CaptureReader {
 public:
  /// Opens `directory` and validates everything before returning:
  ///  - manifest.json exists (IoError otherwise) and is a JSON object (FormatError otherwise);
  ///  - format "htfr-capture", version 1, complete == true (an incomplete capture, one still
  ///    being written, is a FormatError saying so);
  ///  - every field is present with its JSON type and a sane value (see CaptureManifest), dtypes
  ///    are those of version 1, and the shards are contiguous and add up to `positions`;
  ///  - every shard file exists (IoError otherwise), has the recorded size (FormatError:
  ///    truncated or grown), is a valid safetensors file whose header has the recorded SHA-256,
  ///    and holds exactly the tensors of the format with their dtypes and shapes (FormatError
  ///    for a missing, extra or misshapen tensor).
  /// Unknown manifest keys are ignored. Every message names the file and the field or tensor.
  explicit CaptureReader(const std::string& directory);

  const std::string& directory() const { return directory_; }
  const CaptureManifest& manifest() const { return manifest_; }
  /// Rows over all shards.
  int64_t positions() const { return manifest_.positions; }
  std::size_t shard_count() const { return manifest_.shards.size(); }
  /// Path of shard `index`. Throws InvalidArgument when index >= shard_count().
  std::string shard_path(std::size_t index) const;

  /// Reads every tensor of shard `index`. Checks the integer tensors' values: window >= 0,
  /// position in [0, window), token and target in [0, model.vocab_size), target_compact in
  /// [0, compact_vocab.size), scored 0 or 1; a value outside is a FormatError naming the shard,
  /// the tensor and the row. Throws InvalidArgument when index >= shard_count(), IoError when the
  /// file can no longer be read.
  CaptureShard read_shard(std::size_t index) const;

  /// Reads only `hidden.<layer>` of shard `index`: [P, hidden_size] binary16. Throws
  /// InvalidArgument when index >= shard_count() or `layer` is not in manifest().layers.
  std::vector<uint16_t> read_hidden(std::size_t index, int layer) const;

 private:
  /// Throws InvalidArgument when index >= shard_count().
  void check_shard_index(std::size_t index) const;

  std::string directory_;
  CaptureManifest manifest_;
  std::vector<SafetensorsReader> shards_;
};

/// Converts IEEE 754 binary16 bits to float exactly (every binary16 value is a float): signed
/// zeros, subnormals, infinities and NaNs (payload kept) included.
float half_to_float(uint16_t bits);
/// Converts every element with half_to_float(uint16_t).
std::vector<float> half_to_float(const std::vector<uint16_t>& bits);

/// SHA-256 of `bytes` as 64 lowercase hex digits (the form of the manifest's checksums).
/// Throws Error if the hash cannot be computed.
std::string sha256_hex(const std::string& bytes);

}  // namespace htfr

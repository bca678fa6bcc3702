// Safetensors files: the container of htfr's checkpoints and teacher captures, readable from C++
// and Python alike. Host-side reading with full validation, and atomic writing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace htfr {

/// Element types of the safetensors format (its names: F64, F32, F16, BF16, I64, I32, I16, I8,
/// U8, BOOL).
enum class ElementType { f64, f32, f16, bf16, i64, i32, i16, i8, u8, boolean };

/// Bytes per element.
std::size_t element_size(ElementType type);
/// The safetensors name ("F32", ...).
const char* element_type_name(ElementType type);

/// One tensor of a safetensors file. `data_offset` is relative to the start of the file.
struct TensorRecord {
  std::string name;
  ElementType type = ElementType::f32;
  std::vector<int64_t> shape;
  uint64_t data_offset = 0;
  uint64_t bytes = 0;

  int64_t elements() const;
};

/// Opens a safetensors file and validates it completely before anything is read: the 8-byte
/// header length, the JSON header, every tensor's dtype, shape and byte range, that the ranges
/// cover the data section exactly (no holes, no overlaps) and that the file size matches.
/// Throws IoError when the file cannot be opened or read and FormatError for everything else.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(std::string path);

  const std::string& path() const { return path_; }
  uint64_t file_size() const { return file_size_; }
  /// Tensors in the order of their data.
  const std::vector<TensorRecord>& tensors() const { return tensors_; }
  bool contains(const std::string& name) const;
  /// Throws FormatError when the file holds no tensor `name`.
  const TensorRecord& tensor(const std::string& name) const;
  /// The string-to-string `__metadata__` entries (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// The `__metadata__` value of `key`. Throws FormatError naming the file when it is absent.
  const std::string& metadata_value(const std::string& key) const;
  /// The 8-byte length prefix followed by the JSON header, exactly as stored.
  const std::string& header_bytes() const { return header_bytes_; }

  /// Copies tensor `name` into `dst` (host memory of `bytes` bytes). Throws InvalidArgument when
  /// `bytes` differs from the tensor's size, FormatError when it is missing, IoError on a failed
  /// read.
  void read(const std::string& name, void* dst, std::size_t bytes) const;

  /// Reads tensor `name`, checking that its type is `type` and its shape is `shape` (FormatError
  /// otherwise). T must have the element size of `type`.
  template <typename T>
  std::vector<T> read_as(const std::string& name, ElementType type,
                         const std::vector<int64_t>& shape) const {
    require(name, type, shape, sizeof(T));
    std::vector<T> out(static_cast<std::size_t>(tensor(name).elements()));
    read(name, out.data(), out.size() * sizeof(T));
    return out;
  }

  /// Throws FormatError unless tensor `name` exists with `type` and `shape`, and `element_bytes`
  /// equals the type's size.
  void require(const std::string& name, ElementType type, const std::vector<int64_t>& shape,
               std::size_t element_bytes) const;

 private:
  std::string path_;
  uint64_t file_size_ = 0;
  std::string header_bytes_;
  std::vector<TensorRecord> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// Collects tensors (copies of host data) and writes them as one safetensors file, atomically.
class SafetensorsWriter {
 public:
  /// Adds a tensor; `data` holds `bytes` bytes, which must equal the product of `shape` times the
  /// element size. Throws InvalidArgument for a bad or duplicate name or a size mismatch.
  void add(const std::string& name, ElementType type, const std::vector<int64_t>& shape,
           const void* data, std::size_t bytes);
  template <typename T>
  void add(const std::string& name, ElementType type, const std::vector<int64_t>& shape,
           const std::vector<T>& data) {
    add(name, type, shape, data.data(), data.size() * sizeof(T));
  }
  /// Sets a `__metadata__` entry.
  void set_metadata(const std::string& key, const std::string& value);

  /// Writes the file atomically (see write_file_atomic): a reader sees either the old file or the
  /// complete new one. Throws IoError.
  void write(const std::string& path) const;

 private:
  struct Entry {
    TensorRecord record;
    std::vector<char> data;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

/// Writes `contents` to `path` atomically: a temporary file in the same directory is written,
/// flushed to disk and renamed over `path`, then the directory is synced. On failure the previous
/// file at `path` is untouched and the temporary file is removed. Throws IoError.
void write_file_atomic(const std::string& path, const std::string& contents);

/// Reads a whole file. Throws IoError.
std::string read_file(const std::string& path);

}  // namespace htfr

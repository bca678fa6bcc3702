// Safetensors reading (validated before use) and atomic writing.
#include "htfr/safetensors.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "detail/check.hpp"
#include "htfr/error.hpp"

namespace htfr {

namespace {

// The format caps the header at 100 MB; anything larger is corrupt.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct TypeInfo {
  ElementType type;
  const char* name;
  std::size_t size;
};
constexpr TypeInfo kTypes[] = {
    {ElementType::f64, "F64", 8},  {ElementType::f32, "F32", 4},
    {ElementType::f16, "F16", 2},  {ElementType::bf16, "BF16", 2},
    {ElementType::i64, "I64", 8},  {ElementType::i32, "I32", 4},
    {ElementType::i16, "I16", 2},  {ElementType::i8, "I8", 1},
    {ElementType::u8, "U8", 1},    {ElementType::boolean, "BOOL", 1},
};

const TypeInfo& info(ElementType type) {
  for (const auto& t : kTypes)
    if (t.type == type) return t;
  throw InvalidArgument("unknown ElementType value " + std::to_string(static_cast<int>(type)));
}

std::string errno_text() { return std::strerror(errno); }

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (std::size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

// Product of the dimensions, or -1 when it overflows int64.
int64_t element_count(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return -1;
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) return -1;
    n *= d;
  }
  return n;
}

uint64_t read_le64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void write_all(int fd, const char* data, std::size_t bytes, const std::string& path) {
  while (bytes > 0) {
    const ssize_t n = ::write(fd, data, bytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw IoError("cannot write " + path + ": " + errno_text());
    }
    data += n;
    bytes -= static_cast<std::size_t>(n);
  }
}

}  // namespace

std::size_t element_size(ElementType type) { return info(type).size; }
const char* element_type_name(ElementType type) { return info(type).name; }

int64_t TensorRecord::elements() const { return element_count(shape); }

// ---------------------------------------------------------------------------------------------
// Reader

SafetensorsReader::SafetensorsReader(std::string path) : path_(std::move(path)) {
  std::ifstream in(path_, std::ios::binary | std::ios::ate);
  if (!in) throw IoError("cannot open " + path_ + ": " + errno_text());
  const std::streamoff end = in.tellg();
  if (end < 0) throw IoError("cannot read the size of " + path_);
  file_size_ = static_cast<uint64_t>(end);
  const auto fail = [&](const std::string& what) {
    return FormatError(path_ + " is not a valid safetensors file: " + what);
  };
  if (file_size_ < 8) throw fail("only " + std::to_string(file_size_) + " bytes (truncated)");

  unsigned char prefix[8];
  in.seekg(0);
  if (!in.read(reinterpret_cast<char*>(prefix), 8)) throw IoError("cannot read " + path_);
  const uint64_t header_len = read_le64(prefix);
  if (header_len < 2 || header_len > kMaxHeaderBytes || header_len > file_size_ - 8) {
    throw fail("header length " + std::to_string(header_len) + " does not fit a file of " +
               std::to_string(file_size_) + " bytes (truncated or corrupt)");
  }
  header_bytes_.assign(reinterpret_cast<const char*>(prefix), 8);
  std::string header(header_len, '\0');
  if (!in.read(header.data(), static_cast<std::streamsize>(header_len)))
    throw IoError("cannot read the header of " + path_);
  header_bytes_ += header;

  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header);
  } catch (const nlohmann::json::parse_error& e) {
    throw fail(std::string("header is not JSON (") + e.what() + ")");
  }
  if (!j.is_object()) throw fail("header is not a JSON object");

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_len = file_size_ - data_start;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw fail("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) throw fail("__metadata__ entry '" + m.key() + "' is not a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
        !v.contains("data_offsets")) {
      throw fail("tensor '" + name + "' lacks dtype, shape or data_offsets");
    }
    TensorRecord rec;
    rec.name = name;
    const auto& dtype = v["dtype"];
    if (!dtype.is_string()) throw fail("tensor '" + name + "' has a non-string dtype");
    const std::string dname = dtype.get<std::string>();
    bool known = false;
    for (const auto& t : kTypes) {
      if (dname == t.name) {
        rec.type = t.type;
        known = true;
      }
    }
    if (!known) throw fail("tensor '" + name + "' has unknown dtype '" + dname + "'");
    const auto& shape = v["shape"];
    if (!shape.is_array()) throw fail("tensor '" + name + "' has a non-array shape");
    for (const auto& d : shape) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        throw fail("tensor '" + name + "' has a dimension that is not a non-negative integer");
      rec.shape.push_back(d.get<int64_t>());
    }
    const auto& offs = v["data_offsets"];
    if (!offs.is_array() || offs.size() != 2 || !offs[0].is_number_unsigned() ||
        !offs[1].is_number_unsigned()) {
      throw fail("tensor '" + name + "' has malformed data_offsets");
    }
    const uint64_t begin = offs[0].get<uint64_t>(), stop = offs[1].get<uint64_t>();
    const int64_t count = rec.elements();
    if (count < 0) throw fail("tensor '" + name + "' has an overflowing shape");
    const uint64_t expected = static_cast<uint64_t>(count) * info(rec.type).size;
    if (stop < begin || stop - begin != expected) {
      throw fail("tensor '" + name + "' of shape " + shape_text(rec.shape) + " and dtype " +
                 dname + " needs " + std::to_string(expected) + " bytes but data_offsets span " +
                 std::to_string(stop >= begin ? stop - begin : 0));
    }
    if (stop > data_len) {
      throw fail("tensor '" + name + "' ends at byte " + std::to_string(stop) +
                 " of a data section of " + std::to_string(data_len) + " bytes (truncated)");
    }
    rec.data_offset = data_start + begin;
    rec.bytes = expected;
    tensors_.push_back(std::move(rec));
  }
  std::sort(tensors_.begin(), tensors_.end(), [](const TensorRecord& a, const TensorRecord& b) {
    return a.data_offset != b.data_offset ? a.data_offset < b.data_offset : a.bytes < b.bytes;
  });
  uint64_t cursor = data_start;
  for (const auto& t : tensors_) {
    if (t.data_offset != cursor) {
      throw fail("tensor '" + t.name + "' starts at byte " + std::to_string(t.data_offset) +
                 " where " + std::to_string(cursor) + " was expected (hole or overlap)");
    }
    cursor += t.bytes;
  }
  if (cursor != file_size_) {
    throw fail("tensors cover " + std::to_string(cursor - data_start) + " data bytes but the file holds " +
               std::to_string(data_len) + " (trailing bytes)");
  }
}

const std::string& SafetensorsReader::metadata_value(const std::string& key) const {
  const auto it = metadata_.find(key);
  HTFR_REQUIRE(it != metadata_.end(), FormatError, path_ << " lacks metadata '" << key << "'");
  return it->second;
}

bool SafetensorsReader::contains(const std::string& name) const {
  return std::any_of(tensors_.begin(), tensors_.end(),
                     [&](const TensorRecord& t) { return t.name == name; });
}

const TensorRecord& SafetensorsReader::tensor(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return t;
  throw FormatError(path_ + " holds no tensor '" + name + "'");
}

void SafetensorsReader::require(const std::string& name, ElementType type,
                                const std::vector<int64_t>& shape,
                                std::size_t element_bytes) const {
  const TensorRecord& t = tensor(name);
  HTFR_REQUIRE(t.type == type && t.shape == shape, FormatError,
               path_ << ": tensor '" << name << "' is " << element_type_name(t.type) << " "
                     << shape_text(t.shape) << ", expected " << element_type_name(type) << " "
                     << shape_text(shape));
  HTFR_REQUIRE(element_bytes == element_size(type), InvalidArgument,
               "reading tensor '" << name << "' of " << element_type_name(type) << " into "
                                  << element_bytes << "-byte elements");
}

void SafetensorsReader::read(const std::string& name, void* dst, std::size_t bytes) const {
  const TensorRecord& t = tensor(name);
  HTFR_REQUIRE(bytes == t.bytes, InvalidArgument,
               "tensor '" << name << "' of " << path_ << " has " << t.bytes
                          << " bytes; the destination has " << bytes);
  HTFR_REQUIRE(dst != nullptr || bytes == 0, InvalidArgument, "null destination for '" << name << "'");
  if (bytes == 0) return;
  std::ifstream in(path_, std::ios::binary);
  if (!in) throw IoError("cannot open " + path_ + ": " + errno_text());
  in.seekg(static_cast<std::streamoff>(t.data_offset));
  if (!in.read(static_cast<char*>(dst), static_cast<std::streamsize>(bytes))) {
    throw IoError("cannot read tensor '" + name + "' from " + path_ +
                  " (the file changed or was truncated since it was opened)");
  }
}

// ---------------------------------------------------------------------------------------------
// Writer

void SafetensorsWriter::add(const std::string& name, ElementType type,
                            const std::vector<int64_t>& shape, const void* data,
                            std::size_t bytes) {
  HTFR_REQUIRE(!name.empty() && name != "__metadata__", InvalidArgument,
               "invalid tensor name '" << name << "'");
  for (const auto& e : entries_)
    HTFR_REQUIRE(e.record.name != name, InvalidArgument, "tensor '" << name << "' added twice");
  const int64_t count = element_count(shape);
  HTFR_REQUIRE(count >= 0, InvalidArgument, "tensor '" << name << "' has an invalid shape");
  const std::size_t expected = static_cast<std::size_t>(count) * element_size(type);
  HTFR_REQUIRE(bytes == expected, InvalidArgument,
               "tensor '" << name << "' of shape " << shape_text(shape) << " needs " << expected
                          << " bytes, got " << bytes);
  HTFR_REQUIRE(data != nullptr || bytes == 0, InvalidArgument, "null data for '" << name << "'");
  Entry e;
  e.record.name = name;
  e.record.type = type;
  e.record.shape = shape;
  e.record.bytes = expected;
  const char* p = static_cast<const char*>(data);
  e.data.assign(p, p + bytes);
  entries_.push_back(std::move(e));
}

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) {
  metadata_[key] = value;
}

void SafetensorsWriter::write(const std::string& path) const {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  uint64_t offset = 0;
  for (const auto& e : entries_) {
    header[e.record.name] = {{"dtype", element_type_name(e.record.type)},
                             {"shape", e.record.shape},
                             {"data_offsets", {offset, offset + e.record.bytes}}};
    offset += e.record.bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keep the data section 8-byte aligned
  std::string out;
  out.reserve(8 + text.size() + offset);
  uint64_t len = text.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xFF));
  out += text;
  for (const auto& e : entries_) out.append(e.data.data(), e.data.size());
  write_file_atomic(path, out);
}

// ---------------------------------------------------------------------------------------------
// Files

void write_file_atomic(const std::string& path, const std::string& contents) {
  const std::size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash);
  std::string tmpl = path + ".tmp-XXXXXX";
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  const int fd = ::mkstemp(name.data());
  if (fd < 0) throw IoError("cannot create a temporary file beside " + path + ": " + errno_text());
  const std::string tmp(name.data());
  try {
    write_all(fd, contents.data(), contents.size(), tmp);
    if (::fsync(fd) != 0) throw IoError("cannot sync " + tmp + ": " + errno_text());
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    ::unlink(tmp.c_str());
    throw IoError("cannot close " + tmp + ": " + errno_text());
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = errno_text();
    ::unlink(tmp.c_str());
    throw IoError("cannot rename " + tmp + " to " + path + ": " + why);
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {  // the rename is durable once the directory is synced
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("cannot open " + path + ": " + errno_text());
  std::ostringstream os;
  os << in.rdbuf();
  if (in.bad()) throw IoError("cannot read " + path);
  return os.str();
}

}  // namespace htfr

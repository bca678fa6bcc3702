// Safetensors reading and atomic writing: round trips, and every kind of damaged file gives a
// FormatError (or IoError) that names the problem.
#include <gtest/gtest.h>
#include <htfr/error.hpp>
#include <htfr/safetensors.hpp>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("htfr_st_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // A file with three tensors of different types.
  std::string write_sample(const std::string& name) {
    htfr::SafetensorsWriter w;
    w.add("a", htfr::ElementType::f32, {2, 3}, std::vector<float>{1, 2, 3, 4, 5, 6});
    w.add("ids", htfr::ElementType::i32, {4}, std::vector<int32_t>{7, -8, 9, 10});
    w.add("flags", htfr::ElementType::u8, {3}, std::vector<uint8_t>{1, 0, 1});
    w.set_metadata("kind", "sample");
    const std::string p = path(name);
    w.write(p);
    return p;
  }

  static std::string slurp(const std::string& p) { return htfr::read_file(p); }
  static void spit(const std::string& p, const std::string& bytes) {
    std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
  }

  fs::path dir_;
};

TEST_F(SafetensorsTest, RoundTripKeepsEveryTensorAndMetadata) {
  const std::string p = write_sample("x.safetensors");
  htfr::SafetensorsReader r(p);
  ASSERT_EQ(r.tensors().size(), 3u);
  EXPECT_EQ(r.metadata().at("kind"), "sample");
  EXPECT_EQ(r.read_as<float>("a", htfr::ElementType::f32, {2, 3}),
            (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(r.read_as<int32_t>("ids", htfr::ElementType::i32, {4}),
            (std::vector<int32_t>{7, -8, 9, 10}));
  EXPECT_EQ(r.read_as<uint8_t>("flags", htfr::ElementType::u8, {3}),
            (std::vector<uint8_t>{1, 0, 1}));
  // The data section starts 8-byte aligned.
  EXPECT_EQ(r.header_bytes().size() % 8, 0u);
}

TEST_F(SafetensorsTest, ReadChecksTypeShapeAndSize) {
  htfr::SafetensorsReader r(write_sample("x.safetensors"));
  EXPECT_THROW(r.read_as<float>("a", htfr::ElementType::f32, {3, 2}), htfr::FormatError);
  EXPECT_THROW(r.read_as<int32_t>("a", htfr::ElementType::i32, {2, 3}), htfr::FormatError);
  EXPECT_THROW(r.tensor("missing"), htfr::FormatError);
  std::vector<float> small(5);
  EXPECT_THROW(r.read("a", small.data(), small.size() * sizeof(float)), htfr::InvalidArgument);
}

TEST_F(SafetensorsTest, WriterRejectsBadTensors) {
  htfr::SafetensorsWriter w;
  EXPECT_THROW(w.add("a", htfr::ElementType::f32, {2, 2}, std::vector<float>(3)),
               htfr::InvalidArgument);
  EXPECT_THROW(w.add("", htfr::ElementType::f32, {1}, std::vector<float>(1)),
               htfr::InvalidArgument);
  EXPECT_THROW(w.add("__metadata__", htfr::ElementType::f32, {1}, std::vector<float>(1)),
               htfr::InvalidArgument);
  w.add("a", htfr::ElementType::f32, {1}, std::vector<float>(1));
  EXPECT_THROW(w.add("a", htfr::ElementType::f32, {1}, std::vector<float>(1)),
               htfr::InvalidArgument);
}

TEST_F(SafetensorsTest, MissingFileIsAnIoError) {
  EXPECT_THROW(htfr::SafetensorsReader(path("nope.safetensors")), htfr::IoError);
}

TEST_F(SafetensorsTest, TruncatedFilesAreFormatErrors) {
  const std::string good = slurp(write_sample("x.safetensors"));
  for (std::size_t keep : {std::size_t{0}, std::size_t{5}, std::size_t{8}, std::size_t{20},
                           good.size() - 1}) {
    const std::string p = path("t" + std::to_string(keep));
    spit(p, good.substr(0, keep));
    EXPECT_THROW(htfr::SafetensorsReader{p}, htfr::FormatError) << "kept " << keep << " bytes";
  }
}

TEST_F(SafetensorsTest, TrailingBytesAreFormatErrors) {
  const std::string p = write_sample("x.safetensors");
  spit(p, slurp(p) + "junk");
  EXPECT_THROW(htfr::SafetensorsReader{p}, htfr::FormatError);
}

TEST_F(SafetensorsTest, CorruptHeadersAreFormatErrors) {
  const std::string good = slurp(write_sample("x.safetensors"));
  const auto header_of = [&](const std::string& bytes) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
    return bytes.substr(8, n);
  };
  const std::string header = header_of(good);
  const std::string data = good.substr(8 + header.size());
  const auto with_header = [&](std::string h) {
    h.append((8 - h.size() % 8) % 8, ' ');
    std::string out;
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((h.size() >> (8 * i)) & 0xFF));
    return out + h + data;
  };
  const auto replace = [&](std::string from, std::string to) {
    std::string h = header;
    const auto at = h.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    h.replace(at, from.size(), to);
    return with_header(h);
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not json", with_header("{\"a\": [")},
      {"not an object", with_header("[1, 2]")},
      {"unknown dtype", replace("\"F32\"", "\"F31\"")},
      {"shape disagrees with offsets", replace("[2,3]", "[3,3]")},
      {"negative dimension", replace("[2,3]", "[-2,3]")},
      {"metadata not string", replace("\"sample\"", "7")},
  };
  for (const auto& [what, bytes] : cases) {
    const std::string p = path("corrupt.safetensors");
    spit(p, bytes);
    EXPECT_THROW(htfr::SafetensorsReader{p}, htfr::FormatError) << what;
  }
  // A header length larger than the file.
  std::string huge = good;
  huge[6] = 0x7f;
  spit(path("huge.safetensors"), huge);
  EXPECT_THROW(htfr::SafetensorsReader{path("huge.safetensors")}, htfr::FormatError);
}

TEST_F(SafetensorsTest, AtomicWriteReplacesWholeFilesAndLeavesNoTemporaries) {
  const std::string p = write_sample("x.safetensors");
  htfr::SafetensorsWriter w;
  w.add("b", htfr::ElementType::f64, {1}, std::vector<double>{2.5});
  w.write(p);
  htfr::SafetensorsReader r(p);
  ASSERT_EQ(r.tensors().size(), 1u);
  EXPECT_EQ(r.read_as<double>("b", htfr::ElementType::f64, {1})[0], 2.5);
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir_)) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 1);
}

TEST_F(SafetensorsTest, FailedWriteLeavesThePreviousFile) {
  const std::string p = write_sample("x.safetensors");
  const std::string before = slurp(p);
  // A directory that does not exist cannot take the temporary file.
  EXPECT_THROW(htfr::write_file_atomic(path("no/such/dir/x"), "data"), htfr::IoError);
  // Renaming onto a directory fails after the temporary file was written; it must be removed.
  fs::create_directories(path("occupied"));
  fs::create_directories(path("occupied/child"));
  EXPECT_THROW(htfr::write_file_atomic(path("occupied"), "data"), htfr::IoError);
  EXPECT_EQ(slurp(p), before);
  int temporaries = 0;
  for (const auto& e : fs::directory_iterator(dir_))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) ++temporaries;
  EXPECT_EQ(temporaries, 0);
}

}  // namespace

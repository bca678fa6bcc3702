// The projection stack: FWHT, block SRHT, CountSketch and PCA against their definitions and
// statistical guarantees on the CPU, CUDA against the CPU reference at every size class, adjoint
// identities, bit-for-bit checkpoints and typed errors.
#include <gtest/gtest.h>
#include <htfr/error.hpp>
#include <htfr/projection.hpp>
#include <htfr/safetensors.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include "detail/projection_cpu.hpp"
#include "test_util.hpp"

namespace htfr::test {
namespace {

namespace fs = std::filesystem;

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double acc = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) acc += double(a[i]) * b[i];
  return acc;
}

double norm2(const float* v, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += double(v[i]) * v[i];
  return acc;
}

std::string temp_path(const std::string& name) {
  return (fs::temp_directory_path() /
          (name + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name()))
      .string();
}

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = detail::float_to_bf16(v[i]);
  return out;
}

std::vector<float> from_bf16(const std::vector<uint16_t>& v) {
  std::vector<float> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = detail::bf16_to_float(v[i]);
  return out;
}

std::vector<float> cpu_fwht(std::vector<float> x, int64_t rows, int64_t n) {
  fwht(Backend::cpu, x.data(), DType::f32, x.data(), DType::f32, rows, n, nullptr);
  return x;
}

// -------------------------------------------------------------------------------------------
// FWHT on the CPU

TEST(Fwht, MatchesTheHadamardMatrix) {
  for (int64_t n : {2, 4, 8, 16, 64}) {
    const auto x = random_normal(static_cast<std::size_t>(n), 1 + n);
    const auto y = cpu_fwht(x, 1, n);
    for (int64_t i = 0; i < n; ++i) {
      double expected = 0.0;
      for (int64_t j = 0; j < n; ++j) expected += (__builtin_popcountll(i & j) % 2 ? -1.0 : 1.0) * x[j];
      EXPECT_NEAR(y[i], expected, 1e-4 * std::sqrt(double(n))) << "n " << n << " i " << i;
    }
  }
}

TEST(Fwht, TwiceGivesNTimesX) {
  for (int64_t log_n = 1; log_n <= 17; ++log_n) {
    const int64_t n = int64_t{1} << log_n, rows = 3;
    const auto x = random_normal(static_cast<std::size_t>(rows * n), 7 + log_n);
    const auto twice = cpu_fwht(cpu_fwht(x, rows, n), rows, n);
    std::vector<float> expected(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) expected[i] = float(n) * x[i];
    EXPECT_TRUE(all_close(twice, expected, 1e-5 * n * log_n, 1e-5)) << "n = " << n;
  }
}

TEST(Fwht, IsOrthogonalUpToScale) {
  const int64_t n = 4096;
  const auto x = random_normal(n, 11), y = random_normal(n, 12);
  const double hx_hy = dot(cpu_fwht(x, 1, n), cpu_fwht(y, 1, n));
  EXPECT_NEAR(hx_hy, double(n) * dot(x, y), 1e-4 * n * std::sqrt(norm2(x.data(), n) * norm2(y.data(), n)));
  EXPECT_NEAR(norm2(cpu_fwht(x, 1, n).data(), n), double(n) * norm2(x.data(), n),
              1e-4 * n * norm2(x.data(), n));
}

TEST(Fwht, RejectsBadSizesAndTypes) {
  std::vector<float> v(8);
  EXPECT_THROW(fwht(Backend::cpu, v.data(), DType::f32, v.data(), DType::f32, 1, 3, nullptr),
               InvalidArgument);
  EXPECT_THROW(fwht(Backend::cpu, v.data(), DType::f32, v.data(), DType::f32, 1, 1, nullptr),
               InvalidArgument);
  EXPECT_THROW(fwht(Backend::cpu, v.data(), DType::f32, v.data(), DType::f32, 1,
                    2 * kMaxHadamardSize, nullptr),
               InvalidArgument);
  EXPECT_THROW(fwht(Backend::cpu, v.data(), DType::f16, v.data(), DType::f32, 1, 8, nullptr),
               InvalidArgument);
  EXPECT_THROW(fwht(Backend::cpu, v.data(), DType::f32, v.data(), DType::bf16, 1, 4, nullptr),
               InvalidArgument);  // in place across types
  EXPECT_THROW(fwht(Backend::cpu, nullptr, DType::f32, v.data(), DType::f32, 1, 8, nullptr),
               InvalidArgument);
  EXPECT_THROW(fwht(Backend::cpu, v.data(), DType::f32, v.data(), DType::f32, -1, 8, nullptr),
               InvalidArgument);
}

// -------------------------------------------------------------------------------------------
// Block SRHT on the CPU

TEST(Srht, PreservesNormsWithinTheJohnsonLindenstraussBound) {
  // m = 256 outputs: with probability >= 1 - delta (delta = 1 %), | ||Px||^2/||x||^2 - 1 | <= eps
  // for eps = sqrt(8 ln(2/delta) / m) = 0.41. Gaussian and spiky vectors alike.
  const int64_t d = 1000, m = 256, vectors = 2000;
  const auto p = BlockSrht::create(Backend::cpu, d, m, 0, 42);
  ASSERT_EQ(p.block_size(), 1024);
  const double delta = 0.01, eps = std::sqrt(8.0 * std::log(2.0 / delta) / double(m));
  auto x = random_normal(static_cast<std::size_t>(vectors * d), 5);
  for (int64_t r = vectors / 2; r < vectors; ++r) {  // second half: 3 non-zeros per vector
    for (int64_t j = 0; j < d; ++j)
      if ((j * 7 + r) % 331 != 0) x[r * d + j] = 0.0f;
  }
  std::vector<float> y(static_cast<std::size_t>(vectors * m));
  p.apply(x.data(), y.data(), DType::f32, vectors, nullptr);
  int violations = 0;
  double mean = 0.0;
  for (int64_t r = 0; r < vectors; ++r) {
    const double ratio = norm2(&y[r * m], m) / norm2(&x[r * d], d);
    violations += std::fabs(ratio - 1.0) > eps;
    mean += ratio / vectors;
  }
  EXPECT_LE(violations, delta * vectors) << "eps " << eps;
  // E ratio = 1; the ratio's spread is about sqrt(2/m) = 0.09, so the mean of 2000 lies within
  // 4 standard errors (0.008) of 1.
  EXPECT_NEAR(mean, 1.0, 4.0 * std::sqrt(2.0 / m) / std::sqrt(double(vectors)));
}

TEST(Srht, SpreadsOutputsOverBlocksAndPadsWithZeros) {
  const auto p = BlockSrht::create(Backend::cpu, 3000, 500, 1024, 9);
  EXPECT_EQ(p.num_blocks(), 3);
  // The first blocks keep one more output; every sample index lies in its block, sorted.
  int64_t start, count;
  detail::srht_block_outputs(500, 3, 0, start, count);
  EXPECT_EQ(count, 167);
  detail::srht_block_outputs(500, 3, 2, start, count);
  EXPECT_EQ(start, 334);
  EXPECT_EQ(count, 166);
  // A vector living only in the padded tail's block maps into that block's outputs only.
  std::vector<float> x(3000, 0.0f);
  x[2500] = 1.0f;
  std::vector<float> y(500);
  p.apply(x.data(), y.data(), DType::f32, 1, nullptr);
  for (int i = 0; i < 334; ++i) EXPECT_EQ(y[i], 0.0f);
  for (int i = 334; i < 500; ++i) EXPECT_NEAR(std::fabs(y[i]), 1.0 / std::sqrt(166.0), 1e-6);
}

TEST(Srht, SameSeedSameParametersDifferentSeedDifferent) {
  const auto a = BlockSrht::create(Backend::cpu, 700, 100, 0, 3);
  const auto b = BlockSrht::create(Backend::cpu, 700, 100, 0, 3);
  const auto c = BlockSrht::create(Backend::cpu, 700, 100, 0, 4);
  EXPECT_EQ(a.signs(), b.signs());
  EXPECT_EQ(a.sample(), b.sample());
  EXPECT_NE(a.signs(), c.signs());
}

TEST(Srht, RejectsInconsistentParameters) {
  EXPECT_THROW(BlockSrht::create(Backend::cpu, 100, 10, 24, 1), InvalidArgument);
  EXPECT_THROW(BlockSrht::create(Backend::cpu, 100, 10, 2 * kMaxHadamardSize, 1),
               InvalidArgument);
  EXPECT_THROW(BlockSrht::create(Backend::cpu, 100, 129, 128, 1), InvalidArgument);
  EXPECT_THROW(BlockSrht::create(Backend::cpu, 300, 2, 128, 1), InvalidArgument);  // < 1 per block
  std::vector<int8_t> signs(128, 1);
  std::vector<int32_t> sample = {0, 5, 5};
  EXPECT_THROW(BlockSrht::from_parameters(Backend::cpu, 100, 3, 128, signs, sample),
               InvalidArgument);  // repeated index
  sample = {0, 5, 128};
  EXPECT_THROW(BlockSrht::from_parameters(Backend::cpu, 100, 3, 128, signs, sample),
               InvalidArgument);  // outside the block
  sample = {0, 5, 6};
  signs[3] = 0;
  EXPECT_THROW(BlockSrht::from_parameters(Backend::cpu, 100, 3, 128, signs, sample),
               InvalidArgument);  // not +-1
}

// -------------------------------------------------------------------------------------------
// CountSketch on the CPU

TEST(CountSketchCpu, IsLinear) {
  const int64_t d = 513, m = 97, rows = 5;
  const auto s = CountSketch::create(Backend::cpu, d, m, 8);
  const auto x = random_normal(rows * d, 1), z = random_normal(rows * d, 2);
  std::vector<float> combo(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) combo[i] = 2.0f * x[i] - 0.5f * z[i];
  std::vector<float> sx(rows * m), sz(rows * m), sc(rows * m), expected(rows * m);
  s.apply(x.data(), sx.data(), rows, nullptr);
  s.apply(z.data(), sz.data(), rows, nullptr);
  s.apply(combo.data(), sc.data(), rows, nullptr);
  for (std::size_t i = 0; i < expected.size(); ++i) expected[i] = 2.0f * sx[i] - 0.5f * sz[i];
  EXPECT_TRUE(all_close(sc, expected, 1e-5, 1e-5));
}

TEST(CountSketchCpu, PreservesInnerProductsInExpectation) {
  // Over independent hashes, E<Sx, Sy> = <x, y> and Var <= (||x||^2 ||y||^2 + <x,y>^2) * 2 / m.
  const int64_t d = 400, m = 64, trials = 1000;
  const auto x = random_normal(d, 21);
  auto y = random_normal(d, 22);
  for (int64_t j = 0; j < d; ++j) y[j] += 0.5f * x[j];  // correlated, so <x, y> is not ~0
  const double exact = dot(x, y);
  const double var = (norm2(x.data(), d) * norm2(y.data(), d) + exact * exact) * 2.0 / m;
  double mean = 0.0;
  std::vector<float> sx(m), sy(m);
  for (int64_t t = 0; t < trials; ++t) {
    const auto s = CountSketch::create(Backend::cpu, d, m, 1000 + t);
    s.apply(x.data(), sx.data(), 1, nullptr);
    s.apply(y.data(), sy.data(), 1, nullptr);
    mean += dot(sx, sy) / trials;
  }
  EXPECT_NEAR(mean, exact, 4.0 * std::sqrt(var / trials));
}

TEST(CountSketchCpu, SparseMatchesDense) {
  const int64_t d = 300, m = 40, rows = 4;
  const auto s = CountSketch::create(Backend::cpu, d, m, 5);
  // CSR rows with repeated indices; row 2 is empty.
  const std::vector<int64_t> offsets = {0, 3, 7, 7, 9};
  const std::vector<int32_t> indices = {4, 200, 4, 0, 299, 17, 17, 150, 3};
  const std::vector<float> values = {1.5f, -2.0f, 0.25f, 3.0f, 1.0f, -1.0f, 2.0f, 0.5f, 4.0f};
  std::vector<float> dense(rows * d, 0.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t e = offsets[r]; e < offsets[r + 1]; ++e) dense[r * d + indices[e]] += values[e];
  std::vector<float> a(rows * m), b(rows * m);
  s.apply(dense.data(), a.data(), rows, nullptr);
  s.apply_sparse(offsets.data(), indices.data(), values.data(), 9, rows, b.data(), nullptr);
  EXPECT_TRUE(all_close(b, a, 1e-6, 1e-6));
}

TEST(CountSketchCpu, RejectsBadInputs) {
  EXPECT_THROW(CountSketch::create(Backend::cpu, 0, 4, 1), InvalidArgument);
  EXPECT_THROW(CountSketch::create(Backend::cpu, 4, 0, 1), InvalidArgument);
  EXPECT_THROW(CountSketch::from_parameters(Backend::cpu, 4, {0, 4}, {1, 1}), InvalidArgument);
  EXPECT_THROW(CountSketch::from_parameters(Backend::cpu, 4, {0, 3}, {1, 2}), InvalidArgument);
  EXPECT_THROW(CountSketch::from_parameters(Backend::cpu, 4, {0, 3}, {1}), InvalidArgument);
  const auto s = CountSketch::create(Backend::cpu, 10, 4, 1);
  std::vector<float> y(8), values = {1.0f, 2.0f};
  std::vector<int32_t> indices = {0, 10};
  std::vector<int64_t> offsets = {0, 1, 2};
  EXPECT_THROW(s.apply_sparse(offsets.data(), indices.data(), values.data(), 2, 2, y.data(),
                              nullptr),
               InvalidArgument);  // index 10 outside [0, 10)
  indices[1] = 9;
  offsets = {0, 2, 1};
  EXPECT_THROW(s.apply_sparse(offsets.data(), indices.data(), values.data(), 1, 2, y.data(),
                              nullptr),
               InvalidArgument);  // decreasing offsets
}

// -------------------------------------------------------------------------------------------
// PCA on the CPU

// Rows x = mean + 3 z1 u1 + 1 z2 u2 + 0.1 noise, u1, u2 orthonormal.
std::vector<float> anisotropic_samples(int64_t rows, int64_t dim, std::vector<float>& u1,
                                       std::vector<float>& u2, uint64_t seed) {
  u1 = random_normal(dim, seed);
  u2 = random_normal(dim, seed + 1);
  const double n1 = std::sqrt(norm2(u1.data(), dim));
  for (auto& v : u1) v = float(v / n1);
  const double p = dot(u1, u2);
  for (int64_t j = 0; j < dim; ++j) u2[j] = float(u2[j] - p * u1[j]);
  const double n2 = std::sqrt(norm2(u2.data(), dim));
  for (auto& v : u2) v = float(v / n2);
  const auto z = random_normal(rows * 2, seed + 2);
  const auto noise = random_normal(rows * dim, seed + 3, 0.1f);
  std::vector<float> x(rows * dim);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < dim; ++j)
      x[r * dim + j] = 0.5f + 3.0f * z[2 * r] * u1[j] + z[2 * r + 1] * u2[j] + noise[r * dim + j];
  return x;
}

TEST(PcaCpu, FindsThePrincipalDirectionsAndWhitens) {
  const int64_t rows = 2000, dim = 24;
  std::vector<float> u1, u2;
  const auto x = anisotropic_samples(rows, dim, u1, u2, 31);
  const auto pca = Pca::fit(Backend::cpu, x.data(), rows, dim, 2, /*whiten=*/false, 0.0f, nullptr);
  const std::vector<float> w0(pca.matrix().begin(), pca.matrix().begin() + dim);
  const std::vector<float> w1(pca.matrix().begin() + dim, pca.matrix().end());
  EXPECT_GT(std::fabs(dot(w0, u1)), 0.999);
  EXPECT_GT(std::fabs(dot(w1, u2)), 0.99);
  // Whitened outputs on the fitted sample have (near) identity covariance.
  const auto white = Pca::fit(Backend::cpu, x.data(), rows, dim, 3, true, 1e-6f, nullptr);
  std::vector<float> y(rows * 3);
  white.apply(x.data(), y.data(), rows, nullptr);
  for (int a = 0; a < 3; ++a) {
    for (int b = 0; b < 3; ++b) {
      double c = 0.0;
      for (int64_t r = 0; r < rows; ++r) c += double(y[r * 3 + a]) * y[r * 3 + b];
      EXPECT_NEAR(c / (rows - 1), a == b ? 1.0 : 0.0, 1e-3) << a << "," << b;
    }
  }
}

TEST(PcaCpu, RejectsBadArguments) {
  std::vector<float> x(40);
  EXPECT_THROW(Pca::fit(Backend::cpu, x.data(), 1, 40, 1, false, 0.0f, nullptr), InvalidArgument);
  EXPECT_THROW(Pca::fit(Backend::cpu, x.data(), 4, 10, 11, false, 0.0f, nullptr), InvalidArgument);
  EXPECT_THROW(Pca::fit(Backend::cpu, x.data(), 4, 10, 0, false, 0.0f, nullptr), InvalidArgument);
  EXPECT_THROW(Pca::fit(Backend::cpu, x.data(), 4, 10, 2, true, -1.0f, nullptr), InvalidArgument);
  EXPECT_THROW(Pca::from_parameters(Backend::cpu, 4, std::vector<float>(6), std::vector<float>(4)),
               InvalidArgument);
}

// -------------------------------------------------------------------------------------------
// Adjoints and the stack, on every backend present

ProjectionStack make_stack(Backend backend, int64_t raw, uint64_t seed) {
  ProjectionStack stack(backend);
  stack.add(CountSketch::create(backend, raw, 700, seed));
  stack.add(BlockSrht::create(backend, 700, 96, 256, seed + 1));
  // PCA fitted on the CPU from projected samples, then moved to the backend by its parameters.
  ProjectionStack front(Backend::cpu);
  front.add(CountSketch::create(Backend::cpu, raw, 700, seed));
  front.add(BlockSrht::create(Backend::cpu, 700, 96, 256, seed + 1));
  const int64_t rows = 200;
  const auto x = random_normal(rows * raw, seed + 2);
  std::vector<float> z(rows * 96);
  front.apply(x.data(), z.data(), DType::f32, rows, nullptr);
  const auto pca = Pca::fit(Backend::cpu, z.data(), rows, 96, 40, true, 1e-3f, nullptr);
  stack.add(Pca::from_parameters(backend, 96, pca.matrix(), pca.mean()));
  return stack;
}

// <P x, y> = <x, P^T y> for the linear part (P(x) - P(0)).
template <typename Forward, typename Adjoint>
void expect_adjoint(Backend backend, int64_t in, int64_t out, int64_t rows, Forward forward,
                    Adjoint adjoint, const char* what) {
  const auto x = random_normal(rows * in, 61), y = random_normal(rows * out, 62);
  Staged<float> xs(backend, x), ys(backend, y), px(backend, rows * out), p0(backend, rows * out),
      zero(backend, std::vector<float>(rows * in, 0.0f)), pty(backend, rows * in);
  forward(xs.get(), px.get());
  forward(zero.get(), p0.get());
  adjoint(ys.get(), pty.get());
  if (backend == Backend::cuda) {
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
  std::vector<float> lin = px.fetch();
  const auto& base = p0.fetch();
  for (std::size_t i = 0; i < lin.size(); ++i) lin[i] -= base[i];
  const double lhs = dot(lin, y), rhs = dot(x, pty.fetch());
  EXPECT_NEAR(lhs, rhs, 1e-4 * (std::fabs(lhs) + std::sqrt(double(rows * in)))) << what;
}

void check_adjoints(Backend backend) {
  const int64_t rows = 5;
  const auto cs = CountSketch::create(backend, 1001, 257, 3);
  expect_adjoint(backend, 1001, 257, rows,
                 [&](const float* x, float* y) { cs.apply(x, y, rows, nullptr); },
                 [&](const float* y, float* x) { cs.apply_adjoint(y, x, rows, nullptr); },
                 "CountSketch");
  for (int64_t block : {int64_t{64}, int64_t{4096}, int64_t{1} << 17}) {
    const int64_t in = block == 64 ? 1000 : block == 4096 ? 5000 : 100000;
    const int64_t out = block == 64 ? 320 : block == 4096 ? 1500 : 2048;
    const auto p = BlockSrht::create(backend, in, out, block, 4);
    expect_adjoint(backend, in, out, rows,
                   [&](const float* x, float* y) { p.apply(x, y, DType::f32, rows, nullptr); },
                   [&](const float* y, float* x) { p.apply_adjoint(y, x, rows, nullptr); },
                   "SRHT");
  }
  const auto stack = make_stack(backend, 1500, 77);
  expect_adjoint(backend, 1500, stack.output_dim(), rows,
                 [&](const float* x, float* y) { stack.apply(x, y, DType::f32, rows, nullptr); },
                 [&](const float* y, float* x) { stack.apply_adjoint(y, x, rows, nullptr); },
                 "stack");
}

TEST(ProjectionAdjoint, IdentityHoldsOnTheCpu) { check_adjoints(Backend::cpu); }

TEST(ProjectionAdjoint, IdentityHoldsOnTheGpu) {
  HTFR_SKIP_WITHOUT_GPU();
  check_adjoints(Backend::cuda);
}

TEST(ProjectionStackCpu, SavesAndLoadsBitForBit) {
  const auto stack = make_stack(Backend::cpu, 900, 5);
  const std::string path = temp_path("htfr_stack") + ".safetensors";
  stack.save(path);
  const auto loaded = ProjectionStack::load(path, Backend::cpu);
  ASSERT_EQ(loaded.size(), 3u);
  EXPECT_EQ(std::get<CountSketch>(loaded.stage(0)).buckets(),
            std::get<CountSketch>(stack.stage(0)).buckets());
  EXPECT_EQ(std::get<CountSketch>(loaded.stage(0)).signs(),
            std::get<CountSketch>(stack.stage(0)).signs());
  EXPECT_EQ(std::get<BlockSrht>(loaded.stage(1)).sample(),
            std::get<BlockSrht>(stack.stage(1)).sample());
  EXPECT_EQ(std::get<BlockSrht>(loaded.stage(1)).signs(),
            std::get<BlockSrht>(stack.stage(1)).signs());
  EXPECT_EQ(std::get<Pca>(loaded.stage(2)).matrix(), std::get<Pca>(stack.stage(2)).matrix());
  EXPECT_EQ(std::get<Pca>(loaded.stage(2)).mean(), std::get<Pca>(stack.stage(2)).mean());
  const int64_t rows = 3;
  const auto x = random_normal(rows * 900, 8);
  std::vector<float> a(rows * stack.output_dim()), b(a.size());
  stack.apply(x.data(), a.data(), DType::f32, rows, nullptr);
  loaded.apply(x.data(), b.data(), DType::f32, rows, nullptr);
  EXPECT_EQ(a, b);
  std::remove(path.c_str());
}

TEST(ProjectionStackCpu, RejectsMismatchedStagesAndBadCheckpoints) {
  ProjectionStack stack(Backend::cpu);
  std::vector<float> x(10), y(10);
  EXPECT_THROW(stack.apply(x.data(), y.data(), DType::f32, 1, nullptr), InvalidArgument);
  stack.add(CountSketch::create(Backend::cpu, 100, 50, 1));
  EXPECT_THROW(stack.add(BlockSrht::create(Backend::cpu, 60, 16, 0, 2)), InvalidArgument);
  EXPECT_THROW(ProjectionStack::load(temp_path("missing"), Backend::cpu), IoError);
  // A safetensors file that is not a projection checkpoint.
  const std::string other = temp_path("other") + ".safetensors";
  SafetensorsWriter w;
  w.add("t", ElementType::f32, {1}, std::vector<float>{1.0f});
  w.write(other);
  EXPECT_THROW(ProjectionStack::load(other, Backend::cpu), FormatError);
  // A checkpoint whose bucket points outside the sketch.
  const std::string bad = temp_path("bad") + ".safetensors";
  SafetensorsWriter b;
  b.set_metadata("format", "htfr-projection-stack");
  b.set_metadata("version", "1");
  b.set_metadata("stages", "1");
  b.set_metadata("stage.0.kind", "count_sketch");
  b.set_metadata("stage.0.input_dim", "2");
  b.set_metadata("stage.0.output_dim", "2");
  b.add("stage.0.bucket", ElementType::i32, {2}, std::vector<int32_t>{0, 5});
  b.add("stage.0.sign", ElementType::i8, {2}, std::vector<int8_t>{1, -1});
  b.write(bad);
  EXPECT_THROW(ProjectionStack::load(bad, Backend::cpu), FormatError);
  std::remove(other.c_str());
  std::remove(bad.c_str());
}

// -------------------------------------------------------------------------------------------
// CUDA against the CPU reference

// fp32 FWHT outputs grow like sqrt(n) |x| and collect log2(n) roundings.
double fwht_atol(int64_t n) { return 2e-6 * std::sqrt(double(n)) * std::log2(double(n)); }

TEST(FwhtCuda, MatchesCpuAtEverySizeAndType) {
  HTFR_SKIP_WITHOUT_GPU();
  Stream stream;
  for (int log_n = 1; log_n <= 17; ++log_n) {
    const int64_t n = int64_t{1} << log_n;
    const int64_t rows = log_n <= 12 ? 37 : log_n <= 15 ? 5 : 3;
    const auto x = random_normal(static_cast<std::size_t>(rows * n), 100 + log_n);
    const auto expected = cpu_fwht(x, rows, n);
    // f32 -> f32, out of place and in place.
    DeviceArray<float> dx(x), dy(x.size());
    fwht(Backend::cuda, dx.get(), DType::f32, dy.get(), DType::f32, rows, n, stream.s);
    ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
    EXPECT_TRUE(all_close(dy.download(), expected, fwht_atol(n), 1e-5)) << "f32 n " << n;
    fwht(Backend::cuda, dx.get(), DType::f32, dx.get(), DType::f32, rows, n, stream.s);
    ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
    EXPECT_TRUE(all_close(dx.download(), expected, fwht_atol(n), 1e-5)) << "in place n " << n;
    // bf16 -> bf16 and the mixed pairs: the reference reads the same rounded inputs and the
    // bf16 outputs carry one rounding (2^-8 relative).
    const auto xb = to_bf16(x);
    const auto expected_b = cpu_fwht(from_bf16(xb), rows, n);
    DeviceArray<uint16_t> bx(xb), by(xb.size());
    DeviceArray<float> fy(x.size());
    fwht(Backend::cuda, bx.get(), DType::bf16, by.get(), DType::bf16, rows, n, stream.s);
    fwht(Backend::cuda, bx.get(), DType::bf16, fy.get(), DType::f32, rows, n, stream.s);
    DeviceArray<uint16_t> fb(x.size());
    DeviceArray<float> fx(x);
    fwht(Backend::cuda, fx.get(), DType::f32, fb.get(), DType::bf16, rows, n, stream.s);
    ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
    EXPECT_TRUE(all_close(from_bf16(by.download()), expected_b, fwht_atol(n), 4e-3))
        << "bf16 n " << n;
    EXPECT_TRUE(all_close(fy.download(), expected_b, fwht_atol(n), 1e-5)) << "bf16->f32 n " << n;
    EXPECT_TRUE(all_close(from_bf16(fb.download()), expected, fwht_atol(n), 4e-3))
        << "f32->bf16 n " << n;
    // A caller's workspace gives the same bits as the allocator's scratch.
    const std::size_t ws_bytes = fwht_workspace_bytes(rows, n, DType::bf16);
    EXPECT_EQ(ws_bytes, log_n > 15 ? rows * n * sizeof(float) : 0u);
    if (ws_bytes > 0) {
      DeviceArray<float> ws(ws_bytes / sizeof(float));
      DeviceArray<uint16_t> wy(xb.size());
      fwht(Backend::cuda, bx.get(), DType::bf16, wy.get(), DType::bf16, rows, n, stream.s, 0,
           ws.get());
      ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
      EXPECT_EQ(wy.download(), by.download()) << "workspace n " << n;
    }
  }
}

TEST(SrhtCuda, MatchesCpuForFusedAndMultiPassBlocks) {
  HTFR_SKIP_WITHOUT_GPU();
  Stream stream;
  struct Case {
    int64_t in, out, block, rows;
  };
  for (const Case c : {Case{5, 3, 8, 33}, Case{1000, 333, 64, 17}, Case{9000, 2049, 4096, 7},
                       Case{20000, 4096, 16384, 5}, Case{32768, 1000, 32768, 3},
                       Case{50001, 3000, 65536, 3}, Case{98560, 16384, 131072, 3}}) {
    const auto cpu = BlockSrht::create(Backend::cpu, c.in, c.out, c.block, 17);
    const auto gpu = BlockSrht::create(Backend::cuda, c.in, c.out, c.block, 17);
    ASSERT_EQ(cpu.sample(), gpu.sample());
    const auto x = random_normal(c.rows * c.in, 18);
    std::vector<float> expected(c.rows * c.out);
    cpu.apply(x.data(), expected.data(), DType::f32, c.rows, nullptr);
    DeviceArray<float> dx(x), dy(expected.size());
    DeviceArray<uint16_t> by(expected.size());
    gpu.apply(dx.get(), dy.get(), DType::f32, c.rows, stream.s);
    gpu.apply(dx.get(), by.get(), DType::bf16, c.rows, stream.s);
    // Adjoint of the outputs.
    std::vector<float> back(c.rows * c.in);
    cpu.apply_adjoint(expected.data(), back.data(), c.rows, nullptr);
    DeviceArray<float> dback(back.size());
    gpu.apply_adjoint(dy.get(), dback.get(), c.rows, stream.s);
    ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
    // Outputs are unit-scale (norm preserving): atol from the block's accumulation.
    const double atol = fwht_atol(c.block) / std::sqrt(double(c.block)) * 4;
    EXPECT_TRUE(all_close(dy.download(), expected, atol, 1e-5)) << "block " << c.block;
    EXPECT_TRUE(all_close(from_bf16(by.download()), expected, atol, 4e-3)) << "bf16 " << c.block;
    EXPECT_TRUE(all_close(dback.download(), back, 4 * atol, 1e-4)) << "adjoint " << c.block;
  }
}

TEST(CountSketchCuda, DenseMatchesCpuBitForBit) {
  HTFR_SKIP_WITHOUT_GPU();
  Stream stream;
  // Both device paths (shared-memory accumulator; gather for outputs wider than shared memory)
  // add each output's inputs in increasing order, as the CPU does: the sums agree exactly.
  for (const auto& [d, m] : {std::pair<int64_t, int64_t>{98560, 32768}, {5001, 60000}}) {
    const int64_t rows = 7;
    const auto cpu = CountSketch::create(Backend::cpu, d, m, 99);
    const auto gpu = CountSketch::create(Backend::cuda, d, m, 99);
    const auto x = random_normal(rows * d, 5);
    std::vector<float> expected(rows * m);
    cpu.apply(x.data(), expected.data(), rows, nullptr);
    DeviceArray<float> dx(x), dy(expected.size());
    gpu.apply(dx.get(), dy.get(), rows, stream.s);
    ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
    EXPECT_EQ(dy.download(), expected) << d << " -> " << m;
  }
}

TEST(CountSketchCuda, MatchesCpuSparseAndAdjoint) {
  HTFR_SKIP_WITHOUT_GPU();
  Stream stream;
  const int64_t d = 98560, m = 32768, rows = 7;
  const auto cpu = CountSketch::create(Backend::cpu, d, m, 99);
  const auto gpu = CountSketch::create(Backend::cuda, d, m, 99);
  const auto x = random_normal(rows * d, 5);
  std::vector<float> expected(rows * m);
  cpu.apply(x.data(), expected.data(), rows, nullptr);
  DeviceArray<float> dy(expected);

  // Sparse rows of 0, 1, 1500 (two tiles, repeated indices) and 3000 entries.
  std::vector<int64_t> offsets = {0};
  std::vector<int32_t> indices;
  std::vector<float> values;
  for (int64_t count : {0, 1, 1500, 3000}) {
    for (int64_t e = 0; e < count; ++e) {
      indices.push_back(static_cast<int32_t>((e * 7919 + count) % (count == 1500 ? 600 : d)));
      values.push_back(float((e % 13) - 6) * 0.37f);
    }
    offsets.push_back(static_cast<int64_t>(indices.size()));
  }
  const int64_t srows = 4, nnz = static_cast<int64_t>(indices.size());
  std::vector<float> sparse_expected(srows * m);
  cpu.apply_sparse(offsets.data(), indices.data(), values.data(), nnz, srows,
                   sparse_expected.data(), nullptr);
  DeviceArray<int64_t> doff(offsets);
  DeviceArray<int32_t> didx(indices);
  DeviceArray<float> dval(values), ds1(srows * m), ds2(srows * m);
  gpu.apply_sparse(doff.get(), didx.get(), dval.get(), nnz, srows, ds1.get(), stream.s);
  gpu.apply_sparse(doff.get(), didx.get(), dval.get(), nnz, srows, ds2.get(), stream.s);
  ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
  const auto s1 = ds1.download();
  EXPECT_TRUE(all_close(s1, sparse_expected, 1e-5, 1e-5));
  EXPECT_EQ(s1, ds2.download()) << "two sparse runs must agree bit for bit";

  std::vector<float> back(rows * d);
  cpu.apply_adjoint(expected.data(), back.data(), rows, nullptr);
  DeviceArray<float> dback(back.size());
  gpu.apply_adjoint(dy.get(), dback.get(), rows, stream.s);
  ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
  EXPECT_TRUE(all_close(dback.download(), back, 1e-5, 1e-5));

  // A bad index is reported before anything is written.
  indices[3] = static_cast<int32_t>(d);
  didx.upload(indices);
  EXPECT_THROW(gpu.apply_sparse(doff.get(), didx.get(), dval.get(), nnz, srows, ds1.get(),
                                stream.s),
               InvalidArgument);
}

TEST(PcaCuda, FitAndApplyMatchCpu) {
  HTFR_SKIP_WITHOUT_GPU();
  Stream stream;
  const int64_t rows = 1999, dim = 48, comps = 5;
  // Five axes with variances 25, 16, 9, 4, 2.25 over noise of variance 0.01: every eigenvector
  // compared is well separated from the next.
  auto x = random_normal(rows * dim, 41, 0.1f);
  const auto z = random_normal(rows * comps, 42);
  const float scale[comps] = {5.0f, 4.0f, 3.0f, 2.0f, 1.5f};
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < comps; ++c) x[r * dim + 7 * c + 1] += 0.25f + scale[c] * z[r * comps + c];
  const auto cpu = Pca::fit(Backend::cpu, x.data(), rows, dim, comps, true, 1e-4f, nullptr);
  DeviceArray<float> dx(x);
  const auto gpu = Pca::fit(Backend::cuda, dx.get(), rows, dim, comps, true, 1e-4f, stream.s);
  EXPECT_TRUE(all_close(gpu.mean(), cpu.mean(), 1e-5, 1e-5));
  EXPECT_TRUE(all_close(gpu.matrix(), cpu.matrix(), 2e-3, 2e-3));
  const auto same = Pca::from_parameters(Backend::cuda, dim, cpu.matrix(), cpu.mean());
  const int64_t n = 33;
  std::vector<float> expected(n * comps), back(n * dim);
  cpu.apply(x.data(), expected.data(), n, nullptr);
  cpu.apply_adjoint(expected.data(), back.data(), n, nullptr);
  DeviceArray<float> dy(expected.size()), dback(back.size());
  same.apply(dx.get(), dy.get(), n, stream.s);
  same.apply_adjoint(dy.get(), dback.get(), n, stream.s);
  ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
  EXPECT_TRUE(all_close(dy.download(), expected, 1e-4, 1e-4));
  EXPECT_TRUE(all_close(dback.download(), back, 1e-4, 1e-4));
}

TEST(ProjectionStackCuda, MatchesCpuAndLoadsAcrossBackends) {
  HTFR_SKIP_WITHOUT_GPU();
  Stream stream;
  const auto cpu = make_stack(Backend::cpu, 1500, 12);
  const std::string path = temp_path("htfr_stack_gpu") + ".safetensors";
  cpu.save(path);
  const auto gpu = ProjectionStack::load(path, Backend::cuda);
  const int64_t rows = 9;
  const auto x = random_normal(rows * 1500, 13);
  std::vector<float> expected(rows * cpu.output_dim());
  cpu.apply(x.data(), expected.data(), DType::f32, rows, nullptr);
  DeviceArray<float> dx(x), dy(expected.size());
  DeviceArray<uint16_t> by(expected.size());
  gpu.apply(dx.get(), dy.get(), DType::f32, rows, stream.s);
  gpu.apply(dx.get(), by.get(), DType::bf16, rows, stream.s);
  ASSERT_EQ(cudaStreamSynchronize(stream.s), cudaSuccess);
  EXPECT_TRUE(all_close(dy.download(), expected, 1e-3, 1e-3));
  EXPECT_TRUE(all_close(from_bf16(by.download()), expected, 1e-3, 8e-3));
  // Host memory handed to a GPU stack is refused.
  std::vector<float> host_y(expected.size());
  EXPECT_THROW(gpu.apply(x.data(), host_y.data(), DType::f32, rows, stream.s), WrongDevice);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace htfr::test

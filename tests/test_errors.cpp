// Every bad input gets its typed exception, a message naming the offending argument, and leaves
// the pool (and the step count) exactly as it was, on each backend.
#include <cctype>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <typeinfo>
#include <vector>

#include "test_util.hpp"

namespace htfr::test {
namespace {

/// True when `name` occurs in `text` as a whole identifier: not preceded or followed by a letter,
/// digit, '_' or '.' (so "lr" does not match "lr_geometry", nor "x" match "batch.x").
bool names(const std::string& text, const std::string& name) {
  auto ident = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.';
  };
  for (std::size_t at = text.find(name); at != std::string::npos; at = text.find(name, at + 1)) {
    const bool left = at == 0 || !ident(text[at - 1]);
    const std::size_t end = at + name.size();
    const bool right = end == text.size() || !ident(text[end]);
    if (left && right) return true;
  }
  return false;
}

/// Runs `call`, which must throw exactly the htfr exception E (not another htfr type) whose
/// message names `argument`; returns the message ("" when it did not throw E).
template <typename E>
std::string expect_throws(const std::function<void()>& call, const std::string& argument) {
  try {
    call();
  } catch (const Error& e) {
    EXPECT_NE(dynamic_cast<const E*>(&e), nullptr)
        << "threw " << typeid(e).name() << " instead of " << typeid(E).name() << ": " << e.what();
    EXPECT_TRUE(names(e.what(), argument))
        << "the message does not name '" << argument << "': " << e.what();
    return dynamic_cast<const E*>(&e) ? e.what() : "";
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-htfr exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "did not throw " << typeid(E).name() << " (argument " << argument << ")";
  return "";
}

::testing::AssertionResult bitwise_equal(const PoolParameters& a, const PoolParameters& b) {
  if (a.num_tensors != b.num_tensors || a.input_dim != b.input_dim ||
      a.output_dim != b.output_dim) {
    return ::testing::AssertionFailure() << "the pool's dimensions changed";
  }
  const std::pair<const char*, std::pair<const std::vector<float>*, const std::vector<float>*>>
      arrays[] = {{"normals", {&a.normals, &b.normals}},
                  {"offsets", {&a.offsets, &b.offsets}},
                  {"dneg", {&a.dneg, &b.dneg}},
                  {"dpos", {&a.dpos, &b.dpos}},
                  {"tau", {&a.tau, &b.tau}},
                  {"controls", {&a.controls, &b.controls}},
                  {"use_count", {&a.use_count, &b.use_count}},
                  {"last_used", {&a.last_used, &b.last_used}},
                  {"mean_abs_d", {&a.mean_abs_d, &b.mean_abs_d}},
                  {"loss_trace", {&a.loss_trace, &b.loss_trace}}};
  for (const auto& [name, pair] : arrays) {
    const auto& [va, vb] = pair;
    if (va->size() != vb->size() ||
        std::memcmp(va->data(), vb->data(), va->size() * sizeof(float)) != 0) {
      return ::testing::AssertionFailure() << "PoolParameters::" << name << " changed";
    }
  }
  return ::testing::AssertionSuccess();
}

HtfrConfig small_config(Loss loss = Loss::mse) {
  HtfrConfig c;
  c.input_dim = 5;
  c.output_dim = 3;
  c.num_tensors = 7;
  c.top_k = 3;
  c.loss = loss;
  c.optimizer = Optimizer::adam;  // optimiser state must not be touched by a failed call either
  c.lr = 0.01f;
  c.lr_geometry = 0.01f;
  return c;
}

// ---------------------------------------------------------------------------------------------
// Configuration: validate() and the model constructor reject every out-of-range field.

struct ConfigCase {
  const char* name;
  std::function<void(HtfrConfig&)> mutate;
  const char* argument;  ///< what the message must name
};

std::ostream& operator<<(std::ostream& os, const ConfigCase& c) { return os << c.name; }

const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

const ConfigCase kConfigCases[] = {
    {"TopKZero", [](HtfrConfig& c) { c.top_k = 0; }, "top_k"},
    {"TopKNegative", [](HtfrConfig& c) { c.top_k = -2; }, "top_k"},
    {"TopKAboveN", [](HtfrConfig& c) { c.top_k = c.num_tensors + 1; }, "top_k"},
    {"TopKAboveMax",
     [](HtfrConfig& c) {
       c.num_tensors = 4 * kMaxTopK;
       c.top_k = kMaxTopK + 1;
     },
     "top_k"},
    {"InputDimZero", [](HtfrConfig& c) { c.input_dim = 0; }, "input_dim"},
    {"InputDimNegative", [](HtfrConfig& c) { c.input_dim = -5; }, "input_dim"},
    {"OutputDimZero", [](HtfrConfig& c) { c.output_dim = 0; }, "output_dim"},
    {"NumTensorsZero", [](HtfrConfig& c) { c.num_tensors = 0; }, "num_tensors"},
    {"NumTensorsAbove2To30", [](HtfrConfig& c) { c.num_tensors = (int64_t{1} << 30) + 1; },
     "num_tensors"},
    {"LrNegative", [](HtfrConfig& c) { c.lr = -0.1f; }, "lr"},
    {"LrNaN", [](HtfrConfig& c) { c.lr = kNaN; }, "lr"},
    {"LrInf", [](HtfrConfig& c) { c.lr = kInf; }, "lr"},
    {"LrGeometryNegative", [](HtfrConfig& c) { c.lr_geometry = -1e-3f; }, "lr_geometry"},
    {"LrTauNegative", [](HtfrConfig& c) { c.lr_tau = -1e-3f; }, "lr_tau"},
    {"BandGammaOne", [](HtfrConfig& c) { c.band_gamma = 1.0f; }, "band_gamma"},
    {"BandGammaNegative", [](HtfrConfig& c) { c.band_gamma = -0.1f; }, "band_gamma"},
    {"BandMinZero", [](HtfrConfig& c) { c.band_min = 0.0f; }, "band_min"},
    {"TauMinNegative", [](HtfrConfig& c) { c.tau_min = -1.0f; }, "tau_min"},
    {"GeometryClipNegative", [](HtfrConfig& c) { c.geometry_clip = -1.0f; }, "geometry_clip"},
    {"InverseDistanceEpsZero", [](HtfrConfig& c) { c.inverse_distance_eps = 0.0f; },
     "inverse_distance_eps"},
    {"KernelFloorZero", [](HtfrConfig& c) { c.kernel_floor = 0.0f; }, "kernel_floor"},
    {"CeWeightNegative", [](HtfrConfig& c) { c.ce_weight = -1.0f; }, "ce_weight"},
    {"KlWeightNaN", [](HtfrConfig& c) { c.kl_weight = kNaN; }, "kl_weight"},
    {"AdamBeta1One", [](HtfrConfig& c) { c.adam_beta1 = 1.0f; }, "beta1"},
    {"AdamBeta2Negative", [](HtfrConfig& c) { c.adam_beta2 = -0.5f; }, "beta2"},
    {"AdamEpsZero", [](HtfrConfig& c) { c.adam_eps = 0.0f; }, "eps"},
    {"CrossEntropyWithOneOutput",
     [](HtfrConfig& c) {
       c.loss = Loss::cross_entropy;
       c.output_dim = 1;
     },
     "output_dim"},
};

class ErrorsConfig : public ::testing::TestWithParam<ConfigCase> {};

TEST_P(ErrorsConfig, ValidateAndTheModelThrowInvalidArgumentNamingTheField) {
  const HtfrConfig good = small_config();
  ASSERT_NO_THROW(good.validate());
  HtfrConfig bad = good;
  GetParam().mutate(bad);
  expect_throws<InvalidArgument>([&] { bad.validate(); }, GetParam().argument);
  // The constructor validates the config before looking at the pool.
  HyperTensorPool pool = random_cpu_pool(good, 1);
  expect_throws<InvalidArgument>([&] { HtfrModel model(bad, std::move(pool)); },
                                 GetParam().argument);
}

INSTANTIATE_TEST_SUITE_P(Errors, ErrorsConfig, ::testing::ValuesIn(kConfigCases),
                         [](const ::testing::TestParamInfo<ConfigCase>& info) {
                           return std::string(info.param.name);
                         });

// ---------------------------------------------------------------------------------------------
// Pools: shapes, empty pools, parameter arrays.

TEST(ErrorsPool, ShapeMismatchWithTheConfigThrowsInvalidArgument) {
  const HtfrConfig cfg = small_config();
  const std::pair<const char*, std::function<void(HtfrConfig&)>> wrong[] = {
      {"N", [](HtfrConfig& c) { c.num_tensors += 1; }},
      {"D", [](HtfrConfig& c) { c.input_dim += 1; }},
      {"M", [](HtfrConfig& c) { c.output_dim += 1; }}};
  for (const auto& [dim, mutate] : wrong) {
    SCOPED_TRACE(dim);
    HtfrConfig other = cfg;
    mutate(other);
    HyperTensorPool pool = random_cpu_pool(other, 2);
    expect_throws<InvalidArgument>([&] { HtfrModel model(cfg, std::move(pool)); }, "pool");
  }
  expect_throws<InvalidArgument>([&] { HtfrModel model(cfg, HyperTensorPool{}); }, "pool");
}

TEST(ErrorsPool, BadDimensionsAndEmptyPoolsThrowInvalidArgument) {
  expect_throws<InvalidArgument>([] { HyperTensorPool::create(Backend::cpu, 0, 4, 2); }, "N");
  expect_throws<InvalidArgument>([] { HyperTensorPool::create(Backend::cpu, 3, -1, 2); }, "D");
  expect_throws<InvalidArgument>([] { HyperTensorPool::create(Backend::cpu, 3, 4, 0); }, "M");
  const HyperTensorPool empty;
  expect_throws<InvalidArgument>([&] { empty.download(); }, "download");
  expect_throws<InvalidArgument>([&] { empty.clone(Backend::cpu); }, "clone");
  HyperTensorPool empty2;
  expect_throws<InvalidArgument>([&] { empty2.init_random(1, 0.1f, 1.0f, 1.0f, 0.1f); },
                                 "init_random");
  expect_throws<InvalidArgument>([&] { empty2.upload(PoolParameters{}); }, "upload");
}

TEST(ErrorsPool, InitRandomRejectsBadScalesAndLeavesThePoolUnchanged) {
  HyperTensorPool pool = random_cpu_pool(small_config(), 3);
  const PoolParameters before = pool.download();
  expect_throws<InvalidArgument>([&] { pool.init_random(1, 0.1f, 0.0f, 1.0f, 0.1f); }, "band");
  expect_throws<InvalidArgument>([&] { pool.init_random(1, 0.1f, 1.0f, -1.0f, 0.1f); }, "tau");
  expect_throws<InvalidArgument>([&] { pool.init_random(1, -0.1f, 1.0f, 1.0f, 0.1f); },
                                 "offset_scale");
  expect_throws<InvalidArgument>([&] { pool.init_random(1, 0.1f, 1.0f, 1.0f, -0.1f); },
                                 "control_scale");
  EXPECT_TRUE(bitwise_equal(pool.download(), before));
}

/// Each array of PoolParameters with one element too many or too few.
TEST(ErrorsPool, ParameterArraysOfTheWrongSizeFailValidateAndUpload) {
  HyperTensorPool pool = random_cpu_pool(small_config(), 4);
  const PoolParameters good = pool.download();
  ASSERT_NO_THROW(good.validate());
  const std::pair<const char*, std::vector<float> PoolParameters::*> arrays[] = {
      {"normals", &PoolParameters::normals},
      {"offsets", &PoolParameters::offsets},
      {"dneg", &PoolParameters::dneg},
      {"dpos", &PoolParameters::dpos},
      {"tau", &PoolParameters::tau},
      {"controls", &PoolParameters::controls},
      {"use_count", &PoolParameters::use_count},
      {"last_used", &PoolParameters::last_used},
      {"mean_abs_d", &PoolParameters::mean_abs_d},
      {"loss_trace", &PoolParameters::loss_trace}};
  for (const auto& [name, member] : arrays) {
    for (const int delta : {-1, +1}) {
      SCOPED_TRACE(std::string(name) + (delta < 0 ? " one short" : " one long"));
      PoolParameters bad = good;
      (bad.*member).resize((bad.*member).size() + delta, 0.5f);
      expect_throws<InvalidArgument>([&] { bad.validate(); },
                                     std::string("PoolParameters::") + name);
      expect_throws<InvalidArgument>([&] { pool.upload(bad); },
                                     std::string("PoolParameters::") + name);
      EXPECT_TRUE(bitwise_equal(pool.download(), good));
    }
  }
}

TEST(ErrorsPool, InvalidBandsTemperaturesAndDimensionsFailUpload) {
  HyperTensorPool pool = random_cpu_pool(small_config(), 5);
  const PoolParameters good = pool.download();
  PoolParameters bad = good;
  bad.dneg[2] = 0.0f;
  expect_throws<InvalidArgument>([&] { pool.upload(bad); }, "dneg");
  bad = good;
  bad.dpos[6] = -0.5f;
  expect_throws<InvalidArgument>([&] { pool.upload(bad); }, "dpos");
  bad = good;
  bad.tau[0] = 0.0f;
  expect_throws<InvalidArgument>([&] { pool.upload(bad); }, "temperature");
  // Consistent arrays of another shape: valid on their own, but not this pool's.
  HtfrConfig wide = small_config();
  wide.num_tensors = 9;
  const PoolParameters bigger = random_cpu_pool(wide, 6).download();
  ASSERT_NO_THROW(bigger.validate());
  expect_throws<InvalidArgument>([&] { pool.upload(bigger); }, "upload");
  EXPECT_TRUE(bitwise_equal(pool.download(), good));
}

// ---------------------------------------------------------------------------------------------
// Model calls, on each backend. Inputs live in the backend's memory space.

class ErrorsModel : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    if (GetParam() == Backend::cuda) HTFR_SKIP_WITHOUT_GPU();
  }

  Backend backend() const { return GetParam(); }

  /// A model on this test's backend, from the same CPU-drawn parameters on both backends.
  HtfrModel model(const HtfrConfig& cfg) const {
    HyperTensorPool pool = random_cpu_pool(cfg, 21);
    if (backend() == Backend::cuda) pool = pool.clone(Backend::cuda);
    return HtfrModel(cfg, std::move(pool));
  }

  /// train_step must throw E naming `argument`, and leave the pool bitwise and the step count
  /// unchanged. Returns the message.
  template <typename E>
  std::string expect_step_throws(HtfrModel& m, const Batch& batch, const std::string& argument,
                                 const StepOutputs& out = {}) {
    const PoolParameters before = m.pool().download();
    const int64_t step = m.step();
    const std::string msg = expect_throws<E>([&] { m.train_step(batch, out); }, argument);
    EXPECT_EQ(m.step(), step);
    EXPECT_TRUE(bitwise_equal(m.pool().download(), before)) << "after: " << msg;
    return msg;
  }

  static constexpr int64_t kRows = 4;
};

/// Valid inputs for small_config() with kRows rows.
struct Inputs {
  std::vector<float> x = random_normal(4 * 5, 31);
  std::vector<float> target = random_normal(4 * 3, 32);
  std::vector<float> probabilities = random_distributions(4, 3, 33);
  std::vector<int32_t> index = {2, 0, 1, 2};
};

TEST_P(ErrorsModel, EmptyBatchThrowsInvalidArgument) {
  HtfrModel m = model(small_config());
  const Inputs in;
  Staged<float> x(backend(), in.x), target(backend(), in.target), y(backend(), in.target);
  Staged<int32_t> idx(backend(), std::vector<int32_t>(kRows * 3, 0));
  Staged<float> dist(backend(), in.target);
  for (const int64_t rows : {int64_t{0}, int64_t{-1}}) {
    SCOPED_TRACE(rows);
    expect_step_throws<InvalidArgument>(m, Batch{x.get(), rows, target.get(), nullptr}, "rows");
    expect_throws<InvalidArgument>([&] { m.forward(x.get(), rows, y.get()); }, "rows");
    expect_throws<InvalidArgument>([&] { m.select(x.get(), rows, idx.get(), dist.get()); }, "rows");
  }
  // Above the supported batch size: rejected before any pointer is read.
  expect_step_throws<InvalidArgument>(
      m, Batch{x.get(), (int64_t{1} << 24) + 1, target.get(), nullptr}, "rows");
}

TEST_P(ErrorsModel, NullPointersThrowInvalidArgumentNamingThePointer) {
  HtfrModel m = model(small_config());
  const Inputs in;
  Staged<float> x(backend(), in.x), target(backend(), in.target), y(backend(), in.target);
  Staged<int32_t> idx(backend(), std::vector<int32_t>(kRows * 3, 0));
  Staged<float> dist(backend(), in.target);
  expect_step_throws<InvalidArgument>(m, Batch{nullptr, kRows, target.get(), nullptr}, "batch.x");
  expect_throws<InvalidArgument>([&] { m.forward(nullptr, kRows, y.get()); }, "x");
  expect_throws<InvalidArgument>([&] { m.forward(x.get(), kRows, nullptr); }, "y");
  expect_throws<InvalidArgument>([&] { m.select(nullptr, kRows, idx.get(), dist.get()); }, "x");
  expect_throws<InvalidArgument>([&] { m.select(x.get(), kRows, nullptr, dist.get()); }, "indices");
  expect_throws<InvalidArgument>([&] { m.select(x.get(), kRows, idx.get(), nullptr); },
                                 "distances");
}

TEST_P(ErrorsModel, MissingTargetOfTheConfiguredLossThrowsInvalidArgument) {
  const Inputs in;
  Staged<float> x(backend(), in.x), target(backend(), in.target),
      probabilities(backend(), in.probabilities);
  Staged<int32_t> index(backend(), in.index);
  {
    HtfrModel m = model(small_config(Loss::mse));
    expect_step_throws<InvalidArgument>(m, Batch{x.get(), kRows, nullptr, index.get()},
                                        "batch.target");
  }
  {
    HtfrModel m = model(small_config(Loss::cross_entropy));
    expect_step_throws<InvalidArgument>(m, Batch{x.get(), kRows, target.get(), nullptr},
                                        "batch.target_index");
  }
  {
    HtfrModel m = model(small_config(Loss::kl));
    expect_step_throws<InvalidArgument>(m, Batch{x.get(), kRows, nullptr, index.get()},
                                        "batch.target");
  }
  {
    HtfrModel m = model(small_config(Loss::mixed));
    expect_step_throws<InvalidArgument>(m, Batch{x.get(), kRows, probabilities.get(), nullptr},
                                        "batch.target_index");
    expect_step_throws<InvalidArgument>(m, Batch{x.get(), kRows, nullptr, index.get()},
                                        "batch.target");
  }
}

/// One non-finite value at `at` in x or in the targets, for each loss that reads them.
TEST_P(ErrorsModel, NaNAndInfInInputsOrTargetsThrowNonFiniteInput) {
  const Inputs in;
  const float bad_values[] = {kNaN, kInf, -kInf};
  for (const float bad : bad_values) {
    SCOPED_TRACE(bad);
    for (const std::size_t at : {std::size_t{0}, std::size_t{13}, in.x.size() - 1}) {
      SCOPED_TRACE("x[" + std::to_string(at) + "]");
      std::vector<float> x_bad = in.x;
      x_bad[at] = bad;
      Staged<float> x(backend(), x_bad), target(backend(), in.target), y(backend(), in.target);
      Staged<int32_t> idx(backend(), std::vector<int32_t>(kRows * 3, 0));
      Staged<float> dist(backend(), in.target);
      HtfrModel m = model(small_config());
      std::string msg =
          expect_step_throws<NonFiniteInput>(m, Batch{x.get(), kRows, target.get(), nullptr}, "x");
      EXPECT_FALSE(names(msg, "target")) << msg;
      // The CPU backend names the element; the CUDA backend reduces a flag and names the array.
      if (backend() == Backend::cpu) {
        EXPECT_NE(msg.find("x[" + std::to_string(at) + "]"), std::string::npos) << msg;
      }
      expect_throws<NonFiniteInput>([&] { m.forward(x.get(), kRows, y.get()); }, "x");
      expect_throws<NonFiniteInput>([&] { m.select(x.get(), kRows, idx.get(), dist.get()); }, "x");
    }
    for (const Loss loss : {Loss::mse, Loss::kl, Loss::mixed}) {
      SCOPED_TRACE(to_string(loss));
      std::vector<float> t_bad = loss == Loss::mse ? in.target : in.probabilities;
      t_bad[7] = bad;
      Staged<float> x(backend(), in.x), target(backend(), t_bad);
      Staged<int32_t> index(backend(), in.index);
      HtfrModel m = model(small_config(loss));
      const std::string msg = expect_step_throws<NonFiniteInput>(
          m, Batch{x.get(), kRows, target.get(), index.get()}, "target");
      if (backend() == Backend::cpu) {
        EXPECT_NE(msg.find("target[7]"), std::string::npos) << msg;
      }
    }
  }
}

TEST_P(ErrorsModel, ClassIndexOutOfRangeThrowsInvalidArgument) {
  const Inputs in;
  for (const Loss loss : {Loss::cross_entropy, Loss::mixed}) {
    for (const int32_t bad : {-1, 3, 1000, std::numeric_limits<int32_t>::min()}) {
      SCOPED_TRACE(std::string(to_string(loss)) + " index " + std::to_string(bad));
      std::vector<int32_t> index_bad = in.index;
      index_bad[kRows - 1] = bad;
      Staged<float> x(backend(), in.x), target(backend(), in.probabilities);
      Staged<int32_t> index(backend(), index_bad);
      HtfrModel m = model(small_config(loss));
      const std::string msg = expect_step_throws<InvalidArgument>(
          m, Batch{x.get(), kRows, target.get(), index.get()}, "target_index");
      if (backend() == Backend::cpu) {
        EXPECT_NE(msg.find("target_index[" + std::to_string(kRows - 1) + "]"), std::string::npos)
            << msg;
      }
    }
  }
}

/// A failed call must not leave hidden state behind either (Adam moments, the step counter):
/// a model that saw failures then one good step equals a fresh model that took the same step.
TEST_P(ErrorsModel, NegativeTeacherProbabilityThrowsInvalidArgument) {
  const Inputs in;
  for (const Loss loss : {Loss::kl, Loss::mixed}) {
    SCOPED_TRACE(to_string(loss));
    std::vector<float> probabilities = in.probabilities;
    probabilities[1] = -0.25f;
    Staged<float> x(backend(), in.x), target(backend(), probabilities);
    Staged<int32_t> index(backend(), in.index);
    HtfrModel m = model(small_config(loss));
    const std::string msg = expect_step_throws<InvalidArgument>(
        m, Batch{x.get(), kRows, target.get(), index.get()}, "target");
    EXPECT_NE(msg.find("negative"), std::string::npos) << msg;
  }
}

TEST_P(ErrorsModel, FailedStepsLeaveNoTraceInTheNextGoodStep) {
  const Inputs in;
  const HtfrConfig cfg = small_config(Loss::mixed);
  std::vector<float> x_nan = in.x;
  x_nan[3] = kNaN;
  std::vector<int32_t> index_bad = in.index;
  index_bad[0] = 3;
  Staged<float> x(backend(), in.x), bad_x(backend(), x_nan), target(backend(), in.probabilities);
  Staged<int32_t> index(backend(), in.index), bad_index(backend(), index_bad);

  HtfrModel failed = model(cfg);
  expect_step_throws<NonFiniteInput>(failed, Batch{bad_x.get(), kRows, target.get(), index.get()},
                                     "x");
  expect_step_throws<InvalidArgument>(failed, Batch{x.get(), kRows, target.get(), bad_index.get()},
                                      "target_index");
  expect_step_throws<InvalidArgument>(failed, Batch{x.get(), 0, target.get(), index.get()}, "rows");
  HtfrModel fresh = model(cfg);
  const Batch good{x.get(), kRows, target.get(), index.get()};
  failed.train_step(good);
  fresh.train_step(good);
  EXPECT_EQ(failed.step(), 1);
  EXPECT_EQ(fresh.step(), 1);
  // Same backend, same inputs, same order of operations: bitwise on the CPU; the CUDA backend
  // promises determinism run to run, so bitwise there too.
  EXPECT_TRUE(bitwise_equal(failed.pool().download(), fresh.pool().download()));
}

/// Wrong memory space: device memory to a CPU model, host memory to a CUDA model. Needs a GPU
/// in both cases (device memory cannot exist without one).
TEST_P(ErrorsModel, PointerOnTheWrongDeviceThrowsWrongDevice) {
  HTFR_SKIP_WITHOUT_GPU();
  const Inputs in;
  const Backend other = backend() == Backend::cpu ? Backend::cuda : Backend::cpu;
  Staged<float> x(backend(), in.x), target(backend(), in.target), y(backend(), in.target);
  Staged<float> wrong_x(other, in.x), wrong_target(other, in.target), wrong_y(other, in.target);
  Staged<int32_t> idx(backend(), std::vector<int32_t>(kRows * 3, 0));
  Staged<int32_t> wrong_idx(other, std::vector<int32_t>(kRows * 3, 0));
  Staged<float> dist(backend(), in.target), wrong_dist(other, in.target);
  HtfrModel m = model(small_config());

  expect_step_throws<WrongDevice>(m, Batch{wrong_x.get(), kRows, target.get(), nullptr}, "batch.x");
  expect_step_throws<WrongDevice>(m, Batch{x.get(), kRows, wrong_target.get(), nullptr},
                                  "batch.target");
  StepOutputs out;
  out.prediction = wrong_y.get();
  expect_step_throws<WrongDevice>(m, Batch{x.get(), kRows, target.get(), nullptr},
                                  "outputs.prediction", out);
  expect_throws<WrongDevice>([&] { m.forward(wrong_x.get(), kRows, y.get()); }, "x");
  expect_throws<WrongDevice>([&] { m.forward(x.get(), kRows, wrong_y.get()); }, "y");
  expect_throws<WrongDevice>([&] { m.select(x.get(), kRows, wrong_idx.get(), dist.get()); },
                             "indices");
  expect_throws<WrongDevice>([&] { m.select(x.get(), kRows, idx.get(), wrong_dist.get()); },
                             "distances");

  HtfrModel ce = model(small_config(Loss::cross_entropy));
  Staged<int32_t> wrong_index(other, in.index);
  expect_step_throws<WrongDevice>(ce, Batch{x.get(), kRows, nullptr, wrong_index.get()},
                                  "batch.target_index");
}

INSTANTIATE_TEST_SUITE_P(Errors, ErrorsModel, ::testing::Values(Backend::cpu, Backend::cuda),
                         [](const ::testing::TestParamInfo<Backend>& info) {
                           return std::string(to_string(info.param));
                         });

// ---------------------------------------------------------------------------------------------
// Devices.

TEST(ErrorsDevice, CudaPoolWithoutAGpuThrowsNoDevice) {
  if (have_gpu()) GTEST_SKIP() << "a CUDA device exists: this test needs a machine without one";
  expect_throws<NoDevice>([] { HyperTensorPool::create(Backend::cuda, 8, 4, 2); }, "CUDA");
  const HyperTensorPool cpu = random_cpu_pool(small_config(), 41);
  expect_throws<NoDevice>([&] { cpu.clone(Backend::cuda); }, "CUDA");
}

TEST(ErrorsDevice, CudaPoolOnAMissingOrdinalThrowsNoDevice) {
  HTFR_SKIP_WITHOUT_GPU();
  const int count = cuda_device_count();
  expect_throws<NoDevice>(
      [&] { HyperTensorPool::create(Backend::cuda, 8, 4, 2, Precision::fp32, count); }, "CUDA");
  expect_throws<NoDevice>(
      [] { HyperTensorPool::create(Backend::cuda, 8, 4, 2, Precision::fp32, -1); }, "CUDA");
}

TEST(ErrorsDevice, HalfPrecisionConfigOnAnFp32CudaPoolThrowsInvalidArgument) {
  HTFR_SKIP_WITHOUT_GPU();
  HtfrConfig cfg = small_config();
  cfg.precision = Precision::bf16;
  HyperTensorPool pool = random_cpu_pool(cfg, 42).clone(Backend::cuda);
  expect_throws<InvalidArgument>([&] { HtfrModel m(cfg, std::move(pool)); }, "config.precision");
}

}  // namespace
}  // namespace htfr::test

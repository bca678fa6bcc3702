// `htfr verify`: the HFT note §9 information-flow checks of a trained model, teacher-free.
#include "htfr_verify.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <ctime>

#include "htfr/capture.hpp"
#include "htfr/safetensors.hpp"

namespace htfr_cli {

namespace {

/// "name=value" of the first three figures of a check, for the table.
std::string headline(const htfr::VerifyCheck& c) {
  std::string out;
  for (std::size_t i = 0; i < c.figures.size() && i < 3; ++i) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "%s%s=%.4g", i ? ", " : "", c.figures[i].first.c_str(),
                  c.figures[i].second);
    out += buf;
  }
  return out;
}

}  // namespace

int run_verify(const VerifyArgs& a) {
  const htfr::CaptureReader capture(a.capture);
  const auto start = std::chrono::steady_clock::now();
  const htfr::VerifyReport report = htfr::verify_information_flow(
      a.checkpoint, capture, a.backend, 0, a.options, a.max_positions,
      [](const std::string& name) { std::fprintf(stderr, "verify: %s\n", name.c_str()); });
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%-20s %-6s %s\n", "check", "result", "figures");
  for (const htfr::VerifyCheck& c : report.checks)
    std::printf("%-20s %-6s %s\n", c.name.c_str(), c.passed ? "pass" : "FAIL",
                headline(c).c_str());
  int64_t passed = 0;
  for (const auto& c : report.checks) passed += c.passed ? 1 : 0;
  std::printf("%lld of %zu checks meet their criterion (%.1f s)\n", static_cast<long long>(passed),
              report.checks.size(), seconds);
  if (!a.json_out.empty()) {
    nlohmann::json out = nlohmann::json::parse(report.to_json());
    char date[32];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d", std::gmtime(&now));
    out["checkpoint"] = a.checkpoint;
    out["capture"] = a.capture;
    out["backend"] = htfr::to_string(a.backend);
    out["commit"] = a.commit;
    out["date"] = date;
    out["seconds"] = seconds;
    out["options"] = {{"sequences", a.options.sequences},
                      {"length", a.options.length},
                      {"ablate_offsets", a.options.ablate_offsets},
                      {"position_buckets", a.options.position_buckets},
                      {"seed", a.options.seed},
                      {"coupling_rows", a.options.coupling_rows},
                      {"collision_flag", a.options.collision_flag},
                      {"max_positions", a.max_positions}};
    htfr::write_file_atomic(a.json_out, out.dump(2) + "\n");
  }
  return 0;
}

}  // namespace htfr_cli

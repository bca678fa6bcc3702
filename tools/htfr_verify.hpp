// The `htfr verify` subcommand (tools/htfr_verify.cpp): the information-flow checks of
// include/htfr/verify.hpp on a checkpoint and a capture, as a pass/fail table and JSON.
#pragma once

#include <cstdint>
#include <string>

#include "htfr/config.hpp"
#include "htfr/verify.hpp"

namespace htfr_cli {

struct VerifyArgs {
  std::string checkpoint, capture, json_out, commit = "unknown";
  htfr::Backend backend = htfr::Backend::cpu;
  int64_t max_positions = 0;  ///< rows of the capture loaded (<= 0: all)
  htfr::VerifyOptions options;
};
/// Runs every check, prints the table, writes the JSON (atomically) when asked. Returns 0 when
/// the checks ran (whatever they found): a failed criterion is a finding, not an error.
int run_verify(const VerifyArgs& a);

}  // namespace htfr_cli

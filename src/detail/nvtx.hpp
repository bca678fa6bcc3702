// NVTX ranges in htfr's own domain, so profiles group the library's work under one name.
#pragma once

#include <nvtx3/nvtx3.hpp>

namespace htfr::detail {

struct NvtxDomain {
  static constexpr char const* name{"htfr"};
};

using NvtxRange = nvtx3::scoped_range_in<NvtxDomain>;

}  // namespace htfr::detail

#define HTFR_NVTX_CONCAT_(a, b) a##b
#define HTFR_NVTX_CONCAT(a, b) HTFR_NVTX_CONCAT_(a, b)
/// Marks the enclosing scope as an NVTX range named `name`.
#define HTFR_NVTX_RANGE(name) \
  ::htfr::detail::NvtxRange HTFR_NVTX_CONCAT(htfr_nvtx_range_, __LINE__) { name }

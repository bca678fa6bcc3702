// placeholder
#include "detail/backend.hpp"
#include "detail/check.hpp"
namespace htfr::detail {
std::unique_ptr<ModelBackend> make_cuda_backend(const HtfrConfig&, HyperTensorPool&&) {
  throw NoDevice("CUDA backend not built yet");
}
}

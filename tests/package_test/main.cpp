// Consumes the installed package: builds a tiny CPU model and runs one forward pass.
#include <htfr/htfr.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  htfr::HtfrConfig config;
  config.input_dim = 3;
  config.output_dim = 2;
  config.num_tensors = 5;
  config.top_k = 2;
  auto pool = htfr::HyperTensorPool::create(htfr::Backend::cpu, 5, 3, 2);
  pool.init_random(7, 0.5f, 1.0f, 1.0f, 0.1f);
  htfr::HtfrModel model(config, std::move(pool));
  std::vector<float> x = {0.1f, -0.2f, 0.3f}, y(2, NAN);
  model.forward(x.data(), 1, y.data());
  if (!std::isfinite(y[0]) || !std::isfinite(y[1])) return 1;
  std::printf("htfr package consumer: y = [%g, %g]\n", y[0], y[1]);
  return 0;
}

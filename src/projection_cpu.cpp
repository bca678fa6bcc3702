// The projection stack's CPU reference implementation.
#include "detail/projection_cpu.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

namespace htfr::detail {

float bf16_to_float(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

uint16_t float_to_bf16(float value) {
  uint32_t u;
  std::memcpy(&u, &value, sizeof u);
  if (std::isnan(value)) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7FFF + ((u >> 16) & 1);  // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

void fwht_cpu(float* data, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    float* v = data + r * n;
    for (int64_t h = 1; h < n; h *= 2) {
      for (int64_t i = 0; i < n; i += 2 * h) {
        for (int64_t j = i; j < i + h; ++j) {
          const float a = v[j], b = v[j + h];
          v[j] = a + b;
          v[j + h] = a - b;
        }
      }
    }
  }
}

void count_sketch_cpu(const int32_t* bucket, const int8_t* sign, int64_t input_dim,
                      int64_t output_dim, const float* x, float* y, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    float* yr = y + r * output_dim;
    std::fill(yr, yr + output_dim, 0.0f);
    for (int64_t j = 0; j < input_dim; ++j) yr[bucket[j]] += float(sign[j]) * x[r * input_dim + j];
  }
}

void count_sketch_sparse_cpu(const int32_t* bucket, const int8_t* sign, int64_t output_dim,
                             const int64_t* row_offsets, const int32_t* indices,
                             const float* values, float* y, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    float* yr = y + r * output_dim;
    std::fill(yr, yr + output_dim, 0.0f);
    for (int64_t e = row_offsets[r]; e < row_offsets[r + 1]; ++e) {
      yr[bucket[indices[e]]] += float(sign[indices[e]]) * values[e];
    }
  }
}

void count_sketch_adjoint_cpu(const int32_t* bucket, const int8_t* sign, int64_t input_dim,
                              int64_t output_dim, const float* y, float* x, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < input_dim; ++j)
      x[r * input_dim + j] = float(sign[j]) * y[r * output_dim + bucket[j]];
}

void srht_block_outputs(int64_t output_dim, int64_t num_blocks, int64_t block, int64_t& start,
                        int64_t& count) {
  const int64_t q = output_dim / num_blocks, rem = output_dim % num_blocks;
  start = block * q + std::min(block, rem);
  count = q + (block < rem ? 1 : 0);
}

void srht_cpu(const int8_t* signs, const int32_t* sample, int64_t input_dim, int64_t output_dim,
              int64_t block_size, const float* x, float* y, int64_t rows) {
  const int64_t blocks = (input_dim + block_size - 1) / block_size;
  std::vector<float> v(block_size);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      for (int64_t i = 0; i < block_size; ++i) {
        const int64_t col = b * block_size + i;
        v[i] = col < input_dim ? float(signs[col]) * x[r * input_dim + col] : 0.0f;
      }
      fwht_cpu(v.data(), 1, block_size);
      int64_t start, count;
      srht_block_outputs(output_dim, blocks, b, start, count);
      const float scale = 1.0f / std::sqrt(float(count));
      for (int64_t k = 0; k < count; ++k)
        y[r * output_dim + start + k] = scale * v[sample[start + k]];
    }
  }
}

void srht_adjoint_cpu(const int8_t* signs, const int32_t* sample, int64_t input_dim,
                      int64_t output_dim, int64_t block_size, const float* y, float* x,
                      int64_t rows) {
  const int64_t blocks = (input_dim + block_size - 1) / block_size;
  std::vector<float> v(block_size);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      std::fill(v.begin(), v.end(), 0.0f);
      int64_t start, count;
      srht_block_outputs(output_dim, blocks, b, start, count);
      const float scale = 1.0f / std::sqrt(float(count));
      for (int64_t k = 0; k < count; ++k) v[sample[start + k]] = scale * y[r * output_dim + start + k];
      fwht_cpu(v.data(), 1, block_size);
      for (int64_t i = 0; i < block_size; ++i) {
        const int64_t col = b * block_size + i;
        if (col < input_dim) x[r * input_dim + col] = float(signs[col]) * v[i];
      }
    }
  }
}

void symmetric_eigen_cpu(std::vector<double>& a, int64_t n, std::vector<double>& values,
                         std::vector<double>& vectors) {
  std::vector<double> v(static_cast<std::size_t>(n * n), 0.0);  // columns = eigenvectors
  for (int64_t i = 0; i < n; ++i) v[i * n + i] = 1.0;
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0.0, total = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        total += a[i * n + j] * a[i * n + j];
        if (i != j) off += a[i * n + j] * a[i * n + j];
      }
    }
    if (off <= 1e-30 * total || off == 0.0) break;
    for (int64_t p = 0; p < n - 1; ++p) {
      for (int64_t q = p + 1; q < n; ++q) {
        const double apq = a[p * n + q];
        if (apq == 0.0) continue;
        const double theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1.0));
        const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
        for (int64_t k = 0; k < n; ++k) {  // A <- A J (columns p, q)
          const double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (int64_t k = 0; k < n; ++k) {  // A <- J^T A (rows p, q)
          const double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        for (int64_t k = 0; k < n; ++k) {  // V <- V J
          const double vkp = v[k * n + p], vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  std::vector<int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t i, int64_t j) { return a[i * n + i] > a[j * n + j]; });
  values.assign(static_cast<std::size_t>(n), 0.0);
  vectors.assign(static_cast<std::size_t>(n * n), 0.0);
  for (int64_t r = 0; r < n; ++r) {
    values[r] = a[order[r] * n + order[r]];
    for (int64_t k = 0; k < n; ++k) vectors[r * n + k] = v[k * n + order[r]];
  }
}

void mean_covariance_cpu(const float* x, int64_t rows, int64_t dim, std::vector<double>& mean,
                         std::vector<double>& cov) {
  mean.assign(static_cast<std::size_t>(dim), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < dim; ++j) mean[j] += x[r * dim + j];
  for (auto& m : mean) m /= double(rows);
  cov.assign(static_cast<std::size_t>(dim * dim), 0.0);
  std::vector<double> c(static_cast<std::size_t>(dim));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < dim; ++j) c[j] = x[r * dim + j] - mean[j];
    for (int64_t i = 0; i < dim; ++i)
      for (int64_t j = 0; j < dim; ++j) cov[i * dim + j] += c[i] * c[j];
  }
  for (auto& v : cov) v /= double(rows - 1);
}

void affine_cpu(const float* w, const float* bias, int64_t out, int64_t in, const float* x,
                float* y, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double acc = 0.0;
      for (int64_t i = 0; i < in; ++i) acc += double(w[o * in + i]) * x[r * in + i];
      y[r * out + o] = float(acc - bias[o]);
    }
  }
}

void affine_adjoint_cpu(const float* w, int64_t out, int64_t in, const float* y, float* x,
                        int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < in; ++i) {
      double acc = 0.0;
      for (int64_t o = 0; o < out; ++o) acc += double(w[o * in + i]) * y[r * out + o];
      x[r * in + i] = float(acc);
    }
  }
}

}  // namespace htfr::detail

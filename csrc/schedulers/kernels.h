// Element-wise kernels the schedulers and the loop are built from.
//
// Coefficients are computed per step in float64 and applied in float32, in simple loops GCC/Clang
// vectorise (diffusers does the same arithmetic in float32 torch tensors). `out` may alias any
// input: each element is read before it is written.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>

namespace fastgen::kernels {

// out = a*x + b*y
inline void axpby(float* out, double a, const float* x, double b, const float* y, size_t n) {
  const float fa = static_cast<float>(a), fb = static_cast<float>(b);
  for (size_t i = 0; i < n; ++i) out[i] = fa * x[i] + fb * y[i];
}

// out = a*x + b*y + c*z
inline void axpbypcz(float* out, double a, const float* x, double b, const float* y, double c, const float* z,
                     size_t n) {
  const float fa = static_cast<float>(a), fb = static_cast<float>(b), fc = static_cast<float>(c);
  for (size_t i = 0; i < n; ++i) out[i] = fa * x[i] + fb * y[i] + fc * z[i];
}

// out = a*x
inline void scale(float* out, double a, const float* x, size_t n) {
  const float fa = static_cast<float>(a);
  for (size_t i = 0; i < n; ++i) out[i] = fa * x[i];
}

// out += a*x
inline void add_scaled(float* out, double a, const float* x, size_t n) {
  const float fa = static_cast<float>(a);
  for (size_t i = 0; i < n; ++i) out[i] += fa * x[i];
}

// x = clamp(x, lo, hi)
inline void clamp(float* x, double lo, double hi, size_t n) {
  const float l = static_cast<float>(lo), h = static_cast<float>(hi);
  for (size_t i = 0; i < n; ++i) x[i] = std::min(std::max(x[i], l), h);
}

// Variance-preserving forward diffusion, as diffusers' add_noise in float32:
// out = sqrt(a) * original + sqrt(1 - a) * noise, with a = alphas_cumprod[t].
inline void add_noise_vp(float alpha_prod, const float* original, const float* noise, float* out, size_t n) {
  const float s1 = std::sqrt(alpha_prod), s2 = std::sqrt(1.0f - alpha_prod);
  for (size_t i = 0; i < n; ++i) out[i] = s1 * original[i] + s2 * noise[i];
}

}  // namespace fastgen::kernels

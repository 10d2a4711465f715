// Element-wise kernels the schedulers and the loop are built from.
//
// Coefficients are computed per step in float64 and applied in float32, in simple loops GCC/Clang
// vectorise (diffusers does the same arithmetic in float32 torch tensors). `out` may alias any
// input: each element is read before it is written.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <optional>

#include "common.h"  // FASTGEN_SIMD
#include "schedulers/scheduler.h"

namespace fastgen::kernels {

// Model-output readers and result writers for single-pass steps (see StepIO). A step kernel is a
// generic lambda `k(mo, store)` with a loop `store(i, f(sample[i], mo(i), ...))`; with_io() runs it
// with the reader / writer pair the StepIO asks for, so each combination is its own vectorised loop.
struct PlainOutput {
  const float* m;
  float operator()(size_t i) const { return m[i]; }
};
// Classifier-free guidance: uncond + g * (cond - uncond), in float32.
struct GuidedOutput {
  const float* u;
  const float* c;
  float g;
  float operator()(size_t i) const {
    const float ui = u[i];
    return ui + g * (c[i] - ui);
  }
};
struct Store {
  float* out;
  void operator()(size_t i, float v) const { out[i] = v; }
};
// Also writes the next model input, v * scale, to both CFG halves.
struct StoreFeed {
  float* out;
  float* f0;
  float* f1;
  float scale;
  void operator()(size_t i, float v) const {
    out[i] = v;
    const float w = v * scale;
    f0[i] = w;
    f1[i] = w;
  }
};

// The latents are the first CFG half of the model input (identity input scaling): also writes v
// to the second half.
struct StoreMirror {
  float* out;
  float* f1;
  void operator()(size_t i, float v) const {
    out[i] = v;
    f1[i] = v;
  }
};

// Run kernel k(mo, store) with io's model output and `out` (+ io.feed scaled by `feed_scale`, when
// given). When io.feed[0] is `out` itself (the loop keeps the latents in the model input) the scale
// must be 1. Returns whether the next model input was written.
template <class K>
bool with_io(const StepIO& io, float* out, std::optional<float> feed_scale, K&& k) {
  bool feed = feed_scale.has_value() && io.feed[0] != nullptr;
  const bool mirror = feed && io.feed[0] == out;
  if (mirror && *feed_scale != 1.0f) feed = false;  // cannot hold both v and v * scale: the loop prevents it
  float* f1 = io.feed[1] ? io.feed[1] : io.feed[0];
  auto run = [&](const auto& mo) {
    if (!feed) k(mo, Store{out});
    else if (mirror) k(mo, StoreMirror{out, f1});
    else k(mo, StoreFeed{out, io.feed[0], f1, *feed_scale});
  };
  if (io.guided()) run(GuidedOutput{io.uncond, io.cond, io.guidance});
  else run(PlainOutput{io.model_output});
  return feed;
}

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

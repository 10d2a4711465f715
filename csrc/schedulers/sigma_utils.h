// Helpers shared by the sigma-space scheduler families (Euler, Euler ancestral, flow matching):
// the float32 arithmetic diffusers does in torch / numpy float32, reproduced step by step.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "common.h"
#include "schedulers/noise_schedule.h"
#include "schedulers/scheduler.h"

namespace fastgen::sigma_utils {

inline float f32(double x) { return static_cast<float>(x); }

// torch.linspace(start, end, n) in float32 (symmetric from both ends, as torch's CPU kernel).
inline std::vector<double> torch_linspace_f32(double start_d, double end_d, int n) {
  std::vector<double> out(std::max(n, 0));
  if (n <= 0) return out;
  const float start = f32(start_d), end = f32(end_d);
  if (n == 1) {
    out[0] = start;
    return out;
  }
  const float step = (end - start) / static_cast<float>(n - 1);
  const int halfway = n / 2;
  for (int i = 0; i < n; ++i)
    out[i] = i < halfway ? start + step * static_cast<float>(i) : end - step * static_cast<float>(n - i - 1);
  return out;
}

// ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5 in float32, ascending in t. With zero-SNR
// rescaling diffusers sets alphas_cumprod[-1] = 2**-24 first (the Euler family does).
inline std::vector<double> train_sigmas(const NoiseSchedule& ns, bool zero_snr_fix) {
  std::vector<double> s(ns.alphas_cumprod.size());
  for (size_t i = 0; i < s.size(); ++i) {
    float ac = f32(ns.alphas_cumprod[i]);
    if (zero_snr_fix && i + 1 == s.size()) ac = std::ldexp(1.0f, -24);
    s[i] = std::sqrt((1.0f - ac) / ac);
  }
  return s;
}

// Euler-family float32 timesteps ("linspace" is not rounded here, unlike DDIM), descending.
inline std::vector<double> euler_timesteps(int T, int n, const std::string& spacing, long long steps_offset) {
  std::vector<double> ts;
  if (spacing == "linspace") {
    auto l = linspace(0, T - 1, n);
    for (int i = n - 1; i >= 0; --i) ts.push_back(f32(l[i]));
  } else {
    ts = spaced_timesteps(T, n, spacing, steps_offset);
    for (auto& t : ts) t = f32(t);
  }
  return ts;
}

// np.exp(np.linspace(log(sigma_max), log(sigma_min), n)).
inline std::vector<double> exponential_sigmas(double sigma_min, double sigma_max, int n) {
  auto l = linspace(std::log(sigma_max), std::log(sigma_min), n);
  for (auto& v : l) v = std::exp(v);
  return l;
}

// Regularised incomplete beta I_x(a, b) (continued fraction, Lentz), double precision.
inline double incomplete_beta(double x, double a, double b) {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  auto cf = [](double x, double a, double b) {
    const double tiny = 1e-300;
    double c = 1, d = 1 - (a + b) * x / (a + 1);
    if (std::fabs(d) < tiny) d = tiny;
    d = 1 / d;
    double h = d;
    for (int m = 1; m <= 10000; ++m) {
      const int m2 = 2 * m;
      double aa = m * (b - m) * x / ((a - 1 + m2) * (a + m2));
      d = 1 + aa * d;
      if (std::fabs(d) < tiny) d = tiny;
      c = 1 + aa / c;
      if (std::fabs(c) < tiny) c = tiny;
      d = 1 / d;
      h *= d * c;
      aa = -(a + m) * (a + b + m) * x / ((a + m2) * (a + 1 + m2));
      d = 1 + aa * d;
      if (std::fabs(d) < tiny) d = tiny;
      c = 1 + aa / c;
      if (std::fabs(c) < tiny) c = tiny;
      d = 1 / d;
      const double del = d * c;
      h *= del;
      if (std::fabs(del - 1) < 1e-16) break;
    }
    return h;
  };
  const double lbeta = std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b);
  const double front = std::exp(lbeta + a * std::log(x) + b * std::log1p(-x));
  if (x < (a + 1) / (a + b + 2)) return front * cf(x, a, b) / a;
  return 1 - front * cf(1 - x, b, a) / b;
}

// scipy.stats.beta.ppf(q, a, b): invert I_x(a, b) = q by bisection to full double precision.
inline double beta_ppf(double q, double a, double b) {
  if (q <= 0) return 0;
  if (q >= 1) return 1;
  double lo = 0, hi = 1;
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    if (mid <= lo || mid >= hi) break;
    if (incomplete_beta(mid, a, b) < q) lo = mid;
    else hi = mid;
  }
  return 0.5 * (lo + hi);
}

// diffusers' _convert_to_beta (alpha = beta = 0.6).
inline std::vector<double> beta_sigmas(double sigma_min, double sigma_max, int n, double alpha = 0.6,
                                       double beta = 0.6) {
  auto l = linspace(0, 1, n);
  std::vector<double> out(n);
  for (int i = 0; i < n; ++i) out[i] = sigma_min + beta_ppf(1 - l[i], alpha, beta) * (sigma_max - sigma_min);
  return out;
}

}  // namespace fastgen::sigma_utils

namespace fastgen {

// Base of the sigma-space families: a sigma per step (plus the final one), and a timestep lookup
// that tolerates float32 rounding. Float timesteps that come from log-sigma interpolation
// (Karras / exponential / beta sigmas) depend on numpy's float32 log, which is not correctly
// rounded and differs between CPUs (SIMD paths); a caller's timestep may therefore differ from
// ours by a few float32 ulps. Exact matches (with diffusers' second-match rule) win; otherwise the
// nearest scheduled timestep within the tolerance is taken.
class SigmaScheduler : public Scheduler {
 public:
  using Scheduler::Scheduler;

 protected:
  static double tolerance(double expect) { return 1e-4 + 1e-5 * std::fabs(expect); }

  int lookup_index(double t) const {
    require_timesteps();
    bool exact = false;
    for (double v : timesteps_) exact = exact || v == t || static_cast<float>(v) == static_cast<float>(t);
    if (exact) return index_for_timestep(t);
    int best = -1;
    double best_d = 0;
    for (size_t i = 0; i < timesteps_.size(); ++i) {
      const double d = std::fabs(timesteps_[i] - t);
      if (d <= tolerance(timesteps_[i]) && (best < 0 || d < best_d)) {
        best = static_cast<int>(i);
        best_d = d;
      }
    }
    if (best < 0) throw ScheduleError("timestep " + fmt(t) + " is not in the " + class_name() + " schedule");
    return best;
  }

  // current_index() with the tolerant match (call once per step(), then advance()).
  int sigma_index(double t) {
    require_timesteps();
    if (step_index_ < 0) step_index_ = begin_index_ >= 0 ? begin_index_ : lookup_index(t);
    if (step_index_ >= static_cast<int>(timesteps_.size()))
      throw ScheduleError(class_name() + ": step() called more often than the " + std::to_string(timesteps_.size()) +
                          " scheduled timesteps; call set_timesteps() again");
    const double expect = timesteps_[static_cast<size_t>(step_index_)];
    if (std::fabs(expect - t) > tolerance(expect))
      throw ScheduleError(class_name() + ": step " + std::to_string(step_index_) + " expects timestep " + fmt(expect) +
                          ", got " + fmt(t));
    return step_index_;
  }

  // The index diffusers' add_noise / scale_noise use: t's index, or the current / begin index.
  int noise_index(double t) const {
    if (begin_index_ < 0) return lookup_index(t);
    return step_index_ >= 0 ? step_index_ : begin_index_;
  }

  float sigma_at(int i) const {
    if (i < 0 || i >= static_cast<int>(sigmas_.size()))
      throw ScheduleError(class_name() + ": step index " + std::to_string(i) + " is outside the schedule");
    return static_cast<float>(sigmas_[static_cast<size_t>(i)]);
  }

  std::vector<double> sigmas_;
};

// Shared by EulerDiscreteScheduler and EulerAncestralDiscreteScheduler: diffusers' init_noise_sigma rule
// the sigma-space input scaling x / sqrt(sigma^2 + 1) and add_noise x + sigma * noise.
class EulerFamilyScheduler : public SigmaScheduler {
 public:
  using SigmaScheduler::SigmaScheduler;

  double init_noise_sigma() const override {
    using sigma_utils::f32;
    float mx = 0;
    if (sigmas_.empty()) for (double s : train_sigmas_) mx = std::max(mx, f32(s));
    else for (double s : sigmas_) mx = std::max(mx, f32(s));
    if (spacing_ == "linspace" || spacing_ == "trailing") return mx;
    return std::sqrt(mx * mx + 1.0f);
  }

  // diffusers divides by sqrt(sigma^2 + 1); we multiply by its float32 reciprocal (within an ulp), so
  // the sampling loop can write the next model input in the step's own pass (input_scale_at).
  void scale_model_input(const float* in, float* out, size_t n, double t) override {
    const float k = input_scale(sigma_at(sigma_index(t)));
    for (size_t i = 0; i < n; ++i) out[i] = in[i] * k;
  }
  bool scale_is_identity() const override { return false; }
  std::optional<float> input_scale_at(int index) const override { return input_scale(sigma_at(index)); }

  void add_noise(const float* original, const float* noise, float* out, size_t n, double t) override {
    const float sigma = sigma_at(noise_index(t));
    for (size_t i = 0; i < n; ++i) out[i] = original[i] + noise[i] * sigma;
  }

 protected:
  static float input_scale(float sigma) { return 1.0f / std::sqrt(sigma * sigma + 1.0f); }

  std::string spacing_;
  std::vector<double> train_sigmas_;
};

}  // namespace fastgen

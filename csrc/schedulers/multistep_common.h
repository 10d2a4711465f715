// Shared pieces of the multistep sigma-space solvers (DPMSolverMultistepScheduler, UniPCMultistepScheduler).
//
// diffusers runs these solvers' scalar coefficient math in float32 0-dim tensors (sigmas are a float32
// array; alpha_t, sigma_t, lambda, h and every coefficient derived from them are float32). Several of
// those coefficients cancel catastrophically for small step sizes (e.g. UniPC's h_phi_k recursion), so
// to reproduce diffusers' numbers we mirror that float32 arithmetic op for op instead of using float64.
#pragma once

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "common.h"
#include "schedulers/config.h"
#include "schedulers/history.h"
#include "schedulers/noise_schedule.h"
#include "schedulers/scheduler.h"

namespace fastgen::multistep {

// diffusers' _sigma_to_alpha_sigma_t (non-flow), in float32: alpha = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha.
struct AlphaSigma {
  float alpha, sigma;
};
inline AlphaSigma alpha_sigma(float sigma) {
  const float a = 1.0f / std::sqrt(sigma * sigma + 1.0f);
  return {a, sigma * a};
}
// lambda = log(alpha_t) - log(sigma_t) (inf for sigma = 0).
inline float lambda_of(const AlphaSigma& as) { return std::log(as.alpha) - std::log(as.sigma); }

// ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5 as diffusers computes it on a float32 tensor.
inline std::vector<double> train_sigmas_f32(const std::vector<double>& alphas_cumprod) {
  std::vector<double> s(alphas_cumprod.size());
  for (size_t i = 0; i < s.size(); ++i) {
    const float ac = static_cast<float>(alphas_cumprod[i]);
    s[i] = std::sqrt((1.0f - ac) / ac);
  }
  return s;
}
// np.log of a float32 array (float32 results).
inline std::vector<double> log_f32(const std::vector<double>& xs) {
  std::vector<double> out(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) out[i] = std::log(static_cast<float>(xs[i]));
  return out;
}

// diffusers' _convert_to_exponential: exp(linspace(log sigma_max, log sigma_min, n)).
inline std::vector<double> exponential_sigmas(double sigma_min, double sigma_max, int n) {
  auto l = linspace(std::log(sigma_max), std::log(sigma_min), n);
  for (auto& v : l) v = std::exp(v);
  return l;
}

// numpy.arange(start, 0, -step).round() - 1 (diffusers' "trailing" spacing), step > 0. numpy fills
// arange as start + i * ((start - step) - start).
inline std::vector<double> trailing_timesteps(double start, double step) {
  std::vector<double> ts;
  if (!(start > 0) || !(step > 0)) return ts;
  const long long count = static_cast<long long>(std::ceil((0.0 - start) / -step));
  const double delta = (start + -step) - start;
  ts.reserve(static_cast<size_t>(std::max<long long>(count, 0)));
  for (long long i = 0; i < count; ++i) {
    const double v = i == 0 ? start : i == 1 ? start + -step : start + static_cast<double>(i) * delta;
    ts.push_back(round_half_even(v) - 1);
  }
  return ts;
}

// Integer timesteps of the discrete multistep schedulers ("linspace" over [0, last - 1], "leading" with
// num_inference_steps + 1 points, "trailing"), as diffusers' set_timesteps computes them. `last` is the
// (lambda-clipped) last timestep + 1, `T` num_train_timesteps.
inline std::vector<double> multistep_timesteps(int T, long long last, int n, const std::string& spacing,
                                               long long steps_offset) {
  std::vector<double> ts;
  if (spacing == "linspace") {
    auto l = linspace(0, static_cast<double>(last - 1), n + 1);
    for (int i = n; i >= 1; --i) ts.push_back(round_half_even(l[i]));
  } else if (spacing == "leading") {
    const long long ratio = last / (n + 1);  // last >= 1, floor division of non-negatives
    for (int i = n; i >= 1; --i) ts.push_back(static_cast<double>(i * ratio + steps_offset));
  } else if (spacing == "trailing") {
    ts = trailing_timesteps(static_cast<double>(last), static_cast<double>(T) / n);
  } else {
    throw ConfigError("scheduler config 'timestep_spacing' = '" + spacing + "' is not supported");
  }
  return ts;
}

// torch.linalg.solve for the tiny (<= 3x3) float32 systems UniPC builds: LU with partial pivoting as
// LAPACK's getrf (multipliers via the pivot's reciprocal), then the two triangular solves. Singular
// systems yield inf/NaN (diffusers raises there); nothing is indexed out of range.
inline void solve_f32(int n, float a[3][3], float b[3], float x[3]) {
  for (int k = 0; k < n; ++k) {
    int p = k;
    for (int i = k + 1; i < n; ++i)
      if (std::fabs(a[i][k]) > std::fabs(a[p][k])) p = i;
    if (p != k) {
      for (int j = 0; j < n; ++j) std::swap(a[k][j], a[p][j]);
      std::swap(b[k], b[p]);
    }
    const float inv = 1.0f / a[k][k];
    for (int i = k + 1; i < n; ++i) a[i][k] *= inv;
    for (int i = k + 1; i < n; ++i)
      for (int j = k + 1; j < n; ++j) a[i][j] -= a[i][k] * a[k][j];
  }
  for (int i = 0; i < n; ++i) x[i] = b[i];
  for (int k = 0; k < n; ++k)  // unit lower
    for (int i = k + 1; i < n; ++i) x[i] -= x[k] * a[i][k];
  for (int k = n - 1; k >= 0; --k) {  // upper, column-oriented as strsm
    x[k] = x[k] / a[k][k];
    for (int i = 0; i < k; ++i) x[i] -= x[k] * a[i][k];
  }
}

// Optional positive sigma bound from the config (sigma_min / sigma_max override the Karras / exponential ends).
inline std::optional<double> sigma_bound(const Config& cfg, const std::string& key) {
  auto v = cfg.get_optional_double(key);
  if (v && !(*v >= 0)) throw ConfigError("scheduler config '" + key + "' must be >= 0, got " + fmt(*v));
  return v;
}

// Base of DPMSolverMultistepScheduler and UniPCMultistepScheduler: the float32 sigma table (len(timesteps)
// + 1), identity input scaling, diffusers' add_noise index rule and the first-step index fix.
class SigmaTableScheduler : public Scheduler {
 public:
  using Scheduler::Scheduler;

  void add_noise(const float* original, const float* noise, float* out, size_t n, double t) override {
    require_timesteps();
    int idx;
    if (begin_index_ < 0) idx = index_for_timestep(t);
    else idx = step_index_ >= 0 ? step_index_ : begin_index_;
    idx = std::min(std::max(idx, 0), static_cast<int>(sigmas_.size()) - 1);
    const AlphaSigma as = alpha_sigma(sigmas_[idx]);
    for (size_t i = 0; i < n; ++i) out[i] = as.alpha * original[i] + as.sigma * noise[i];
  }

 protected:
  // diffusers resolves the first step's index with index_for_timestep's "second match" rule. When the
  // schedule's first timestep repeats (Karras sigmas on squaredcos_cap_v2 give 998, 998, ...), that starts
  // one step late and diffusers fails on the last step. A first step at timesteps[0] starts at index 0
  // instead (what diffusers does after set_begin_index(0)).
  void start_at_head(double t) {
    if (step_index_ < 0 && begin_index_ < 0 && !timesteps_.empty() && t == timesteps_[0]) step_index_ = 0;
  }

  std::vector<float> sigmas_;  // len(timesteps) + 1, float32 as diffusers
};

}  // namespace fastgen::multistep

#include "sampling/step_cache.h"

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <string>

#include "common.h"

namespace fastgen {

namespace {
// DeepCache's sample_from_quad_center (DeepCache/sd/pipeline_stable_diffusion.py), as NumPy computes it:
// (-center) ** (1 / pow) is a complex number in Python, linspace interpolates between complex ends, the
// power is complex, and np.int32 keeps the real part truncated toward zero.
std::vector<int> quad_center(int total, int n_samples, int center, double pow) {
  while (pow > 1) {
    const std::complex<double> lo = std::pow(std::complex<double>(-center, 0.0), 1.0 / pow);
    const std::complex<double> hi = std::pow(std::complex<double>(total - center, 0.0), 1.0 / pow);
    std::vector<int> vals;
    for (int j = 0; j <= n_samples; ++j) {
      const std::complex<double> x =
          j == n_samples ? hi : lo + (hi - lo) * (static_cast<double>(j) / static_cast<double>(n_samples));
      const std::complex<double> y = (x == std::complex<double>(0, 0)) ? std::complex<double>(0, 0) : std::pow(x, pow);
      vals.push_back(static_cast<int>(static_cast<int32_t>(std::trunc(y.real()))));
    }
    std::sort(vals.begin(), vals.end());
    vals.erase(std::unique(vals.begin(), vals.end()), vals.end());
    std::vector<int> idx{0};
    for (size_t k = 1; k + 1 < vals.size(); ++k) idx.push_back(vals[k] + center);
    if (static_cast<int>(idx.size()) == n_samples) return idx;
    pow -= 0.02;
  }
  throw ArgumentError("deepcache non-uniform: no step spacing fits " + std::to_string(n_samples) +
                      " full steps around center " + std::to_string(center) + " (lower center or pow)");
}
}  // namespace

std::vector<int> deepcache_full_steps(int steps, int interval, bool uniform, double pow, int center) {
  if (steps < 1) throw ArgumentError("deepcache: steps must be >= 1, got " + std::to_string(steps));
  if (interval < 1) throw ArgumentError("deepcache: interval must be >= 1, got " + std::to_string(interval));
  std::vector<int> full;
  if (interval == 1) {
    for (int i = 0; i < steps; ++i) full.push_back(i);
  } else if (uniform) {
    for (int i = 0; i < steps; i += interval) full.push_back(i);
  } else {
    if (!std::isfinite(pow) || pow <= 1) throw ArgumentError("deepcache: pow must be > 1, got " + fmt(pow));
    if (center < 0 || center > steps)
      throw ArgumentError("deepcache: center must be in [0, steps=" + std::to_string(steps) + "], got " +
                          std::to_string(center));
    const int slow = steps / interval + (steps % interval != 0);
    full = quad_center(steps, slow, center, pow);
    std::sort(full.begin(), full.end());
  }
  return full;
}

FirstBlockCache::FirstBlockCache(double threshold) : threshold_(threshold) {
  if (!std::isfinite(threshold) || threshold < 0)
    throw ArgumentError("first-block cache: threshold must be a finite number >= 0, got " + fmt(threshold));
}

bool FirstBlockCache::should_compute(const float* r, size_t n) {
  if (prev_.size() != n) {  // the first step (or a new shape): always in full
    prev_.assign(r, r + n);
    last_change_ = -1.0;
    return true;
  }
  // torch: (r - prev).abs().mean() / prev.abs().mean(), float32 tensors reduced in double here
  double diff = 0, base = 0;
  for (size_t i = 0; i < n; ++i) {
    diff += std::fabs(static_cast<double>(r[i] - prev_[i]));
    base += std::fabs(static_cast<double>(prev_[i]));
  }
  const float mean_diff = static_cast<float>(diff / static_cast<double>(n));
  const float mean_base = static_cast<float>(base / static_cast<double>(n));
  last_change_ = static_cast<double>(mean_diff / mean_base);
  const bool compute = last_change_ > threshold_;
  if (compute) prev_.assign(r, r + n);
  return compute;
}

TaylorSeer::TaylorSeer(int interval, int disable_before, int disable_after, int max_order)
    : interval_(interval), before_(disable_before), after_(disable_after), max_order_(max_order) {
  if (interval < 1) throw ArgumentError("taylorseer: interval must be >= 1, got " + std::to_string(interval));
  if (disable_before < 0)
    throw ArgumentError("taylorseer: warmup must be >= 0, got " + std::to_string(disable_before));
  if (max_order < 0 || max_order > 8)
    throw ArgumentError("taylorseer: order must be in [0, 8], got " + std::to_string(max_order));
}

bool TaylorSeer::next_step() {
  ++step_;
  const bool warmup = step_ < before_;
  // Python's % is non-negative for a positive divisor
  const int k = step_ - before_ - 1;
  const bool interval = ((k % interval_) + interval_) % interval_ == 0;
  const bool cooldown = after_ >= 0 && step_ >= after_;
  const bool full = warmup || interval || cooldown || last_update_ < 0;
  return full;
}

void TaylorSeer::update(const float* out, size_t n) {
  std::vector<std::vector<float>> next;
  next.emplace_back(out, out + n);
  if (last_update_ >= 0) {
    const float delta = static_cast<float>(step_ - last_update_);
    if (delta == 0) throw ScheduleError("taylorseer: two updates in one step");
    for (int j = 0; j < max_order_ && j < static_cast<int>(factors_.size()); ++j) {
      if (factors_[j].size() != n) break;
      std::vector<float> d(n);
      for (size_t i = 0; i < n; ++i) d[i] = (next[j][i] - factors_[j][i]) / delta;
      next.push_back(std::move(d));
    }
  }
  factors_ = std::move(next);
  last_update_ = step_;
}

void TaylorSeer::predict(float* out, size_t n) const {
  if (factors_.empty() || factors_[0].size() != n) throw ScheduleError("taylorseer: predict before a full step");
  const int offset = step_ - last_update_;
  std::fill(out, out + n, 0.0f);
  double fact = 1;
  for (size_t order = 0; order < factors_.size(); ++order) {
    if (order > 0) fact *= static_cast<double>(order);
    const float coeff = static_cast<float>(std::pow(static_cast<double>(offset), static_cast<double>(order)) / fact);
    const float* f = factors_[order].data();
    for (size_t i = 0; i < n; ++i) out[i] = out[i] + f[i] * coeff;
  }
}

}  // namespace fastgen

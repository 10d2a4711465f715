// FlowMatchEulerDiscreteScheduler (SD3 / Flux), as diffusers: static shift or dynamic shifting
// with mu (exponential / linear time shift), shift_terminal, invert_sigmas, Karras / exponential /
// beta sigmas, stochastic_sampling. Timesteps are float: sigmas * num_train_timesteps.
// add_noise is diffusers' scale_noise: sigma * noise + (1 - sigma) * sample, sigma of t.
// Arithmetic follows diffusers (float64 numpy schedule, float32 tensors for sigmas and the step).
#include <algorithm>
#include <cmath>

#include "common.h"
#include "schedulers/kernels.h"
#include "schedulers/scheduler.h"
#include "schedulers/sigma_utils.h"

namespace fastgen {
namespace {

using sigma_utils::f32;

class FlowMatchEuler final : public SigmaScheduler {
 public:
  explicit FlowMatchEuler(const Config& cfg) : SigmaScheduler(cfg) {
    const long long T = cfg.get_int("num_train_timesteps", 1000);
    if (T < 1 || T > 100000)
      throw ConfigError("scheduler config 'num_train_timesteps' must be in [1, 100000], got " + std::to_string(T));
    T_ = static_cast<int>(T);
    shift_ = cfg.get_double("shift", 1.0);
    if (!(shift_ > 0)) throw ConfigError("scheduler config 'shift' must be > 0, got " + fmt(shift_));
    dynamic_ = cfg.get_bool("use_dynamic_shifting", false);
    invert_ = cfg.get_bool("invert_sigmas", false);
    if (auto st = cfg.get_optional_double("shift_terminal")) {
      if (*st != 0.0) {
        if (!(*st > 0 && *st < 1))
          throw ConfigError("scheduler config 'shift_terminal' must be in (0, 1), got " + fmt(*st));
        shift_terminal_ = *st;
      }
    }
    karras_ = cfg.get_bool("use_karras_sigmas", false);
    exponential_ = cfg.get_bool("use_exponential_sigmas", false);
    beta_ = cfg.get_bool("use_beta_sigmas", false);
    if (int(karras_) + int(exponential_) + int(beta_) > 1)
      throw ConfigError("scheduler config: only one of 'use_karras_sigmas', 'use_exponential_sigmas', "
                        "'use_beta_sigmas' can be true");
    linear_shift_ = cfg.get_string("time_shift_type", "exponential", {"exponential", "linear"}) == "linear";
    stochastic_ = cfg.get_bool("stochastic_sampling", false);
    // Read for validation only (pipelines derive mu from them).
    cfg.get_optional_double("base_shift");
    cfg.get_optional_double("max_shift");
    cfg.get_int("base_image_seq_len", 256);
    cfg.get_int("max_image_seq_len", 4096);
    // __init__: timesteps = linspace(1, T, T, float32)[::-1]; sigmas = timesteps / T (float32), shifted.
    const auto lin = linspace(1, T_, T_);
    const float first = f32(lin.back()) / static_cast<float>(T_), last = f32(lin.front()) / static_cast<float>(T_);
    auto shifted = [&](float s) {
      if (dynamic_) return s;
      const float sh = f32(shift_);
      return sh * s / (1.0f + f32(shift_ - 1.0) * s);
    };
    sigma_max_ = shifted(first);
    sigma_min_ = shifted(last);
  }
  std::string class_name() const override { return "FlowMatchEulerDiscreteScheduler"; }
  std::unique_ptr<Scheduler> clone() const override { return std::make_unique<FlowMatchEuler>(cfg_); }
  bool integer_timesteps() const override { return false; }
  bool is_stochastic(double) const override { return stochastic_; }

  void set_timesteps(int n, std::optional<double> mu) override {
    if (n < 1) throw ArgumentError("num_inference_steps must be >= 1, got " + std::to_string(n));
    if (dynamic_ && !mu) throw ArgumentError("FlowMatchEulerDiscreteScheduler: mu must be passed when use_dynamic_shifting is true");
    if (dynamic_ && !std::isfinite(*mu)) throw ArgumentError("mu must be finite");
    if (dynamic_ && linear_shift_ && !(*mu > 0))
      throw ArgumentError("mu must be > 0 with time_shift_type 'linear', got " + fmt(*mu));
    const double T = T_;
    auto ts = linspace(sigma_max_ * T, sigma_min_ * T, n);
    std::vector<double> sig(ts.size());
    for (size_t i = 0; i < ts.size(); ++i) sig[i] = ts[i] / T;
    if (dynamic_) {
      const double e = linear_shift_ ? *mu : std::exp(*mu);
      for (auto& s : sig) s = e / (e + (1 / s - 1));
    } else {
      for (auto& s : sig) s = shift_ * s / (1 + (shift_ - 1) * s);
    }
    if (shift_terminal_) {
      const double scale = (1 - sig.back()) / (1 - *shift_terminal_);
      for (auto& s : sig) s = 1 - (1 - s) / scale;
    }
    if (karras_ || exponential_ || beta_) {
      const double smin = sig.back(), smax = sig.front();
      if (karras_) sig = karras_sigmas(smin, smax, n);
      else if (exponential_) sig = sigma_utils::exponential_sigmas(smin, smax, n);
      else sig = sigma_utils::beta_sigmas(smin, smax, n);
    }
    const float Tf = static_cast<float>(T_);
    std::vector<double> s32(sig.size()), t32(sig.size());
    for (size_t i = 0; i < sig.size(); ++i) {
      float s = f32(sig[i]);
      if (invert_) s = 1.0f - s;
      s32[i] = s;
      t32[i] = s * Tf;
      if (!std::isfinite(s))
        throw ArgumentError("FlowMatchEulerDiscreteScheduler: the sigma schedule is not finite for this shift / mu");
    }
    s32.push_back(invert_ ? 1.0 : 0.0);
    sigmas_ = s32;
    timesteps_ = t32;
    reset_state(n);
  }

  void step(const float* model_output, double t, const float* sample, float* out, size_t n, size_t batch,
            const float* noise, double eta) override {
    step_io(StepIO::plain(model_output), t, sample, out, n, batch, noise, eta);
  }

  bool step_io(const StepIO& io, double t, const float* sample, float* out, size_t n, size_t,
               const float* noise, double) override {
    const int idx = sigma_index(t);
    const float sigma = sigma_at(idx), sigma_next = sigma_at(idx + 1);
    const float* z = stochastic_ ? noise_or_draw(noise, n) : nullptr;
    const bool fed = kernels::with_io(io, out, feed_scale(io, idx), [=](auto mo, auto store) {
      if (z) {
        const float a = 1.0f - sigma_next;
        FASTGEN_SIMD for (size_t i = 0; i < n; ++i) store(i, a * (sample[i] - sigma * mo(i)) + sigma_next * z[i]);
      } else {
        const float dt = sigma_next - sigma;
        FASTGEN_SIMD for (size_t i = 0; i < n; ++i) store(i, sample[i] + dt * mo(i));
      }
    });
    advance();
    return fed;
  }

  // diffusers' scale_noise.
  void add_noise(const float* original, const float* noise, float* out, size_t n, double t) override {
    const int idx = noise_index(t);
    const float sigma = sigma_at(idx);
    const float a = 1.0f - sigma;
    for (size_t i = 0; i < n; ++i) out[i] = sigma * noise[i] + a * original[i];
  }

 private:
  int T_;
  double shift_;
  bool dynamic_, invert_, karras_, exponential_, beta_, linear_shift_, stochastic_;
  std::optional<double> shift_terminal_;
  double sigma_max_, sigma_min_;
};

const Registrar reg("FlowMatchEulerDiscreteScheduler",
                    [](const Config& c) -> std::unique_ptr<Scheduler> { return std::make_unique<FlowMatchEuler>(c); });

}  // namespace
}  // namespace fastgen

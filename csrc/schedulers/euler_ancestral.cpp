// EulerAncestralDiscreteScheduler, as diffusers: an Euler step to sigma_down plus fresh noise of
// standard deviation sigma_up at every step (noise from the caller, or the scheduler's generator).
// prediction_type "sample" is rejected (ConfigError): diffusers raises NotImplementedError for it.
// Arithmetic follows diffusers' float32 tensor ops one by one.
#include <algorithm>
#include <cmath>

#include "common.h"
#include "schedulers/kernels.h"
#include "schedulers/scheduler.h"
#include "schedulers/sigma_utils.h"

namespace fastgen {
namespace {

using sigma_utils::f32;

class EulerAncestral final : public EulerFamilyScheduler {
 public:
  explicit EulerAncestral(const Config& cfg) : EulerFamilyScheduler(cfg), ns_(NoiseSchedule::from_config(cfg)) {
    v_pred_ = cfg.get_string("prediction_type", "epsilon", {"epsilon", "v_prediction"}) == "v_prediction";
    spacing_ = cfg.get_string("timestep_spacing", "linspace", spacing_names());
    steps_offset_ = cfg.get_int("steps_offset", 0);
    train_sigmas_ = sigma_utils::train_sigmas(ns_, cfg.get_bool("rescale_betas_zero_snr", false));
  }
  std::string class_name() const override { return "EulerAncestralDiscreteScheduler"; }
  std::unique_ptr<Scheduler> clone() const override { return std::make_unique<EulerAncestral>(cfg_); }
  bool integer_timesteps() const override { return false; }
  bool is_stochastic(double) const override { return true; }

  void set_timesteps(int n, std::optional<double> mu) override {
    if (mu) throw ArgumentError("EulerAncestralDiscreteScheduler does not take mu");
    const int T = ns_.num_train_timesteps;
    if (n < 1) throw ArgumentError("num_inference_steps must be >= 1, got " + std::to_string(n));
    if (spacing_ == "leading" && n > T)
      throw ArgumentError("num_inference_steps must be <= " + std::to_string(T) + " with 'leading' timestep spacing, got " +
                          std::to_string(n));
    std::vector<double> ts = sigma_utils::euler_timesteps(T, n, spacing_, steps_offset_);
    std::vector<double> xp(train_sigmas_.size());
    for (size_t i = 0; i < xp.size(); ++i) xp[i] = static_cast<double>(i);
    std::vector<double> sig;
    for (double t : ts) sig.push_back(f32(interp(t, xp, train_sigmas_)));
    sig.push_back(0.0);
    sigmas_ = sig;
    timesteps_ = ts;
    reset_state(n);
  }

  void step(const float* model_output, double t, const float* sample, float* out, size_t n, size_t batch,
            const float* noise, double eta) override {
    step_io(StepIO::plain(model_output), t, sample, out, n, batch, noise, eta);
  }

  // x0, then x + ((x - x0) / sigma) * dt + noise * sigma_up, with guidance and the next model input
  // in the same pass (the noise is drawn first, into its own buffer).
  bool step_io(const StepIO& io, double t, const float* sample, float* out, size_t n, size_t,
               const float* noise, double) override {
    const int idx = sigma_index(t);
    const float sigma = sigma_at(idx);
    const float sf = sigma, st = sigma_at(idx + 1);
    const float sf2 = sf * sf, st2 = st * st;
    const float sigma_up = std::sqrt(st2 * (sf2 - st2) / sf2);
    const float sigma_down = std::sqrt(st2 - sigma_up * sigma_up);
    const float dt = sigma_down - sigma;
    const float s2 = sigma * sigma + 1.0f;
    const float c = -sigma / std::sqrt(s2);
    const float* z = noise_or_draw(noise, n);
    const bool v_pred = v_pred_;
    const bool fed = kernels::with_io(io, out, feed_scale(io, idx), [=](auto mo, auto store) {
      if (v_pred) {
        FASTGEN_SIMD for (size_t i = 0; i < n; ++i) {
          const float x = sample[i];
          const float x0 = mo(i) * c + x / s2;
          store(i, (x + ((x - x0) / sigma) * dt) + z[i] * sigma_up);
        }
      } else {
        FASTGEN_SIMD for (size_t i = 0; i < n; ++i) {
          const float x = sample[i];
          const float x0 = x - sigma * mo(i);
          store(i, (x + ((x - x0) / sigma) * dt) + z[i] * sigma_up);
        }
      }
    });
    advance();
    return fed;
  }

 private:
  NoiseSchedule ns_;
  bool v_pred_;
  long long steps_offset_;
};

const Registrar reg("EulerAncestralDiscreteScheduler",
                    [](const Config& c) -> std::unique_ptr<Scheduler> { return std::make_unique<EulerAncestral>(c); });

}  // namespace
}  // namespace fastgen

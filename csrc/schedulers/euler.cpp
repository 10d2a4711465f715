// EulerDiscreteScheduler (Karras et al. 2022, Algorithm 2 with s_churn = 0), as diffusers:
// interpolation linear / log_linear, Karras / exponential / beta sigmas, timestep_type discrete /
// continuous, final_sigmas_type zero / sigma_min, zero-SNR rescale, epsilon / v_prediction / sample.
//
// step()'s s_churn / s_tmin / s_tmax / s_noise are not part of our API: their defaults (no churn)
// make the step deterministic. Arithmetic follows diffusers' float32 tensor ops one by one.
#include <algorithm>
#include <cmath>

#include "common.h"
#include "schedulers/kernels.h"
#include "schedulers/scheduler.h"
#include "schedulers/sigma_utils.h"

namespace fastgen {
namespace {

using sigma_utils::f32;

class Euler final : public EulerFamilyScheduler {
 public:
  explicit Euler(const Config& cfg) : EulerFamilyScheduler(cfg), ns_(NoiseSchedule::from_config(cfg)) {
    const std::string p = cfg.get_string("prediction_type", "epsilon", {"epsilon", "v_prediction", "sample", "original_sample"});
    prediction_ = p == "epsilon" ? Prediction::Epsilon : p == "v_prediction" ? Prediction::VPrediction : Prediction::Sample;
    log_linear_ = cfg.get_string("interpolation_type", "linear", {"linear", "log_linear"}) == "log_linear";
    karras_ = cfg.get_bool("use_karras_sigmas", false);
    exponential_ = cfg.get_bool("use_exponential_sigmas", false);
    beta_ = cfg.get_bool("use_beta_sigmas", false);
    if (int(karras_) + int(exponential_) + int(beta_) > 1)
      throw ConfigError("scheduler config: only one of 'use_karras_sigmas', 'use_exponential_sigmas', "
                        "'use_beta_sigmas' can be true");
    sigma_min_ = cfg.get_optional_double("sigma_min");
    sigma_max_ = cfg.get_optional_double("sigma_max");
    if (sigma_min_ && !(*sigma_min_ >= 0)) throw ConfigError("scheduler config 'sigma_min' must be >= 0, got " + fmt(*sigma_min_));
    if (sigma_max_ && !(*sigma_max_ > 0)) throw ConfigError("scheduler config 'sigma_max' must be > 0, got " + fmt(*sigma_max_));
    spacing_ = cfg.get_string("timestep_spacing", "linspace", spacing_names());
    continuous_ = cfg.get_string("timestep_type", "discrete", {"discrete", "continuous"}) == "continuous";
    steps_offset_ = cfg.get_int("steps_offset", 0);
    final_sigma_min_ = cfg.get_string("final_sigmas_type", "zero", {"zero", "sigma_min"}) == "sigma_min";
    train_sigmas_ = sigma_utils::train_sigmas(ns_, cfg.get_bool("rescale_betas_zero_snr", false));
    log_sigmas_.resize(train_sigmas_.size());
    for (size_t i = 0; i < train_sigmas_.size(); ++i) log_sigmas_[i] = f32(std::log(train_sigmas_[i]));
  }
  std::string class_name() const override { return "EulerDiscreteScheduler"; }
  std::unique_ptr<Scheduler> clone() const override { return std::make_unique<Euler>(cfg_); }
  bool integer_timesteps() const override { return false; }

  void set_timesteps(int n, std::optional<double> mu) override {
    if (mu) throw ArgumentError("EulerDiscreteScheduler does not take mu");
    const int T = ns_.num_train_timesteps;
    if (n < 1) throw ArgumentError("num_inference_steps must be >= 1, got " + std::to_string(n));
    if (spacing_ == "leading" && n > T)
      throw ArgumentError("num_inference_steps must be <= " + std::to_string(T) + " with 'leading' timestep spacing, got " +
                          std::to_string(n));
    std::vector<double> ts = sigma_utils::euler_timesteps(T, n, spacing_, steps_offset_);
    std::vector<double> sig;
    if (!log_linear_) {
      std::vector<double> xp(train_sigmas_.size());
      for (size_t i = 0; i < xp.size(); ++i) xp[i] = static_cast<double>(i);
      for (double t : ts) sig.push_back(interp(t, xp, train_sigmas_));
    } else {
      const double hi = f32(std::log(train_sigmas_.back())), lo = f32(std::log(train_sigmas_.front()));
      sig = sigma_utils::torch_linspace_f32(hi, lo, n + 1);
      for (auto& s : sig) s = f32(std::exp(f32(s)));
    }
    if (karras_ || exponential_ || beta_) {
      const double smin = sigma_min_ ? *sigma_min_ : sig.back();
      const double smax = sigma_max_ ? *sigma_max_ : sig.front();
      if (karras_) sig = karras_sigmas(smin, smax, n);
      else if (exponential_) sig = sigma_utils::exponential_sigmas(smin, smax, n);
      else sig = sigma_utils::beta_sigmas(smin, smax, n);
      ts.clear();
      for (double s : sig) ts.push_back(f32(sigma_to_t(s, log_sigmas_)));
    }
    const double last = final_sigma_min_ ? train_sigmas_.front() : 0.0;
    sig.push_back(last);
    for (auto& s : sig) {
      s = f32(s);
      if (!std::isfinite(s)) throw ArgumentError("EulerDiscreteScheduler: the sigma schedule is not finite for this configuration");
    }
    if (continuous_ && prediction_ == Prediction::VPrediction) {
      ts.clear();
      for (size_t i = 0; i + 1 < sig.size(); ++i) ts.push_back(0.25f * f32(std::log(f32(sig[i]))));
    }
    sigmas_ = sig;
    timesteps_ = ts;
    reset_state(n);
  }

  void step(const float* model_output, double t, const float* sample, float* out, size_t n, size_t batch,
            const float* noise, double eta) override {
    step_io(StepIO::plain(model_output), t, sample, out, n, batch, noise, eta);
  }

  // diffusers' x + ((x - x0) / sigma) * dt. For epsilon prediction (x - x0 = sigma * eps, well
  // conditioned) the division is a multiplication by 1 / sigma; for v / sample prediction x - x0
  // cancels when sigma is large (squaredcos schedules), so diffusers' exact division is kept.
  bool step_io(const StepIO& io, double t, const float* sample, float* out, size_t n, size_t,
               const float*, double) override {
    const int idx = sigma_index(t);
    const float sigma = sigma_at(idx), sigma_hat = sigma;
    const float dt = sigma_at(idx + 1) - sigma_hat;
    const float inv = 1.0f / sigma_hat;
    const Prediction pred = prediction_;
    const bool fed = kernels::with_io(io, out, feed_scale(io, idx), [=](auto mo, auto store) {
      switch (pred) {
        case Prediction::Epsilon:
          FASTGEN_SIMD for (size_t i = 0; i < n; ++i) {
            const float x = sample[i];
            const float x0 = x - sigma_hat * mo(i);
            store(i, x + ((x - x0) * inv) * dt);
          }
          break;
        case Prediction::VPrediction: {
          const float s2 = sigma * sigma + 1.0f;
          const float c = -sigma / std::sqrt(s2);
          FASTGEN_SIMD for (size_t i = 0; i < n; ++i) {
            const float x = sample[i];
            const float x0 = mo(i) * c + x / s2;
            store(i, x + ((x - x0) / sigma_hat) * dt);
          }
          break;
        }
        default:
          FASTGEN_SIMD for (size_t i = 0; i < n; ++i) {
            const float x = sample[i];
            store(i, x + ((x - mo(i)) / sigma_hat) * dt);
          }
      }
    });
    advance();
    return fed;
  }

 private:
  NoiseSchedule ns_;
  Prediction prediction_;
  bool log_linear_, karras_, exponential_, beta_, continuous_, final_sigma_min_;
  std::optional<double> sigma_min_, sigma_max_;
  long long steps_offset_;
  std::vector<double> log_sigmas_;
};

const Registrar reg("EulerDiscreteScheduler",
                    [](const Config& c) -> std::unique_ptr<Scheduler> { return std::make_unique<Euler>(c); });

}  // namespace
}  // namespace fastgen

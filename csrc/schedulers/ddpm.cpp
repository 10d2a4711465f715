// DDPMScheduler (Ho et al. 2020), as diffusers: fixed variance types, clip_sample, dynamic
// thresholding, epsilon / sample / v_prediction, zero-SNR rescale, the extra "sigmoid" and "laplace"
// beta schedules. Noise is added for t > 0 only.
//
// Rejected (ConfigError): variance_type "learned" / "learned_range" (the model output would carry
// twice the sample's channels, which our step() API does not take) and "fixed_large_log" (diffusers
// takes the square root of a log-variance there, which is NaN for every step).
//
// Arithmetic follows diffusers' float32 tensor ops (coefficients are float32 0-d tensors).
#include <cmath>

#include "common.h"
#include "schedulers/kernels.h"
#include "schedulers/scheduler.h"

namespace fastgen {
namespace {

// diffusers' beta schedules that NoiseSchedule does not know, as trained_betas.
Config with_extra_betas(const Config& cfg) {
  const std::string sched =
      cfg.get_string("beta_schedule", "linear", {"linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"});
  if ((sched != "sigmoid" && sched != "laplace") || cfg.has("trained_betas")) return cfg;
  const long long n = cfg.get_int("num_train_timesteps", 1000);
  if (n < 2 || n > 100000)
    throw ConfigError("scheduler config 'num_train_timesteps' must be in [2, 100000], got " + std::to_string(n));
  std::vector<double> betas(static_cast<size_t>(n));
  if (sched == "sigmoid") {
    const double start = cfg.get_double("beta_start", 0.0001), end = cfg.get_double("beta_end", 0.02);
    // torch.sigmoid(torch.linspace(-6, 6, n)) * (end - start) + start, in float32
    const float span = static_cast<float>(end - start), st = static_cast<float>(start);
    const float lo = -6.0f, hi = 6.0f, step = (hi - lo) / static_cast<float>(n - 1);
    const long long half = n / 2;
    for (long long i = 0; i < n; ++i) {
      const float x = i < half ? lo + step * static_cast<float>(i) : hi - step * static_cast<float>(n - i - 1);
      const float s = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(x))));
      betas[static_cast<size_t>(i)] = s * span + st;
    }
  } else {
    auto alpha_bar = [](double t) {
      const double lmb = -0.5 * std::copysign(1.0, 0.5 - t) * std::log(1 - 2 * std::fabs(0.5 - t) + 1e-6);
      const double snr = std::exp(lmb);
      return std::sqrt(snr / (1 + snr));
    };
    for (long long i = 0; i < n; ++i) {
      const double t1 = static_cast<double>(i) / n, t2 = static_cast<double>(i + 1) / n;
      betas[static_cast<size_t>(i)] = static_cast<float>(std::min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999));
    }
  }
  Config c = cfg;
  c.set("trained_betas", betas);
  return c;
}

class DDPM final : public Scheduler {
 public:
  explicit DDPM(const Config& cfg) : Scheduler(cfg), ns_(NoiseSchedule::from_config(with_extra_betas(cfg))) {
    prediction_ = parse_prediction(cfg);
    const std::string vt = cfg.get_string(
        "variance_type", "fixed_small",
        {"fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"});
    if (vt == "learned" || vt == "learned_range")
      throw ConfigError("scheduler config 'variance_type' = '" + vt +
                        "' is not supported: it needs a model output with twice the sample's channels");
    if (vt == "fixed_large_log")
      throw ConfigError("scheduler config 'variance_type' = 'fixed_large_log' is not supported: diffusers' "
                        "DDPMScheduler produces NaN samples with it");
    variance_ = vt == "fixed_small" ? Var::Small : vt == "fixed_small_log" ? Var::SmallLog : Var::Large;
    clip_sample_ = cfg.get_bool("clip_sample", true);
    clip_range_ = cfg.get_double("clip_sample_range", 1.0);
    thresholding_ = cfg.get_bool("thresholding", false);
    threshold_ratio_ = cfg.get_double("dynamic_thresholding_ratio", 0.995);
    if (thresholding_ && !(threshold_ratio_ >= 0 && threshold_ratio_ <= 1))
      throw ConfigError("scheduler config 'dynamic_thresholding_ratio' must be in [0, 1], got " + fmt(threshold_ratio_));
    sample_max_ = cfg.get_double("sample_max_value", 1.0);
    spacing_ = cfg.get_string("timestep_spacing", "leading", spacing_names());
    steps_offset_ = cfg.get_int("steps_offset", 0);
  }
  std::string class_name() const override { return "DDPMScheduler"; }
  std::unique_ptr<Scheduler> clone() const override { return std::make_unique<DDPM>(cfg_); }

  void set_timesteps(int n, std::optional<double> mu) override {
    if (mu) throw ArgumentError("DDPMScheduler does not take mu");
    if (n < 1 || n > ns_.num_train_timesteps)
      throw ArgumentError("num_inference_steps must be in [1, " + std::to_string(ns_.num_train_timesteps) + "], got " +
                          std::to_string(n));
    timesteps_ = spaced_timesteps(ns_.num_train_timesteps, n, spacing_, steps_offset_);
    reset_state(n);
  }

  bool is_stochastic(double) const override { return true; }

  void step(const float* model_output, double t, const float* sample, float* out, size_t n, size_t batch,
            const float* noise, double eta) override {
    const int idx = current_index(t);
    const long long ti = static_cast<long long>(t);
    const long long prev_t =
        idx + 1 < static_cast<int>(timesteps_.size()) ? static_cast<long long>(timesteps_[idx + 1]) : -1;
    const float a_t = alpha(ti);
    const float a_prev = prev_t >= 0 ? alpha(prev_t) : 1.0f;
    const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    const float cur_alpha = a_t / a_prev, cur_beta = 1.0f - cur_alpha;
    const float sa = std::sqrt(a_t), sb = std::sqrt(b_t);
    const float c_x0 = (std::sqrt(a_prev) * cur_beta) / b_t;
    const float c_x = std::sqrt(cur_alpha) * b_prev / b_t;

    float sd = 0;
    const bool add_noise = ti > 0;
    if (add_noise) {
      float var = (1.0f - a_prev) / (1.0f - a_t) * cur_beta;
      var = std::max(var, 1e-20f);
      switch (variance_) {
        case Var::Small: sd = std::sqrt(var); break;
        case Var::SmallLog: sd = std::exp(0.5f * std::log(var)); break;
        case Var::Large: sd = std::sqrt(cur_beta); break;
      }
      noise = noise_or_draw(noise, n);
    }
    auto x0_of = [&](size_t i) -> float {
      const float m = model_output[i], x = sample[i];
      switch (prediction_) {
        case Prediction::Epsilon: return (x - sb * m) / sa;
        case Prediction::Sample: return m;
        default: return sa * x - sb * m;
      }
    };
    auto finish = [&](size_t i, float x0) {
      float v = c_x0 * x0 + c_x * sample[i];
      if (add_noise) v = v + sd * noise[i];
      out[i] = v;
    };
    process_x0(n, batch, x0_of, finish, thresholding_, threshold_ratio_, sample_max_, clip_sample_, clip_range_, x0_buf_);
    advance();
  }

  void add_noise(const float* original, const float* noise, float* out, size_t n, double t) override {
    kernels::add_noise_vp(alpha(static_cast<long long>(t)), original, noise, out, n);
  }

 private:
  enum class Var { Small, SmallLog, Large };
  float alpha(long long t) const { return static_cast<float>(ns_.alpha_prod(t)); }

  NoiseSchedule ns_;
  Prediction prediction_;
  Var variance_;
  bool clip_sample_, thresholding_;
  double clip_range_, threshold_ratio_, sample_max_;
  std::string spacing_;
  long long steps_offset_;
  std::vector<float> x0_buf_;
};

const Registrar reg("DDPMScheduler", [](const Config& c) -> std::unique_ptr<Scheduler> { return std::make_unique<DDPM>(c); });

}  // namespace
}  // namespace fastgen

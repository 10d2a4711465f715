// DDIMScheduler (Song et al. 2020), as diffusers: eta, clip_sample, thresholding, zero-SNR rescale.
#include <cmath>

#include "common.h"
#include "schedulers/scheduler.h"

namespace fastgen {
namespace {

class DDIM final : public Scheduler {
 public:
  explicit DDIM(const Config& cfg) : Scheduler(cfg), ns_(NoiseSchedule::from_config(cfg)) {
    prediction_ = parse_prediction(cfg);
    clip_sample_ = cfg.get_bool("clip_sample", true);
    clip_range_ = cfg.get_double("clip_sample_range", 1.0);
    set_alpha_to_one_ = cfg.get_bool("set_alpha_to_one", true);
    steps_offset_ = cfg.get_int("steps_offset", 0);
    thresholding_ = cfg.get_bool("thresholding", false);
    threshold_ratio_ = cfg.get_double("dynamic_thresholding_ratio", 0.995);
    sample_max_ = cfg.get_double("sample_max_value", 1.0);
    spacing_ = cfg.get_string("timestep_spacing", "leading", spacing_names());
    final_alpha_cumprod_ = set_alpha_to_one_ ? 1.0 : ns_.alphas_cumprod[0];
  }
  std::string class_name() const override { return "DDIMScheduler"; }
  std::unique_ptr<Scheduler> clone() const override { return std::make_unique<DDIM>(cfg_); }

  void set_timesteps(int n, std::optional<double> mu) override {
    if (mu) throw ArgumentError("DDIMScheduler does not take mu");
    if (n < 1 || n > ns_.num_train_timesteps)
      throw ArgumentError("num_inference_steps must be in [1, " + std::to_string(ns_.num_train_timesteps) + "], got " + std::to_string(n));
    timesteps_ = spaced_timesteps(ns_.num_train_timesteps, n, spacing_, steps_offset_);
    reset_state(n);
  }

  bool is_stochastic(double eta) const override { return eta > 0; }

  void step(const float* model_output, double t, const float* sample, float* out, size_t n, size_t batch,
            const float* noise, double eta) override {
    current_index(t);
    const long long ti = static_cast<long long>(t);
    const long long prev_t = ti - ns_.num_train_timesteps / num_inference_steps_;
    const double a_t = ns_.alpha_prod(ti);
    const double a_prev = prev_t >= 0 ? ns_.alpha_prod(prev_t) : final_alpha_cumprod_;
    const double b_t = 1 - a_t;
    const double sa = std::sqrt(a_t), sb = std::sqrt(b_t);
    double std_dev = 0;
    if (eta > 0) {
      const double variance = ((1 - a_prev) / b_t) * (1 - a_t / a_prev);
      std_dev = eta * std::sqrt(variance);
      noise = noise_or_draw(noise, n);
    }
    const double c_x0 = std::sqrt(a_prev);
    const double c_dir = std::sqrt(std::max(1 - a_prev - std_dev * std_dev, 0.0));
    const bool clip = clip_sample_ && !thresholding_;
    const float lo = static_cast<float>(-clip_range_), hi = static_cast<float>(clip_range_);

    auto x0_eps = [&](size_t i, double& x0, double& eps) {
      const double m = model_output[i], x = sample[i];
      switch (prediction_) {
        case Prediction::Epsilon: x0 = (x - sb * m) / sa; eps = m; break;
        case Prediction::Sample: x0 = m; eps = (x - sa * m) / sb; break;
        default: x0 = sa * x - sb * m; eps = sa * m + sb * x; break;
      }
    };
    if (thresholding_) {
      // Needs the whole x0 first (per-sample quantile).
      x0_buf_.resize(n);
      eps_buf_.resize(n);
      for (size_t i = 0; i < n; ++i) {
        double x0, eps;
        x0_eps(i, x0, eps);
        x0_buf_[i] = static_cast<float>(x0);
        eps_buf_[i] = static_cast<float>(eps);
      }
      dynamic_threshold(x0_buf_.data(), n, batch, threshold_ratio_, sample_max_);
      for (size_t i = 0; i < n; ++i) {
        double v = c_x0 * x0_buf_[i] + c_dir * eps_buf_[i];
        if (eta > 0) v += std_dev * noise[i];
        out[i] = static_cast<float>(v);
      }
    } else {
      for (size_t i = 0; i < n; ++i) {
        double x0, eps;
        x0_eps(i, x0, eps);
        if (clip) x0 = std::min(std::max(static_cast<float>(x0), lo), hi);
        double v = c_x0 * x0 + c_dir * eps;
        if (eta > 0) v += std_dev * noise[i];
        out[i] = static_cast<float>(v);
      }
    }
    advance();
  }

  void add_noise(const float* original, const float* noise, float* out, size_t n, double t) override {
    const double a = ns_.alpha_prod(static_cast<long long>(t));
    const double s1 = std::sqrt(a), s2 = std::sqrt(1 - a);
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(s1 * original[i] + s2 * noise[i]);
  }

 private:
  NoiseSchedule ns_;
  Prediction prediction_;
  bool clip_sample_, set_alpha_to_one_, thresholding_;
  double clip_range_, threshold_ratio_, sample_max_, final_alpha_cumprod_;
  long long steps_offset_;
  std::string spacing_;
  std::vector<float> x0_buf_, eps_buf_;
};

const Registrar reg("DDIMScheduler", [](const Config& c) -> std::unique_ptr<Scheduler> { return std::make_unique<DDIM>(c); });

}  // namespace
}  // namespace fastgen

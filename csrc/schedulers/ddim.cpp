// DDIMScheduler (Song et al. 2020), as diffusers: eta, clip_sample, thresholding, zero-SNR rescale.
#include <cmath>

#include "common.h"
#include "schedulers/kernels.h"
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
    step_io(StepIO::plain(model_output), t, sample, out, n, batch, noise, eta);
  }

  bool step_io(const StepIO& io, double t, const float* sample, float* out, size_t n, size_t batch,
               const float* noise, double eta) override {
    const int idx = current_index(t);
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
    // x0 = p*sample + q*model_output and eps = r*sample + s*model_output for each prediction type.
    double p, q, r, s;
    switch (prediction_) {
      case Prediction::Epsilon: p = 1 / sa; q = -sb / sa; r = 0; s = 1; break;
      case Prediction::Sample: p = 0; q = 1; r = 1 / sb; s = -sa / sb; break;
      default: p = sa; q = -sb; r = sb; s = sa; break;
    }
    bool fed = false;
    if (!clip_sample_ && !thresholding_) {
      // prev = c_x0 * x0 + c_dir * eps (+ std_dev * noise), folded into one pass.
      const float fa = static_cast<float>(c_x0 * p + c_dir * r), fb = static_cast<float>(c_x0 * q + c_dir * s);
      const float fz = static_cast<float>(std_dev);
      const float* z = noise;
      fed = kernels::with_io(io, out, feed_scale(io, idx), [=](auto mo, auto store) {
        if (z) {
          FASTGEN_SIMD for (size_t i = 0; i < n; ++i) store(i, (fa * sample[i] + fb * mo(i)) + fz * z[i]);
        } else {
          FASTGEN_SIMD for (size_t i = 0; i < n; ++i) store(i, fa * sample[i] + fb * mo(i));
        }
      });
    } else {
      // x0 must be formed (and clipped / thresholded) before it is combined.
      const float* model_output = materialize(io, n);
      x0_buf_.resize(n);
      eps_buf_.resize(n);
      kernels::axpby(x0_buf_.data(), p, sample, q, model_output, n);
      kernels::axpby(eps_buf_.data(), r, sample, s, model_output, n);
      if (thresholding_) dynamic_threshold(x0_buf_.data(), n, batch, threshold_ratio_, sample_max_);
      else kernels::clamp(x0_buf_.data(), -clip_range_, clip_range_, n);
      kernels::axpby(out, c_x0, x0_buf_.data(), c_dir, eps_buf_.data(), n);
      if (eta > 0) kernels::add_scaled(out, std_dev, noise, n);
    }
    advance();
    return fed || feed_after(io, out, n);
  }

  void add_noise(const float* original, const float* noise, float* out, size_t n, double t) override {
    kernels::add_noise_vp(static_cast<float>(ns_.alpha_prod(static_cast<long long>(t))), original, noise, out, n);
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

// LCMScheduler (latent consistency models), as diffusers: the skipping-step schedule over
// original_inference_steps, boundary-condition scalings c_skip / c_out (timestep_scaling), fresh
// noise between steps (not after the last), clip_sample / thresholding, zero-SNR rescale.
// set_timesteps' strength is fixed at its default 1.0 (img2img uses begin_index instead).
// Arithmetic follows diffusers' float32 tensor ops one by one.
#include <cmath>

#include "common.h"
#include "schedulers/kernels.h"
#include "schedulers/scheduler.h"

namespace fastgen {
namespace {

// LCM's defaults differ from the other families' (scaled_linear, 0.00085 .. 0.012).
Config with_lcm_defaults(const Config& cfg) {
  Config c = cfg;
  if (!c.has("beta_schedule")) c.set("beta_schedule", std::string("scaled_linear"));
  if (!c.has("beta_start")) c.set("beta_start", 0.00085);
  if (!c.has("beta_end")) c.set("beta_end", 0.012);
  return c;
}

class LCM final : public Scheduler {
 public:
  explicit LCM(const Config& cfg) : Scheduler(cfg), ns_(NoiseSchedule::from_config(with_lcm_defaults(cfg))) {
    prediction_ = parse_prediction(cfg);
    original_steps_ = cfg.get_int("original_inference_steps", 50);
    if (original_steps_ < 1 || original_steps_ > ns_.num_train_timesteps)
      throw ConfigError("scheduler config 'original_inference_steps' must be in [1, " +
                        std::to_string(ns_.num_train_timesteps) + "], got " + std::to_string(original_steps_));
    clip_sample_ = cfg.get_bool("clip_sample", false);
    clip_range_ = cfg.get_double("clip_sample_range", 1.0);
    set_alpha_to_one_ = cfg.get_bool("set_alpha_to_one", true);
    thresholding_ = cfg.get_bool("thresholding", false);
    threshold_ratio_ = cfg.get_double("dynamic_thresholding_ratio", 0.995);
    if (thresholding_ && !(threshold_ratio_ >= 0 && threshold_ratio_ <= 1))
      throw ConfigError("scheduler config 'dynamic_thresholding_ratio' must be in [0, 1], got " + fmt(threshold_ratio_));
    sample_max_ = cfg.get_double("sample_max_value", 1.0);
    timestep_scaling_ = cfg.get_double("timestep_scaling", 10.0);
    // Read for validation only: LCM's schedule ignores them, as in diffusers.
    cfg.get_string("timestep_spacing", "leading", spacing_names());
    cfg.get_int("steps_offset", 0);
    final_alpha_cumprod_ = set_alpha_to_one_ ? 1.0f : static_cast<float>(ns_.alphas_cumprod[0]);
  }
  std::string class_name() const override { return "LCMScheduler"; }
  std::unique_ptr<Scheduler> clone() const override { return std::make_unique<LCM>(cfg_); }
  bool is_stochastic(double) const override { return true; }

  void set_timesteps(int n, std::optional<double> mu) override {
    if (mu) throw ArgumentError("LCMScheduler does not take mu");
    const int T = ns_.num_train_timesteps;
    if (n < 1 || n > T)
      throw ArgumentError("num_inference_steps must be in [1, " + std::to_string(T) + "], got " + std::to_string(n));
    const long long orig = original_steps_;
    if (n > orig)
      throw ArgumentError("num_inference_steps (" + std::to_string(n) + ") cannot be larger than the scheduler's "
                          "original_inference_steps (" + std::to_string(orig) + ")");
    const long long k = T / orig;
    // lcm_origin_timesteps = arange(1, orig + 1) * k - 1, reversed
    std::vector<long long> origin(static_cast<size_t>(orig));
    for (long long i = 0; i < orig; ++i) origin[static_cast<size_t>(i)] = (orig - i) * k - 1;
    const double step = static_cast<double>(orig) / n;  // np.linspace(0, orig, n, endpoint=False)
    timesteps_.clear();
    for (int i = 0; i < n; ++i) {
      long long j = static_cast<long long>(std::floor(i * step));
      j = std::min(std::max(j, 0LL), orig - 1);
      timesteps_.push_back(static_cast<double>(origin[static_cast<size_t>(j)]));
    }
    reset_state(n);
  }

  void step(const float* model_output, double t, const float* sample, float* out, size_t n, size_t batch,
            const float* noise, double eta) override {
    if (num_inference_steps_ <= 0) require_timesteps();
    const int idx = current_index(t);
    const long long ti = static_cast<long long>(t);
    const long long prev_t = idx + 1 < static_cast<int>(timesteps_.size()) ? static_cast<long long>(timesteps_[idx + 1]) : ti;
    const float a_t = alpha(ti);
    const float a_prev = prev_t >= 0 ? alpha(prev_t) : final_alpha_cumprod_;
    const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    // get_scalings_for_boundary_condition_discrete, with timestep a 0-d int64 tensor (float32 math)
    const float scaled = static_cast<float>(ti) * static_cast<float>(timestep_scaling_);
    const float sd2 = 0.25f;
    const float c_skip = sd2 / (scaled * scaled + sd2);
    const float c_out = scaled / std::sqrt(scaled * scaled + sd2);
    const float sa = std::sqrt(a_t), sb = std::sqrt(b_t);
    const bool last = idx == num_inference_steps_ - 1;
    const float s_prev = std::sqrt(a_prev), sb_prev = std::sqrt(b_prev);
    if (!last) noise = noise_or_draw(noise, n);

    auto x0_of = [&](size_t i) -> float {
      const float m = model_output[i], x = sample[i];
      switch (prediction_) {
        case Prediction::Epsilon: return (x - sb * m) / sa;
        case Prediction::Sample: return m;
        default: return sa * x - sb * m;
      }
    };
    auto finish = [&](size_t i, float x0) {
      const float denoised = c_out * x0 + c_skip * sample[i];
      out[i] = last ? denoised : s_prev * denoised + sb_prev * noise[i];
    };
    process_x0(n, batch, x0_of, finish, thresholding_, threshold_ratio_, sample_max_, clip_sample_, clip_range_, x0_buf_);
    advance();
  }

  void add_noise(const float* original, const float* noise, float* out, size_t n, double t) override {
    kernels::add_noise_vp(alpha(static_cast<long long>(t)), original, noise, out, n);
  }

 private:
  float alpha(long long t) const { return static_cast<float>(ns_.alpha_prod(t)); }

  NoiseSchedule ns_;
  Prediction prediction_;
  long long original_steps_;
  bool clip_sample_, set_alpha_to_one_, thresholding_;
  double clip_range_, threshold_ratio_, sample_max_, timestep_scaling_;
  float final_alpha_cumprod_;
  std::vector<float> x0_buf_;
};

const Registrar reg("LCMScheduler", [](const Config& c) -> std::unique_ptr<Scheduler> { return std::make_unique<LCM>(c); });

}  // namespace
}  // namespace fastgen

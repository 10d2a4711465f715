// UniPCMultistepScheduler (Zhao et al. 2023, UniPC: unified predictor-corrector), as diffusers 0.42.1:
// B(h) variants bh1 / bh2, orders 1-3, predict_x0 on / off, lower_order_final, disable_corrector,
// Karras / exponential sigmas (with sigma_min / sigma_max overrides), final_sigmas_type, thresholding,
// zero-SNR rescale.
//
// Each step first corrects the incoming sample with the UniC update (from the previous step's sample
// and model outputs plus this step's converted output), then takes the UniP predictor step from the
// corrected sample. Scalar coefficients are float32 op for op as diffusers (its B(h) / phi_k recursion
// cancels badly in float32 for small steps; we reproduce that), see multistep_common.h.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.h"
#include "schedulers/multistep_common.h"
#include "schedulers/scheduler.h"

namespace fastgen {
namespace {

using multistep::AlphaSigma;
using multistep::alpha_sigma;
using multistep::lambda_of;

class UniPCMultistep final : public multistep::SigmaTableScheduler {
 public:
  explicit UniPCMultistep(const Config& cfg) : SigmaTableScheduler(cfg), ns_(NoiseSchedule::from_config(cfg)) {
    const long long order = cfg.get_int("solver_order", 2);
    if (order < 1 || order > 3)
      throw ConfigError("scheduler config 'solver_order' must be 1, 2 or 3, got " + std::to_string(order));
    order_ = static_cast<int>(order);
    prediction_ = parse_prediction(cfg);
    predict_x0_ = cfg.get_bool("predict_x0", true);
    // diffusers maps the DPM-Solver solver types to bh2.
    const std::string st = cfg.get_string("solver_type", "bh2", {"bh1", "bh2", "midpoint", "heun", "logrho"});
    bh1_ = st == "bh1";
    lower_order_final_ = cfg.get_bool("lower_order_final", true);
    if (auto dc = cfg.get_list("disable_corrector")) disable_corrector_ = *dc;
    thresholding_ = cfg.get_bool("thresholding", false);
    threshold_ratio_ = cfg.get_double("dynamic_thresholding_ratio", 0.995);
    if (!(threshold_ratio_ >= 0 && threshold_ratio_ <= 1))
      throw ConfigError("scheduler config 'dynamic_thresholding_ratio' must be in [0, 1], got " + fmt(threshold_ratio_));
    sample_max_ = cfg.get_double("sample_max_value", 1.0);
    karras_ = cfg.get_bool("use_karras_sigmas", false);
    exponential_ = cfg.get_bool("use_exponential_sigmas", false);
    if (cfg.get_bool("use_beta_sigmas", false))
      throw ConfigError("scheduler config 'use_beta_sigmas' is not supported by fastgen's UniPCMultistepScheduler");
    if (karras_ && exponential_)
      throw ConfigError("scheduler config: only one of 'use_karras_sigmas', 'use_exponential_sigmas', "
                        "'use_beta_sigmas' can be true");
    if (cfg.get_bool("use_flow_sigmas", false))
      throw ConfigError("scheduler config 'use_flow_sigmas' is not supported by UniPCMultistepScheduler here; "
                        "use FlowMatchEulerDiscreteScheduler");
    if (cfg.get_bool("use_dynamic_shifting", false))
      throw ConfigError("scheduler config 'use_dynamic_shifting' needs flow sigmas, which are not supported");
    if (cfg.has("shift_terminal"))
      throw ConfigError("scheduler config 'shift_terminal' is only supported with use_flow_sigmas");
    if (cfg.has("solver_p"))
      throw ConfigError("scheduler config 'solver_p' (an external predictor scheduler) is not supported");
    const std::string fst = cfg.get_string("final_sigmas_type", "zero", {"zero", "sigma_min"});
    final_zero_ = fst == "zero";
    // diffusers 0.42.1 turns the final step to sigma = 0 into NaN / inf in these cases (lambda = inf there):
    // refuse them instead of returning a non-finite image.
    if (final_zero_ && !predict_x0_)
      throw ConfigError("scheduler config 'final_sigmas_type' = 'zero' with predict_x0 = false gives NaN in the "
                        "final step; use final_sigmas_type 'sigma_min'");
    if (final_zero_ && bh1_)
      throw ConfigError("scheduler config 'final_sigmas_type' = 'zero' with solver_type 'bh1' gives NaN in the "
                        "final step; use final_sigmas_type 'sigma_min' or solver_type 'bh2'");
    if (final_zero_ && !lower_order_final_ && order_ > 1)
      throw ConfigError("scheduler config 'final_sigmas_type' = 'zero' with lower_order_final = false and "
                        "solver_order > 1 gives inf in the final step; use lower_order_final = true");
    spacing_ = cfg.get_string("timestep_spacing", "linspace", spacing_names());
    steps_offset_ = cfg.get_int("steps_offset", 0);
    sigma_min_ = multistep::sigma_bound(cfg, "sigma_min");
    sigma_max_ = multistep::sigma_bound(cfg, "sigma_max");

    if (cfg.get_bool("rescale_betas_zero_snr", false)) ns_.alphas_cumprod.back() = std::ldexp(1.0, -24);
    train_sigmas_ = multistep::train_sigmas_f32(ns_.alphas_cumprod);
    log_sigmas_ = multistep::log_f32(train_sigmas_);
    hist_.resize(order_);
  }

  std::string class_name() const override { return "UniPCMultistepScheduler"; }
  std::unique_ptr<Scheduler> clone() const override { return std::make_unique<UniPCMultistep>(cfg_); }

  void set_timesteps(int n, std::optional<double> mu) override {
    if (mu) throw ArgumentError("UniPCMultistepScheduler does not take mu (dynamic shifting is not supported)");
    const int T = ns_.num_train_timesteps;
    if (n < 1 || n > T)
      throw ArgumentError("num_inference_steps must be in [1, " + std::to_string(T) + "], got " + std::to_string(n));
    std::vector<double> ts = multistep::multistep_timesteps(T, T, n, spacing_, steps_offset_);
    std::vector<double> sig;
    const double in_min = train_sigmas_.front(), in_max = train_sigmas_.back();
    double sigma_last = 0;
    if (karras_ || exponential_) {
      sig = karras_ ? karras_sigmas(sigma_min_.value_or(in_min), sigma_max_.value_or(in_max), n)
                    : multistep::exponential_sigmas(sigma_min_.value_or(in_min), sigma_max_.value_or(in_max), n);
      ts.resize(sig.size());
      for (size_t i = 0; i < sig.size(); ++i) {
        const double t = sigma_to_t(sig[i], log_sigmas_);
        ts[i] = karras_ ? round_half_even(t) : std::trunc(t);  // exponential: astype(int64) truncates
      }
      if (!final_zero_) sigma_last = sig.back();
    } else {
      sig.resize(ts.size());
      for (size_t i = 0; i < ts.size(); ++i) {  // np.interp over integer timesteps, clamped at the ends
        const double t = ts[i];
        const size_t k = t <= 0 ? 0 : t >= T - 1 ? static_cast<size_t>(T - 1) : static_cast<size_t>(t);
        sig[i] = train_sigmas_[k];
      }
      if (!final_zero_) sigma_last = in_min;
    }
    sig.push_back(sigma_last);
    sigmas_.resize(sig.size());
    for (size_t i = 0; i < sig.size(); ++i) sigmas_[i] = static_cast<float>(sig[i]);
    timesteps_ = std::move(ts);
    reset_state(static_cast<int>(timesteps_.size()));
    lower_order_nums_ = 0;
    this_order_ = 0;
    has_last_ = false;
  }

  void step(const float* model_output, double t, const float* sample, float* out, size_t n, size_t batch,
            const float*, double) override {
    start_at_head(t);
    const int idx = current_index(t);
    const int N = static_cast<int>(timesteps_.size());
    if (has_last_ && last_.size() != n)
      throw ShapeError("UniPCMultistepScheduler: the sample size changed from " + std::to_string(last_.size()) +
                       " to " + std::to_string(n) + " mid-schedule");
    for (auto* b : {&conv_, &last_, &next_last_})
      if (b->size() != n) b->assign(n, 0.0f);
    for (auto& h : hist_)
      if (h.size() != n) h.assign(n, 0.0f);

    bool use_corrector = idx > 0 && has_last_ && this_order_ > 0;
    for (double d : disable_corrector_) use_corrector = use_corrector && d != static_cast<double>(idx - 1);

    convert(model_output, sample, conv_.data(), n, batch, sigmas_[idx]);
    if (use_corrector) corrector(idx, sample, n);
    else std::copy_n(sample, n, next_last_.data());
    std::swap(last_, next_last_);
    has_last_ = true;

    std::rotate(hist_.begin(), hist_.begin() + 1, hist_.end());
    std::swap(hist_.back(), conv_);  // conv_ now holds the dropped oldest output: the next step's scratch

    int this_order = lower_order_final_ ? std::min(order_, N - idx) : order_;
    this_order = std::min(this_order, lower_order_nums_ + 1);
    this_order_ = std::max(1, std::min(this_order, idx + 1));
    predictor(idx, out, n);

    if (lower_order_nums_ < order_) ++lower_order_nums_;
    advance();
  }

 private:
  void convert(const float* m, const float* s, float* o, size_t n, size_t batch, float sigma) {
    const AlphaSigma as = alpha_sigma(sigma);
    const float at = as.alpha, st = as.sigma;
    if (predict_x0_) {
      switch (prediction_) {
        case Prediction::Epsilon: for (size_t i = 0; i < n; ++i) o[i] = (s[i] - st * m[i]) / at; break;
        case Prediction::Sample: std::copy_n(m, n, o); break;
        default: for (size_t i = 0; i < n; ++i) o[i] = at * s[i] - st * m[i]; break;
      }
      if (thresholding_) dynamic_threshold(o, n, batch, threshold_ratio_, sample_max_);
      return;
    }
    switch (prediction_) {
      case Prediction::Epsilon: std::copy_n(m, n, o); break;
      case Prediction::Sample: for (size_t i = 0; i < n; ++i) o[i] = (s[i] - at * m[i]) / st; break;
      default: for (size_t i = 0; i < n; ++i) o[i] = at * m[i] + st * s[i]; break;
    }
  }

  // The B(h) coefficients shared by predictor and corrector for one step from sigma index s0 to t.
  struct Coeffs {
    float cx, cm, cr;  // x_t = cx * x - cm * m0 - cr * (residual)
    float rk[3];       // rks (last = 1)
    float R[3][3], b[3];
    float hh, Bh;
  };
  Coeffs coeffs(int t_idx, int s0_idx, const int* si_idx, int order) const {
    Coeffs c{};
    const AlphaSigma at = alpha_sigma(sigmas_[t_idx]), as0 = alpha_sigma(sigmas_[s0_idx]);
    const float lt = lambda_of(at), ls0 = lambda_of(as0);
    const float h = lt - ls0;
    for (int i = 1; i < order; ++i) {
      const float lsi = lambda_of(alpha_sigma(sigmas_[si_idx[i - 1]]));
      c.rk[i - 1] = (lsi - ls0) / h;
    }
    c.rk[order - 1] = 1.0f;
    const float hh = predict_x0_ ? -h : h;
    const float h_phi_1 = std::expm1(hh);
    float h_phi_k = h_phi_1 / hh - 1.0f;
    long long factorial = 1;
    const float Bh = bh1_ ? hh : std::expm1(hh);
    for (int i = 1; i <= order; ++i) {
      for (int k = 0; k < order; ++k) {
        const float r = c.rk[k];
        c.R[i - 1][k] = i == 1 ? 1.0f : i == 2 ? r : r * r;
      }
      c.b[i - 1] = h_phi_k * static_cast<float>(factorial) / Bh;
      factorial *= i + 1;
      h_phi_k = h_phi_k / hh - static_cast<float>(1.0 / static_cast<double>(factorial));
    }
    if (predict_x0_) {
      c.cx = at.sigma / as0.sigma;
      c.cm = at.alpha * h_phi_1;
      c.cr = at.alpha * Bh;
    } else {
      c.cx = at.alpha / as0.alpha;
      c.cm = at.sigma * h_phi_1;
      c.cr = at.sigma * Bh;
    }
    c.hh = hh;
    c.Bh = Bh;
    return c;
  }

  // UniP: out = x_{t_{idx+1}} from the corrected sample last_ and the history (hist_.back() = this step).
  // A zero-length step (equal sigmas, e.g. Karras + final_sigmas_type 'sigma_min' at the end) makes the
  // higher-order terms 0/0 in diffusers (NaN at order 3); the step is the identity, as order 1 computes.
  bool zero_length(int a, int b) const {
    return lambda_of(alpha_sigma(sigmas_[a])) == lambda_of(alpha_sigma(sigmas_[b]));
  }

  void predictor(int idx, float* out, size_t n) {
    const int order = zero_length(idx + 1, idx) ? 1 : this_order_;
    int si[2] = {idx - 1, idx - 2};
    const Coeffs c = coeffs(idx + 1, idx, si, order);
    const float* x = last_.data();
    const float* m0 = hist_[order_ - 1].data();
    float rhos[2] = {0.5f, 0.0f};
    if (order == 3) {
      float A[3][3] = {{c.R[0][0], c.R[0][1], 0}, {c.R[1][0], c.R[1][1], 0}, {0, 0, 0}};
      float bb[3] = {c.b[0], c.b[1], 0};
      float sol[3];
      multistep::solve_f32(2, A, bb, sol);
      rhos[0] = sol[0];
      rhos[1] = sol[1];
    }
    if (order == 1) {
      const float tail = c.cr * 0.0f;  // diffusers: alpha_t * B_h * 0
      for (size_t i = 0; i < n; ++i) out[i] = (c.cx * x[i] - c.cm * m0[i]) - tail;
    } else if (order == 2) {
      const float* m1 = hist_[order_ - 2].data();
      const float r1 = c.rk[0];
      for (size_t i = 0; i < n; ++i) {
        const float res = rhos[0] * ((m1[i] - m0[i]) / r1);
        out[i] = (c.cx * x[i] - c.cm * m0[i]) - c.cr * res;
      }
    } else {
      const float* m1 = hist_[order_ - 2].data();
      const float* m2 = hist_[order_ - 3].data();
      const float r1 = c.rk[0], r2 = c.rk[1];
      for (size_t i = 0; i < n; ++i) {
        const float res = rhos[0] * ((m1[i] - m0[i]) / r1) + rhos[1] * ((m2[i] - m0[i]) / r2);
        out[i] = (c.cx * x[i] - c.cm * m0[i]) - c.cr * res;
      }
    }
  }

  // UniC: next_last_ = corrected sample at idx from last_ (the sample at idx - 1), the history (hist_.back()
  // is the output at idx - 1) and this step's converted output conv_.
  void corrector(int idx, const float*, size_t n) {
    // The previous step's order (never reaching before the schedule).
    const int order = zero_length(idx, idx - 1) ? 1 : std::min(this_order_, idx);
    int si[2] = {idx - 2, idx - 3};
    const Coeffs c = coeffs(idx, idx - 1, si, order);
    const float* x = last_.data();
    const float* m0 = hist_[order_ - 1].data();
    const float* mt = conv_.data();
    float* o = next_last_.data();
    float rhos[3] = {0.5f, 0, 0};
    if (order > 1) {
      float A[3][3], bb[3];
      for (int i = 0; i < 3; ++i) {
        bb[i] = c.b[i];
        for (int j = 0; j < 3; ++j) A[i][j] = c.R[i][j];
      }
      multistep::solve_f32(order, A, bb, rhos);
    }
    const float rlast = rhos[order - 1];
    if (order == 1) {
      for (size_t i = 0; i < n; ++i) o[i] = (c.cx * x[i] - c.cm * m0[i]) - c.cr * (rlast * (mt[i] - m0[i]));
    } else if (order == 2) {
      const float* m1 = hist_[order_ - 2].data();
      const float r1 = c.rk[0];
      for (size_t i = 0; i < n; ++i) {
        const float corr = rhos[0] * ((m1[i] - m0[i]) / r1);
        o[i] = (c.cx * x[i] - c.cm * m0[i]) - c.cr * (corr + rlast * (mt[i] - m0[i]));
      }
    } else {
      const float* m1 = hist_[order_ - 2].data();
      const float* m2 = hist_[order_ - 3].data();
      const float r1 = c.rk[0], r2 = c.rk[1];
      for (size_t i = 0; i < n; ++i) {
        const float corr = rhos[0] * ((m1[i] - m0[i]) / r1) + rhos[1] * ((m2[i] - m0[i]) / r2);
        o[i] = (c.cx * x[i] - c.cm * m0[i]) - c.cr * (corr + rlast * (mt[i] - m0[i]));
      }
    }
  }

  NoiseSchedule ns_;
  int order_;
  Prediction prediction_;
  bool predict_x0_, bh1_, lower_order_final_, thresholding_, karras_, exponential_, final_zero_;
  double threshold_ratio_, sample_max_;
  std::vector<double> disable_corrector_;
  std::optional<double> sigma_min_, sigma_max_;
  std::string spacing_;
  long long steps_offset_;
  std::vector<double> train_sigmas_, log_sigmas_;
  std::vector<std::vector<float>> hist_;  // converted model outputs, oldest first
  std::vector<float> conv_, last_, next_last_;
  int lower_order_nums_ = 0, this_order_ = 0;
  bool has_last_ = false;
};

const Registrar reg("UniPCMultistepScheduler",
                    [](const Config& c) -> std::unique_ptr<Scheduler> { return std::make_unique<UniPCMultistep>(c); });

}  // namespace
}  // namespace fastgen

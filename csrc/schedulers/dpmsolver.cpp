// DPMSolverMultistepScheduler (Lu et al. 2022, DPM-Solver / DPM-Solver++), as diffusers 0.42.1:
// algorithm_type dpmsolver++ / dpmsolver / sde-dpmsolver++ / sde-dpmsolver, solver_order 1-3,
// midpoint / heun, lower_order_final, euler_at_final, Karras / exponential sigmas, uniform-lambda
// (use_lu_lambdas) steps, final_sigmas_type, lambda_min_clipped, thresholding, zero-SNR rescale.
//
// Scalar coefficients are float32, op for op as diffusers computes them (see multistep_common.h);
// element-wise updates are float32 expressions in diffusers' operation order.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "common.h"
#include "schedulers/kernels.h"
#include "schedulers/multistep_common.h"
#include "schedulers/scheduler.h"

namespace fastgen {
namespace {

using multistep::AlphaSigma;
using multistep::alpha_sigma;
using multistep::lambda_of;

enum class Algo { DPMpp, DPM, SDEpp, SDE };

class DPMSolverMultistep final : public multistep::SigmaTableScheduler {
 public:
  explicit DPMSolverMultistep(const Config& cfg) : SigmaTableScheduler(cfg), ns_(NoiseSchedule::from_config(cfg)) {
    const long long order = cfg.get_int("solver_order", 2);
    if (order < 1 || order > 3)
      throw ConfigError("scheduler config 'solver_order' must be 1, 2 or 3, got " + std::to_string(order));
    order_ = static_cast<int>(order);
    prediction_ = parse_prediction(cfg);  // flow_prediction needs use_flow_sigmas: not supported
    // diffusers maps the DEIS algorithm name to dpmsolver++ and UniPC / logrho solver types to midpoint.
    const std::string algo = cfg.get_string("algorithm_type", "dpmsolver++",
                                            {"dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver", "deis"});
    algo_ = algo == "dpmsolver" ? Algo::DPM : algo == "sde-dpmsolver++" ? Algo::SDEpp
            : algo == "sde-dpmsolver" ? Algo::SDE : Algo::DPMpp;
    const std::string st = cfg.get_string("solver_type", "midpoint", {"midpoint", "heun", "logrho", "bh1", "bh2"});
    heun_ = st == "heun";
    lower_order_final_ = cfg.get_bool("lower_order_final", true);
    euler_at_final_ = cfg.get_bool("euler_at_final", false);
    thresholding_ = cfg.get_bool("thresholding", false);
    threshold_ratio_ = cfg.get_double("dynamic_thresholding_ratio", 0.995);
    if (!(threshold_ratio_ >= 0 && threshold_ratio_ <= 1))
      throw ConfigError("scheduler config 'dynamic_thresholding_ratio' must be in [0, 1], got " + fmt(threshold_ratio_));
    sample_max_ = cfg.get_double("sample_max_value", 1.0);
    karras_ = cfg.get_bool("use_karras_sigmas", false);
    exponential_ = cfg.get_bool("use_exponential_sigmas", false);
    lu_ = cfg.get_bool("use_lu_lambdas", false);
    if (cfg.get_bool("use_beta_sigmas", false))
      throw ConfigError("scheduler config 'use_beta_sigmas' is not supported by fastgen's DPMSolverMultistepScheduler");
    if (karras_ + exponential_ + cfg.get_bool("use_beta_sigmas", false) > 1)
      throw ConfigError("scheduler config: only one of 'use_karras_sigmas', 'use_exponential_sigmas', "
                        "'use_beta_sigmas' can be true");
    if (cfg.get_bool("use_flow_sigmas", false))
      throw ConfigError("scheduler config 'use_flow_sigmas' is not supported by DPMSolverMultistepScheduler here; "
                        "use FlowMatchEulerDiscreteScheduler");
    if (cfg.get_bool("use_dynamic_shifting", false))
      throw ConfigError("scheduler config 'use_dynamic_shifting' needs flow sigmas, which are not supported");
    if (auto vt = cfg.get_optional_string("variance_type", {}))
      throw ConfigError("scheduler config 'variance_type' = '" + *vt + "' is not supported (learned variance "
                        "outputs have twice the sample's channels); use null");
    const std::string fst = cfg.get_string("final_sigmas_type", "zero", {"zero", "sigma_min"});
    final_zero_ = fst == "zero";
    if (final_zero_ && algo != "dpmsolver++" && algo != "sde-dpmsolver++")  // diffusers checks the given name
      throw ConfigError("scheduler config 'final_sigmas_type' = 'zero' is not supported for algorithm_type '" + algo +
                        "'; use 'sigma_min'");
    if (algo_ == Algo::SDE && order_ == 3)
      throw ConfigError("scheduler config 'solver_order' = 3 is not implemented for algorithm_type 'sde-dpmsolver' "
                        "(diffusers fails there too); use 1 or 2");
    spacing_ = cfg.get_string("timestep_spacing", "linspace", spacing_names());
    steps_offset_ = cfg.get_int("steps_offset", 0);
    squaredcos_ = cfg.get_string("beta_schedule", "linear", {}) == "squaredcos_cap_v2";
    lambda_min_clipped_ = read_lambda_min_clipped(cfg);
    sigma_min_ = multistep::sigma_bound(cfg, "sigma_min");
    sigma_max_ = multistep::sigma_bound(cfg, "sigma_max");

    if (cfg.get_bool("rescale_betas_zero_snr", false)) ns_.alphas_cumprod.back() = std::ldexp(1.0, -24);
    train_sigmas_ = multistep::train_sigmas_f32(ns_.alphas_cumprod);
    log_sigmas_ = multistep::log_f32(train_sigmas_);
    hist_ = History(order_);
  }

  std::string class_name() const override { return "DPMSolverMultistepScheduler"; }
  std::unique_ptr<Scheduler> clone() const override { return std::make_unique<DPMSolverMultistep>(cfg_); }
  bool is_stochastic(double) const override { return algo_ == Algo::SDE || algo_ == Algo::SDEpp; }

  void set_timesteps(int n, std::optional<double> mu) override {
    if (mu) throw ArgumentError("DPMSolverMultistepScheduler does not take mu (dynamic shifting is not supported)");
    const int T = ns_.num_train_timesteps;
    if (n < 1 || n > T)
      throw ArgumentError("num_inference_steps must be in [1, " + std::to_string(T) + "], got " + std::to_string(n));

    // torch.searchsorted(flip(lambda_t), lambda_min_clipped): lambdas below the clip drop the last timesteps.
    long long clipped = 0;
    if (lambda_min_clipped_ > -std::numeric_limits<double>::infinity()) {
      const float clip = static_cast<float>(lambda_min_clipped_);
      long long lo = 0, hi = T;
      while (lo < hi) {
        const long long mid = lo + ((hi - lo) >> 1);
        const float ac = static_cast<float>(ns_.alphas_cumprod[static_cast<size_t>(T - 1 - mid)]);
        const float lam = std::log(std::sqrt(ac)) - std::log(std::sqrt(1.0f - ac));
        if (!(clip <= lam)) lo = mid + 1;
        else hi = mid;
      }
      clipped = lo;
    }
    const long long last = T - clipped;
    if (last < 1)
      throw ConfigError("scheduler config 'lambda_min_clipped' = " + fmt(lambda_min_clipped_) +
                        " clips every training timestep");

    std::vector<double> ts = multistep::multistep_timesteps(T, last, n, spacing_, steps_offset_);
    std::vector<double> sig;
    const double in_min = train_sigmas_.front(), in_max = train_sigmas_.back();
    auto to_t = [&](const std::vector<double>& sigmas, bool round) {
      std::vector<double> out(sigmas.size());
      for (size_t i = 0; i < sigmas.size(); ++i) {
        const double t = sigma_to_t(sigmas[i], log_sigmas_);
        out[i] = round ? round_half_even(t) : std::trunc(t);  // unrounded: astype(int64) truncates
      }
      return out;
    };
    if (karras_) {
      sig = karras_sigmas(sigma_min_.value_or(in_min), sigma_max_.value_or(in_max), n);
      ts = to_t(sig, !squaredcos_);
    } else if (lu_) {
      const double lmin = log_sigmas_.front(), lmax = log_sigmas_.back();
      auto ramp = linspace(0, 1, n);
      sig.resize(n);
      for (int i = 0; i < n; ++i) sig[i] = std::exp(lmax + ramp[i] * (lmin - lmax));
      ts = to_t(sig, !squaredcos_);
    } else if (exponential_) {
      sig = multistep::exponential_sigmas(sigma_min_.value_or(in_min), sigma_max_.value_or(in_max), n);
      ts = to_t(sig, false);
    } else {
      sig.resize(ts.size());
      for (size_t i = 0; i < ts.size(); ++i) {  // np.interp over integer timesteps, clamped at the ends
        const double t = ts[i];
        const size_t k = t <= 0 ? 0 : t >= T - 1 ? static_cast<size_t>(T - 1) : static_cast<size_t>(t);
        sig[i] = train_sigmas_[k];
      }
    }
    sig.push_back(final_zero_ ? 0.0 : in_min);
    sigmas_.resize(sig.size());
    for (size_t i = 0; i < sig.size(); ++i) sigmas_[i] = static_cast<float>(sig[i]);
    timesteps_ = std::move(ts);
    reset_state(static_cast<int>(timesteps_.size()));
    lower_order_nums_ = 0;
  }

  void step(const float* model_output, double t, const float* sample, float* out, size_t n, size_t batch,
            const float* noise, double eta) override {
    step_io(StepIO::plain(model_output), t, sample, out, n, batch, noise, eta);
  }

  bool step_io(const StepIO& io, double t, const float* sample, float* out, size_t n, size_t batch,
               const float* noise, double) override {
    start_at_head(t);
    const int idx = current_index(t);
    const int N = static_cast<int>(timesteps_.size());
    if (lower_order_nums_ > 0 && hist_.size() != n)
      throw ShapeError("DPMSolverMultistepScheduler: the sample size changed from " + std::to_string(hist_.size()) +
                       " to " + std::to_string(n) + " mid-schedule");
    hist_.ensure(n, sample, lower_order_nums_ == 0);

    const bool lower_final = idx == N - 1 && (euler_at_final_ || (lower_order_final_ && N < 15) || final_zero_);
    const bool lower_second = idx == N - 2 && lower_order_final_ && N < 15;

    // Shift the history; the oldest buffer receives this step's converted output.
    hist_.rotate();
    float* m0 = hist_.newest();

    int use = 3;
    if (order_ == 1 || lower_order_nums_ < 1 || lower_final) use = 1;
    else if (order_ == 2 || lower_order_nums_ < 2 || lower_second) use = 2;
    use = std::min(use, idx + 1);  // never index before the schedule (cannot happen with diffusers' counters)
    // A zero-length step (sigma_{i+1} == sigma_i: Karras + final_sigmas_type 'sigma_min' ends on one) makes
    // diffusers' higher-order ratios 0/0 (NaN for heun and order 3); the step is the identity, which is
    // what the first-order update (and diffusers' midpoint order 2) computes there.
    if (use > 1 && point(idx + 1).lambda == point(idx).lambda) use = 1;

    const bool sde = algo_ == Algo::SDE || algo_ == Algo::SDEpp;
    const float* z = sde ? noise_or_draw(noise, n) : nullptr;
    const Coefs k = coefficients(idx, use);
    const float* m1 = use > 1 ? hist_[order_ - 2] : nullptr;
    const float* m2 = use > 2 ? hist_[order_ - 3] : nullptr;
    const auto scale = feed_scale(io, idx);
    bool fed;
    if (thresholding_) {
      // Thresholding needs the whole converted output first: convert into m0, then update from it.
      convert(materialize(io, n), sample, m0, n, batch, sigmas_[idx]);
      const StepIO conv = with_output(io, m0);
      fed = kernels::with_io(conv, out, scale, [=](auto mo, auto store) {
        update(use, k, sample, [=](size_t i, float) { return mo(i); }, m1, m2, z, store, n);
      });
    } else {
      // convert_model_output and the update in one pass; m0 is stored for the next steps.
      const Converter cv = converter(sigmas_[idx]);
      fed = kernels::with_io(io, out, scale, [=](auto mo, auto store) {
        update(use, k, sample, [=](size_t i, float xi) { const float v = cv(mo(i), xi); m0[i] = v; return v; },
               m1, m2, z, store, n);
      });
    }
    if (lower_order_nums_ < order_) ++lower_order_nums_;
    advance();
    return fed;
  }

 private:
  static double read_lambda_min_clipped(const Config& cfg) {
    // -inf (the default) arrives as a float that Config's finite-checking accessor would reject.
    auto it = cfg.values().find("lambda_min_clipped");
    if (it != cfg.values().end()) {
      if (auto d = std::get_if<double>(&it->second)) {
        if (std::isnan(*d) || *d == std::numeric_limits<double>::infinity())
          throw ConfigError("scheduler config 'lambda_min_clipped' must be a number or -inf, got " + fmt(*d));
        return *d;
      }
    }
    return cfg.get_double("lambda_min_clipped", -std::numeric_limits<double>::infinity());
  }

  static StepIO with_output(const StepIO& io, const float* m) {
    StepIO r = io;
    r.model_output = m;
    r.uncond = r.cond = nullptr;
    return r;
  }

  // convert_model_output for one element, (a * sample - b * model_output) * c: x0 for the ++ family,
  // epsilon otherwise, in diffusers' float32 arithmetic (its divisions as reciprocal multiplications).
  struct Converter {
    float a, b, c;
    float operator()(float m, float s) const { return (a * s - b * m) * c; }
  };
  Converter converter(float sigma) const {
    const AlphaSigma as = alpha_sigma(sigma);
    const float at = as.alpha, st = as.sigma;
    if (algo_ == Algo::DPMpp || algo_ == Algo::SDEpp) {
      switch (prediction_) {
        case Prediction::Epsilon: return {1.0f, st, 1.0f / at};  // (s - st * m) / at
        case Prediction::Sample: return {0.0f, -1.0f, 1.0f};     // m
        default: return {at, st, 1.0f};                          // at * s - st * m
      }
    }
    switch (prediction_) {
      case Prediction::Epsilon: return {0.0f, -1.0f, 1.0f};     // m
      case Prediction::Sample: return {1.0f, at, 1.0f / st};    // (s - at * m) / st
      default: return {st, -at, 1.0f};                         // at * m + st * s
    }
  }

  // The whole converted output (thresholded when configured).
  void convert(const float* m, const float* s, float* o, size_t n, size_t batch, float sigma) const {
    const Converter cv = converter(sigma);
    for (size_t i = 0; i < n; ++i) o[i] = cv(m[i], s[i]);
    if (!thresholding_) return;
    if (algo_ == Algo::DPMpp || algo_ == Algo::SDEpp) {
      dynamic_threshold(o, n, batch, threshold_ratio_, sample_max_);
      return;
    }
    const AlphaSigma as = alpha_sigma(sigma);
    const float at = as.alpha, st = as.sigma;
    for (size_t i = 0; i < n; ++i) o[i] = (s[i] - st * o[i]) / at;
    dynamic_threshold(o, n, batch, threshold_ratio_, sample_max_);
    for (size_t i = 0; i < n; ++i) o[i] = (s[i] - at * o[i]) / st;
  }

  struct Point {
    float alpha, sigma, lambda;
  };
  Point point(int i) const {
    const AlphaSigma as = alpha_sigma(sigmas_[static_cast<size_t>(i)]);
    return {as.alpha, as.sigma, lambda_of(as)};
  }

  // The update of every algorithm and order, with diffusers' signs folded into the coefficients:
  //   order 1: a*x + b*D0
  //   order 2: a*x + b*D0 + c*(k1*(D0 - D1))                         (D1 = k1 * (m0 - m1))
  //   order 3: a*x + b*D0 + c*D1 + d*D2                              (D1, D2 from m0, m1, m2)
  // each + e*noise for the SDE variants (x - y == x + (-y) exactly, so folding keeps the float32 values).
  struct Coefs {
    float a = 0, b = 0, c = 0, d = 0, e = 0, k0 = 0, k1 = 0, kd1 = 0, kd2 = 0;
  };
  Coefs coefficients(int idx, int use) const {
    const Point t = point(idx + 1), s0 = point(idx);
    const float h = t.lambda - s0.lambda;
    Coefs k;
    // The first-order part a*x + b*D0 (+ e*noise) is the same for every order.
    switch (algo_) {
      case Algo::DPMpp: k.a = t.sigma / s0.sigma; k.b = -(t.alpha * (std::exp(-h) - 1.0f)); break;
      case Algo::DPM: k.a = t.alpha / s0.alpha; k.b = -(t.sigma * (std::exp(h) - 1.0f)); break;
      case Algo::SDEpp:
        k.a = t.sigma / s0.sigma * std::exp(-h);
        k.b = t.alpha * (1.0f - std::exp(-2.0f * h));
        k.e = t.sigma * std::sqrt(1.0f - std::exp(-2.0f * h));
        break;
      case Algo::SDE:
        k.a = t.alpha / s0.alpha;
        k.b = -(2.0f * (t.sigma * (std::exp(h) - 1.0f)));
        k.e = t.sigma * std::sqrt(std::exp(2.0f * h) - 1.0f);
        break;
    }
    if (use == 1) return k;
    const Point s1 = point(idx - 1);
    const float h0 = s0.lambda - s1.lambda;
    const float r0 = h0 / h;
    if (use == 2) {
      k.k1 = 1.0f / r0;  // D1 = (1 / r0) * (m0 - m1)
      switch (algo_) {
        case Algo::DPMpp:
          k.c = heun_ ? t.alpha * ((std::exp(-h) - 1.0f) / h + 1.0f) : -(0.5f * (t.alpha * (std::exp(-h) - 1.0f)));
          break;
        case Algo::DPM:
          k.c = -(heun_ ? t.sigma * ((std::exp(h) - 1.0f) / h - 1.0f) : 0.5f * (t.sigma * (std::exp(h) - 1.0f)));
          break;
        case Algo::SDEpp:
          k.c = heun_ ? t.alpha * ((1.0f - std::exp(-2.0f * h)) / (-2.0f * h) + 1.0f)
                      : 0.5f * (t.alpha * (1.0f - std::exp(-2.0f * h)));
          break;
        case Algo::SDE:
          k.c = -(heun_ ? 2.0f * (t.sigma * ((std::exp(h) - 1.0f) / h - 1.0f)) : t.sigma * (std::exp(h) - 1.0f));
          break;
      }
      return k;
    }
    const Point s2 = point(idx - 2);
    const float h1 = s1.lambda - s2.lambda;
    const float r1 = h1 / h;
    k.k0 = 1.0f / r0;
    k.k1 = 1.0f / r1;
    k.kd1 = r0 / (r0 + r1);
    k.kd2 = 1.0f / (r0 + r1);
    switch (algo_) {
      case Algo::DPMpp:
        k.c = t.alpha * ((std::exp(-h) - 1.0f) / h + 1.0f);
        k.d = -(t.alpha * ((std::exp(-h) - 1.0f + h) / (h * h) - 0.5f));
        break;
      case Algo::DPM:
        k.c = -(t.sigma * ((std::exp(h) - 1.0f) / h - 1.0f));
        k.d = -(t.sigma * ((std::exp(h) - 1.0f - h) / (h * h) - 0.5f));
        break;
      default: {  // SDEpp (SDE order 3 is rejected at construction)
        k.c = t.alpha * ((1.0f - std::exp(-2.0f * h)) / (-2.0f * h) + 1.0f);
        const float h2 = 2.0f * h;
        k.d = t.alpha * ((1.0f - std::exp(-2.0f * h) - 2.0f * h) / (h2 * h2) - 0.5f);
        break;
      }
    }
    return k;
  }

  // One pass of the update: m0_of(i, x_i) yields this step's converted output (reading it, or converting
  // and storing it), store(i, v) writes the result.
  template <class M0, class Store>
  static void update(int use, const Coefs k, const float* x, M0&& m0_of, const float* m1, const float* m2,
                     const float* z, Store&& store, size_t n) {
    if (use == 1) {
      auto v = [=](size_t i) {
        const float xi = x[i];
        return k.a * xi + k.b * m0_of(i, xi);
      };
      run(v, z, k.e, store, n);
    } else if (use == 2) {
      auto v = [=](size_t i) {
        const float xi = x[i], m = m0_of(i, xi);
        return (k.a * xi + k.b * m) + k.c * (k.k1 * (m - m1[i]));
      };
      run(v, z, k.e, store, n);
    } else {
      auto v = [=](size_t i) {
        const float xi = x[i], m = m0_of(i, xi);
        const float d10 = k.k0 * (m - m1[i]), d11 = k.k1 * (m1[i] - m2[i]);
        const float D1 = d10 + k.kd1 * (d10 - d11);
        const float D2 = k.kd2 * (d10 - d11);
        return ((k.a * xi + k.b * m) + k.c * D1) + k.d * D2;
      };
      run(v, z, k.e, store, n);
    }
  }
  // store(i, v(i) [+ e * z[i]]) for every i.
  template <class V, class Store>
  static void run(const V& v, const float* z, float e, const Store& store, size_t n) {
    if (z) {
      FASTGEN_SIMD for (size_t i = 0; i < n; ++i) store(i, v(i) + e * z[i]);
    } else {
      FASTGEN_SIMD for (size_t i = 0; i < n; ++i) store(i, v(i));
    }
  }

  NoiseSchedule ns_;
  int order_;
  Prediction prediction_;
  Algo algo_;
  bool heun_, lower_order_final_, euler_at_final_, thresholding_, karras_, exponential_, lu_, final_zero_,
      squaredcos_;
  double threshold_ratio_, sample_max_, lambda_min_clipped_;
  std::optional<double> sigma_min_, sigma_max_;
  std::string spacing_;
  long long steps_offset_;
  std::vector<double> train_sigmas_, log_sigmas_;
  History hist_;  // converted model outputs, oldest first
  int lower_order_nums_ = 0;
};

const Registrar reg("DPMSolverMultistepScheduler",
                    [](const Config& c) -> std::unique_ptr<Scheduler> { return std::make_unique<DPMSolverMultistep>(c); });

}  // namespace
}  // namespace fastgen

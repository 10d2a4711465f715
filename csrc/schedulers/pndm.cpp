// PNDMScheduler (Liu et al. 2022), as diffusers: Runge-Kutta warm-up (PRK, 12 evaluations over the
// last 4 timesteps) or, with skip_prk_steps (Stable Diffusion 1.x), PLMS from the start with the
// duplicated second timestep. State is counter based, as in diffusers: the counter is the number of
// steps taken since set_timesteps (or since the begin index), not looked up from t.
//
// Arithmetic follows diffusers' float32 tensor ops one by one (coefficients in float32 0-d tensors).
#include <cmath>
#include <cstring>

#include "common.h"
#include "schedulers/history.h"
#include "schedulers/kernels.h"
#include "schedulers/scheduler.h"

namespace fastgen {
namespace {

class PNDM final : public Scheduler {
 public:
  explicit PNDM(const Config& cfg) : Scheduler(cfg), ns_(NoiseSchedule::from_config(cfg, /*allow_zero_snr=*/false)) {
    skip_prk_ = cfg.get_bool("skip_prk_steps", false);
    set_alpha_to_one_ = cfg.get_bool("set_alpha_to_one", false);
    v_pred_ = cfg.get_string("prediction_type", "epsilon", {"epsilon", "v_prediction"}) == "v_prediction";
    spacing_ = cfg.get_string("timestep_spacing", "leading", spacing_names());
    steps_offset_ = cfg.get_int("steps_offset", 0);
    final_alpha_cumprod_ = set_alpha_to_one_ ? 1.0f : static_cast<float>(ns_.alphas_cumprod[0]);
  }
  std::string class_name() const override { return "PNDMScheduler"; }
  std::unique_ptr<Scheduler> clone() const override { return std::make_unique<PNDM>(cfg_); }

  void set_timesteps(int n, std::optional<double> mu) override {
    if (mu) throw ArgumentError("PNDMScheduler does not take mu");
    const int T = ns_.num_train_timesteps;
    if (n < 1 || n > T)
      throw ArgumentError("num_inference_steps must be in [1, " + std::to_string(T) + "], got " + std::to_string(n));
    if (!skip_prk_ && n < 4)
      throw ArgumentError("PNDMScheduler with PRK steps (skip_prk_steps=False) needs num_inference_steps >= 4, got " +
                          std::to_string(n));
    // diffusers' _timesteps, ascending.
    auto desc = spaced_timesteps(T, n, spacing_, steps_offset_);
    std::vector<double> a(desc.rbegin(), desc.rend());
    const size_t m = a.size();
    std::vector<double> ts;
    num_prk_ = 0;
    if (skip_prk_) {
      // concat(a[:-1], a[-2:-1], a[-1:])[::-1]
      std::vector<double> fwd(a.begin(), a.end() - 1);
      if (m >= 2) fwd.push_back(a[m - 2]);
      fwd.push_back(a[m - 1]);
      ts.assign(fwd.rbegin(), fwd.rend());
    } else {
      const double h = static_cast<double>(T / n / 2);
      std::vector<double> x;  // a[-4:].repeat(2) + tile([0, h], 4)
      for (size_t j = m - 4; j < m; ++j) {
        x.push_back(a[j]);
        x.push_back(a[j] + h);
      }
      x.pop_back();  // [:-1]
      std::vector<double> r;  // .repeat(2)[1:-1]
      for (double v : x) {
        r.push_back(v);
        r.push_back(v);
      }
      std::vector<double> prk(r.begin() + 1, r.end() - 1);
      ts.assign(prk.rbegin(), prk.rend());
      num_prk_ = static_cast<int>(ts.size());
      for (size_t j = m - 3; j-- > 0;) ts.push_back(a[j]);  // a[:-3][::-1]
    }
    timesteps_ = ts;
    reset_state(n);
    counter_ = 0;
    ets_count_ = 0;
    cur_model_output_.clear();
    cur_sample_.clear();
    have_cur_sample_ = false;
  }

  void step(const float* model_output, double t, const float* sample, float* out, size_t n, size_t batch,
            const float* noise, double eta) override {
    const bool first = step_index_ < 0;
    current_index(t);
    if (first && !skip_prk_ && step_index_ > 0)
      throw ScheduleError("PNDMScheduler with PRK steps must start at the first timestep; set skip_prk_steps=True "
                          "to start mid-schedule (img2img)");
    if (counter_ < num_prk_) step_prk(model_output, t, sample, out, n);
    else step_plms(model_output, t, sample, out, n);
    ++counter_;
    advance();
  }

  // The steady PLMS step (three earlier epsilons in the history, as in all but the first steps of SD
  // 1.x's default schedule) in one pass: guidance, the 4-step Adams-Bashforth combination, the update
  // and the next model input. Other steps take the buffered path.
  bool step_io(const StepIO& io, double t, const float* sample, float* out, size_t n, size_t batch,
               const float* noise, double eta) override {
    if (counter_ < num_prk_ || counter_ == 1 || ets_count_ < 3 || step_index_ < 0 || ets_.size() != n)
      return Scheduler::step_io(io, t, sample, out, n, batch, noise, eta);
    const int idx = current_index(t);
    const long long ti = static_cast<long long>(t);
    const Update u = update_coefficients(ti, ti - ratio());
    ets_.rotate();  // the oldest epsilon's buffer receives this step's
    ets_count_ = 4;
    float* e0 = ets_.newest();
    const float *p1 = ets_[2], *p2 = ets_[1], *p3 = ets_[0];
    const float c = static_cast<float>(1.0 / 24);
    const bool v_pred = v_pred_;
    const bool fed = kernels::with_io(io, out, feed_scale(io, idx), [=](auto mo, auto store) {
      FASTGEN_SIMD for (size_t i = 0; i < n; ++i) {
        const float m = mo(i);
        e0[i] = m;
        const float x = sample[i];
        float e = c * (55.0f * m - 59.0f * p1[i] + 37.0f * p2[i] - 9.0f * p3[i]);
        if (v_pred) e = u.sa * e + u.sb * x;
        store(i, u.sample_coeff * x - (u.diff * e) / u.denom);
      }
    });
    ++counter_;
    advance();
    return fed;
  }

  void add_noise(const float* original, const float* noise, float* out, size_t n, double t) override {
    kernels::add_noise_vp(alpha(static_cast<long long>(t)), original, noise, out, n);
  }

 private:
  float alpha(long long t) const {
    if (t < 0 || t >= static_cast<long long>(ns_.alphas_cumprod.size()))
      throw ScheduleError("PNDMScheduler: timestep " + std::to_string(t) + " is outside [0, " +
                          std::to_string(ns_.alphas_cumprod.size()) + ")");
    return static_cast<float>(ns_.alphas_cumprod[static_cast<size_t>(t)]);
  }
  int ratio() const { return ns_.num_train_timesteps / num_inference_steps_; }

  void step_prk(const float* mo, double t, const float* sample, float* out, size_t n) {
    const long long ti = static_cast<long long>(t);
    const long long diff_to_prev = counter_ % 2 ? 0 : ratio() / 2;
    const long long prev_t = ti - diff_to_prev;
    const long long cur_t = static_cast<long long>(timesteps_[counter_ / 4 * 4]);
    const float sixth = static_cast<float>(1.0 / 6), third = static_cast<float>(1.0 / 3);
    const float* eff = mo;
    if (counter_ % 4 == 0) {
      cur_model_output_.resize(n);
      for (size_t i = 0; i < n; ++i) cur_model_output_[i] = sixth * mo[i];  // 0 + 1/6 * e
      push_et(mo, n, sample);
      cur_sample_.assign(sample, sample + n);
      have_cur_sample_ = true;
    } else if (counter_ % 4 == 3) {
      tmp_.resize(n);
      check_size(cur_model_output_, n);
      for (size_t i = 0; i < n; ++i) tmp_[i] = cur_model_output_[i] + sixth * mo[i];
      cur_model_output_.assign(n, 0.0f);
      eff = tmp_.data();
    } else {
      check_size(cur_model_output_, n);
      for (size_t i = 0; i < n; ++i) cur_model_output_[i] += third * mo[i];
    }
    const float* cs = sample;
    if (have_cur_sample_) {
      check_size(cur_sample_, n);
      cs = cur_sample_.data();
    }
    prev_sample(cs, cur_t, prev_t, eff, out, n);
  }

  void step_plms(const float* mo, double t, const float* sample, float* out, size_t n) {
    long long ti = static_cast<long long>(t);
    long long prev_t = ti - ratio();
    if (counter_ != 1) {
      push_et(mo, n, sample);
    } else {
      prev_t = ti;
      ti = ti + ratio();
    }
    const float* eff = mo;
    const float* smp = sample;
    tmp_.resize(n);
    const size_t k = ets_count_;
    if (k == 1 && counter_ == 0) {
      cur_sample_.assign(sample, sample + n);
      have_cur_sample_ = true;
    } else if (k == 1 && counter_ == 1) {
      const float* e1 = et(0);
      for (size_t i = 0; i < n; ++i) tmp_[i] = (mo[i] + e1[i]) / 2.0f;
      eff = tmp_.data();
      if (!have_cur_sample_) throw ScheduleError("PNDMScheduler: PLMS state lost; call set_timesteps() again");
      check_size(cur_sample_, n);
      held_sample_.swap(cur_sample_);  // sample = cur_sample; cur_sample = None
      have_cur_sample_ = false;
      smp = held_sample_.data();
    } else if (k == 2) {
      const float *e1 = et(1), *e2 = et(0);
      for (size_t i = 0; i < n; ++i) tmp_[i] = (3.0f * e1[i] - e2[i]) / 2.0f;
      eff = tmp_.data();
    } else if (k == 3) {
      const float *e1 = et(2), *e2 = et(1), *e3 = et(0);
      for (size_t i = 0; i < n; ++i) tmp_[i] = (23.0f * e1[i] - 16.0f * e2[i] + 5.0f * e3[i]) / 12.0f;
      eff = tmp_.data();
    } else if (k >= 4) {
      const float *e1 = et(3), *e2 = et(2), *e3 = et(1), *e4 = et(0);
      const float c = static_cast<float>(1.0 / 24);
      for (size_t i = 0; i < n; ++i)
        tmp_[i] = c * (55.0f * e1[i] - 59.0f * e2[i] + 37.0f * e3[i] - 9.0f * e4[i]);
      eff = tmp_.data();
    } else {
      throw ScheduleError("PNDMScheduler: PLMS step without history; call set_timesteps() again");
    }
    prev_sample(smp, ti, prev_t, eff, out, n);
  }

  // ets = ets[-3:] + [e], in a ring of four reused buffers.
  void push_et(const float* e, size_t n, const float* sample) {
    if (ets_count_ > 0 && ets_.size() != n)
      throw ShapeError("PNDMScheduler: sample size changed between steps (" + std::to_string(ets_.size()) + " -> " +
                       std::to_string(n) + ")");
    ets_.ensure(n, sample, ets_count_ == 0);
    ets_.rotate();
    std::memcpy(ets_.newest(), e, n * sizeof(float));
    ets_count_ = std::min<size_t>(ets_count_ + 1, 4);
  }
  // The j-th oldest of the ets_count_ stored epsilons.
  const float* et(size_t j) { return ets_[4 - ets_count_ + j]; }
  static void check_size(const std::vector<float>& v, size_t n) {
    if (v.size() != n)
      throw ShapeError("PNDMScheduler: sample size changed between steps (" + std::to_string(v.size()) + " -> " +
                       std::to_string(n) + ")");
  }

  // diffusers' _get_prev_sample (formula 9 of the PNDM paper):
  // prev = sample_coeff * x - diff * e / denom (e from v: sa * v + sb * x).
  struct Update {
    float sample_coeff, diff, denom, sa, sb;
  };
  Update update_coefficients(long long t, long long prev_t) const {
    const float a_t = alpha(t);
    const float a_prev = prev_t >= 0 ? alpha(prev_t) : final_alpha_cumprod_;
    const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    return {std::sqrt(a_prev / a_t), a_prev - a_t, a_t * std::sqrt(b_prev) + std::sqrt(a_t * b_t * a_prev),
            std::sqrt(a_t), std::sqrt(b_t)};
  }
  void prev_sample(const float* sample, long long t, long long prev_t, const float* mo, float* out, size_t n) {
    const Update u = update_coefficients(t, prev_t);
    for (size_t i = 0; i < n; ++i) {
      const float x = sample[i];
      float e = mo[i];
      if (v_pred_) e = u.sa * e + u.sb * x;
      out[i] = u.sample_coeff * x - (u.diff * e) / u.denom;
    }
  }

  NoiseSchedule ns_;
  bool skip_prk_, set_alpha_to_one_, v_pred_;
  std::string spacing_;
  long long steps_offset_;
  float final_alpha_cumprod_;
  int num_prk_ = 0;
  int counter_ = 0;
  History ets_{4};  // the last four model outputs (epsilons), oldest first
  size_t ets_count_ = 0;
  std::vector<float> cur_model_output_, cur_sample_, held_sample_, tmp_;
  bool have_cur_sample_ = false;
};

const Registrar reg("PNDMScheduler", [](const Config& c) -> std::unique_ptr<Scheduler> { return std::make_unique<PNDM>(c); });

}  // namespace
}  // namespace fastgen

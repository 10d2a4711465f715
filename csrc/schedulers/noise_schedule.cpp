#include "schedulers/noise_schedule.h"

#include <algorithm>
#include <cmath>

#include "common.h"

namespace fastgen {

float to_f32(double x) { return static_cast<float>(x); }

double round_half_even(double x) { return std::nearbyint(x); }  // default FE_TONEAREST = half-even

std::vector<double> linspace(double start, double stop, int num) {
  std::vector<double> out(std::max(num, 0));
  if (num == 1) {
    out[0] = start;
    return out;
  }
  const double step = (stop - start) / (num - 1);
  for (int i = 0; i < num; ++i) out[i] = start + i * step;
  if (num > 1) out[num - 1] = stop;
  return out;
}

namespace {
// torch.linspace(start, end, n, dtype=float32): computed in float32, symmetric from both ends.
std::vector<double> torch_linspace_f32(double start_d, double end_d, int n) {
  std::vector<double> out(n);
  const float start = to_f32(start_d), end = to_f32(end_d);
  if (n == 1) {
    out[0] = start;
    return out;
  }
  const float step = (end - start) / static_cast<float>(n - 1);
  const int halfway = n / 2;
  for (int i = 0; i < n; ++i) {
    float v = i < halfway ? start + step * static_cast<float>(i) : end - step * static_cast<float>(n - i - 1);
    out[i] = v;
  }
  return out;
}
}  // namespace

std::vector<double> betas_linear(double start, double end, int n) { return torch_linspace_f32(start, end, n); }

std::vector<double> betas_scaled_linear(double start, double end, int n) {
  auto b = torch_linspace_f32(std::sqrt(start), std::sqrt(end), n);
  for (auto& v : b) {
    const float f = to_f32(v);
    v = f * f;
  }
  return b;
}

std::vector<double> betas_squaredcos_cap_v2(int n, double max_beta) {
  auto alpha_bar = [](double t) {
    const double c = std::cos((t + 0.008) / 1.008 * M_PI / 2);
    return c * c;
  };
  std::vector<double> b(n);
  for (int i = 0; i < n; ++i) {
    const double t1 = static_cast<double>(i) / n, t2 = static_cast<double>(i + 1) / n;
    b[i] = to_f32(std::min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta));
  }
  return b;
}

std::vector<double> rescale_zero_terminal_snr(const std::vector<double>& betas) {
  // diffusers does this in float32 tensors; we keep float64 and round at the end.
  const size_t n = betas.size();
  std::vector<double> sq(n);
  double cp = 1.0;
  for (size_t i = 0; i < n; ++i) {
    cp *= 1.0 - betas[i];
    sq[i] = std::sqrt(cp);
  }
  const double s0 = sq[0], sT = sq[n - 1];
  for (auto& v : sq) v = (v - sT) * (s0 / (s0 - sT));
  std::vector<double> out(n);
  double prev = 0;
  for (size_t i = 0; i < n; ++i) {
    const double ab = sq[i] * sq[i];
    const double alpha = i == 0 ? ab : ab / prev;
    prev = ab;
    out[i] = to_f32(1.0 - alpha);
  }
  return out;
}

const std::vector<std::string>& beta_schedule_names() {
  static const std::vector<std::string> v{"linear", "scaled_linear", "squaredcos_cap_v2"};
  return v;
}
const std::vector<std::string>& prediction_type_names() {
  static const std::vector<std::string> v{"epsilon", "v_prediction", "sample"};
  return v;
}
const std::vector<std::string>& spacing_names() {
  static const std::vector<std::string> v{"leading", "trailing", "linspace"};
  return v;
}

NoiseSchedule NoiseSchedule::from_config(const Config& cfg, bool allow_zero_snr) {
  NoiseSchedule s;
  const long long n = cfg.get_int("num_train_timesteps", 1000);
  if (n < 2 || n > 100000) throw ConfigError("scheduler config 'num_train_timesteps' must be in [2, 100000], got " + std::to_string(n));
  s.num_train_timesteps = static_cast<int>(n);
  if (auto tb = cfg.get_list("trained_betas")) {
    if (tb->size() != static_cast<size_t>(n))
      throw ConfigError("scheduler config 'trained_betas' has " + std::to_string(tb->size()) +
                        " values but num_train_timesteps is " + std::to_string(n));
    s.betas.resize(tb->size());
    for (size_t i = 0; i < tb->size(); ++i) s.betas[i] = to_f32((*tb)[i]);
  } else {
    const double start = cfg.get_double("beta_start", 0.0001);
    const double end = cfg.get_double("beta_end", 0.02);
    if (!(start > 0 && end > 0 && start < 1 && end < 1))
      throw ConfigError("scheduler config beta_start/beta_end must be in (0, 1), got " + fmt(start) + ", " + fmt(end));
    const std::string sched = cfg.get_string("beta_schedule", "linear", beta_schedule_names());
    if (sched == "linear") s.betas = betas_linear(start, end, s.num_train_timesteps);
    else if (sched == "scaled_linear") s.betas = betas_scaled_linear(start, end, s.num_train_timesteps);
    else s.betas = betas_squaredcos_cap_v2(s.num_train_timesteps);
  }
  for (double b : s.betas)
    if (!(b > 0 && b < 1) && !(b == 1.0)) throw ConfigError("scheduler betas must be in (0, 1], got " + fmt(b));
  if (allow_zero_snr && cfg.get_bool("rescale_betas_zero_snr", false)) s.betas = rescale_zero_terminal_snr(s.betas);
  s.alphas_cumprod.resize(s.betas.size());
  // alphas = 1 - betas in float32; torch.cumprod on CPU accumulates float32 inputs in double.
  double cp = 1.0;
  for (size_t i = 0; i < s.betas.size(); ++i) {
    const float alpha = 1.0f - to_f32(s.betas[i]);
    cp *= alpha;
    s.alphas_cumprod[i] = to_f32(cp);
  }
  return s;
}

double NoiseSchedule::alpha_prod(long long t) const {
  if (t < 0 || t >= static_cast<long long>(alphas_cumprod.size()))
    throw ScheduleError("timestep " + std::to_string(t) + " is outside [0, " + std::to_string(alphas_cumprod.size()) + ")");
  return alphas_cumprod[static_cast<size_t>(t)];
}

double interp(double x, const std::vector<double>& xp, const std::vector<double>& fp) {
  const size_t n = xp.size();
  if (x <= xp[0]) return fp[0];
  if (x >= xp[n - 1]) return fp[n - 1];
  const size_t hi = static_cast<size_t>(std::upper_bound(xp.begin(), xp.end(), x) - xp.begin());
  const size_t lo = hi - 1;
  const double slope = (fp[hi] - fp[lo]) / (xp[hi] - xp[lo]);
  return slope * (x - xp[lo]) + fp[lo];
}

std::vector<double> spaced_timesteps(int T, int n, const std::string& spacing, long long steps_offset) {
  std::vector<double> ts;
  ts.reserve(n);
  if (spacing == "linspace") {
    auto l = linspace(0, T - 1, n);
    for (int i = n - 1; i >= 0; --i) ts.push_back(round_half_even(l[i]));
  } else if (spacing == "leading") {
    const long long ratio = T / n;
    for (int i = n - 1; i >= 0; --i) ts.push_back(static_cast<double>(i * ratio + steps_offset));
  } else if (spacing == "trailing") {
    const double ratio = static_cast<double>(T) / n;
    // np.round(np.arange(T, 0, -ratio)) - 1
    const long long count = static_cast<long long>(std::ceil((0.0 - T) / -ratio));
    for (long long i = 0; i < count; ++i) ts.push_back(round_half_even(T - i * ratio) - 1);
  } else {
    throw ConfigError("timestep_spacing '" + spacing + "' is not supported");
  }
  return ts;
}

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int n, double rho) {
  auto ramp = linspace(0, 1, n);
  const double min_inv = std::pow(sigma_min, 1.0 / rho), max_inv = std::pow(sigma_max, 1.0 / rho);
  std::vector<double> out(n);
  for (int i = 0; i < n; ++i) out[i] = std::pow(max_inv + ramp[i] * (min_inv - max_inv), rho);
  return out;
}

double sigma_to_t(double sigma, const std::vector<double>& log_sigmas) {
  // log_sigmas ascending in t (sigmas increase with t).
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  const size_t n = log_sigmas.size();
  // low_idx = number of log_sigmas <= log_sigma, minus 1, clipped to [0, n-2]
  long long cnt = 0;
  for (size_t i = 0; i < n; ++i) cnt += (log_sigma - log_sigmas[i]) >= 0;
  long long low = std::min<long long>(std::max<long long>(cnt - 1, 0), static_cast<long long>(n) - 2);
  const double lo = log_sigmas[low], hi = log_sigmas[low + 1];
  double w = (lo - log_sigma) / (lo - hi);
  w = std::min(std::max(w, 0.0), 1.0);
  return (1 - w) * low + w * (low + 1);
}

}  // namespace fastgen

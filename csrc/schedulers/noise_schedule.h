// Noise-schedule math shared by every scheduler family: betas, alphas_cumprod, timestep spacing,
// sigma conversions, Karras sigmas. All in float64; values diffusers keeps in float32 tensors
// (betas, alphas_cumprod) are rounded through float32 so our schedules match theirs.
#pragma once

#include <string>
#include <vector>

#include "schedulers/config.h"

namespace fastgen {

struct NoiseSchedule {
  int num_train_timesteps = 1000;
  std::vector<double> betas;           // float32-rounded, as diffusers' torch tensor
  std::vector<double> alphas_cumprod;  // float32-rounded cumulative product of (1 - beta)

  // Reads num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas and
  // rescale_betas_zero_snr (when `allow_zero_snr`) from a scheduler config.
  static NoiseSchedule from_config(const Config& cfg, bool allow_zero_snr = true);

  double alpha_prod(long long t) const;  // alphas_cumprod[t] with bounds check
};

// The beta schedules of diffusers (float32 results returned as doubles).
std::vector<double> betas_linear(double start, double end, int n);
std::vector<double> betas_scaled_linear(double start, double end, int n);
std::vector<double> betas_squaredcos_cap_v2(int n, double max_beta = 0.999);
std::vector<double> rescale_zero_terminal_snr(const std::vector<double>& betas);

// numpy.linspace(start, stop, num) in float64.
std::vector<double> linspace(double start, double stop, int num);
// numpy.interp(x, xp, fp) for increasing xp.
double interp(double x, const std::vector<double>& xp, const std::vector<double>& fp);
// Round half to even, like numpy.round.
double round_half_even(double x);
float to_f32(double x);

// Integer timesteps for DDIM / DDPM / LCM-style schedulers ("leading" | "trailing" | "linspace"),
// descending, exactly as diffusers' set_timesteps computes them.
std::vector<double> spaced_timesteps(int num_train_timesteps, int num_inference_steps,
                                     const std::string& spacing, long long steps_offset);

// Karras et al. (2022) sigmas: ramp from sigma_max to sigma_min with exponent rho.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int n, double rho = 7.0);
// diffusers' _sigma_to_t: continuous timestep for a sigma by interpolating log sigmas.
double sigma_to_t(double sigma, const std::vector<double>& log_sigmas);

const std::vector<std::string>& beta_schedule_names();
const std::vector<std::string>& prediction_type_names();
const std::vector<std::string>& spacing_names();

}  // namespace fastgen

// The denoising loop: classifier-free-guidance batching, guidance (+ rescale), scheduler steps.
//
// Pure C++: the network is reached through a callback, so the bindings decide how (and where the
// GIL is taken). Buffers are allocated once per call and reused for every step.
#pragma once

#include <cstddef>
#include <functional>

#include "schedulers/scheduler.h"

namespace fastgen {

struct LoopOptions {
  double guidance_scale = 7.5;    // > 1 runs the unconditional and conditional halves together
  double guidance_rescale = 0.0;  // Lin et al. 2023, as diffusers' rescale_noise_cfg
  double eta = 0.0;               // DDIM eta (and other stochastic samplers)
};

// denoise(x, t) gets the model input (cfg ? 2 * batch : batch rows of `per_sample` floats, the
// unconditional half first) and returns a pointer to the prediction for the same rows, valid
// until the next call.
using DenoiseFn = std::function<const float*(float* x, size_t rows, double t)>;
// callback(step, t, latents) after each step; returning false stops the loop early.
using StepCallback = std::function<bool(int step, double t, float* latents)>;

bool uses_cfg(const LoopOptions& opt);

// Run the scheduler's remaining timesteps (from its begin index) over `latents` in place.
// `x_in` is the caller-owned model-input buffer of (cfg ? 2 : 1) * batch * per_sample floats that
// denoise() receives. When the scheduler's input scaling is the identity, `latents` may be x_in
// itself (its first half): each step then writes one stream less. Returns the number of steps taken.
// The loop claims the scheduler (Scheduler::use) until it returns: a second loop, step or
// set_timesteps on it meanwhile, from any thread or from the callbacks, gets ConcurrentUseError.
int sample_loop(Scheduler& scheduler, float* latents, size_t batch, size_t per_sample, float* x_in,
                const DenoiseFn& denoise, const StepCallback& callback, const LoopOptions& opt);

// pred = uncond + g * (cond - uncond), then the optional rescale toward cond's per-sample std.
void combine_guidance(const float* uncond, const float* cond, float* out, size_t batch, size_t per_sample,
                      double guidance_scale, double guidance_rescale);

}  // namespace fastgen

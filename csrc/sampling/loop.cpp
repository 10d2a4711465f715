#include "sampling/loop.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "common.h"
#include "schedulers/kernels.h"

namespace fastgen {

bool uses_cfg(const LoopOptions& opt) { return opt.guidance_scale > 1.0; }

namespace {
// Unbiased standard deviation, as torch.std.
double stddev(const float* x, size_t n) {
  if (n < 2) return 0.0;
  double mean = 0;
  for (size_t i = 0; i < n; ++i) mean += x[i];
  mean /= static_cast<double>(n);
  double ss = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = x[i] - mean;
    ss += d * d;
  }
  return std::sqrt(ss / static_cast<double>(n - 1));
}
}  // namespace

void combine_guidance(const float* uncond, const float* cond, float* out, size_t batch, size_t per_sample,
                      double guidance_scale, double guidance_rescale) {
  const size_t n = batch * per_sample;
  const kernels::GuidedOutput mo{uncond, cond, static_cast<float>(guidance_scale)};
  FASTGEN_SIMD for (size_t i = 0; i < n; ++i) out[i] = mo(i);
  if (guidance_rescale > 0) {
    const float r = static_cast<float>(guidance_rescale);
    for (size_t b = 0; b < batch; ++b) {
      float* o = out + b * per_sample;
      const double s_text = stddev(cond + b * per_sample, per_sample);
      const double s_cfg = stddev(o, per_sample);
      const float ratio = static_cast<float>(s_text) / static_cast<float>(s_cfg);
      for (size_t i = 0; i < per_sample; ++i) o[i] = r * (o[i] * ratio) + (1.0f - r) * o[i];
    }
  }
}

int sample_loop(Scheduler& s, float* latents, size_t batch, size_t per_sample, float* x_in,
                const DenoiseFn& denoise, const StepCallback& callback, const LoopOptions& opt) {
  if (!std::isfinite(opt.guidance_scale) || opt.guidance_scale < 0)
    throw ArgumentError("guidance_scale must be a finite number >= 0, got " + fmt(opt.guidance_scale));
  if (!std::isfinite(opt.guidance_rescale) || opt.guidance_rescale < 0 || opt.guidance_rescale > 1)
    throw ArgumentError("guidance_rescale must be in [0, 1], got " + fmt(opt.guidance_rescale));
  if (!std::isfinite(opt.eta) || opt.eta < 0) throw ArgumentError("eta must be >= 0, got " + fmt(opt.eta));
  if (x_in == latents && !s.scale_is_identity())
    throw ArgumentError(s.class_name() + " scales its model input, so the latents cannot share the input buffer");
  const auto busy = s.use("sample_loop");  // the whole loop: no other step, reset or loop meanwhile
  const auto& ts = s.timesteps();
  if (ts.empty()) throw ScheduleError(s.class_name() + ": call set_timesteps() before sampling");
  const bool cfg = uses_cfg(opt);
  const size_t n = batch * per_sample;
  const size_t rows = cfg ? 2 * batch : batch;
  // guidance_rescale needs the whole guided prediction (per-sample std) before the step, so it is
  // formed in a buffer; plain guidance is fused into the scheduler step (StepIO).
  const bool fuse_guidance = cfg && opt.guidance_rescale == 0;
  std::vector<float> guided(cfg && !fuse_guidance ? n : 0);
  const int start = s.begin_index() >= 0 ? s.begin_index() : 0;
  int steps = 0;
  bool fed = false;  // x_in already holds this step's model input (written by the previous step)
  for (int i = start; i < static_cast<int>(ts.size()); ++i) {
    const double t = ts[i];
    if (!fed) {
      if (x_in == latents) {  // the latents are the model input's first half
        if (cfg) std::memcpy(x_in + n, latents, n * sizeof(float));
      } else if (cfg && s.scale_is_identity()) {
        float* hi = x_in + n;
        FASTGEN_SIMD for (size_t k = 0; k < n; ++k) {  // both CFG halves in one pass
          const float v = latents[k];
          x_in[k] = v;
          hi[k] = v;
        }
      } else {
        s.scale_model_input(latents, x_in, n, t);
        if (cfg) std::memcpy(x_in + n, x_in, n * sizeof(float));
      }
    }
    const float* pred = denoise(x_in, rows, t);
    StepIO io;
    if (fuse_guidance) {
      io.uncond = pred;
      io.cond = pred + n;
      io.guidance = static_cast<float>(opt.guidance_scale);
    } else if (cfg) {
      combine_guidance(pred, pred + n, guided.data(), batch, per_sample, opt.guidance_scale, opt.guidance_rescale);
      io.model_output = guided.data();
    } else {
      io.model_output = pred;
    }
    // Without a callback the step also writes the next model input in the same pass. A callback may
    // change the latents (inpainting blends them), so then the input is prepared after it instead.
    if (!callback) {
      io.feed[0] = x_in;
      io.feed[1] = cfg ? x_in + n : x_in;
    }
    fed = s.step_io(io, t, latents, latents, n, batch, nullptr, opt.eta);
    ++steps;
    if (callback && !callback(i, t, latents)) break;  // the caller asked to stop early
  }
  return steps;
}

}  // namespace fastgen

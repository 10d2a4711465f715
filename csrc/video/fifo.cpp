#include <algorithm>
#include <cstring>

#include "common.h"
#include "video/frames.h"

namespace fastgen {

int fifo_sample_loop(float* queue, const VideoLoopShape& sh, const FifoCoefficients& coef, int num_frames,
                     float* x_in, const WindowDenoiseFn& denoise, const FifoExchangeFn& exchange,
                     const LoopOptions& opt) {
  const size_t L = sh.frames, HW = sh.hw, BC = sh.batch * sh.channels;
  if (num_frames < 1) throw ArgumentError("num_frames must be >= 1, got " + std::to_string(num_frames));
  if (coef.sqrt_a.size() != L || coef.sqrt_1ma.size() != L || coef.sqrt_a_prev.size() != L ||
      coef.sqrt_1ma_prev.size() != L)
    throw ShapeError("FIFO coefficients need one value per queue slot (" + std::to_string(L) + ")");
  const size_t ctx = std::min<size_t>(L, static_cast<size_t>(sh.context_length));
  // partitions of the queue: non-overlapping, the last one aligned to the tail (averaged on overlap)
  const std::vector<int> starts = context_windows(static_cast<int>(L), static_cast<int>(ctx), static_cast<int>(ctx));
  const bool cfg = uses_cfg(opt);
  const size_t nw = BC * ctx * HW;
  const size_t rows = cfg ? 2 * sh.batch : sh.batch;
  std::vector<float> guided(cfg ? nw : 0), eps(BC * L * HW), wsum(L), head(BC * HW);
  for (int it = 0; it < num_frames; ++it) {
    std::fill(eps.begin(), eps.end(), 0.0f);
    std::fill(wsum.begin(), wsum.end(), 0.0f);
    for (int ws : starts) {
      const size_t w0 = static_cast<size_t>(ws);
      for (size_t r = 0; r < BC; ++r) std::memcpy(x_in + r * ctx * HW, queue + (r * L + w0) * HW, ctx * HW * sizeof(float));
      if (cfg) std::memcpy(x_in + nw, x_in, nw * sizeof(float));
      (void)rows;
      const float* pred = denoise(x_in, rows, ws, 0.0);
      if (cfg) {
        combine_guidance(pred, pred + nw, guided.data(), sh.batch, nw / sh.batch, opt.guidance_scale,
                         opt.guidance_rescale);
        pred = guided.data();
      }
      for (size_t r = 0; r < BC; ++r)
        for (size_t j = 0; j < ctx; ++j) {
          float* a = eps.data() + (r * L + w0 + j) * HW;
          const float* p = pred + (r * ctx + j) * HW;
          for (size_t k = 0; k < HW; ++k) a[k] += p[k];
        }
      for (size_t j = 0; j < ctx; ++j) wsum[w0 + j] += 1.0f;
    }
    for (size_t r = 0; r < BC; ++r)
      for (size_t j = 0; j < L; ++j) {
        const float inv = wsum[j], sa = coef.sqrt_a[j], sb = coef.sqrt_1ma[j];
        const float sap = coef.sqrt_a_prev[j], sbp = coef.sqrt_1ma_prev[j];
        float* x = queue + (r * L + j) * HW;
        float* e = eps.data() + (r * L + j) * HW;
        for (size_t k = 0; k < HW; ++k) {
          const float ek = e[k] / inv;
          const float x0 = (x[k] - sb * ek) / sa;
          x[k] = sap * x0 + sbp * ek;
        }
      }
    for (size_t r = 0; r < BC; ++r) {
      float* row = queue + r * L * HW;
      std::memcpy(head.data() + r * HW, row, HW * sizeof(float));
      std::memmove(row, row + HW, (L - 1) * HW * sizeof(float));
    }
    const float* noise = exchange(it, head.data());
    for (size_t r = 0; r < BC; ++r) std::memcpy(queue + (r * L + L - 1) * HW, noise + r * HW, HW * sizeof(float));
  }
  return num_frames;
}

}  // namespace fastgen

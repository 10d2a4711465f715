#include "video/frames.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common.h"

namespace fastgen {

WindowWeighting parse_window_weighting(const std::string& name) {
  if (name == "flat") return WindowWeighting::Flat;
  if (name == "pyramid") return WindowWeighting::Pyramid;
  throw ArgumentError("context weighting must be 'flat' or 'pyramid', got '" + name + "'");
}

std::vector<int> context_windows(int num_frames, int context_length, int stride) {
  if (num_frames < 1) throw ArgumentError("num_frames must be >= 1, got " + std::to_string(num_frames));
  if (context_length < 1) throw ArgumentError("context_length must be >= 1, got " + std::to_string(context_length));
  if (stride < 1 || stride > context_length)
    throw ArgumentError("context_stride must be in [1, context_length=" + std::to_string(context_length) +
                        "], got " + std::to_string(stride));
  std::vector<int> starts;
  if (num_frames <= context_length) return {0};
  const int last = num_frames - context_length;
  for (int s = 0; s < last; s += stride) starts.push_back(s);
  starts.push_back(last);
  return starts;
}

std::vector<float> window_weights(int length, WindowWeighting kind) {
  std::vector<float> w(static_cast<size_t>(std::max(length, 0)), 1.0f);
  if (kind == WindowWeighting::Pyramid)
    for (int i = 0; i < length; ++i) w[i] = static_cast<float>(std::min(i + 1, length - i));
  return w;
}

int video_sample_loop(Scheduler& s, float* latents, const VideoLoopShape& sh, float* x_in,
                      const WindowDenoiseFn& denoise, const StepCallback& callback, const LoopOptions& opt) {
  const auto busy = s.use("video_sample_loop");  // the whole loop: no other step, reset or loop meanwhile
  const auto& ts = s.timesteps();
  if (ts.empty()) throw ScheduleError(s.class_name() + ": call set_timesteps() before sampling");
  const std::vector<int> starts = context_windows(static_cast<int>(sh.frames), sh.context_length, sh.context_stride);
  const size_t F = sh.frames, HW = sh.hw, BC = sh.batch * sh.channels;
  const size_t L = std::min<size_t>(F, static_cast<size_t>(sh.context_length));
  const std::vector<float> weights = window_weights(static_cast<int>(L), sh.weighting);
  const bool cfg = uses_cfg(opt);
  const size_t n = BC * F * HW;       // whole video
  const size_t nw = BC * L * HW;      // one window, one CFG half
  const size_t rows = cfg ? 2 * sh.batch : sh.batch;
  std::vector<float> scaled(s.scale_is_identity() ? 0 : n);
  std::vector<float> guided(cfg ? nw : 0);
  std::vector<float> acc(n), wsum(F);
  const int start = s.begin_index() >= 0 ? s.begin_index() : 0;
  int steps = 0;
  for (int i = start; i < static_cast<int>(ts.size()); ++i) {
    const double t = ts[i];
    const float* src = latents;
    if (!scaled.empty()) {
      s.scale_model_input(latents, scaled.data(), n, t);
      src = scaled.data();
    }
    std::fill(acc.begin(), acc.end(), 0.0f);
    std::fill(wsum.begin(), wsum.end(), 0.0f);
    for (int ws : starts) {
      const size_t w0 = static_cast<size_t>(ws);
      for (size_t r = 0; r < BC; ++r)  // gather the window: [bc, w0 : w0 + L, hw]
        std::memcpy(x_in + r * L * HW, src + (r * F + w0) * HW, L * HW * sizeof(float));
      if (cfg) std::memcpy(x_in + nw, x_in, nw * sizeof(float));
      const float* pred = denoise(x_in, rows, ws, t);
      if (cfg) {
        combine_guidance(pred, pred + nw, guided.data(), sh.batch, nw / sh.batch, opt.guidance_scale,
                         opt.guidance_rescale);
        pred = guided.data();
      }
      for (size_t r = 0; r < BC; ++r)
        for (size_t j = 0; j < L; ++j) {
          const float wj = weights[j];
          float* a = acc.data() + (r * F + w0 + j) * HW;
          const float* p = pred + (r * L + j) * HW;
          for (size_t k = 0; k < HW; ++k) a[k] += wj * p[k];
        }
      for (size_t j = 0; j < L; ++j) wsum[w0 + j] += weights[j];
    }
    for (size_t r = 0; r < BC; ++r)
      for (size_t f = 0; f < F; ++f) {
        const float inv = wsum[f];
        float* a = acc.data() + (r * F + f) * HW;
        for (size_t k = 0; k < HW; ++k) a[k] /= inv;
      }
    s.step(acc.data(), t, latents, latents, n, sh.batch, nullptr, opt.eta);
    ++steps;
    if (callback && !callback(i, t, latents)) break;
  }
  return steps;
}

namespace {
std::string dims(size_t a, size_t b, size_t c) {
  return std::to_string(a) + "x" + std::to_string(b) + "x" + std::to_string(c);
}
}  // namespace

FrameRing::FrameRing(size_t capacity, size_t channels, size_t height, size_t width)
    : capacity_(capacity), c_(channels), h_(height), w_(width) {
  if (capacity < 1 || channels < 1 || height < 1 || width < 1)
    throw ArgumentError("FrameRing needs capacity, channels, height and width >= 1, got " + std::to_string(capacity) +
                        ", " + std::to_string(channels) + ", " + std::to_string(height) + ", " + std::to_string(width));
  // capacity * channels * height * width floats must be addressable (allocating them may still fail:
  // std::bad_alloc -> fastgen.ResourceError).
  size_t total = capacity;
  for (size_t d : {channels, height, width}) {
    if (total > (SIZE_MAX / sizeof(float)) / d)
      throw ArgumentError("FrameRing of " + std::to_string(capacity) + " frames of " + dims(channels, height, width) +
                          " floats is too large");
    total *= d;
  }
  buf_.resize(total);
}

UseFlag::Guard FrameRing::use(const char* operation) {
  return use_.acquire(operation, UseFlag::Access::Exclusive, [&](const char* holder, bool) {
    return std::string("FrameRing.") + operation + "(): the ring is in use by a running " + holder +
           " in another thread; a FrameRing is not thread-safe: use one per thread";
  });
}

void FrameRing::push(const float* chw, size_t n, size_t channels, size_t height, size_t width) {
  if (channels != c_ || height != h_ || width != w_)
    throw ShapeError("FrameRing.push: frames must be " + dims(c_, h_, w_) + " (channels x height x width), got " +
                     dims(channels, height, width));
  if (n == 0) throw ShapeError("FrameRing.push: no frames to push (n = 0)");
  if (!chw) throw ArgumentError("FrameRing.push: null frame data");
  const auto busy = use("push");
  const size_t held = size(), free = capacity_ - held;
  if (n > free)
    throw ArgumentError("FrameRing.push: cannot push " + std::to_string(n) + " frames, " + std::to_string(free) +
                        " of " + std::to_string(capacity_) + " slots free (pop frames first)");
  const size_t plane = h_ * w_, per = c_ * plane;
  for (size_t f = 0; f < n; ++f) {
    const size_t slot = (head_ + held + f) % capacity_;
    float* dst = buf_.data() + slot * per;
    const float* in = chw + f * per;
    for (size_t p = 0; p < plane; ++p)
      for (size_t c = 0; c < c_; ++c) {
        const float v = in[c * plane + p] / 2 + 0.5f;
        dst[p * c_ + c] = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
      }
  }
  size_.store(held + n, std::memory_order_relaxed);
}

void FrameRing::pop(float* out, size_t height, size_t width) {
  if (height != h_ || width != w_)
    throw ShapeError("FrameRing.pop: the ring holds " + std::to_string(h_) + "x" + std::to_string(w_) +
                     " frames (height x width), got pop(" + std::to_string(height) + ", " + std::to_string(width) + ")");
  if (!out) throw ArgumentError("FrameRing.pop: null output buffer");
  const auto busy = use("pop");
  const size_t held = size();
  if (held == 0) throw ArgumentError("FrameRing.pop: the ring is empty (push frames first)");
  const size_t per = c_ * h_ * w_;
  std::memcpy(out, buf_.data() + head_ * per, per * sizeof(float));
  head_ = (head_ + 1) % capacity_;
  size_.store(held - 1, std::memory_order_relaxed);
}

}  // namespace fastgen

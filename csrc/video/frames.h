// Video frame buffers: sliding context windows over the frame axis (denoise long videos with a
// motion module that only sees `context_length` frames at a time) and a ring of decoded frames.
//
// Latent layout is diffusers' AnimateDiff one: [batch, channels, frames, height * width].
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <vector>

#include "common.h"
#include "sampling/loop.h"
#include "schedulers/scheduler.h"

namespace fastgen {

enum class WindowWeighting { Flat, Pyramid };

WindowWeighting parse_window_weighting(const std::string& name);

// Start frames of the context windows: every `stride` frames from 0, plus a last window ending
// on the last frame, each `min(context_length, num_frames)` frames long. Validates its arguments
// (num_frames >= 1, 1 <= stride <= context_length).
std::vector<int> context_windows(int num_frames, int context_length, int stride);

// Per-frame blending weights of one window: flat (all 1) or pyramid (1, 2, ..., 2, 1).
std::vector<float> window_weights(int length, WindowWeighting kind);

// denoise(x, rows, window_start, t): x holds (cfg ? 2 : 1) * batch rows of [channels, window, hw]
// floats (unconditional half first); returns the prediction for the same rows.
using WindowDenoiseFn = std::function<const float*(float* x, size_t rows, int window_start, double t)>;

struct VideoLoopShape {
  size_t batch = 1, channels = 4, frames = 1, hw = 1;
  int context_length = 16, context_stride = 4;
  WindowWeighting weighting = WindowWeighting::Pyramid;
};

// The denoising loop over context windows: per step, every window's (guided) prediction is
// blended into one preallocated accumulator with its per-frame weights, normalised by the summed
// weights, and the scheduler steps the whole video. With one window (frames <= context_length)
// this is exactly the plain loop. `x_in` holds (cfg ? 2 : 1) * batch * channels * window * hw floats.
// Like sample_loop, it claims the scheduler until it returns.
int video_sample_loop(Scheduler& s, float* latents, const VideoLoopShape& shape, float* x_in,
                      const WindowDenoiseFn& denoise, const StepCallback& callback, const LoopOptions& opt);

// A fixed-capacity ring of decoded frames: push VAE output chunks [n, C, H, W] in about [-1, 1],
// pop frames [H, W, C] in [0, 1] (diffusers' postprocess: clamp(x / 2 + 0.5, 0, 1)).
// Every size is checked (ArgumentError / ShapeError, never out-of-bounds memory): the ring's
// dimensions (all >= 1, the buffer's size representable), each push's frame shape and count, each
// pop's frame size and an empty ring. Not thread-safe: push and pop claim the ring (UseFlag), so a
// second thread using it meanwhile gets ConcurrentUseError; size() may be read at any time.
class FrameRing {
 public:
  FrameRing(size_t capacity, size_t channels, size_t height, size_t width);
  size_t capacity() const { return capacity_; }
  size_t channels() const { return c_; }
  size_t height() const { return h_; }
  size_t width() const { return w_; }
  size_t size() const { return size_.load(std::memory_order_relaxed); }
  size_t frame_floats() const { return c_ * h_ * w_; }
  // Convert and store the n frames [n, channels, height, width] at `chw`: ShapeError unless the frame
  // shape is the ring's and n >= 1; ArgumentError when fewer than n slots are free (nothing stored).
  void push(const float* chw, size_t n, size_t channels, size_t height, size_t width);
  // Copy the oldest frame as [height, width, channels] into `out` (frame_floats() floats) and drop it:
  // ShapeError unless height and width are the ring's; ArgumentError when the ring is empty.
  void pop(float* out, size_t height, size_t width);

 private:
  UseFlag::Guard use(const char* operation);

  size_t capacity_, c_, h_, w_;
  size_t head_ = 0;
  std::atomic<size_t> size_{0};
  std::vector<float> buf_;
  UseFlag use_;
};

}  // namespace fastgen

namespace fastgen {

// FIFO-Diffusion (Kim et al. 2024) diagonal denoising. The queue [batch, channels, L, hw] holds L
// latent frames at increasing noise: slot j is at timestep t_j (t_0 lowest). One iteration runs
// the per-frame-timestep UNet over the queue in partitions of `context_length` frames, applies a
// deterministic DDIM update to every slot (slot j: from t_j to t_{j-1}; slot 0: to clean), hands
// the now clean head frame [batch, channels, hw] to exchange(), which returns the noise for the
// new tail frame, and shifts the queue by one. Coefficients per slot: sqrt(alphā_t),
// sqrt(1 - alphā_t) and the same at the next lower timestep (float32, as diffusers' DDIM).
struct FifoCoefficients {
  std::vector<float> sqrt_a, sqrt_1ma, sqrt_a_prev, sqrt_1ma_prev;
};
// denoise(x, rows, window_start): x is (cfg ? 2 : 1) * batch rows of [channels, window, hw].
using FifoExchangeFn = std::function<const float*(int index, const float* head)>;
int fifo_sample_loop(float* queue, const VideoLoopShape& shape, const FifoCoefficients& coef, int num_frames,
                     float* x_in, const WindowDenoiseFn& denoise, const FifoExchangeFn& exchange,
                     const LoopOptions& opt);

}  // namespace fastgen

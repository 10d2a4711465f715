// The scheduler interface of the C++ core and the helpers every family shares.
//
// Each scheduler family (one .cpp per family) reproduces a diffusers scheduler class: the same
// config keys, the same timesteps, the same update rule. Tensors are flat float32 buffers; all
// coefficient math is float64. `out` may alias `sample` (steps run in place inside the loop).
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common.h"
#include "random/philox.h"
#include "schedulers/config.h"
#include "schedulers/noise_schedule.h"

namespace fastgen {

// Where one step reads its model output and writes its result, so the sampling loop can run a whole
// step in one pass over memory. The model output is either a plain prediction or the classifier-free
// guidance combination uncond + guidance * (cond - uncond), formed element by element (no buffer, no
// extra pass; the same float32 expression as combine_guidance). When `feed` is set, the step also
// writes the next step's model input, scale_model_input(result, t_next), into feed[0] and feed[1]
// (the two CFG halves; the same pointer twice without CFG) in the same pass.
struct StepIO {
  const float* model_output = nullptr;  // plain prediction, or nullptr with uncond / cond set
  const float* uncond = nullptr;
  const float* cond = nullptr;
  float guidance = 1.0f;
  float* feed[2] = {nullptr, nullptr};

  static StepIO plain(const float* m) {
    StepIO io;
    io.model_output = m;
    return io;
  }
  bool guided() const { return model_output == nullptr; }
};

class Scheduler {
 public:
  explicit Scheduler(Config cfg) : cfg_(std::move(cfg)) {}
  virtual ~Scheduler() = default;

  virtual std::string class_name() const = 0;
  // A fresh scheduler with the same configuration and no state.
  virtual std::unique_ptr<Scheduler> clone() const = 0;

  // Compute the schedule for `num_inference_steps` (resets all step state). `mu` is the dynamic
  // shift of flow-matching schedulers; others reject it.
  virtual void set_timesteps(int num_inference_steps, std::optional<double> mu) = 0;

  // The standard deviation of the initial noise (sigma_max for sigma-space schedulers).
  virtual double init_noise_sigma() const { return 1.0; }
  // Whether diffusers exposes integer (int64) or float timesteps for this scheduler/config.
  virtual bool integer_timesteps() const { return true; }
  // How many model evaluations one step of the solver takes (PNDM PRK: the schedule repeats t).
  virtual int order() const { return 1; }

  // diffusers' scale_model_input (identity by default).
  virtual void scale_model_input(const float* in, float* out, size_t n, double t);
  // True when scale_model_input is the identity for every t (lets the loop skip a pass). Families
  // that override scale_model_input must override this (and input_scale_at) too.
  virtual bool scale_is_identity() const { return true; }

  // One denoising step: out = x_{t-1}. `noise` is standard normal noise of n values for
  // stochastic steps (nullptr: drawn from generator()). `batch` splits n into per-sample rows for
  // per-sample operations (dynamic thresholding).
  virtual void step(const float* model_output, double t, const float* sample, float* out, size_t n,
                    size_t batch, const float* noise, double eta) = 0;

  // step() on io's model output (see StepIO). Returns true when it also wrote the next model input
  // into io.feed (never after the last scheduled step, or when the next input is not a pure scale).
  // The default forms the guided prediction in a buffer, calls step(), then feeds in a second pass;
  // the hot families (DDIM, Euler, DPM-Solver multistep, flow-matching Euler) override it with
  // single-pass kernels.
  virtual bool step_io(const StepIO& io, double t, const float* sample, float* out, size_t n, size_t batch,
                       const float* noise, double eta);

  // The factor scale_model_input multiplies by at schedule index `index` when it is a pure scale
  // (1 for identity families), or nothing when it is not.
  virtual std::optional<float> input_scale_at(int index) const {
    if (scale_is_identity()) return 1.0f;
    return std::nullopt;
  }

  // Forward-diffuse `original` to timestep t: img2img / inpainting starts.
  virtual void add_noise(const float* original, const float* noise, float* out, size_t n, double t);

  // Whether step() draws noise (DDPM, Euler ancestral, LCM, DDIM with eta > 0, SDE solvers).
  virtual bool is_stochastic(double eta) const { return false; }

  const std::vector<double>& timesteps() const { return timesteps_; }
  int num_inference_steps() const { return num_inference_steps_; }
  int step_index() const { return step_index_; }
  int begin_index() const { return begin_index_; }
  // diffusers' set_begin_index: img2img skips the first steps of the schedule.
  void set_begin_index(int index);
  Generator& generator() { return generator_; }
  const Config& config() const { return cfg_; }

  // A scheduler is not thread-safe. use() claims it for `operation` (a string literal) until the guard
  // is destroyed, and throws ConcurrentUseError (telling the caller to clone() it) when another call
  // holds it: see UseFlag for exclusive vs shared access. The sampling loops claim it themselves; the
  // Python bindings claim it around step, set_timesteps, set_begin_index, manual_seed (exclusive) and
  // add_noise, scale_model_input, step_index (shared). Direct C++ callers of those who share a
  // scheduler between threads must do the same.
  UseFlag::Guard use(const char* operation, UseFlag::Access access = UseFlag::Access::Exclusive);
  bool in_use() const { return use_.in_use(); }

 protected:
  // Must be called by set_timesteps implementations after filling timesteps_.
  void reset_state(int num_inference_steps);
  void require_timesteps() const;
  // diffusers' index_for_timestep (with its "second match" rule for repeated timesteps).
  int index_for_timestep(double t) const;
  // Resolve the step index for this step (first step: from begin_index or t), check that t is the
  // scheduled timestep, and return the index. Call once per step(); then call advance().
  int current_index(double t);
  void advance() { ++step_index_; }
  // The next model input's scale for a step that just ran at `index` (nothing after the last step,
  // or when that input is not a pure scale), for step_io overrides.
  std::optional<float> feed_scale(const StepIO& io, int index) const {
    if (!io.feed[0] || index + 1 >= static_cast<int>(timesteps_.size())) return std::nullopt;
    return input_scale_at(index + 1);
  }
  // The model output as one buffer (the guided prediction is formed in guided_buf_).
  const float* materialize(const StepIO& io, size_t n);
  // After a step (step_index_ advanced): write the next model input into io.feed in a separate pass
  // when io asks for it and it is a pure scale. Returns whether it did.
  bool feed_after(const StepIO& io, const float* out, size_t n);
  // Noise for a stochastic step: the caller's, or freshly drawn from the generator.
  const float* noise_or_draw(const float* noise, size_t n);

  Config cfg_;
  std::vector<double> timesteps_;
  int num_inference_steps_ = 0;
  int step_index_ = -1;
  int begin_index_ = -1;
  Generator generator_;
  std::vector<float> noise_buf_;
  std::vector<float> guided_buf_;  // the default step_io's materialised guided prediction

 private:
  UseFlag use_;
};

// Convert a model output to (x0, eps) predictions for alphas_cumprod-style schedulers.
// prediction: "epsilon" | "sample" | "v_prediction".
enum class Prediction { Epsilon, Sample, VPrediction, Flow };
Prediction parse_prediction(const Config& cfg, bool allow_flow = false);

// Dynamic thresholding (Imagen): per sample, s = clamp(quantile(|x0|, ratio), 1, max); x0 = clamp(x0, -s, s) / s.
void dynamic_threshold(float* x0, size_t n, size_t batch, double ratio, double max_value);

// The x0 post-processing shared by DDPM-style steps: for each element i, x0_of(i) -> x0, then either
// dynamic thresholding over the whole prediction (buffered in `buf`) or clipping to [-clip, clip] when
// `clip_sample`, then finish(i, x0) writes the output.
template <class X0, class Finish>
void process_x0(size_t n, size_t batch, X0&& x0_of, Finish&& finish, bool thresholding, double ratio,
                double max_value, bool clip_sample, double clip, std::vector<float>& buf) {
  if (thresholding) {
    buf.resize(n);
    for (size_t i = 0; i < n; ++i) buf[i] = x0_of(i);
    dynamic_threshold(buf.data(), n, batch, ratio, max_value);
    for (size_t i = 0; i < n; ++i) finish(i, buf[i]);
    return;
  }
  const float lo = static_cast<float>(-clip), hi = static_cast<float>(clip);
  for (size_t i = 0; i < n; ++i) {
    float x0 = x0_of(i);
    if (clip_sample) x0 = x0 < lo ? lo : (x0 > hi ? hi : x0);
    finish(i, x0);
  }
}

// Build the scheduler for a diffusers class name. Throws ConfigError for unknown classes.
std::unique_ptr<Scheduler> make_scheduler(const std::string& class_name, const Config& cfg);
// The class names make_scheduler accepts.
std::vector<std::string> scheduler_names();

// Registration: each family file registers its factory with a static Registrar.
using SchedulerFactory = std::unique_ptr<Scheduler> (*)(const Config&);
struct Registrar {
  Registrar(const char* class_name, SchedulerFactory factory);
};

}  // namespace fastgen

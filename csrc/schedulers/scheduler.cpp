#include "schedulers/scheduler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

#include "common.h"
#include "schedulers/kernels.h"

namespace fastgen {

namespace {
std::map<std::string, SchedulerFactory>& registry() {
  static std::map<std::string, SchedulerFactory> r;
  return r;
}
}  // namespace

Registrar::Registrar(const char* class_name, SchedulerFactory factory) { registry()[class_name] = factory; }

std::vector<std::string> scheduler_names() {
  std::vector<std::string> names;
  for (const auto& kv : registry()) names.push_back(kv.first);
  return names;
}

std::unique_ptr<Scheduler> make_scheduler(const std::string& class_name, const Config& cfg) {
  auto it = registry().find(class_name);
  if (it == registry().end()) {
    std::string known;
    for (const auto& n : scheduler_names()) known += (known.empty() ? "" : ", ") + n;
    throw ConfigError("unknown scheduler class '" + class_name + "'; supported: " + known);
  }
  return it->second(cfg);
}

UseFlag::Guard Scheduler::use(const char* operation, UseFlag::Access access) {
  return use_.acquire(operation, access, [&](const char* holder, bool same_thread) {
    std::string msg = class_name() + "." + operation + "(): this scheduler is in use by a running " + holder;
    if (same_thread)
      msg += " that this call comes from (a callback cannot step, reset or re-run the scheduler its loop is "
             "driving); use a clone() of the scheduler (scheduler.clone()) for another generation";
    else
      msg += " in another thread; a scheduler is not thread-safe: clone() it (scheduler.clone()) for "
             "concurrent use, one per thread or generation";
    return msg;
  });
}

void Scheduler::scale_model_input(const float* in, float* out, size_t n, double) {
  if (in != out) std::memcpy(out, in, n * sizeof(float));
}

const float* Scheduler::materialize(const StepIO& io, size_t n) {
  if (!io.guided()) return io.model_output;
  guided_buf_.resize(n);
  const kernels::GuidedOutput mo{io.uncond, io.cond, io.guidance};
  float* g = guided_buf_.data();
  FASTGEN_SIMD for (size_t i = 0; i < n; ++i) g[i] = mo(i);
  return guided_buf_.data();
}

bool Scheduler::feed_after(const StepIO& io, const float* out, size_t n) {
  // The step has advanced step_index_ to the next step's index.
  if (!io.feed[0] || step_index_ < 0 || step_index_ >= static_cast<int>(timesteps_.size())) return false;
  const auto scale = input_scale_at(step_index_);
  if (!scale) return false;
  float* f0 = io.feed[0];
  float* f1 = io.feed[1] ? io.feed[1] : io.feed[0];
  const float s = *scale;
  FASTGEN_SIMD for (size_t i = 0; i < n; ++i) {
    const float w = out[i] * s;
    f0[i] = w;
    f1[i] = w;
  }
  return true;
}

bool Scheduler::step_io(const StepIO& io, double t, const float* sample, float* out, size_t n, size_t batch,
                        const float* noise, double eta) {
  step(materialize(io, n), t, sample, out, n, batch, noise, eta);
  return feed_after(io, out, n);
}

void Scheduler::add_noise(const float* original, const float* noise, float* out, size_t n, double t) {
  throw ArgumentError(class_name() + " does not support add_noise");
}

void Scheduler::set_begin_index(int index) {
  require_timesteps();
  if (index < 0 || index >= static_cast<int>(timesteps_.size()))
    throw ArgumentError("begin_index " + std::to_string(index) + " is outside the schedule of " +
                        std::to_string(timesteps_.size()) + " timesteps");
  begin_index_ = index;
}

void Scheduler::reset_state(int num_inference_steps) {
  num_inference_steps_ = num_inference_steps;
  step_index_ = -1;
  begin_index_ = -1;
}

void Scheduler::require_timesteps() const {
  if (timesteps_.empty()) throw ScheduleError(class_name() + ": call set_timesteps() before stepping");
}

int Scheduler::index_for_timestep(double t) const {
  require_timesteps();
  std::vector<int> hits;
  for (size_t i = 0; i < timesteps_.size(); ++i)
    if (timesteps_[i] == t) hits.push_back(static_cast<int>(i));
  if (hits.empty()) {
    // float32 timesteps (Euler, flow matching) come back from numpy as float32: compare in float32.
    for (size_t i = 0; i < timesteps_.size(); ++i)
      if (static_cast<float>(timesteps_[i]) == static_cast<float>(t)) hits.push_back(static_cast<int>(i));
  }
  if (hits.empty()) throw ScheduleError("timestep " + fmt(t) + " is not in the " + class_name() + " schedule");
  return hits.size() > 1 ? hits[1] : hits[0];
}

int Scheduler::current_index(double t) {
  require_timesteps();
  if (step_index_ < 0) step_index_ = begin_index_ >= 0 ? begin_index_ : index_for_timestep(t);
  if (step_index_ >= static_cast<int>(timesteps_.size()))
    throw ScheduleError(class_name() + ": step() called more often than the " +
                        std::to_string(timesteps_.size()) + " scheduled timesteps; call set_timesteps() again");
  const double expect = timesteps_[step_index_];
  if (expect != t && static_cast<float>(expect) != static_cast<float>(t))
    throw ScheduleError(class_name() + ": step " + std::to_string(step_index_) + " expects timestep " + fmt(expect) +
                        ", got " + fmt(t));
  return step_index_;
}

const float* Scheduler::noise_or_draw(const float* noise, size_t n) {
  if (noise) return noise;
  noise_buf_.resize(n);
  generator_.normal(noise_buf_.data(), n);
  return noise_buf_.data();
}

Prediction parse_prediction(const Config& cfg, bool allow_flow) {
  std::vector<std::string> allowed = prediction_type_names();
  if (allow_flow) allowed.push_back("flow_prediction");
  const std::string p = cfg.get_string("prediction_type", "epsilon", allowed);
  if (p == "epsilon") return Prediction::Epsilon;
  if (p == "sample") return Prediction::Sample;
  if (p == "v_prediction") return Prediction::VPrediction;
  return Prediction::Flow;
}

void dynamic_threshold(float* x0, size_t n, size_t batch, double ratio, double max_value) {
  if (n == 0) return;  // empty batch: nothing to threshold (and no quantile to take)
  if (batch == 0 || n % batch != 0) throw ShapeError("dynamic thresholding: size not divisible by batch");
  const size_t row = n / batch;
  std::vector<double> a(row);
  for (size_t b = 0; b < batch; ++b) {
    float* x = x0 + b * row;
    for (size_t i = 0; i < row; ++i) a[i] = std::fabs(static_cast<double>(x[i]));
    std::sort(a.begin(), a.end());
    // torch.quantile, linear interpolation
    const double pos = ratio * (row - 1);
    const size_t lo = static_cast<size_t>(std::floor(pos));
    const size_t hi = std::min(lo + 1, row - 1);
    double s = a[lo] + (a[hi] - a[lo]) * (pos - lo);
    s = std::min(std::max(s, 1.0), max_value);
    const float sf = static_cast<float>(s);
    for (size_t i = 0; i < row; ++i) x[i] = std::min(std::max(x[i], -sf), sf) / sf;
  }
}

}  // namespace fastgen

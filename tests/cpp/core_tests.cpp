// C++ unit tests of the core (no Python): Philox known answers, every scheduler through the
// sampling loop, the video loops, caption search, FrameRing bounds and the scheduler's in-use
// guard. Built with -DFASTGEN_BUILD_TESTS=ON and run by ctest; meant to be run under
// AddressSanitizer + UndefinedBehaviorSanitizer as well (-DFASTGEN_SANITIZE=address,undefined, see
// README "Sanitizers"). No test framework: a CHECK macro counts failures, main() returns their number.
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common.h"
#include "random/philox.h"
#include "sampling/loop.h"
#include "sampling/step_cache.h"
#include "schedulers/scheduler.h"
#include "text/search.h"
#include "video/frames.h"

using namespace fastgen;

namespace {

int failures = 0;

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                                    \
    }                                                                                \
  } while (0)

// Whether f() throws exactly an E (or a subclass); any other exception or none counts as false.
template <class E, class F>
bool throws(F&& f) {
  try {
    f();
  } catch (const E&) {
    return true;
  } catch (...) {
    return false;
  }
  return false;
}
#define CHECK_THROWS(E, expr) CHECK(throws<E>([&] { expr; }))

bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

// A smooth stand-in for the network: depends on the input and the timestep.
void fake_model(const float* x, float* out, size_t n, double t) {
  const float c = static_cast<float>(std::cos(t / 400.0));
  for (size_t i = 0; i < n; ++i) out[i] = 0.5f * x[i] * c + 0.1f * std::sin(x[i]);
}

Config sd_config() {
  Config c;
  c.set("beta_schedule", std::string("scaled_linear"));
  c.set("beta_start", 0.00085);
  c.set("beta_end", 0.012);
  c.set("num_train_timesteps", 1000LL);
  c.set("steps_offset", 1LL);
  c.set("clip_sample", false);
  c.set("set_alpha_to_one", false);
  return c;
}

// ------------------------------------------------------------------------------------- Philox

void test_philox() {
  // Random123 known-answer vectors for Philox-4x32-10.
  CHECK((philox4x32_10({0, 0, 0, 0}, {0, 0}) == std::array<uint32_t, 4>{0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8}));
  CHECK((philox4x32_10({0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, {0xFFFFFFFF, 0xFFFFFFFF}) ==
         std::array<uint32_t, 4>{0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD}));
  CHECK((philox4x32_10({0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344}, {0xA4093822, 0x299F31D0}) ==
         std::array<uint32_t, 4>{0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1}));
  // Normals: deterministic, prefix-stable, block offsets continue the stream; odd sizes too.
  std::vector<float> a(1001), b(13), c(8);
  CHECK(fill_normal(a.data(), a.size(), 42) == 251);
  fill_normal(b.data(), b.size(), 42);
  CHECK(std::memcmp(a.data(), b.data(), b.size() * sizeof(float)) == 0);
  fill_normal(c.data(), c.size(), 42, 2);
  CHECK(std::memcmp(a.data() + 8, c.data(), c.size() * sizeof(float)) == 0);
  CHECK(all_finite(a));
  double mean = 0;
  for (float x : a) mean += x;
  CHECK(std::fabs(mean / a.size()) < 0.15);
  std::vector<float> u(999);
  fill_uniform(u.data(), u.size(), 7);
  for (float x : u) CHECK(x >= 0.0f && x < 1.0f);
  Generator g(5);
  std::vector<float> g1(6), g2(6), ref(12);
  g.normal(g1.data(), 6);
  g.normal(g2.data(), 6);
  fill_normal(ref.data(), 12, 5);
  CHECK(std::memcmp(ref.data(), g1.data(), 6 * sizeof(float)) == 0);  // first draw: blocks 0-1
  CHECK(g.offset() == 4);
}

// ------------------------------------------------------------------------------ sampling loops

// Python's reference loop (scale, CFG batch, combine, step) against sample_loop, for one scheduler.
int loops_run = 0;

void check_loop_equals_steps(const std::string& name, const Config& cfg, double guidance, bool callback) {
  const size_t batch = 2, per = 4 * 5 * 3, n = batch * per;
  std::unique_ptr<Scheduler> a, b;
  try {
    a = make_scheduler(name, cfg);
    b = make_scheduler(name, cfg);
  } catch (const ConfigError&) {
    return;  // a family that needs other config keys: covered by the Python tests
  }
  a->set_timesteps(7, std::nullopt);
  b->set_timesteps(7, std::nullopt);
  a->generator().manual_seed(3);
  b->generator().manual_seed(3);
  std::vector<float> lat(n);
  fill_normal(lat.data(), n, 1);
  for (float& v : lat) v *= static_cast<float>(a->init_noise_sigma());
  std::vector<float> ref = lat;

  const LoopOptions opt{guidance, 0.0, 0.0};
  const bool cfg_batch = uses_cfg(opt);
  const size_t rows = cfg_batch ? 2 * batch : batch;
  std::vector<float> x_in(rows * per), pred(rows * per);
  DenoiseFn denoise = [&](float* x, size_t r, double t) -> const float* {
    CHECK(r == rows);
    fake_model(x, pred.data(), r * per, t);
    return pred.data();
  };
  int seen = 0;
  StepCallback cb;
  if (callback) cb = [&](int, double, float*) { return ++seen < 100; };
  const int steps = sample_loop(*a, lat.data(), batch, per, x_in.data(), denoise, cb, opt);
  CHECK(steps == static_cast<int>(a->timesteps().size()));
  CHECK(!callback || seen == steps);
  CHECK(!a->in_use());

  std::vector<float> in(rows * per), out(rows * per), guided(n);
  for (double t : b->timesteps()) {
    b->scale_model_input(ref.data(), in.data(), n, t);
    if (cfg_batch) std::memcpy(in.data() + n, in.data(), n * sizeof(float));
    fake_model(in.data(), out.data(), rows * per, t);
    const float* mo = out.data();
    if (cfg_batch) {
      combine_guidance(out.data(), out.data() + n, guided.data(), batch, per, guidance, 0.0);
      mo = guided.data();
    }
    b->step(mo, t, ref.data(), ref.data(), n, batch, nullptr, 0.0);
  }
  CHECK(all_finite(lat));
  if (std::memcmp(lat.data(), ref.data(), n * sizeof(float)) != 0) {
    std::fprintf(stderr, "  %s (guidance %g, callback %d): loop != steps\n", name.c_str(), guidance, callback);
    ++failures;
  }
  ++loops_run;
}

void test_every_scheduler_loop() {
  const std::vector<std::string> names = scheduler_names();
  CHECK(names.size() >= 9);
  for (const auto& name : names)
    for (double g : {1.0, 5.0})
      for (bool cb : {false, true}) check_loop_equals_steps(name, sd_config(), g, cb);
  Config karras = sd_config();
  karras.set("use_karras_sigmas", true);
  karras.set("solver_order", 3LL);
  check_loop_equals_steps("DPMSolverMultistepScheduler", karras, 4.0, false);
  check_loop_equals_steps("UniPCMultistepScheduler", karras, 4.0, true);
  Config thr = sd_config();
  thr.set("thresholding", true);
  check_loop_equals_steps("DPMSolverMultistepScheduler", thr, 4.0, false);
  check_loop_equals_steps("DDPMScheduler", thr, 1.0, false);
  CHECK(loops_run == static_cast<int>(names.size()) * 4 + 4);  // no family skipped
}

void test_scheduler_errors() {
  CHECK_THROWS(ConfigError, make_scheduler("NoSuchScheduler", Config{}));
  auto s = make_scheduler("DDIMScheduler", sd_config());
  std::vector<float> x(8, 0.5f), lat(8, 0.1f);
  CHECK_THROWS(ScheduleError, s->step(x.data(), 1.0, x.data(), x.data(), 8, 1, nullptr, 0.0));  // no schedule
  DenoiseFn id = [&](float* in, size_t, double) -> const float* { return in; };
  CHECK_THROWS(ScheduleError, sample_loop(*s, lat.data(), 1, 8, x.data(), id, {}, LoopOptions{1.0, 0.0, 0.0}));
  CHECK(!s->in_use());
  s->set_timesteps(4, std::nullopt);
  CHECK_THROWS(ScheduleError, s->step(x.data(), 17.0, x.data(), x.data(), 8, 1, nullptr, 0.0));
  CHECK_THROWS(ArgumentError, s->set_begin_index(4));
  CHECK_THROWS(ArgumentError, sample_loop(*s, lat.data(), 1, 8, x.data(), id, {}, LoopOptions{-1.0, 0.0, 0.0}));
  for (double t : s->timesteps()) s->step(x.data(), t, x.data(), x.data(), 8, 1, nullptr, 0.0);
  CHECK_THROWS(ScheduleError, s->step(x.data(), s->timesteps().back(), x.data(), x.data(), 8, 1, nullptr, 0.0));
}

void test_video_loops() {
  auto s = make_scheduler("EulerDiscreteScheduler", sd_config());
  s->set_timesteps(3, std::nullopt);
  VideoLoopShape sh;
  sh.batch = 1;
  sh.channels = 2;
  sh.frames = 11;
  sh.hw = 6;
  sh.context_length = 4;
  sh.context_stride = 3;
  const LoopOptions opt{3.0, 0.5, 0.0};
  const size_t n = sh.batch * sh.channels * sh.frames * sh.hw, nw = sh.batch * sh.channels * 4 * sh.hw;
  std::vector<float> lat(n), x_in(2 * nw), pred(2 * nw);
  fill_normal(lat.data(), n, 9);
  std::vector<int> starts;
  WindowDenoiseFn fn = [&](float* x, size_t rows, int start, double t) -> const float* {
    CHECK(rows == 2);
    starts.push_back(start);
    fake_model(x, pred.data(), 2 * nw, t);
    return pred.data();
  };
  int calls = 0;
  StepCallback cb = [&](int, double, float*) { return ++calls < 2; };  // stops after the second step
  CHECK(video_sample_loop(*s, lat.data(), sh, x_in.data(), fn, cb, opt) == 2);
  CHECK((starts == std::vector<int>{0, 3, 6, 7, 0, 3, 6, 7}));
  CHECK(all_finite(lat));
  CHECK(!s->in_use());

  // FIFO: a queue of 5 latent frames, 3 iterations.
  sh.frames = 5;
  const size_t q = sh.batch * sh.channels * sh.frames * sh.hw, head = sh.batch * sh.channels * sh.hw;
  std::vector<float> queue(q), noise(head, 0.25f);
  fill_normal(queue.data(), q, 4);
  FifoCoefficients coef;
  for (int j = 0; j < 5; ++j) {
    coef.sqrt_a.push_back(0.9f - 0.1f * j);
    coef.sqrt_1ma.push_back(0.3f + 0.1f * j);
    coef.sqrt_a_prev.push_back(0.95f - 0.1f * j);
    coef.sqrt_1ma_prev.push_back(0.2f + 0.1f * j);
  }
  std::vector<int> heads;
  FifoExchangeFn ex = [&](int index, const float* h) -> const float* {
    heads.push_back(index);
    for (size_t i = 0; i < head; ++i) CHECK(std::isfinite(h[i]));
    return noise.data();
  };
  CHECK(fifo_sample_loop(queue.data(), sh, coef, 3, x_in.data(), fn, ex, opt) == 3);
  CHECK((heads == std::vector<int>{0, 1, 2}));
  CHECK(all_finite(queue));
  coef.sqrt_a.pop_back();
  CHECK_THROWS(ShapeError, fifo_sample_loop(queue.data(), sh, coef, 3, x_in.data(), fn, ex, opt));
}

void test_caption_search() {
  const size_t vocab = 7;
  std::vector<float> logits;
  SearchStepFn step = [&](const std::vector<int64_t>& ids, size_t rows, size_t len,
                          const std::vector<int64_t>*, size_t& v) -> const float* {
    v = vocab;
    logits.assign(rows * vocab, 0.0f);
    for (size_t r = 0; r < rows; ++r) {
      const int64_t last = ids[r * len + len - 1];
      for (size_t k = 0; k < vocab; ++k)
        logits[r * vocab + k] = static_cast<float>(std::sin(0.7 * static_cast<double>(last + 1) * (k + 1)));
    }
    return logits.data();
  };
  for (int beams : {1, 3}) {
    SearchOptions o;
    o.max_new_tokens = 6;
    o.num_beams = beams;
    o.num_return_sequences = beams == 1 ? 1 : 2;
    o.no_repeat_ngram_size = 2;
    o.repetition_penalty = 1.3;
    o.eos_token_ids = {6};
    o.has_pad = true;
    o.pad_token_id = 0;
    const SearchResult r = search({1, 2}, 2, 1, o, step);
    CHECK(r.rows == 2 * static_cast<size_t>(o.num_return_sequences));
    CHECK(r.sequences.size() == r.rows * r.length);
    CHECK(r.length >= 2 && r.length <= 7);
    for (int64_t id : r.sequences) CHECK(id >= 0 && id < static_cast<int64_t>(vocab));
  }
}

// ------------------------------------------------------------------------------------ FrameRing

void test_frame_ring() {
  CHECK_THROWS(ArgumentError, FrameRing(0, 3, 4, 4));
  CHECK_THROWS(ArgumentError, FrameRing(3, 0, 4, 4));
  CHECK_THROWS(ArgumentError, FrameRing(3, 3, 0, 4));
  CHECK_THROWS(ArgumentError, FrameRing(3, 3, 4, 0));
  CHECK_THROWS(ArgumentError, FrameRing(SIZE_MAX / 2, 3, 1 << 20, 1 << 20));  // size overflows
  FrameRing ring(3, 3, 2, 4);
  const size_t per = 3 * 2 * 4;
  std::vector<float> frames(4 * per), out(per);
  for (size_t i = 0; i < frames.size(); ++i) frames[i] = -1.5f + 3.0f * static_cast<float>(i) / frames.size();
  CHECK_THROWS(ShapeError, ring.push(frames.data(), 1, 3, 4, 4));
  CHECK_THROWS(ShapeError, ring.push(frames.data(), 1, 3, 4, 2));
  CHECK_THROWS(ShapeError, ring.push(frames.data(), 1, 1, 2, 4));
  CHECK_THROWS(ShapeError, ring.push(frames.data(), 0, 3, 2, 4));
  CHECK_THROWS(ArgumentError, ring.push(nullptr, 1, 3, 2, 4));
  CHECK_THROWS(ArgumentError, ring.push(frames.data(), 4, 3, 2, 4));  // more than the capacity
  CHECK(ring.size() == 0);
  CHECK_THROWS(ArgumentError, ring.pop(out.data(), 2, 4));  // empty
  ring.push(frames.data(), 2, 3, 2, 4);
  CHECK_THROWS(ArgumentError, ring.push(frames.data(), 2, 3, 2, 4));  // 1 slot free
  CHECK(ring.size() == 2);
  CHECK_THROWS(ShapeError, ring.pop(out.data(), 5, 5));  // once read past the buffer
  CHECK_THROWS(ShapeError, ring.pop(out.data(), 0, 4));  // once divided by zero
  CHECK_THROWS(ShapeError, ring.pop(out.data(), 4, 2));
  CHECK_THROWS(ArgumentError, ring.pop(nullptr, 2, 4));
  CHECK(ring.size() == 2);
  // values: clamp(x / 2 + 0.5, 0, 1), CHW -> HWC, oldest first, across the wrap-around
  for (int round = 0; round < 3; ++round) {
    for (size_t f = 0; f < 2; ++f) {
      ring.pop(out.data(), 2, 4);
      bool ok = true;
      for (size_t c = 0; c < 3; ++c)
        for (size_t p = 0; p < 8; ++p) {
          const float v = std::min(std::max(frames[f * per + c * 8 + p] / 2 + 0.5f, 0.0f), 1.0f);
          ok = ok && out[p * 3 + c] == v;
        }
      CHECK(ok);
    }
    CHECK(ring.size() == 0);
    ring.push(frames.data(), 2, 3, 2, 4);
  }
}

// ------------------------------------------------------------------------------- in-use guard

void test_use_flag() {
  UseFlag flag;
  auto msg = [](const char* holder, bool same) { return std::string(holder) + (same ? " here" : " elsewhere"); };
  {
    const auto g = flag.acquire("outer", UseFlag::Access::Exclusive, msg);
    CHECK(flag.in_use());
    // nested in the same thread: exclusive refused, shared allowed (without taking the flag)
    try {
      flag.acquire("inner", UseFlag::Access::Exclusive, msg);
      CHECK(false);
    } catch (const ConcurrentUseError& e) {
      CHECK(std::string(e.what()) == "outer here");
    }
    { const auto s = flag.acquire("read", UseFlag::Access::Shared, msg); }
    CHECK(flag.in_use());  // the nested shared guard did not release it
    // another thread: both refused
    std::string seen;
    std::thread([&] {
      try {
        flag.acquire("read", UseFlag::Access::Shared, msg);
      } catch (const ConcurrentUseError& e) {
        seen = e.what();
      }
    }).join();
    CHECK(seen == "outer elsewhere");
  }
  CHECK(!flag.in_use());
  { const auto s = flag.acquire("read", UseFlag::Access::Shared, msg); CHECK(flag.in_use()); }
  CHECK(!flag.in_use());
}

void test_scheduler_guard() {
  auto s = make_scheduler("DDIMScheduler", sd_config());
  s->set_timesteps(5, std::nullopt);
  const size_t n = 64;
  std::vector<float> lat(n, 0.3f), x(n), pred(n);
  // from the loop's own callbacks: every exclusive use refused, shared reads allowed
  int refused = 0;
  DenoiseFn nested = [&](float* in, size_t, double t) -> const float* {
    for (const char* op : {"set_timesteps", "step", "sample_loop"}) {
      try {
        s->use(op);
      } catch (const ConcurrentUseError& e) {
        ++refused;
        CHECK(std::string(e.what()).find("clone()") != std::string::npos);
      }
    }
    std::vector<float> y(n);
    std::vector<float> l2(n);
    DenoiseFn inner = [&](float* v, size_t, double) -> const float* { return v; };
    CHECK_THROWS(ConcurrentUseError, sample_loop(*s, l2.data(), 1, n, y.data(), inner, {}, LoopOptions{1.0, 0.0, 0.0}));
    { const auto r = s->use("add_noise", UseFlag::Access::Shared); }
    fake_model(in, pred.data(), n, t);
    return pred.data();
  };
  sample_loop(*s, lat.data(), 1, n, x.data(), nested, {}, LoopOptions{1.0, 0.0, 0.0});
  CHECK(refused == 3 * 5);
  CHECK(!s->in_use());

  // another thread: a loop waits in denoise while this thread is refused and runs a clone
  s->set_timesteps(5, std::nullopt);
  std::atomic<int> phase{0};
  DenoiseFn waiting = [&](float* in, size_t, double t) -> const float* {
    if (phase.load() == 0) {
      phase.store(1);
      while (phase.load() != 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    fake_model(in, pred.data(), n, t);
    return pred.data();
  };
  std::vector<float> lat_a(n, 0.3f), x_a(n);
  std::thread a([&] { sample_loop(*s, lat_a.data(), 1, n, x_a.data(), waiting, {}, LoopOptions{1.0, 0.0, 0.0}); });
  while (phase.load() != 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK(s->in_use());
  CHECK_THROWS(ConcurrentUseError, s->use("set_timesteps"));
  CHECK_THROWS(ConcurrentUseError, s->use("step_index", UseFlag::Access::Shared));
  std::vector<float> lat_b(n, 0.3f), x_b(n), pred_b(n);
  DenoiseFn plain = [&](float* in, size_t, double t) -> const float* {
    fake_model(in, pred_b.data(), n, t);
    return pred_b.data();
  };
  CHECK_THROWS(ConcurrentUseError, sample_loop(*s, lat_b.data(), 1, n, x_b.data(), plain, {}, LoopOptions{1.0, 0.0, 0.0}));
  auto c = s->clone();
  c->set_timesteps(5, std::nullopt);
  sample_loop(*c, lat_b.data(), 1, n, x_b.data(), plain, {}, LoopOptions{1.0, 0.0, 0.0});
  phase.store(2);
  a.join();
  CHECK(!s->in_use());
  CHECK(std::memcmp(lat_a.data(), lat_b.data(), n * sizeof(float)) == 0);  // the clone computed the same

  // the guard is released when the loop throws
  s->set_timesteps(5, std::nullopt);
  DenoiseFn boom = [&](float*, size_t, double) -> const float* { throw std::runtime_error("network failed"); };
  CHECK_THROWS(std::runtime_error, sample_loop(*s, lat.data(), 1, n, x.data(), boom, {}, LoopOptions{1.0, 0.0, 0.0}));
  CHECK(!s->in_use());
  s->set_timesteps(3, std::nullopt);
}

}  // namespace

// ------------------------------------------------------------------------------------- step cache

void test_step_cache() {
  // DeepCache: uniform every interval-th step; the non-uniform schedule as the deepcache package computes it
  CHECK((deepcache_full_steps(10, 3, true, 1.4, 15) == std::vector<int>{0, 3, 6, 9}));
  CHECK((deepcache_full_steps(20, 3, false, 1.3, 5) == std::vector<int>{0, 3, 5, 7, 9, 13, 16}));
  CHECK_THROWS(ArgumentError, deepcache_full_steps(10, 0, true, 1.4, 15));
  // First-Block Cache: relative L1 against the residual of the last full step
  FirstBlockCache fbc(0.1);
  std::vector<float> r(8, 1.0f), r2(8, 1.05f), r3(8, 1.2f);
  CHECK(fbc.should_compute(r.data(), r.size()));
  CHECK(!fbc.should_compute(r2.data(), r2.size()));
  CHECK(fbc.should_compute(r3.data(), r3.size()));
  CHECK_THROWS(ArgumentError, FirstBlockCache(std::nan("")));
  // TaylorSeer: a line is extrapolated exactly with order 1
  TaylorSeer ts(2, 2, -1, 1);
  std::vector<bool> full;
  for (int step = 0; step < 6; ++step) {
    const bool f = ts.next_step();
    full.push_back(f);
    std::vector<float> x(3, 2.0f * static_cast<float>(step) + 1.0f), y(3);
    if (f) {
      ts.update(x.data(), x.size());
    } else {
      ts.predict(y.data(), y.size());
      CHECK(std::fabs(y[0] - x[0]) < 1e-6f);
    }
  }
  CHECK((full == std::vector<bool>{true, true, false, true, false, true}));
}

int main() {
  const std::vector<std::pair<const char*, void (*)()>> tests = {
      {"philox", test_philox},
      {"every_scheduler_loop", test_every_scheduler_loop},
      {"scheduler_errors", test_scheduler_errors},
      {"video_loops", test_video_loops},
      {"caption_search", test_caption_search},
      {"frame_ring", test_frame_ring},
      {"use_flag", test_use_flag},
      {"scheduler_guard", test_scheduler_guard},
      {"step_cache", test_step_cache},
  };
  for (const auto& [name, fn] : tests) {
    const int before = failures;
    try {
      fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s: unexpected exception: %s\n", name, e.what());
      ++failures;
    }
    std::printf("%-24s %s\n", name, failures == before ? "ok" : "FAILED");
  }
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}

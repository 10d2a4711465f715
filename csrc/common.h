// Shared definitions of the fastgen C++ core: error types and small helpers.
// Nothing here depends on Python; the bindings translate these exceptions to fastgen.* errors.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

// Marks an element-wise loop whose iterations are independent (each reads and writes only index i,
// though `out` may be the same buffer as an input). GCC and Clang then vectorise it without runtime
// alias checks, which they give up on for loops with many pointers (-fopenmp-simd: no OpenMP runtime).
#if defined(_OPENMP) || defined(FASTGEN_OPENMP_SIMD)
#define FASTGEN_SIMD _Pragma("omp simd")
#else
#define FASTGEN_SIMD
#endif

namespace fastgen {

// A configuration value is unknown or out of range (-> fastgen.ConfigError).
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// A call argument is out of range or inconsistent (-> fastgen.InvalidArgumentError).
struct ArgumentError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// An array has the wrong shape or size (-> fastgen.ShapeError).
struct ShapeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// A timestep is not in the schedule, or the schedule is not set (-> fastgen.ScheduleError).
struct ScheduleError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// The caller asked to stop (callback returned False) (-> fastgen.CancelledError).
struct Cancelled : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An object that is not thread-safe (a Scheduler, a FrameRing) is already in use by another call
// (-> fastgen.ConcurrentUseError).
struct ConcurrentUseError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Detects concurrent or re-entrant use of an object that is not thread-safe, without locking: one
// atomic holds the thread using the object. An uncontended call pays one compare-and-swap and one
// store (per step, or once per sampling loop) and never waits; a second user gets ConcurrentUseError.
//
//   Exclusive: a call that changes the object's state (step, a sampling loop, set_timesteps). Refused
//              while anyone uses the object, including a callback of the running loop in its own thread.
//   Shared:    a call that reads state a running call changes (add_noise reads the step index).
//              Refused while another thread uses the object; allowed from the using thread itself (a
//              loop's callback, while the loop waits for it), where it cannot race.
class UseFlag {
 public:
  enum class Access { Exclusive, Shared };

  // Releases the flag on destruction (empty for a nested shared use, which did not take it).
  class Guard {
   public:
    Guard() = default;
    Guard(Guard&& o) noexcept : flag_(std::exchange(o.flag_, nullptr)) {}
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    Guard& operator=(Guard&&) = delete;
    ~Guard() {
      if (flag_) flag_->release();
    }

   private:
    friend class UseFlag;
    explicit Guard(UseFlag* f) : flag_(f) {}
    UseFlag* flag_ = nullptr;
  };

  UseFlag() = default;
  UseFlag(const UseFlag&) = delete;
  UseFlag& operator=(const UseFlag&) = delete;

  // Become the object's user for `operation` (a string literal), or throw
  // ConcurrentUseError(message(holder, same_thread)) where holder names the running operation.
  template <class Message>
  Guard acquire(const char* operation, Access access, Message&& message) {
    const std::thread::id me = std::this_thread::get_id();
    std::thread::id owner{};
    if (owner_.compare_exchange_strong(owner, me, std::memory_order_acquire, std::memory_order_relaxed)) {
      operation_.store(operation, std::memory_order_relaxed);
      return Guard(this);
    }
    if (access == Access::Shared && owner == me) return Guard();
    const char* holder = operation_.load(std::memory_order_relaxed);
    throw ConcurrentUseError(message(holder ? holder : "call", owner == me));
  }

  // Whether some call is using the object now (a snapshot, for tests and diagnostics).
  bool in_use() const { return owner_.load(std::memory_order_relaxed) != std::thread::id{}; }

 private:
  void release() {
    operation_.store(nullptr, std::memory_order_relaxed);
    owner_.store(std::thread::id{}, std::memory_order_release);
  }

  std::atomic<std::thread::id> owner_{};
  std::atomic<const char*> operation_{nullptr};
};

// Format a double the way Python's repr would print it for short values.
std::string fmt(double v);

}  // namespace fastgen

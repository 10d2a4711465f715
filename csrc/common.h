// Shared definitions of the fastgen C++ core: error types and small helpers.
// Nothing here depends on Python; the bindings translate these exceptions to fastgen.* errors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

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

// Format a double the way Python's repr would print it for short values.
std::string fmt(double v);

}  // namespace fastgen

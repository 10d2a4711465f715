// Shared helpers of the pybind11 bindings (the only Python-aware code of the core).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "sampling/loop.h"

#include <string>
#include <vector>

namespace fastgen::py_bind {

namespace py = pybind11;

// A float32, C-contiguous view of `obj` (copied only when not contiguous). Raises
// fastgen.ShapeError for anything that is not a float32 array.
py::array_t<float, py::array::c_style> require_f32(const py::handle& obj, const char* name);
std::vector<ssize_t> shape_of(const py::array& a);
std::string shape_str(const std::vector<ssize_t>& shape);

// The float32 prediction a Python denoise() call returned, checked to hold `expect` values (the model
// input's shape is `x_shape`); `keep` holds it alive until the next call. Call with the GIL held.
const float* checked_prediction(const py::object& result, ssize_t expect, const std::vector<ssize_t>& x_shape,
                                py::object& keep);

// A new C-contiguous float32 array of `shape` whose data starts 2 KiB away from `other` modulo 4 KiB.
// The sampling loop streams its latents and model-input buffers in the same pass; when their
// addresses agree in the low 12 bits (as two fresh large numpy allocations do: both are mmap'd pages
// plus the same header) loads falsely depend on stores (4K aliasing) and a step runs 2-4x slower.
py::array_t<float> empty_staggered(const std::vector<ssize_t>& shape, const void* other);

// The loop's per-step callback calling Python's callback(step, t, latents) (returning False stops the
// loop), or an empty one when `callback` is None. Both arguments must outlive the returned function.
StepCallback python_step_callback(const py::object& callback, const py::array& latents);
// What a step callback's `result` asks for: None / True (or numpy.bool_ True) continue, False stops;
// anything else raises ArgumentError naming `callback` and the result's type. Call with the GIL held.
bool continue_after(const py::handle& callback, const py::handle& result);

void bind_random(py::module_& m);
void bind_schedulers(py::module_& m);
void bind_sampling(py::module_& m);
void bind_text(py::module_& m);
void bind_video(py::module_& m);
void bind_step_cache(py::module_& m);

}  // namespace fastgen::py_bind

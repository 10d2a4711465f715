// The pybind11 module fastgen._core: error translation and registration of each part.
#include "bindings/bindings.h"

#include "common.h"

#include <new>
#include <stdexcept>

namespace fastgen::py_bind {

std::vector<ssize_t> shape_of(const py::array& a) {
  return std::vector<ssize_t>(a.shape(), a.shape() + a.ndim());
}

std::string shape_str(const std::vector<ssize_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) s += ",";
  return s + ")";
}

py::array_t<float, py::array::c_style> require_f32(const py::handle& obj, const char* name) {
  if (!py::isinstance<py::array>(obj))
    throw ShapeError(std::string(name) + " must be a numpy float32 array, got " +
                     std::string(py::str(py::type::of(obj).attr("__name__"))));
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<float>()))
    throw ShapeError(std::string(name) + " must be float32, got " + std::string(py::str(a.dtype())));
  return py::array_t<float, py::array::c_style>::ensure(a);
}

const float* checked_prediction(const py::object& result, ssize_t expect, const std::vector<ssize_t>& x_shape,
                                py::object& keep) {
  auto arr = require_f32(result, "denoise() result");
  if (arr.size() != expect)
    throw ShapeError("denoise() must return " + std::to_string(expect) + " float32 values shaped like its input " +
                     shape_str(x_shape) + ", got shape " + shape_str(shape_of(arr)));
  keep = arr;
  return arr.data();
}

namespace {
PyObject* numpy_bool_type = nullptr;  // numpy.bool_, set when the module loads

std::string type_name(const py::handle& obj) { return py::str(py::type::of(obj).attr("__name__")); }

std::string callable_name(const py::handle& fn) {
  for (const char* attr : {"__qualname__", "__name__"})
    if (py::hasattr(fn, attr)) return py::str(fn.attr(attr));
  return type_name(fn);
}
}  // namespace

bool continue_after(const py::handle& callback, const py::handle& result) {
  if (result.is_none() || result.ptr() == Py_True) return true;
  if (result.ptr() == Py_False) return false;
  if (numpy_bool_type && PyObject_TypeCheck(result.ptr(), reinterpret_cast<PyTypeObject*>(numpy_bool_type))) {
    const int truth = PyObject_IsTrue(result.ptr());
    if (truth < 0) throw py::error_already_set();
    return truth == 1;
  }
  throw ArgumentError("the step callback " + callable_name(callback) +
                      "(step, t, latents) must return None or True to continue, or False to stop; it returned " +
                      type_name(result));
}

StepCallback python_step_callback(const py::object& callback, const py::array& latents) {
  if (callback.is_none()) return {};
  return [&callback, &latents](int step, double t, float*) -> bool {
    py::gil_scoped_acquire gil;
    py::object r = callback(step, py::float_(t), latents);
    return continue_after(callback, r);
  };
}

py::array_t<float> empty_staggered(const std::vector<ssize_t>& shape, const void* other) {
  constexpr uintptr_t page = 4096, half = 2048;
  ssize_t count = 1;
  for (ssize_t d : shape) count *= d;
  py::array_t<float> flat(count + static_cast<ssize_t>(page / sizeof(float)));  // one page of slack
  float* base = flat.mutable_data();
  const uintptr_t want = (reinterpret_cast<uintptr_t>(other) + half) % page;
  const uintptr_t shift = (want + page - reinterpret_cast<uintptr_t>(base) % page) % page;
  return py::array_t<float>(shape, base + shift / sizeof(float), flat);  // a view that keeps `flat` alive
}

}  // namespace fastgen::py_bind

namespace py = pybind11;
using namespace fastgen;

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastgen C++ core: schedulers, sampling loop, Philox noise, video frame buffers, caption search";
#ifndef FASTGEN_ISA
#define FASTGEN_ISA "portable"
#endif
  // How the core was compiled: "native" (-march=native, the source-build default) or "portable",
  // and the widest vector instruction set the compiler could use.
  m.attr("build_isa") = FASTGEN_ISA;
#if defined(__AVX512F__)
  m.attr("simd") = "avx512";
#elif defined(__AVX2__)
  m.attr("simd") = "avx2";
#elif defined(__SSE2__)
  m.attr("simd") = "sse2";
#elif defined(__ARM_NEON)
  m.attr("simd") = "neon";
#else
  m.attr("simd") = "scalar";
#endif
  py_bind::numpy_bool_type = py::object(py::module_::import("numpy").attr("bool_")).release().ptr();
  // Map C++ exceptions onto the Python hierarchy in fastgen.errors (a pure-Python module): every C++
  // exception becomes a fastgen.FastgenError subclass. Python exceptions (a callback's, numpy's) pass
  // through unchanged. Local: the translator applies to this module's functions only, never to other
  // pybind11 extensions (onnxruntime) that may share pybind11's internals.
  py::module_ errors = py::module_::import("fastgen.errors");
  static PyObject* config_error = py::object(errors.attr("ConfigError")).release().ptr();
  static PyObject* argument_error = py::object(errors.attr("InvalidArgumentError")).release().ptr();
  static PyObject* shape_error = py::object(errors.attr("ShapeError")).release().ptr();
  static PyObject* schedule_error = py::object(errors.attr("ScheduleError")).release().ptr();
  static PyObject* cancelled_error = py::object(errors.attr("CancelledError")).release().ptr();
  static PyObject* resource_error = py::object(errors.attr("ResourceError")).release().ptr();
  static PyObject* concurrent_error = py::object(errors.attr("ConcurrentUseError")).release().ptr();
  static PyObject* base_error = py::object(errors.attr("FastgenError")).release().ptr();
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const py::error_already_set&) {
      throw;  // a Python exception (raised by a callback): pybind11 restores it as it was
    } catch (const py::cast_error& e) {  // includes reference_cast_error: a Python value of the wrong type
      PyErr_SetString(argument_error, (std::string("fastgen core: wrong argument type: ") + e.what()).c_str());
    } catch (const py::builtin_exception&) {
      throw;  // an explicit Python exception (py::stop_iteration, ...): pybind11 raises its Python type
    } catch (const ConfigError& e) {
      PyErr_SetString(config_error, e.what());
    } catch (const ShapeError& e) {
      PyErr_SetString(shape_error, e.what());
    } catch (const ScheduleError& e) {
      PyErr_SetString(schedule_error, e.what());
    } catch (const ArgumentError& e) {
      PyErr_SetString(argument_error, e.what());
    } catch (const Cancelled& e) {
      PyErr_SetString(cancelled_error, e.what());
    } catch (const ConcurrentUseError& e) {
      PyErr_SetString(concurrent_error, e.what());
    } catch (const std::bad_alloc&) {  // includes std::bad_array_new_length
      PyErr_SetString(resource_error, "fastgen core: out of memory");
    } catch (const std::length_error& e) {  // a container asked for more than it can hold
      PyErr_SetString(resource_error, (std::string("fastgen core: buffer too large: ") + e.what()).c_str());
    } catch (const std::exception& e) {
      PyErr_SetString(base_error, (std::string("fastgen core: internal error: ") + e.what()).c_str());
    } catch (...) {
      PyErr_SetString(base_error, "fastgen core: internal error: unknown C++ exception");
    }
  });
  // For the error-translation tests: throw a C++ exception of the given kind.
  m.def(
      "_throw_for_tests",
      [](const std::string& kind) {
        if (kind == "bad_alloc") throw std::bad_alloc();
        if (kind == "length_error") throw std::length_error("vector::_M_default_append");
        if (kind == "logic_error") throw std::logic_error("a broken invariant");
        if (kind == "out_of_range") throw std::out_of_range("map::at");
        if (kind == "runtime_error") throw std::runtime_error("something failed");
        if (kind == "concurrent") throw ConcurrentUseError("busy");
        if (kind == "cast_error") return py::cast<long long>(py::str("not a number"));
        if (kind == "int") throw 42;
        throw ArgumentError("unknown kind '" + kind + "'");
      },
      py::arg("kind"));
  py_bind::bind_random(m);
  py_bind::bind_schedulers(m);
  py_bind::bind_sampling(m);
  py_bind::bind_text(m);
  py_bind::bind_video(m);
  py_bind::bind_step_cache(m);
}

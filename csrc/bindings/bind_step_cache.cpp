// fastgen._core step-cache policies (see sampling/step_cache.h).
#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "common.h"
#include "sampling/step_cache.h"

namespace fastgen::py_bind {

void bind_step_cache(py::module_& m) {
  m.def("deepcache_full_steps", &deepcache_full_steps, py::arg("steps"), py::arg("interval"),
        py::arg("uniform") = true, py::arg("pow") = 1.4, py::arg("center") = 15,
        "The 0-based steps DeepCache runs in full, ascending.");
  py::class_<FirstBlockCache>(m, "FirstBlockCache")
      .def(py::init<double>(), py::arg("threshold"))
      .def(
          "should_compute",
          [](FirstBlockCache& c, const py::handle& residual) {
            auto r = require_f32(residual, "residual");
            const float* p = r.data();
            const size_t n = static_cast<size_t>(r.size());
            py::gil_scoped_release nogil;
            return c.should_compute(p, n);
          },
          py::arg("residual"), "Whether this step runs the rest of the network (relative L1 > threshold).")
      .def_property_readonly("last_change", &FirstBlockCache::last_change);
  py::class_<TaylorSeer>(m, "TaylorSeer")
      .def(py::init<int, int, int, int>(), py::arg("interval"), py::arg("disable_before"),
           py::arg("disable_after"), py::arg("max_order"))
      .def("next_step", &TaylorSeer::next_step, "Advance one step; True when it runs in full.")
      .def(
          "update",
          [](TaylorSeer& t, const py::handle& out) {
            auto a = require_f32(out, "output");
            t.update(a.data(), static_cast<size_t>(a.size()));
          },
          py::arg("output"))
      .def(
          "predict",
          [](const TaylorSeer& t, const py::handle& like) {
            auto a = require_f32(like, "like");
            py::array_t<float> out(shape_of(a));
            t.predict(out.mutable_data(), static_cast<size_t>(a.size()));
            return out;
          },
          py::arg("like"), "The extrapolated output, shaped like `like`.")
      .def_property_readonly("step", &TaylorSeer::step);
}

}  // namespace fastgen::py_bind

#include <pybind11/stl.h>

#include <cmath>

#include "bindings/bindings.h"
#include "common.h"
#include "schedulers/scheduler.h"

namespace fastgen::py_bind {

namespace {

// Python dict (a parsed scheduler_config.json) -> Config. Values of types no scheduler reads
// (nested dicts, lists of strings) are skipped.
Config to_config(const py::dict& d) {
  Config cfg;
  for (auto item : d) {
    const std::string key = py::cast<std::string>(py::str(item.first));
    py::handle v = item.second;
    if (v.is_none()) cfg.set(key, std::monostate{});
    else if (py::isinstance<py::bool_>(v)) cfg.set(key, py::cast<bool>(v));
    else if (py::isinstance<py::int_>(v)) cfg.set(key, py::cast<long long>(v));
    else if (py::isinstance<py::float_>(v)) cfg.set(key, py::cast<double>(v));
    else if (py::isinstance<py::str>(v)) cfg.set(key, py::cast<std::string>(v));
    else if (py::isinstance<py::list>(v) || py::isinstance<py::tuple>(v) || py::isinstance<py::array>(v)) {
      std::vector<double> xs;
      bool numeric = true;
      for (auto x : py::reinterpret_borrow<py::iterable>(v)) {
        if (py::isinstance<py::bool_>(x) || !(py::isinstance<py::int_>(x) || py::isinstance<py::float_>(x) ||
                                               PyNumber_Check(x.ptr()))) {
          numeric = false;
          break;
        }
        xs.push_back(py::cast<double>(x));
      }
      if (numeric) cfg.set(key, xs);
    }
  }
  return cfg;
}

py::object config_value(const Config::Value& v) {
  switch (v.index()) {
    case 1: return py::bool_(std::get<bool>(v));
    case 2: return py::int_(std::get<long long>(v));
    case 3: return py::float_(std::get<double>(v));
    case 4: return py::str(std::get<std::string>(v));
    case 5: return py::cast(std::get<std::vector<double>>(v));
    default: return py::none();
  }
}

void check_same_shape(const py::array& a, const py::array& b, const char* an, const char* bn) {
  if (shape_of(a) != shape_of(b))
    throw ShapeError(std::string(an) + " has shape " + shape_str(shape_of(a)) + " but " + bn + " has shape " +
                     shape_str(shape_of(b)));
}

size_t batch_of(const py::array& a) { return a.ndim() >= 1 && a.shape(0) > 0 ? static_cast<size_t>(a.shape(0)) : 1; }

constexpr UseFlag::Access kShared = UseFlag::Access::Shared;

double finite_t(double t) {
  if (!std::isfinite(t)) throw ArgumentError("timestep must be finite, got " + fmt(t));
  return t;
}

}  // namespace

void bind_schedulers(py::module_& m) {
  py::class_<Scheduler>(m, "Scheduler", "A C++ scheduler (use fastgen.schedulers.from_config).")
      .def_property_readonly("class_name", &Scheduler::class_name)
      .def("clone", &Scheduler::clone, "A fresh scheduler with the same configuration and no state.")
      .def_property_readonly("in_use", &Scheduler::in_use,
                             "Whether a step or sampling loop is using this scheduler now (a snapshot).")
      .def(
          "set_timesteps",
          [](Scheduler& s, long long n, std::optional<double> mu) {
            if (n < 1) throw ArgumentError("num_inference_steps must be >= 1, got " + std::to_string(n));
            if (n > 100000) throw ArgumentError("num_inference_steps must be <= 100000, got " + std::to_string(n));
            if (mu && !std::isfinite(*mu)) throw ArgumentError("mu must be finite");
            const auto busy = s.use("set_timesteps");  // frees the timesteps a running loop reads
            s.set_timesteps(static_cast<int>(n), mu);
          },
          py::arg("num_inference_steps"), py::arg("mu") = py::none())
      .def_property_readonly("timesteps_f64",
                             [](const Scheduler& s) {
                               const auto& ts = s.timesteps();
                               return py::array_t<double>(static_cast<ssize_t>(ts.size()), ts.data());
                             })
      .def_property_readonly("integer_timesteps", &Scheduler::integer_timesteps)
      .def_property_readonly("init_noise_sigma", &Scheduler::init_noise_sigma)
      .def_property_readonly("order", &Scheduler::order)
      .def_property_readonly("num_inference_steps", &Scheduler::num_inference_steps)
      .def_property_readonly("step_index", [](Scheduler& s) -> py::object {
        const auto busy = s.use("step_index", kShared);  // a running step changes it
        return s.step_index() < 0 ? py::object(py::none()) : py::object(py::int_(s.step_index()));
      })
      .def_property_readonly("begin_index", [](const Scheduler& s) -> py::object {
        return s.begin_index() < 0 ? py::object(py::none()) : py::object(py::int_(s.begin_index()));
      })
      .def(
          "set_begin_index",
          [](Scheduler& s, int index) {
            const auto busy = s.use("set_begin_index");
            s.set_begin_index(index);
          },
          py::arg("begin_index"))
      .def(
          "manual_seed",
          [](Scheduler& s, unsigned long long seed) {
            const auto busy = s.use("manual_seed");  // a running stochastic step draws from the generator
            s.generator().manual_seed(seed);
          },
          py::arg("seed"))
      .def("is_stochastic", &Scheduler::is_stochastic, py::arg("eta") = 0.0)
      .def_property_readonly("config",
                             [](const Scheduler& s) {
                               py::dict d;
                               for (const auto& kv : s.config().values()) d[py::str(kv.first)] = config_value(kv.second);
                               return d;
                             })
      .def(
          "scale_model_input",
          [](Scheduler& s, const py::handle& sample_obj, double t) {
            auto sample = require_f32(sample_obj, "sample");
            py::array_t<float> out(shape_of(sample));
            const float* in = sample.data();
            float* o = out.mutable_data();
            const size_t n = static_cast<size_t>(sample.size());
            const double tt = finite_t(t);
            const auto busy = s.use("scale_model_input", kShared);  // may resolve the step index
            s.scale_model_input(in, o, n, tt);
            return out;
          },
          py::arg("sample"), py::arg("timestep"))
      .def(
          "step",
          [](Scheduler& s, const py::handle& mo_obj, double t, const py::handle& sample_obj, const py::handle& noise_obj,
             double eta) {
            auto mo = require_f32(mo_obj, "model_output");
            auto sample = require_f32(sample_obj, "sample");
            check_same_shape(mo, sample, "model_output", "sample");
            if (!std::isfinite(eta) || eta < 0) throw ArgumentError("eta must be a finite number >= 0, got " + fmt(eta));
            py::array_t<float, py::array::c_style> noise;
            const float* noise_ptr = nullptr;
            if (!noise_obj.is_none()) {
              noise = require_f32(noise_obj, "noise");
              check_same_shape(noise, sample, "noise", "sample");
              noise_ptr = noise.data();
            }
            py::array_t<float> out(shape_of(sample));
            const size_t n = static_cast<size_t>(sample.size());
            const float *mp = mo.data(), *sp = sample.data();
            float* op = out.mutable_data();
            const size_t batch = batch_of(sample);
            const double tt = finite_t(t);
            const auto busy = s.use("step");  // held while the GIL is released
            {
              py::gil_scoped_release nogil;
              s.step(mp, tt, sp, op, n, batch, noise_ptr, eta);
            }
            return out;
          },
          py::arg("model_output"), py::arg("timestep"), py::arg("sample"), py::arg("noise") = py::none(),
          py::arg("eta") = 0.0)
      .def(
          "add_noise",
          [](Scheduler& s, const py::handle& orig_obj, const py::handle& noise_obj, double t) {
            auto orig = require_f32(orig_obj, "original_samples");
            auto noise = require_f32(noise_obj, "noise");
            check_same_shape(orig, noise, "original_samples", "noise");
            py::array_t<float> out(shape_of(orig));
            const double tt = finite_t(t);
            const auto busy = s.use("add_noise", kShared);  // reads the step index a running step changes
            s.add_noise(orig.data(), noise.data(), out.mutable_data(), static_cast<size_t>(orig.size()), tt);
            return out;
          },
          py::arg("original_samples"), py::arg("noise"), py::arg("timestep"));

  m.def(
      "make_scheduler",
      [](const std::string& class_name, const py::dict& cfg) { return make_scheduler(class_name, to_config(cfg)); },
      py::arg("class_name"), py::arg("config"));
  m.def("scheduler_names", &scheduler_names);
}

}  // namespace fastgen::py_bind

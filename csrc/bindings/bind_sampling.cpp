#include <cmath>
#include <cstring>

#include "bindings/bindings.h"
#include "common.h"
#include "sampling/loop.h"

namespace fastgen::py_bind {

void bind_sampling(py::module_& m) {
  m.def(
      "sample_loop",
      [](Scheduler& s, const py::handle& latents_obj, const py::function& denoise, double guidance_scale,
         double guidance_rescale, double eta, const py::object& callback) {
        auto in = require_f32(latents_obj, "latents");
        if (in.ndim() < 2 || in.shape(0) < 1 || in.size() == 0)
          throw ShapeError("latents must have shape (batch, ...) with batch >= 1, got " + shape_str(shape_of(in)));
        const LoopOptions opt{guidance_scale, guidance_rescale, eta};
        const size_t batch = static_cast<size_t>(in.shape(0));
        const size_t per = static_cast<size_t>(in.size()) / batch;
        const size_t rows = uses_cfg(opt) ? 2 * batch : batch;
        // Buffers owned by Python objects, so arrays handed to user code stay valid after the loop.
        auto x_shape = shape_of(in);
        x_shape[0] = static_cast<ssize_t>(rows);
        py::array_t<float> x(x_shape);
        // With identity input scaling the latents live in the model input's first half (one stream
        // less per step); otherwise in their own buffer, staggered from the input's.
        py::array_t<float> latents =
            s.scale_is_identity() ? py::array_t<float>(shape_of(in), x.mutable_data(), x)
                                  : empty_staggered(shape_of(in), x.data());
        std::memcpy(latents.mutable_data(), in.data(), in.size() * sizeof(float));
        float* x_ptr = x.mutable_data();
        float* lat_ptr = latents.mutable_data();
        py::object last_pred;  // keeps the model output alive until the next call
        const ssize_t expect = static_cast<ssize_t>(rows * per);

        DenoiseFn fn = [&](float* buf, size_t, double t) -> const float* {
          py::gil_scoped_acquire gil;
          py::object r = denoise(x, py::float_(t));
          return checked_prediction(r, expect, x_shape, last_pred);
        };
        const StepCallback cb = python_step_callback(callback, latents);
        {
          py::gil_scoped_release nogil;
          sample_loop(s, lat_ptr, batch, per, x_ptr, fn, cb, opt);
        }
        last_pred = py::object();
        return latents;
      },
      py::arg("scheduler"), py::arg("latents"), py::arg("denoise"), py::arg("guidance_scale") = 7.5,
      py::arg("guidance_rescale") = 0.0, py::arg("eta") = 0.0, py::arg("callback") = py::none(),
      "Run every remaining step of `scheduler` over a copy of `latents` and return it.");
  m.def(
      "combine_guidance",
      [](const py::handle& uncond_obj, const py::handle& cond_obj, double g, double rescale) {
        auto u = require_f32(uncond_obj, "uncond");
        auto c = require_f32(cond_obj, "cond");
        if (shape_of(u) != shape_of(c)) throw ShapeError("uncond and cond shapes differ");
        if (u.ndim() < 1 || u.shape(0) < 1) throw ShapeError("guidance inputs need a batch axis");
        py::array_t<float> out(shape_of(u));
        const size_t batch = static_cast<size_t>(u.shape(0));
        combine_guidance(u.data(), c.data(), out.mutable_data(), batch, static_cast<size_t>(u.size()) / batch, g, rescale);
        return out;
      },
      py::arg("uncond"), py::arg("cond"), py::arg("guidance_scale"), py::arg("guidance_rescale") = 0.0);
}

}  // namespace fastgen::py_bind

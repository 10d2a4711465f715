// Video: the context-window denoising loop and the decoded-frame ring buffer.
#include <cstring>

#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "common.h"
#include "video/frames.h"

namespace fastgen::py_bind {

void bind_video(py::module_& m) {
  m.def("context_windows", &context_windows, py::arg("num_frames"), py::arg("context_length"),
        py::arg("context_stride"), "Start frames of the overlapping context windows.");
  m.def(
      "window_weights",
      [](int length, const std::string& kind) { return window_weights(length, parse_window_weighting(kind)); },
      py::arg("length"), py::arg("weighting") = "pyramid");
  m.def(
      "video_sample_loop",
      [](Scheduler& s, const py::handle& latents_obj, const py::function& denoise, int context_length,
         int context_stride, const std::string& weighting, double guidance_scale, double guidance_rescale,
         double eta, const py::object& callback) {
        auto in = require_f32(latents_obj, "latents");
        if (in.ndim() != 5 || in.shape(0) < 1 || in.size() == 0)
          throw ShapeError("latents must have shape (batch, channels, frames, height, width), got " +
                           shape_str(shape_of(in)));
        VideoLoopShape sh;
        sh.batch = static_cast<size_t>(in.shape(0));
        sh.channels = static_cast<size_t>(in.shape(1));
        sh.frames = static_cast<size_t>(in.shape(2));
        sh.hw = static_cast<size_t>(in.shape(3) * in.shape(4));
        sh.context_length = context_length;
        sh.context_stride = context_stride;
        sh.weighting = parse_window_weighting(weighting);
        context_windows(static_cast<int>(sh.frames), context_length, context_stride);  // validate early
        const LoopOptions opt{guidance_scale, guidance_rescale, eta};
        if (!(guidance_scale >= 0)) throw ArgumentError("guidance_scale must be >= 0");
        const size_t rows = uses_cfg(opt) ? 2 * sh.batch : sh.batch;
        const size_t L = std::min<size_t>(sh.frames, static_cast<size_t>(context_length));
        py::array_t<float> latents(shape_of(in));
        std::memcpy(latents.mutable_data(), in.data(), in.size() * sizeof(float));
        std::vector<ssize_t> x_shape{static_cast<ssize_t>(rows), in.shape(1), static_cast<ssize_t>(L), in.shape(3),
                                     in.shape(4)};
        py::array_t<float> x(x_shape);
        const ssize_t expect = static_cast<ssize_t>(rows * sh.channels * L * sh.hw);
        py::object last_pred;
        WindowDenoiseFn fn = [&](float*, size_t, int start, double t) -> const float* {
          py::gil_scoped_acquire gil;
          py::object r = denoise(x, py::float_(t), py::int_(start));
          return checked_prediction(r, expect, x_shape, last_pred);
        };
        const StepCallback cb = python_step_callback(callback, latents);
        float* lat_ptr = latents.mutable_data();
        float* x_ptr = x.mutable_data();
        {
          py::gil_scoped_release nogil;
          video_sample_loop(s, lat_ptr, sh, x_ptr, fn, cb, opt);
        }
        last_pred = py::object();
        return latents;
      },
      py::arg("scheduler"), py::arg("latents"), py::arg("denoise"), py::arg("context_length"),
      py::arg("context_stride"), py::arg("weighting") = "pyramid", py::arg("guidance_scale") = 7.5,
      py::arg("guidance_rescale") = 0.0, py::arg("eta") = 0.0, py::arg("callback") = py::none(),
      "Denoise latents (B, C, F, h, w) over overlapping context windows; denoise(x, t, window_start).");

  m.def(
      "fifo_sample_loop",
      [](const py::handle& queue_obj, const py::function& denoise, const py::function& exchange, int num_frames,
         int context_length, std::vector<float> sqrt_a, std::vector<float> sqrt_1ma, std::vector<float> sqrt_a_prev,
         std::vector<float> sqrt_1ma_prev, double guidance_scale, double guidance_rescale) {
        auto in = require_f32(queue_obj, "queue");
        if (in.ndim() != 5 || in.size() == 0)
          throw ShapeError("queue must have shape (batch, channels, frames, height, width), got " +
                           shape_str(shape_of(in)));
        if (context_length < 1) throw ArgumentError("context_length must be >= 1");
        VideoLoopShape sh;
        sh.batch = static_cast<size_t>(in.shape(0));
        sh.channels = static_cast<size_t>(in.shape(1));
        sh.frames = static_cast<size_t>(in.shape(2));
        sh.hw = static_cast<size_t>(in.shape(3) * in.shape(4));
        sh.context_length = context_length;
        const LoopOptions opt{guidance_scale, guidance_rescale};
        if (!(guidance_scale >= 0)) throw ArgumentError("guidance_scale must be >= 0");
        FifoCoefficients coef{std::move(sqrt_a), std::move(sqrt_1ma), std::move(sqrt_a_prev), std::move(sqrt_1ma_prev)};
        const size_t rows = uses_cfg(opt) ? 2 * sh.batch : sh.batch;
        const size_t ctx = std::min<size_t>(sh.frames, static_cast<size_t>(context_length));
        py::array_t<float> queue(shape_of(in));
        std::memcpy(queue.mutable_data(), in.data(), in.size() * sizeof(float));
        std::vector<ssize_t> x_shape{static_cast<ssize_t>(rows), in.shape(1), static_cast<ssize_t>(ctx), in.shape(3),
                                     in.shape(4)};
        py::array_t<float> x(x_shape);
        const ssize_t expect = static_cast<ssize_t>(rows * sh.channels * ctx * sh.hw);
        std::vector<ssize_t> head_shape{in.shape(0), in.shape(1), in.shape(3), in.shape(4)};
        const ssize_t head_n = in.shape(0) * in.shape(1) * in.shape(3) * in.shape(4);
        py::object last_pred, last_noise;
        WindowDenoiseFn fn = [&](float*, size_t, int start, double) -> const float* {
          py::gil_scoped_acquire gil;
          py::object r = denoise(x, py::int_(start));
          return checked_prediction(r, expect, x_shape, last_pred);
        };
        FifoExchangeFn ex = [&](int index, const float* head) -> const float* {
          py::gil_scoped_acquire gil;
          py::array_t<float> h(head_shape);
          std::memcpy(h.mutable_data(), head, static_cast<size_t>(head_n) * sizeof(float));
          py::object r = exchange(py::int_(index), h);
          auto arr = require_f32(r, "exchange() result");
          if (arr.size() != head_n)
            throw ShapeError("exchange() must return new tail noise of shape " + shape_str(head_shape) + ", got " +
                             shape_str(shape_of(arr)));
          last_noise = arr;
          return arr.data();
        };
        float* q = queue.mutable_data();
        float* xp = x.mutable_data();
        {
          py::gil_scoped_release nogil;
          fifo_sample_loop(q, sh, coef, num_frames, xp, fn, ex, opt);
        }
        last_pred = py::object();
        last_noise = py::object();
        return queue;
      },
      py::arg("queue"), py::arg("denoise"), py::arg("exchange"), py::arg("num_frames"), py::arg("context_length"),
      py::arg("sqrt_a"), py::arg("sqrt_1ma"), py::arg("sqrt_a_prev"), py::arg("sqrt_1ma_prev"),
      py::arg("guidance_scale") = 7.5, py::arg("guidance_rescale") = 0.0,
      "FIFO-Diffusion diagonal denoising: num_frames iterations, each hands a clean head frame to exchange().");

  py::class_<FrameRing>(m, "FrameRing",
                        "A ring of decoded video frames: push (n, C, H, W) chunks, pop (H, W, C) frames in [0, 1].")
      .def(py::init([](long long capacity, long long channels, long long height, long long width) {
             if (capacity < 1 || channels < 1 || height < 1 || width < 1)
               throw ArgumentError("FrameRing needs capacity, channels, height and width >= 1, got " +
                                   std::to_string(capacity) + ", " + std::to_string(channels) + ", " +
                                   std::to_string(height) + ", " + std::to_string(width));
             return std::make_unique<FrameRing>(static_cast<size_t>(capacity), static_cast<size_t>(channels),
                                                static_cast<size_t>(height), static_cast<size_t>(width));
           }),
           py::arg("capacity"), py::arg("channels"), py::arg("height"), py::arg("width"))
      .def_property_readonly("capacity", &FrameRing::capacity)
      .def_property_readonly("channels", &FrameRing::channels)
      .def_property_readonly("height", &FrameRing::height)
      .def_property_readonly("width", &FrameRing::width)
      .def("__len__", &FrameRing::size)
      .def(
          "push",
          [](FrameRing& r, const py::handle& obj) {
            auto a = require_f32(obj, "frames");  // float32 only; a non-contiguous array is copied
            if (a.ndim() != 4)
              throw ShapeError("FrameRing.push: frames must have shape (n, " + std::to_string(r.channels()) + ", " +
                               std::to_string(r.height()) + ", " + std::to_string(r.width()) + "), got " +
                               shape_str(shape_of(a)));
            const float* p = a.data();
            const auto n = static_cast<size_t>(a.shape(0)), c = static_cast<size_t>(a.shape(1)),
                       h = static_cast<size_t>(a.shape(2)), w = static_cast<size_t>(a.shape(3));
            py::gil_scoped_release nogil;
            r.push(p, n, c, h, w);
          },
          py::arg("frames"), "Store decoded frames (n, C, H, W) float32 in about [-1, 1] as HWC [0, 1].")
      .def(
          "pop",
          [](FrameRing& r, py::ssize_t height, py::ssize_t width) {
            if (height < 1 || width < 1 || static_cast<size_t>(height) != r.height() ||
                static_cast<size_t>(width) != r.width())
              throw ShapeError("FrameRing.pop: the ring holds " + std::to_string(r.height()) + "x" +
                               std::to_string(r.width()) + " frames (height x width), got pop(" +
                               std::to_string(height) + ", " + std::to_string(width) + ")");
            py::array_t<float> out({height, width, static_cast<py::ssize_t>(r.channels())});
            r.pop(out.mutable_data(), static_cast<size_t>(height), static_cast<size_t>(width));
            return out;
          },
          py::arg("height"), py::arg("width"), "The oldest frame as (H, W, C) float32.");
}

}  // namespace fastgen::py_bind

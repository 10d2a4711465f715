#include <cstring>

#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "common.h"
#include "random/philox.h"

namespace fastgen::py_bind {

namespace {
std::vector<ssize_t> checked_shape(const py::iterable& shape_obj) {
  std::vector<ssize_t> shape;
  size_t total = 1;
  for (auto d : shape_obj) {
    long long v = py::cast<long long>(d);
    if (v < 0) throw ArgumentError("randn: negative dimension " + std::to_string(v));
    shape.push_back(static_cast<ssize_t>(v));
    if (v && total > (size_t(1) << 40) / static_cast<size_t>(v)) throw ArgumentError("randn: shape too large");
    total *= static_cast<size_t>(v);
  }
  return shape;
}
}  // namespace

void bind_random(py::module_& m) {
  m.def(
      "randn",
      [](const py::iterable& shape_obj, unsigned long long seed, unsigned long long offset) {
        auto shape = checked_shape(shape_obj);
        py::array_t<float> out(shape);
        const size_t n = static_cast<size_t>(out.size());
        float* p = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          fill_normal(p, n, seed, offset);
        }
        return out;
      },
      py::arg("shape"), py::arg("seed"), py::arg("offset") = 0,
      "Standard normal float32 array from the counter-based Philox-4x32-10 stream (seed, offset).");
  m.def(
      "rand",
      [](const py::iterable& shape_obj, unsigned long long seed, unsigned long long offset) {
        auto shape = checked_shape(shape_obj);
        py::array_t<float> out(shape);
        fill_uniform(out.mutable_data(), static_cast<size_t>(out.size()), seed, offset);
        return out;
      },
      py::arg("shape"), py::arg("seed"), py::arg("offset") = 0, "Uniform [0, 1) float32 array from the Philox stream.");
  m.def(
      "philox4x32_10",
      [](std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key) { return philox4x32_10(counter, key); },
      py::arg("counter"), py::arg("key"), "The raw Philox-4x32-10 block function (for known-answer tests).");
}

}  // namespace fastgen::py_bind

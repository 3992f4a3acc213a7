// Python bindings of the spherical-harmonics kernels.
#include <torch/extension.h>

#include "shencoder.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sh_encode_forward", &sh_encode_forward, "real spherical harmonics (forward)", py::arg("inputs"),
        py::arg("degree"), py::arg("coefficients"));
  m.def("sh_encode_backward", &sh_encode_backward, "real spherical harmonics (input gradient)", py::arg("grad"),
        py::arg("inputs"), py::arg("degree"), py::arg("coefficients"));
}

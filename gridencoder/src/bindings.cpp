// Python bindings of the grid encoder kernels.
#include <torch/extension.h>

#include "gridencoder.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("grid_encode_forward", &grid_encode_forward, "multi-resolution grid encoding (forward)", py::arg("inputs"),
        py::arg("table"), py::arg("offsets"), py::arg("scales"), py::arg("hashed"), py::arg("align_corners"),
        py::arg("smoothstep"));
  m.def("grid_encode_backward", &grid_encode_backward, "multi-resolution grid encoding (backward)", py::arg("grad"),
        py::arg("inputs"), py::arg("table"), py::arg("offsets"), py::arg("scales"), py::arg("hashed"),
        py::arg("align_corners"), py::arg("smoothstep"), py::arg("needs_table_grad"), py::arg("needs_input_grad"));
  m.def("grid_encode_stencil_forward", &grid_encode_stencil_forward,
        "grid encoding of a point and its six central-difference neighbours (forward)", py::arg("inputs"),
        py::arg("table"), py::arg("offsets"), py::arg("scales"), py::arg("hashed"), py::arg("align_corners"),
        py::arg("smoothstep"), py::arg("step"));
  m.def("grid_encode_stencil_backward", &grid_encode_stencil_backward,
        "grid encoding of a point and its six central-difference neighbours (table gradient)", py::arg("grad"),
        py::arg("inputs"), py::arg("table"), py::arg("offsets"), py::arg("scales"), py::arg("hashed"),
        py::arg("align_corners"), py::arg("smoothstep"), py::arg("step"));
}

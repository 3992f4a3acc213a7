// Python bindings of the frequency-encoding kernels.
#include <torch/extension.h>

#include "freqencoder.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("freq_encode_forward", &freq_encode_forward, "sin/cos frequency encoding (forward)", py::arg("inputs"),
        py::arg("degree"));
  m.def("freq_encode_backward", &freq_encode_backward, "sin/cos frequency encoding (input gradient)",
        py::arg("grad"), py::arg("inputs"), py::arg("degree"));
}

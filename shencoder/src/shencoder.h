// Host entry points of the spherical-harmonics kernels (see shencoder.cu).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

// inputs [B, 3] float32; coefficients: degree**2 signed normalisation constants. Returns [B, degree**2].
at::Tensor sh_encode_forward(const at::Tensor& inputs, int64_t degree, const std::vector<double>& coefficients);

// grad [B, degree**2] float32. Returns the input gradient [B, 3].
at::Tensor sh_encode_backward(const at::Tensor& grad, const at::Tensor& inputs, int64_t degree,
                              const std::vector<double>& coefficients);

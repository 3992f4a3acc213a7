// Host entry points of the frequency-encoding kernels (see freqencoder.cu).
#pragma once

#include <ATen/core/Tensor.h>

// inputs [B, D] float32. Returns [B, D * (1 + 2 * degree)].
at::Tensor freq_encode_forward(const at::Tensor& inputs, int64_t degree);

// grad [B, D * (1 + 2 * degree)] float32. Returns the input gradient [B, D].
at::Tensor freq_encode_backward(const at::Tensor& grad, const at::Tensor& inputs, int64_t degree);

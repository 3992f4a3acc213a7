// Host entry points of the grid encoder kernels (see gridencoder.cu).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

// inputs [B, D] float32 in [0, 1]; table [E, C] float32/float16; offsets [L+1] int32; scales: L per-level
// float32 scales. Returns [B, L*C] in the table's dtype.
at::Tensor grid_encode_forward(const at::Tensor& inputs, const at::Tensor& table, const at::Tensor& offsets,
                                  const std::vector<double>& scales, bool hashed, bool align_corners, bool smoothstep);

// grad [B, L*C] in the table's dtype. Returns (grad_table [E, C] or empty, grad_inputs [B, D] float32 or empty).
std::tuple<at::Tensor, at::Tensor> grid_encode_backward(const at::Tensor& grad, const at::Tensor& inputs,
                                                              const at::Tensor& table, const at::Tensor& offsets,
                                                              const std::vector<double>& scales, bool hashed,
                                                              bool align_corners, bool smoothstep,
                                                              bool needs_table_grad, bool needs_input_grad);

// The seven-point central-difference stencil of 3-D inputs [B, 3]: the point, then +step along x, y, z and -step
// along x, y, z (neighbours clamped to [0, 1]). Returns [7, B, L*C]; the backward (grad [7, B, L*C]) returns the
// table gradient only.
at::Tensor grid_encode_stencil_forward(const at::Tensor& inputs, const at::Tensor& table, const at::Tensor& offsets,
                                       const std::vector<double>& scales, bool hashed, bool align_corners,
                                       bool smoothstep, double step);
at::Tensor grid_encode_stencil_backward(const at::Tensor& grad, const at::Tensor& inputs, const at::Tensor& table,
                                        const at::Tensor& offsets, const std::vector<double>& scales, bool hashed,
                                        bool align_corners, bool smoothstep, double step);

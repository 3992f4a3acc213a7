// Frequency encoding [x, sin(2^0 x), cos(2^0 x), ..., sin(2^(K-1) x), cos(2^(K-1) x)], blocks D wide.
//
// Forward: one thread per output element (coalesced writes). Backward: one thread per input element,
// recomputing sin/cos instead of keeping the outputs alive. Accurate sincosf: the arguments reach 2^(K-1)
// radians, where the fast intrinsics lose digits.

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

#include "freqencoder.h"

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    freq_forward_kernel(const float* __restrict__ inputs, float* __restrict__ outputs, uint64_t total, uint32_t dim,
                        uint32_t width) {
  const uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const uint64_t b = i / width;
  const uint32_t c = static_cast<uint32_t>(i - b * width);
  if (c < dim) {
    outputs[i] = inputs[b * dim + c];
    return;
  }
  const uint32_t block = (c - dim) / dim;  // 2f for sin, 2f + 1 for cos
  const uint32_t d = (c - dim) - block * dim;
  const float v = ldexpf(inputs[b * dim + d], static_cast<int>(block >> 1));
  outputs[i] = (block & 1u) ? cosf(v) : sinf(v);
}

__global__ void __launch_bounds__(kThreads)
    freq_backward_kernel(const float* __restrict__ grad, const float* __restrict__ inputs,
                         float* __restrict__ grad_inputs, uint64_t total, uint32_t dim, uint32_t degree) {
  const uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const uint64_t b = i / dim;
  const uint32_t d = static_cast<uint32_t>(i - b * dim);
  const float x = inputs[i];
  const float* g = grad + b * static_cast<uint64_t>(dim) * (1 + 2 * degree);
  float acc = g[d];
  for (uint32_t f = 0; f < degree; ++f) {
    float s, c;
    sincosf(ldexpf(x, static_cast<int>(f)), &s, &c);
    const float g_sin = g[dim * (1 + 2 * f) + d];
    const float g_cos = g[dim * (2 + 2 * f) + d];
    acc += ldexpf(g_sin * c - g_cos * s, static_cast<int>(f));
  }
  grad_inputs[i] = acc;
}

void check_inputs(const at::Tensor& inputs, int64_t degree) {
  TORCH_CHECK(inputs.is_cuda() && inputs.scalar_type() == at::kFloat && inputs.is_contiguous() && inputs.dim() == 2,
              "frequency encoder: inputs must be a contiguous float32 CUDA tensor [B, D]");
  TORCH_CHECK(degree >= 0 && degree < 64, "frequency encoder: degree must be in 0..63, got ", degree);
}

unsigned blocks_for(uint64_t total) { return static_cast<unsigned>((total + kThreads - 1) / kThreads); }

}  // namespace

at::Tensor freq_encode_forward(const at::Tensor& inputs, int64_t degree) {
  check_inputs(inputs, degree);
  const c10::cuda::CUDAGuard guard(inputs.device());
  const int64_t dim = inputs.size(1);
  const int64_t width = dim * (1 + 2 * degree);
  auto outputs = at::empty({inputs.size(0), width}, inputs.options());
  const uint64_t total = static_cast<uint64_t>(outputs.numel());
  if (total == 0) return outputs;
  freq_forward_kernel<<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      inputs.data_ptr<float>(), outputs.data_ptr<float>(), total, static_cast<uint32_t>(dim),
      static_cast<uint32_t>(width));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return outputs;
}

at::Tensor freq_encode_backward(const at::Tensor& grad, const at::Tensor& inputs, int64_t degree) {
  check_inputs(inputs, degree);
  const int64_t dim = inputs.size(1);
  TORCH_CHECK(grad.is_cuda() && grad.scalar_type() == at::kFloat && grad.is_contiguous() && grad.dim() == 2 &&
                  grad.size(0) == inputs.size(0) && grad.size(1) == dim * (1 + 2 * degree),
              "frequency encoder: grad must be a contiguous float32 [B, D * (1 + 2 * degree)] tensor");
  const c10::cuda::CUDAGuard guard(inputs.device());
  auto grad_inputs = at::empty_like(inputs);
  const uint64_t total = static_cast<uint64_t>(inputs.numel());
  if (total == 0) return grad_inputs;
  freq_backward_kernel<<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      grad.data_ptr<float>(), inputs.data_ptr<float>(), grad_inputs.data_ptr<float>(), total,
      static_cast<uint32_t>(dim), static_cast<uint32_t>(degree));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_inputs;
}

// Real spherical harmonics up to degree 8 (64 functions) of 3-D directions: values and input gradient.
//
// Y_l^m = K_l^m * Q_l^|m|(z) * {Re, Im}((x + i y)^|m|), Q_l^m = d^m P_l / dz^m (shencoder/reference.py).
// The polynomials follow from recurrences unrolled at compile time; the constants K (sign and sqrt(2)
// included) come from the host, so both backends share one table. One thread per point.

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <type_traits>

#include "shencoder.h"

namespace {

constexpr int kThreads = 128;
constexpr int kMaxDegree = 8;

struct Coefficients {
  float k[kMaxDegree * kMaxDegree];
};

template <int DEG>
struct Basis {
  float re[DEG];           // Re (x + i y)^m
  float im[DEG];           // Im (x + i y)^m
  float q[DEG][DEG + 1];   // Q_l^m(z); zero for m > l
};

template <int DEG>
__device__ __forceinline__ void evaluate(float x, float y, float z, Basis<DEG>& s) {
  s.re[0] = 1.f;
  s.im[0] = 0.f;
#pragma unroll
  for (int m = 1; m < DEG; ++m) {
    s.re[m] = x * s.re[m - 1] - y * s.im[m - 1];
    s.im[m] = x * s.im[m - 1] + y * s.re[m - 1];
  }
#pragma unroll
  for (int l = 0; l < DEG; ++l) {
#pragma unroll
    for (int m = l + 1; m <= DEG; ++m) s.q[l][m] = 0.f;
  }
  float diagonal = 1.f;  // (2m - 1)!!
#pragma unroll
  for (int m = 0; m < DEG; ++m) {
    if (m > 0) diagonal *= static_cast<float>(2 * m - 1);
    s.q[m][m] = diagonal;
    if (m + 1 < DEG) s.q[m + 1][m] = static_cast<float>(2 * m + 1) * z * diagonal;
#pragma unroll
    for (int l = m + 2; l < DEG; ++l) {
      s.q[l][m] = (static_cast<float>(2 * l - 1) * z * s.q[l - 1][m] - static_cast<float>(l + m - 1) * s.q[l - 2][m]) /
                  static_cast<float>(l - m);
    }
  }
}

template <int DEG>
__global__ void __launch_bounds__(kThreads)
    sh_forward_kernel(const float* __restrict__ inputs, float* __restrict__ outputs, uint32_t batch,
                      const __grid_constant__ Coefficients c) {
  const uint32_t b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const float* p = inputs + static_cast<size_t>(b) * 3;
  Basis<DEG> s;
  evaluate<DEG>(p[0], p[1], p[2], s);
  float* out = outputs + static_cast<size_t>(b) * DEG * DEG;
#pragma unroll
  for (int l = 0; l < DEG; ++l) {
#pragma unroll
    for (int m = -l; m <= l; ++m) {
      const int a = m < 0 ? -m : m;
      out[l * l + l + m] = c.k[l * l + l + m] * s.q[l][a] * (m >= 0 ? s.re[a] : s.im[a]);
    }
  }
}

// d/dx (x + i y)^a = a (x + i y)^(a-1), d/dy = i a (x + i y)^(a-1), d/dz Q_l^a = Q_l^(a+1).
template <int DEG>
__global__ void __launch_bounds__(kThreads)
    sh_backward_kernel(const float* __restrict__ grad, const float* __restrict__ inputs,
                       float* __restrict__ grad_inputs, uint32_t batch, const __grid_constant__ Coefficients c) {
  const uint32_t b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const float* p = inputs + static_cast<size_t>(b) * 3;
  Basis<DEG> s;
  evaluate<DEG>(p[0], p[1], p[2], s);
  const float* g = grad + static_cast<size_t>(b) * DEG * DEG;
  float gx = 0.f, gy = 0.f, gz = 0.f;
#pragma unroll
  for (int l = 0; l < DEG; ++l) {
#pragma unroll
    for (int m = -l; m <= l; ++m) {
      const int a = m < 0 ? -m : m;
      const float w = g[l * l + l + m] * c.k[l * l + l + m];
      const float azimuth = m >= 0 ? s.re[a] : s.im[a];
      gz += w * s.q[l][a + 1] * azimuth;
      if (a > 0) {
        const float scaled = w * s.q[l][a] * static_cast<float>(a);
        gx += scaled * (m >= 0 ? s.re[a - 1] : s.im[a - 1]);
        gy += scaled * (m >= 0 ? -s.im[a - 1] : s.re[a - 1]);
      }
    }
  }
  float* out = grad_inputs + static_cast<size_t>(b) * 3;
  out[0] = gx;
  out[1] = gy;
  out[2] = gz;
}

template <typename F>
void with_degree(int64_t degree, F&& f) {
  switch (degree) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    case 8: return f(std::integral_constant<int, 8>{});
    default: TORCH_CHECK(false, "SH encoder: degree must be 1..", kMaxDegree, ", got ", degree);
  }
}

Coefficients pack(int64_t degree, const std::vector<double>& coefficients) {
  TORCH_CHECK(degree >= 1 && degree <= kMaxDegree, "SH encoder: degree must be 1..", kMaxDegree);
  TORCH_CHECK(static_cast<int64_t>(coefficients.size()) == degree * degree, "SH encoder: degree**2 coefficients expected");
  Coefficients packed{};
  for (size_t i = 0; i < coefficients.size(); ++i) packed.k[i] = static_cast<float>(coefficients[i]);
  return packed;
}

void check_inputs(const at::Tensor& inputs) {
  TORCH_CHECK(inputs.is_cuda() && inputs.scalar_type() == at::kFloat && inputs.is_contiguous() && inputs.dim() == 2 &&
                  inputs.size(1) == 3,
              "SH encoder: inputs must be a contiguous float32 CUDA tensor [B, 3]");
}

}  // namespace

at::Tensor sh_encode_forward(const at::Tensor& inputs, int64_t degree, const std::vector<double>& coefficients) {
  check_inputs(inputs);
  const Coefficients packed = pack(degree, coefficients);
  const c10::cuda::CUDAGuard guard(inputs.device());
  const int64_t batch = inputs.size(0);
  auto outputs = at::empty({batch, degree * degree}, inputs.options());
  if (batch == 0) return outputs;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto blocks = static_cast<unsigned>((batch + kThreads - 1) / kThreads);
  with_degree(degree, [&](auto deg) {
    sh_forward_kernel<decltype(deg)::value><<<blocks, kThreads, 0, stream>>>(
        inputs.data_ptr<float>(), outputs.data_ptr<float>(), static_cast<uint32_t>(batch), packed);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return outputs;
}

at::Tensor sh_encode_backward(const at::Tensor& grad, const at::Tensor& inputs, int64_t degree,
                              const std::vector<double>& coefficients) {
  check_inputs(inputs);
  const Coefficients packed = pack(degree, coefficients);
  TORCH_CHECK(grad.is_cuda() && grad.scalar_type() == at::kFloat && grad.is_contiguous() && grad.dim() == 2 &&
                  grad.size(0) == inputs.size(0) && grad.size(1) == degree * degree,
              "SH encoder: grad must be a contiguous float32 [B, degree**2] tensor");
  const c10::cuda::CUDAGuard guard(inputs.device());
  const int64_t batch = inputs.size(0);
  auto grad_inputs = at::empty({batch, 3}, inputs.options());
  if (batch == 0) return grad_inputs;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto blocks = static_cast<unsigned>((batch + kThreads - 1) / kThreads);
  with_degree(degree, [&](auto deg) {
    sh_backward_kernel<decltype(deg)::value><<<blocks, kThreads, 0, stream>>>(
        grad.data_ptr<float>(), inputs.data_ptr<float>(), grad_inputs.data_ptr<float>(), static_cast<uint32_t>(batch),
        packed);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_inputs;
}

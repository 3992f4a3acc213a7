// Multi-resolution grid encoding (instant-NGP) with hash or tiled tables: gather forward, scatter backward.
//
// One thread handles one (point, level) pair. blockIdx.y is the level and blockIdx.x runs fastest, so the
// blocks of one level are resident together and that level's table stays in L2 for its gathers and atomics.
// Table rows are read and accumulated as whole C-wide vectors; interpolation is always done in float32.

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "gridencoder.h"

namespace {

constexpr int kThreads = 256;
constexpr int kMaxLevels = 32;

// Per-level float32 scales, evaluated once on the host exactly like the original kernel did (see
// gridencoder/reference.py: level_scales), passed by value so every backend sees the same resolutions.
struct LevelScales {
  float v[kMaxLevels];
};

struct Options {
  bool hashed;
  bool align_corners;
  bool smoothstep;
};

template <typename T, int C>
struct alignas(sizeof(T) * C) Row {
  T v[C];
};

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

__device__ __forceinline__ uint32_t hash_prime(int d) {
  switch (d) {
    case 0: return 1u;
    case 1: return 2654435761u;
    case 2: return 805459861u;
    case 3: return 3674653429u;
    default: return 2097192037u;
  }
}

// Row of a grid vertex inside its level: dense while the stride fits the table (so tiled grids drop the
// trailing dimensions once it does not), the prime hash for hashed grids that outgrow the table.
template <int D>
__device__ __forceinline__ uint32_t table_row(const uint32_t (&vertex)[D], uint32_t resolution, uint32_t size,
                                              const Options& opt) {
  const uint32_t step = opt.align_corners ? resolution : resolution + 1;
  uint32_t index = 0;
  uint32_t stride = 1;
#pragma unroll
  for (int d = 0; d < D; ++d) {
    if (stride > size) break;
    index += vertex[d] * stride;
    stride *= step;
  }
  if (opt.hashed && stride > size) {
    index = 0;
#pragma unroll
    for (int d = 0; d < D; ++d) index ^= vertex[d] * hash_prime(d);
  }
  return index % size;
}

// The cell of a point at one level: lower vertex, interpolation weight along each axis and its derivative
// with respect to the input coordinate. False for points outside [0, 1]^D (NaN included).
template <int D>
struct Cell {
  uint32_t base[D];
  float frac[D];
  float slope[D];
};

template <int D>
__device__ __forceinline__ bool locate(const float* __restrict__ u, float scale, const Options& opt, Cell<D>& cell) {
#pragma unroll
  for (int d = 0; d < D; ++d) {
    const float x = u[d];
    if (!(x >= 0.f && x <= 1.f)) return false;
    const float pos = __fadd_rn(__fmul_rn(x, scale), opt.align_corners ? 0.f : 0.5f);
    const float g = floorf(pos);
    const float f = pos - g;
    cell.base[d] = static_cast<uint32_t>(g);
    if (opt.smoothstep) {
      cell.frac[d] = f * f * (3.f - 2.f * f);
      cell.slope[d] = scale * 6.f * f * (1.f - f);
    } else {
      cell.frac[d] = f;
      cell.slope[d] = scale;
    }
  }
  return true;
}

template <int D>
__device__ __forceinline__ float corner_weights(const Cell<D>& cell, int corner, float (&axis)[D],
                                                uint32_t (&vertex)[D]) {
  float w = 1.f;
#pragma unroll
  for (int d = 0; d < D; ++d) {
    const bool up = (corner >> d) & 1;
    axis[d] = up ? cell.frac[d] : 1.f - cell.frac[d];
    vertex[d] = cell.base[d] + (up ? 1u : 0u);
    w *= axis[d];
  }
  return w;
}

// Where a level's rows start in the table, how many it has, its scale and the vertices per axis its index uses.
struct Level {
  float scale;
  uint32_t first;
  uint32_t size;
  uint32_t resolution;
};

__device__ __forceinline__ Level level_at(const int32_t* __restrict__ offsets, const LevelScales& scales,
                                          uint32_t level) {
  const float scale = scales.v[level];
  const uint32_t first = offsets[level];
  return {scale, first, offsets[level + 1] - first, static_cast<uint32_t>(ceilf(scale)) + 1};
}

template <int C>
__device__ __forceinline__ void scatter_row(float* dst, const float (&g)[C], float w) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr bool kPairs = C % 2 == 0;  // float2 atomics exist from sm_90 on
#else
  constexpr bool kPairs = false;
#endif
  if constexpr (kPairs) {
#pragma unroll
    for (int ch = 0; ch < C; ch += 2) {
      atomicAdd(reinterpret_cast<float2*>(dst + ch), make_float2(w * g[ch], w * g[ch + 1]));
    }
  } else {
#pragma unroll
    for (int ch = 0; ch < C; ++ch) atomicAdd(dst + ch, w * g[ch]);
  }
}

template <int C>
__device__ __forceinline__ void scatter_row(__half* dst, const float (&g)[C], float w) {
  if constexpr (C % 2 == 0) {
#pragma unroll
    for (int ch = 0; ch < C; ch += 2) {
      atomicAdd(reinterpret_cast<__half2*>(dst + ch), __floats2half2_rn(w * g[ch], w * g[ch + 1]));
    }
  } else {
#pragma unroll
    for (int ch = 0; ch < C; ++ch) atomicAdd(dst + ch, __float2half_rn(w * g[ch]));
  }
}

template <typename scalar_t, int D, int C>
__global__ void __launch_bounds__(kThreads)
    grid_forward_kernel(const float* __restrict__ inputs, const scalar_t* __restrict__ table,
                        const int32_t* __restrict__ offsets, scalar_t* __restrict__ outputs, uint32_t batch,
                        uint32_t levels, const __grid_constant__ LevelScales scales, Options opt) {
  const uint32_t b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const uint32_t level = blockIdx.y;
  const auto [scale, first, size, resolution] = level_at(offsets, scales, level);
  auto* out = reinterpret_cast<Row<scalar_t, C>*>(outputs) + (static_cast<size_t>(b) * levels + level);

  Cell<D> cell;
  Row<scalar_t, C> result;
  if (!locate<D>(inputs + static_cast<size_t>(b) * D, scale, opt, cell)) {
#pragma unroll
    for (int ch = 0; ch < C; ++ch) result.v[ch] = from_float<scalar_t>(0.f);
    *out = result;
    return;
  }
  const auto* rows = reinterpret_cast<const Row<scalar_t, C>*>(table) + first;

  float acc[C] = {};
#pragma unroll
  for (int corner = 0; corner < (1 << D); ++corner) {
    float axis[D];
    uint32_t vertex[D];
    const float w = corner_weights<D>(cell, corner, axis, vertex);
    const Row<scalar_t, C> row = rows[table_row<D>(vertex, resolution, size, opt)];
#pragma unroll
    for (int ch = 0; ch < C; ++ch) acc[ch] += w * to_float(row.v[ch]);
  }
#pragma unroll
  for (int ch = 0; ch < C; ++ch) result.v[ch] = from_float<scalar_t>(acc[ch]);
  *out = result;
}

// Scatters w * grad into the corner rows and, when asked, accumulates the exact input derivative:
// d out / d u_d = slope_d * sum over corners of (+/-) prod_{k != d} axis_k * row.
template <typename scalar_t, int D, int C>
__global__ void __launch_bounds__(kThreads)
    grid_backward_kernel(const scalar_t* __restrict__ grad, const float* __restrict__ inputs,
                         const scalar_t* __restrict__ table, const int32_t* __restrict__ offsets,
                         scalar_t* __restrict__ grad_table, float* __restrict__ grad_inputs, uint32_t batch,
                         uint32_t levels, const __grid_constant__ LevelScales scales, Options opt) {
  const uint32_t b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const uint32_t level = blockIdx.y;
  const auto [scale, first, size, resolution] = level_at(offsets, scales, level);
  Cell<D> cell;
  if (!locate<D>(inputs + static_cast<size_t>(b) * D, scale, opt, cell)) return;

  const Row<scalar_t, C> g_row = reinterpret_cast<const Row<scalar_t, C>*>(grad)[static_cast<size_t>(b) * levels + level];
  float g[C];
#pragma unroll
  for (int ch = 0; ch < C; ++ch) g[ch] = to_float(g_row.v[ch]);

  float d_input[D] = {};
#pragma unroll
  for (int corner = 0; corner < (1 << D); ++corner) {
    float axis[D];
    uint32_t vertex[D];
    const float w = corner_weights<D>(cell, corner, axis, vertex);
    const uint32_t row = first + table_row<D>(vertex, resolution, size, opt);
    if (grad_table != nullptr) scatter_row<C>(grad_table + static_cast<size_t>(row) * C, g, w);
    if (grad_inputs != nullptr) {
      const Row<scalar_t, C> value = reinterpret_cast<const Row<scalar_t, C>*>(table)[row];
      float dot = 0.f;
#pragma unroll
      for (int ch = 0; ch < C; ++ch) dot += g[ch] * to_float(value.v[ch]);
#pragma unroll
      for (int d = 0; d < D; ++d) {
        float others = dot;
#pragma unroll
        for (int k = 0; k < D; ++k) {
          if (k != d) others *= axis[k];
        }
        d_input[d] += ((corner >> d) & 1) ? others : -others;
      }
    }
  }
  if (grad_inputs != nullptr) {
#pragma unroll
    for (int d = 0; d < D; ++d) atomicAdd(grad_inputs + static_cast<size_t>(b) * D + d, d_input[d] * cell.slope[d]);
  }
}

// The seven points of central differences at a 3-D point: the point itself (tap 0), then +step along x, y, z
// (taps 1-3) and -step along x, y, z (taps 4-6), each neighbour clamped to [0, 1].
constexpr int kTaps = 7;

__device__ __forceinline__ void stencil_tap(const float* __restrict__ u, int tap, float step, float (&p)[3]) {
#pragma unroll
  for (int d = 0; d < 3; ++d) p[d] = u[d];
  if (tap == 0) return;
  const int axis = (tap - 1) % 3;
  p[axis] = __fadd_rn(p[axis], tap <= 3 ? step : -step);
#pragma unroll
  for (int d = 0; d < 3; ++d) p[d] = fminf(fmaxf(p[d], 0.f), 1.f);
}

// Which of the centre cell's corners `vertex` is (bit d set for the upper vertex along d), or -1 if none.
__device__ __forceinline__ int centre_corner(const Cell<3>& centre, const uint32_t (&vertex)[3]) {
  int corner = 0;
#pragma unroll
  for (int d = 0; d < 3; ++d) {
    const uint32_t delta = vertex[d] - centre.base[d];
    if (delta > 1u) return -1;
    corner |= static_cast<int>(delta) << d;
  }
  return corner;
}

// Forward of the stencil: outputs [7, B, L*C]. A neighbour within step of the point lies in the point's cell or
// the next one, so many of its corners are the point's own; those rows are gathered once. Each tap's value is
// accumulated exactly as grid_forward_kernel accumulates it.
template <typename scalar_t, int C>
__global__ void __launch_bounds__(kThreads)
    stencil_forward_kernel(const float* __restrict__ inputs, const scalar_t* __restrict__ table,
                           const int32_t* __restrict__ offsets, scalar_t* __restrict__ outputs, uint32_t batch,
                           uint32_t levels, const __grid_constant__ LevelScales scales, Options opt, float step) {
  constexpr int D = 3;
  const uint32_t b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const uint32_t level = blockIdx.y;
  const auto [scale, first, size, resolution] = level_at(offsets, scales, level);
  const auto* rows = reinterpret_cast<const Row<scalar_t, C>*>(table) + first;
  const float* u = inputs + static_cast<size_t>(b) * D;

  Cell<D> centre;
  const bool inside = locate<D>(u, scale, opt, centre);
  float centre_rows[1 << D][C];
  if (inside) {
#pragma unroll
    for (int corner = 0; corner < (1 << D); ++corner) {
      float axis[D];
      uint32_t vertex[D];
      corner_weights<D>(centre, corner, axis, vertex);
      const Row<scalar_t, C> row = rows[table_row<D>(vertex, resolution, size, opt)];
#pragma unroll
      for (int ch = 0; ch < C; ++ch) centre_rows[corner][ch] = to_float(row.v[ch]);
    }
  }
  for (int tap = 0; tap < kTaps; ++tap) {
    float p[D];
    stencil_tap(u, tap, step, p);
    Cell<D> cell;
    float acc[C] = {};
    if (locate<D>(p, scale, opt, cell)) {
#pragma unroll
      for (int corner = 0; corner < (1 << D); ++corner) {
        float axis[D];
        uint32_t vertex[D];
        const float w = corner_weights<D>(cell, corner, axis, vertex);
        const int shared = inside ? centre_corner(centre, vertex) : -1;
        if (shared >= 0) {
#pragma unroll
          for (int ch = 0; ch < C; ++ch) acc[ch] += w * centre_rows[shared][ch];
        } else {
          const Row<scalar_t, C> row = rows[table_row<D>(vertex, resolution, size, opt)];
#pragma unroll
          for (int ch = 0; ch < C; ++ch) acc[ch] += w * to_float(row.v[ch]);
        }
      }
    }
    Row<scalar_t, C> result;
#pragma unroll
    for (int ch = 0; ch < C; ++ch) result.v[ch] = from_float<scalar_t>(acc[ch]);
    reinterpret_cast<Row<scalar_t, C>*>(outputs)[(static_cast<size_t>(tap) * batch + b) * levels + level] = result;
  }
}

// Sums g over each run of consecutive lanes of the warp that name the same row and tells whether this lane heads
// its run, i.e. holds the run's sum and scatters it. Training samples arrive ray by ray, so at the coarse levels
// whole runs of lanes share a corner, and their atomics would otherwise queue on one address. Every lane of the warp
// must call it (it shuffles across the full warp).
template <int C>
__device__ __forceinline__ bool sum_runs(uint32_t row, float (&g)[C]) {
  constexpr unsigned kAll = 0xffffffffu;
  const unsigned lane = threadIdx.x & 31u;
  const uint32_t before = __shfl_up_sync(kAll, row, 1);
  const bool head = lane == 0 || before != row;
  const unsigned heads = __ballot_sync(kAll, head);
  if (heads == kAll) return true;  // the same for the whole warp: no run longer than one lane
  const int run = __popc(heads & (kAll >> (31u - lane)));
#pragma unroll
  for (unsigned offset = 1; offset < 32; offset <<= 1) {
    const int later_run = __shfl_down_sync(kAll, run, offset);
    float later[C];
#pragma unroll
    for (int ch = 0; ch < C; ++ch) later[ch] = __shfl_down_sync(kAll, g[ch], offset);
    if (lane + offset < 32 && later_run == run) {
#pragma unroll
      for (int ch = 0; ch < C; ++ch) g[ch] += later[ch];
    }
  }
  return head;
}

// Backward of the stencil (table gradient only): the gradients of the taps' corners that are the point's own are
// summed in registers, then over the warp's runs of points in the same cell, and scattered with one atomic per run
// and corner; the other corners are scattered as they come. Lanes past the batch stay to take part in the sums.
template <typename scalar_t, int C>
__global__ void __launch_bounds__(kThreads)
    stencil_backward_kernel(const scalar_t* __restrict__ grad, const float* __restrict__ inputs,
                            const int32_t* __restrict__ offsets, scalar_t* __restrict__ grad_table, uint32_t batch,
                            uint32_t levels, const __grid_constant__ LevelScales scales, Options opt, float step) {
  static_assert(kThreads % 32 == 0, "sum_runs needs whole warps");
  constexpr int D = 3;
  constexpr uint32_t kNoRow = 0xffffffffu;
  const uint32_t b = blockIdx.x * blockDim.x + threadIdx.x;
  const bool in_batch = b < batch;
  const uint32_t level = blockIdx.y;
  const auto [scale, first, size, resolution] = level_at(offsets, scales, level);
  const float* u = inputs + static_cast<size_t>(in_batch ? b : 0) * D;

  Cell<D> centre;
  const bool inside = in_batch && locate<D>(u, scale, opt, centre);
  float shared_grad[1 << D][C] = {};
  for (int tap = 0; in_batch && tap < kTaps; ++tap) {
    float p[D];
    stencil_tap(u, tap, step, p);
    Cell<D> cell;
    if (!locate<D>(p, scale, opt, cell)) continue;
    const Row<scalar_t, C> g_row =
        reinterpret_cast<const Row<scalar_t, C>*>(grad)[(static_cast<size_t>(tap) * batch + b) * levels + level];
    float g[C];
#pragma unroll
    for (int ch = 0; ch < C; ++ch) g[ch] = to_float(g_row.v[ch]);
#pragma unroll
    for (int corner = 0; corner < (1 << D); ++corner) {
      float axis[D];
      uint32_t vertex[D];
      const float w = corner_weights<D>(cell, corner, axis, vertex);
      const int shared = inside ? centre_corner(centre, vertex) : -1;
      if (shared >= 0) {
#pragma unroll
        for (int ch = 0; ch < C; ++ch) shared_grad[shared][ch] += w * g[ch];
      } else {
        const uint32_t row = first + table_row<D>(vertex, resolution, size, opt);
        scatter_row<C>(grad_table + static_cast<size_t>(row) * C, g, w);
      }
    }
  }
#pragma unroll
  for (int corner = 0; corner < (1 << D); ++corner) {
    uint32_t row = kNoRow;
    if (inside) {
      float axis[D];
      uint32_t vertex[D];
      corner_weights<D>(centre, corner, axis, vertex);
      row = first + table_row<D>(vertex, resolution, size, opt);
    }
    if (sum_runs<C>(row, shared_grad[corner]) && inside) {
      scatter_row<C>(grad_table + static_cast<size_t>(row) * C, shared_grad[corner], 1.f);
    }
  }
}

// Calls f(std::integral_constant<int, D>, std::integral_constant<int, C>) for the supported sizes.
template <int D, typename F>
void with_channels(int64_t channels, F&& f) {
  switch (channels) {
    case 1: return f(std::integral_constant<int, D>{}, std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, D>{}, std::integral_constant<int, 2>{});
    case 4: return f(std::integral_constant<int, D>{}, std::integral_constant<int, 4>{});
    case 8: return f(std::integral_constant<int, D>{}, std::integral_constant<int, 8>{});
    default: TORCH_CHECK(false, "grid encoder: level_dim must be 1, 2, 4 or 8, got ", channels);
  }
}

template <typename F>
void with_sizes(int64_t dim, int64_t channels, F&& f) {
  switch (dim) {
    case 2: return with_channels<2>(channels, f);
    case 3: return with_channels<3>(channels, f);
    case 4: return with_channels<4>(channels, f);
    case 5: return with_channels<5>(channels, f);
    default: TORCH_CHECK(false, "grid encoder: input_dim must be 2..5, got ", dim);
  }
}

template <typename F>
void with_scalar(const at::Tensor& table, F&& f) {
  if (table.scalar_type() == at::kHalf) {
    f(__half{});
  } else {
    f(float{});
  }
}

void check_common(const at::Tensor& inputs, const at::Tensor& table, const at::Tensor& offsets,
                  const std::vector<double>& scales) {
  TORCH_CHECK(inputs.is_cuda() && table.is_cuda() && offsets.is_cuda(), "grid encoder: tensors must be on CUDA");
  TORCH_CHECK(inputs.device() == table.device() && inputs.device() == offsets.device(),
              "grid encoder: tensors must be on one device");
  TORCH_CHECK(inputs.dim() == 2 && inputs.scalar_type() == at::kFloat && inputs.is_contiguous(),
              "grid encoder: inputs must be a contiguous float32 [B, D] tensor");
  TORCH_CHECK(table.dim() == 2 && table.is_contiguous() &&
                  (table.scalar_type() == at::kFloat || table.scalar_type() == at::kHalf),
              "grid encoder: table must be a contiguous float32/float16 [E, C] tensor");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(table.data_ptr()) % (table.element_size() * table.size(1)) == 0,
              "grid encoder: table rows must be aligned to their size");
  TORCH_CHECK(offsets.dim() == 1 && offsets.scalar_type() == at::kInt && offsets.is_contiguous(),
              "grid encoder: offsets must be a contiguous int32 vector");
  const int64_t levels = offsets.numel() - 1;
  TORCH_CHECK(levels >= 1 && levels <= kMaxLevels, "grid encoder: 1..", kMaxLevels, " levels supported");
  TORCH_CHECK(static_cast<int64_t>(scales.size()) == levels, "grid encoder: one scale per level expected");
}

LevelScales pack_scales(const std::vector<double>& scales) {
  LevelScales packed{};
  for (size_t l = 0; l < scales.size(); ++l) packed.v[l] = static_cast<float>(scales[l]);
  return packed;
}

// What every launch takes from its arguments: sizes, one block row per level, the current stream (call it under the
// inputs' device guard), the grid options and the level scales.
struct Launch {
  int64_t batch;
  int64_t levels;
  int64_t channels;
  dim3 blocks;
  cudaStream_t stream;
  Options opt;
  LevelScales scales;
};

Launch launch_for(const at::Tensor& inputs, const at::Tensor& table, const at::Tensor& offsets,
                  const std::vector<double>& scales, bool hashed, bool align_corners, bool smoothstep) {
  const int64_t batch = inputs.size(0);
  const int64_t levels = offsets.numel() - 1;
  return {batch,
          levels,
          table.size(1),
          dim3((batch + kThreads - 1) / kThreads, levels),
          c10::cuda::getCurrentCUDAStream(),
          Options{hashed, align_corners, smoothstep},
          pack_scales(scales)};
}

}  // namespace

at::Tensor grid_encode_forward(const at::Tensor& inputs, const at::Tensor& table, const at::Tensor& offsets,
                                  const std::vector<double>& scales, bool hashed, bool align_corners, bool smoothstep) {
  check_common(inputs, table, offsets, scales);
  const c10::cuda::CUDAGuard guard(inputs.device());
  const Launch run = launch_for(inputs, table, offsets, scales, hashed, align_corners, smoothstep);
  auto outputs = at::empty({run.batch, run.levels * run.channels}, table.options());
  if (run.batch == 0) return outputs;
  with_scalar(table, [&](auto tag) {
    using scalar_t = decltype(tag);
    with_sizes(inputs.size(1), run.channels, [&](auto dim, auto ch) {
      grid_forward_kernel<scalar_t, decltype(dim)::value, decltype(ch)::value><<<run.blocks, kThreads, 0, run.stream>>>(
          inputs.data_ptr<float>(), static_cast<const scalar_t*>(table.data_ptr()), offsets.data_ptr<int32_t>(),
          static_cast<scalar_t*>(outputs.data_ptr()), static_cast<uint32_t>(run.batch),
          static_cast<uint32_t>(run.levels), run.scales, run.opt);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return outputs;
}

std::tuple<at::Tensor, at::Tensor> grid_encode_backward(const at::Tensor& grad, const at::Tensor& inputs,
                                                              const at::Tensor& table, const at::Tensor& offsets,
                                                              const std::vector<double>& scales, bool hashed,
                                                              bool align_corners, bool smoothstep,
                                                              bool needs_table_grad, bool needs_input_grad) {
  check_common(inputs, table, offsets, scales);
  const c10::cuda::CUDAGuard guard(inputs.device());
  const Launch run = launch_for(inputs, table, offsets, scales, hashed, align_corners, smoothstep);
  TORCH_CHECK(grad.is_cuda() && grad.is_contiguous() && grad.scalar_type() == table.scalar_type() &&
                  grad.dim() == 2 && grad.size(0) == run.batch && grad.size(1) == run.levels * run.channels,
              "grid encoder: grad must be a contiguous [B, L*C] tensor in the table's dtype");
  auto grad_table = needs_table_grad ? at::zeros_like(table) : at::Tensor();
  auto grad_inputs = needs_input_grad ? at::zeros_like(inputs) : at::Tensor();
  if (run.batch == 0 || !(needs_table_grad || needs_input_grad)) return {grad_table, grad_inputs};
  with_scalar(table, [&](auto tag) {
    using scalar_t = decltype(tag);
    with_sizes(inputs.size(1), run.channels, [&](auto dim, auto ch) {
      grid_backward_kernel<scalar_t, decltype(dim)::value, decltype(ch)::value><<<run.blocks, kThreads, 0, run.stream>>>(
          static_cast<const scalar_t*>(grad.data_ptr()), inputs.data_ptr<float>(),
          static_cast<const scalar_t*>(table.data_ptr()), offsets.data_ptr<int32_t>(),
          needs_table_grad ? static_cast<scalar_t*>(grad_table.data_ptr()) : nullptr,
          needs_input_grad ? grad_inputs.data_ptr<float>() : nullptr, static_cast<uint32_t>(run.batch),
          static_cast<uint32_t>(run.levels), run.scales, run.opt);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_table, grad_inputs};
}

at::Tensor grid_encode_stencil_forward(const at::Tensor& inputs, const at::Tensor& table, const at::Tensor& offsets,
                                       const std::vector<double>& scales, bool hashed, bool align_corners,
                                       bool smoothstep, double step) {
  check_common(inputs, table, offsets, scales);
  TORCH_CHECK(inputs.size(1) == 3, "grid encoder stencil: inputs must be [B, 3]");
  const c10::cuda::CUDAGuard guard(inputs.device());
  const Launch run = launch_for(inputs, table, offsets, scales, hashed, align_corners, smoothstep);
  auto outputs = at::empty({kTaps, run.batch, run.levels * run.channels}, table.options());
  if (run.batch == 0) return outputs;
  with_scalar(table, [&](auto tag) {
    using scalar_t = decltype(tag);
    with_channels<3>(run.channels, [&](auto, auto ch) {
      stencil_forward_kernel<scalar_t, decltype(ch)::value><<<run.blocks, kThreads, 0, run.stream>>>(
          inputs.data_ptr<float>(), static_cast<const scalar_t*>(table.data_ptr()), offsets.data_ptr<int32_t>(),
          static_cast<scalar_t*>(outputs.data_ptr()), static_cast<uint32_t>(run.batch),
          static_cast<uint32_t>(run.levels), run.scales, run.opt, static_cast<float>(step));
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return outputs;
}

at::Tensor grid_encode_stencil_backward(const at::Tensor& grad, const at::Tensor& inputs, const at::Tensor& table,
                                        const at::Tensor& offsets, const std::vector<double>& scales, bool hashed,
                                        bool align_corners, bool smoothstep, double step) {
  check_common(inputs, table, offsets, scales);
  TORCH_CHECK(inputs.size(1) == 3, "grid encoder stencil: inputs must be [B, 3]");
  const c10::cuda::CUDAGuard guard(inputs.device());
  const Launch run = launch_for(inputs, table, offsets, scales, hashed, align_corners, smoothstep);
  TORCH_CHECK(grad.is_cuda() && grad.is_contiguous() && grad.scalar_type() == table.scalar_type() &&
                  grad.dim() == 3 && grad.size(0) == kTaps && grad.size(1) == run.batch &&
                  grad.size(2) == run.levels * run.channels,
              "grid encoder stencil: grad must be a contiguous [7, B, L*C] tensor in the table's dtype");
  auto grad_table = at::zeros_like(table);
  if (run.batch == 0) return grad_table;
  with_scalar(table, [&](auto tag) {
    using scalar_t = decltype(tag);
    with_channels<3>(run.channels, [&](auto, auto ch) {
      stencil_backward_kernel<scalar_t, decltype(ch)::value><<<run.blocks, kThreads, 0, run.stream>>>(
          static_cast<const scalar_t*>(grad.data_ptr()), inputs.data_ptr<float>(), offsets.data_ptr<int32_t>(),
          static_cast<scalar_t*>(grad_table.data_ptr()), static_cast<uint32_t>(run.batch),
          static_cast<uint32_t>(run.levels), run.scales, run.opt, static_cast<float>(step));
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_table;
}

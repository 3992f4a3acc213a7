// Ray marching through a cascaded occupancy bitfield and front-to-back compositing.
//
// One thread per ray (or per live slot at inference). The marching arithmetic uses explicitly rounded
// intrinsics (__fmul_rn, __fadd_rn, ...) so the compiler cannot fuse it into FMAs: the PyTorch reference
// repeats the same float32 operations and both backends then pick the same cells.

#include <cstdint>

#include <math_constants.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace {

constexpr int kThreads = 128;

inline int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

__device__ inline float clampf(float x, float lo, float hi) { return fminf(hi, fmaxf(lo, x)); }

__device__ inline uint32_t expand_bits(uint32_t v) {
    v = (v * 0x00010001u) & 0xFF0000FFu;
    v = (v * 0x00000101u) & 0x0F00F00Fu;
    v = (v * 0x00000011u) & 0xC30C30C3u;
    v = (v * 0x00000005u) & 0x49249249u;
    return v;
}

__device__ inline uint32_t compact_bits(uint32_t v) {
    v &= 0x49249249u;
    v = (v | (v >> 2)) & 0xC30C30C3u;
    v = (v | (v >> 4)) & 0x0F00F00Fu;
    v = (v | (v >> 8)) & 0xFF0000FFu;
    v = (v | (v >> 16)) & 0x0000FFFFu;
    return v;
}

__device__ inline uint32_t morton(uint32_t x, uint32_t y, uint32_t z) {
    return expand_bits(x) | (expand_bits(y) << 1) | (expand_bits(z) << 2);
}

// Occupancy grid and step rule shared by both marchers.
struct Grid {
    const uint8_t* bits;
    float bound, dt_gamma, dt_min, dt_max;
    int C, H;

    __device__ float step(float t) const { return clampf(__fmul_rn(t, dt_gamma), dt_min, dt_max); }
};

// March one ray from t until far or `limit` samples; calls emit(i, xyz, dt, gap) for each sample.
// Empty cells are crossed in the same step increments, up to the first step past the cell's exit.
// A step too small to change t (t beyond 2^24 steps) ends the ray instead of looping forever.
template <typename Emit>
__device__ uint32_t march(const Grid& g, const float o[3], const float d[3], float t, float far, uint32_t limit,
                          Emit emit) {
    float inv[3];
    for (int k = 0; k < 3; ++k) inv[k] = __fdiv_rn(1.0f, d[k]);
    const float rH = __fdiv_rn(1.0f, static_cast<float>(g.H));
    const uint32_t H3 = static_cast<uint32_t>(g.H) * g.H * g.H;
    float last = t;
    uint32_t count = 0;
    while (t < far && count < limit) {
        const float dt = g.step(t);
        float p[3];
        for (int k = 0; k < 3; ++k) p[k] = clampf(__fadd_rn(o[k], __fmul_rn(t, d[k])), -g.bound, g.bound);
        int pos_level, dt_level;
        frexpf(fmaxf(fabsf(p[0]), fmaxf(fabsf(p[1]), fabsf(p[2]))), &pos_level);
        frexpf(__fmul_rn(__fmul_rn(dt, static_cast<float>(g.H)), 0.5f), &dt_level);
        const int level = min(max(max(pos_level, dt_level), 0), g.C - 1);
        const float mip_bound = fminf(scalbnf(1.0f, level), g.bound);
        const float mip_rbound = __fdiv_rn(1.0f, mip_bound);
        int cell[3];
        for (int k = 0; k < 3; ++k) {
            const float u = __fmul_rn(__fmul_rn(0.5f, __fadd_rn(__fmul_rn(p[k], mip_rbound), 1.0f)),
                                      static_cast<float>(g.H));
            cell[k] = static_cast<int>(clampf(u, 0.0f, static_cast<float>(g.H - 1)));
        }
        const uint32_t index = level * H3 + morton(cell[0], cell[1], cell[2]);
        if (g.bits[index >> 3] & (1u << (index & 7u))) {
            const float next = __fadd_rn(t, dt);
            emit(count, p, dt, __fsub_rn(next, last));
            last = next;
            t = next > t ? next : INFINITY;
            ++count;
            continue;
        }
        float nearest = INFINITY;
        for (int k = 0; k < 3; ++k) {
            const float face = __fsub_rn(
                __fmul_rn(__fmul_rn(__fadd_rn(__fadd_rn(static_cast<float>(cell[k]), 0.5f),
                                              __fmul_rn(0.5f, copysignf(1.0f, d[k]))), rH), 2.0f), 1.0f);
            const float tk = __fmul_rn(__fsub_rn(__fmul_rn(face, mip_bound), p[k]), inv[k]);
            nearest = k == 0 ? tk : fminf(nearest, tk);
        }
        const float cell_end = __fadd_rn(t, fmaxf(0.0f, nearest));
        do {
            const float next = __fadd_rn(t, g.step(t));
            t = next > t ? next : INFINITY;
        } while (t < cell_end && t < far);
    }
    return count;
}

__device__ inline void load3(const float* src, float dst[3]) {
    dst[0] = src[0];
    dst[1] = src[1];
    dst[2] = src[2];
}

__global__ void near_far_kernel(const float* __restrict__ rays_o, const float* __restrict__ rays_d,
                                const float* __restrict__ aabb, int64_t N, float min_near, float* nears,
                                float* fars) {
    const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (n >= N) return;
    float near = 0.0f, far = 0.0f;
    for (int k = 0; k < 3; ++k) {
        const float inv = __fdiv_rn(1.0f, rays_d[n * 3 + k]);
        float lo = __fmul_rn(__fsub_rn(aabb[k], rays_o[n * 3 + k]), inv);
        float hi = __fmul_rn(__fsub_rn(aabb[k + 3], rays_o[n * 3 + k]), inv);
        if (lo > hi) {
            const float swap = lo;
            lo = hi;
            hi = swap;
        }
        if (k == 0) {
            near = lo;
            far = hi;
            continue;
        }
        if (near > hi || lo > far) {
            nears[n] = fars[n] = FLT_MAX;
            return;
        }
        if (lo > near) near = lo;
        if (hi < far) far = hi;
    }
    if (near < min_near) near = min_near;
    nears[n] = near;
    fars[n] = far;
}

__global__ void sph_from_ray_kernel(const float* __restrict__ rays_o, const float* __restrict__ rays_d, float radius,
                                    int64_t N, float* coords) {
    const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (n >= N) return;
    float o[3], d[3];
    load3(rays_o + n * 3, o);
    load3(rays_d + n * 3, d);
    const float a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
    const float b = o[0] * d[0] + o[1] * d[1] + o[2] * d[2];
    const float c = o[0] * o[0] + o[1] * o[1] + o[2] * o[2] - radius * radius;
    const float t = (-b + sqrtf(b * b - a * c)) / a;
    const float x = o[0] + t * d[0], y = o[1] + t * d[1], z = o[2] + t * d[2];
    const float theta = atan2f(sqrtf(x * x + z * z), y);
    const float phi = atan2f(z, x);
    coords[n * 2] = 2.0f * theta / CUDART_PI_F - 1.0f;
    coords[n * 2 + 1] = phi / CUDART_PI_F;
}

__global__ void morton3D_kernel(const int* __restrict__ coords, int64_t N, int* indices) {
    const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (n >= N) return;
    indices[n] = static_cast<int>(morton(coords[n * 3], coords[n * 3 + 1], coords[n * 3 + 2]));
}

__global__ void morton3D_invert_kernel(const int* __restrict__ indices, int64_t N, int* coords) {
    const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (n >= N) return;
    const uint32_t code = static_cast<uint32_t>(indices[n]);
    for (int k = 0; k < 3; ++k) coords[n * 3 + k] = static_cast<int>(compact_bits(code >> k));
}

__global__ void packbits_kernel(const float* __restrict__ grid, int64_t bytes, float thresh, uint8_t* bitfield) {
    const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (n >= bytes) return;
    uint8_t bits = 0;
    for (int i = 0; i < 8; ++i) bits |= static_cast<uint8_t>(grid[n * 8 + i] > thresh) << i;
    bitfield[n] = bits;
}

// Training, pass 1: samples per ray.
__global__ void march_train_count_kernel(Grid g, const float* __restrict__ rays_o, const float* __restrict__ rays_d,
                                         const float* __restrict__ nears, const float* __restrict__ fars,
                                         const float* __restrict__ noises, int64_t N, uint32_t max_steps,
                                         int* counts) {
    const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (n >= N) return;
    float o[3], d[3];
    load3(rays_o + n * 3, o);
    load3(rays_d + n * 3, d);
    const float t0 = __fadd_rn(nears[n], __fmul_rn(g.step(nears[n]), noises[n]));
    counts[n] = static_cast<int>(march(g, o, d, t0, fars[n], max_steps, [](uint32_t, const float*, float, float) {}));
}

// Training, pass 2: re-march the rays whose samples fit the buffer and write them at their offsets.
__global__ void march_train_write_kernel(Grid g, const float* __restrict__ rays_o, const float* __restrict__ rays_d,
                                         const float* __restrict__ nears, const float* __restrict__ fars,
                                         const float* __restrict__ noises, const int* __restrict__ rays, int64_t N,
                                         uint32_t max_steps, int64_t capacity, float* xyzs, float* dirs,
                                         float* deltas) {
    const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (n >= N) return;
    const int64_t offset = rays[n * 3 + 1];
    const int64_t count = rays[n * 3 + 2];
    if (count == 0 || offset + count > capacity) return;
    float o[3], d[3];
    load3(rays_o + n * 3, o);
    load3(rays_d + n * 3, d);
    const float t0 = __fadd_rn(nears[n], __fmul_rn(g.step(nears[n]), noises[n]));
    march(g, o, d, t0, fars[n], static_cast<uint32_t>(count), [&](uint32_t i, const float* p, float dt, float gap) {
        const int64_t row = offset + i;
        for (int k = 0; k < 3; ++k) {
            xyzs[row * 3 + k] = p[k];
            dirs[row * 3 + k] = d[k];
        }
        deltas[row * 2] = dt;
        deltas[row * 2 + 1] = gap;
    });
}

__global__ void march_infer_kernel(Grid g, const int* __restrict__ rays_alive, const float* __restrict__ rays_t,
                                   const float* __restrict__ rays_o, const float* __restrict__ rays_d,
                                   const float* __restrict__ fars, const float* __restrict__ noises, int64_t n_alive,
                                   uint32_t n_step, float* xyzs, float* dirs, float* deltas) {
    const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (n >= n_alive) return;
    const int64_t id = rays_alive[n];
    float o[3], d[3];
    load3(rays_o + id * 3, o);
    load3(rays_d + id * 3, d);
    const float t0 = __fadd_rn(rays_t[id], __fmul_rn(g.step(rays_t[id]), noises[n]));
    march(g, o, d, t0, fars[id], n_step, [&](uint32_t i, const float* p, float dt, float gap) {
        const int64_t row = n * n_step + i;
        for (int k = 0; k < 3; ++k) {
            xyzs[row * 3 + k] = p[k];
            dirs[row * 3 + k] = d[k];
        }
        deltas[row * 2] = dt;
        deltas[row * 2 + 1] = gap;
    });
}

template <typename scalar_t>
__global__ void composite_train_forward_kernel(const scalar_t* __restrict__ sigmas, const scalar_t* __restrict__ rgbs,
                                               const float* __restrict__ deltas, const int* __restrict__ rays,
                                               int64_t rows, int64_t M, float T_thresh, float* weights_sum,
                                               float* depth, float* image) {
    const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (r >= rows) return;
    const int64_t id = rays[r * 3], offset = rays[r * 3 + 1], count = rays[r * 3 + 2];
    float T = 1.0f, ws = 0.0f, dep = 0.0f, s = 0.0f, c[3] = {0.0f, 0.0f, 0.0f};
    if (count > 0 && offset + count <= M) {
        for (int64_t i = offset; i < offset + count; ++i) {
            const float alpha = 1.0f - __expf(-static_cast<float>(sigmas[i]) * deltas[i * 2]);
            const float w = alpha * T;
            for (int k = 0; k < 3; ++k) c[k] += w * static_cast<float>(rgbs[i * 3 + k]);
            s += deltas[i * 2 + 1];
            dep += w * s;
            ws += w;
            T *= 1.0f - alpha;
            if (T < T_thresh) break;
        }
    }
    weights_sum[id] = ws;
    depth[id] = dep;
    for (int k = 0; k < 3; ++k) image[id * 3 + k] = c[k];
}

// d image / d sigma_i = delta_i * (T_{i+1} c_i - sum_{j>i} w_j c_j); the weights_sum term simplifies to
// delta_i * (1 - weights_sum) because T_{i+1} = 1 - sum_{j<=i} w_j.
template <typename scalar_t>
__global__ void composite_train_backward_kernel(const float* __restrict__ grad_weights_sum,
                                                const float* __restrict__ grad_image,
                                                const scalar_t* __restrict__ sigmas, const scalar_t* __restrict__ rgbs,
                                                const float* __restrict__ deltas, const int* __restrict__ rays,
                                                const float* __restrict__ weights_sum, const float* __restrict__ image,
                                                int64_t rows, int64_t M, float T_thresh, scalar_t* grad_sigmas,
                                                scalar_t* grad_rgbs) {
    const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (r >= rows) return;
    const int64_t id = rays[r * 3], offset = rays[r * 3 + 1], count = rays[r * 3 + 2];
    if (count == 0 || offset + count > M) return;
    const float g_ws = grad_weights_sum[id];
    const float g[3] = {grad_image[id * 3], grad_image[id * 3 + 1], grad_image[id * 3 + 2]};
    const float final_c[3] = {image[id * 3], image[id * 3 + 1], image[id * 3 + 2]};
    const float rest_ws = g_ws * (1.0f - weights_sum[id]);
    float T = 1.0f, c[3] = {0.0f, 0.0f, 0.0f};
    for (int64_t i = offset; i < offset + count; ++i) {
        const float alpha = 1.0f - __expf(-static_cast<float>(sigmas[i]) * deltas[i * 2]);
        const float w = alpha * T;
        T *= 1.0f - alpha;
        float acc = rest_ws;
        for (int k = 0; k < 3; ++k) {
            const float ck = static_cast<float>(rgbs[i * 3 + k]);
            c[k] += w * ck;
            acc += g[k] * (T * ck - (final_c[k] - c[k]));
            grad_rgbs[i * 3 + k] = static_cast<scalar_t>(g[k] * w);
        }
        grad_sigmas[i] = static_cast<scalar_t>(deltas[i * 2] * acc);
        if (T < T_thresh) break;
    }
}

template <typename scalar_t>
__global__ void composite_infer_kernel(int64_t n_alive, uint32_t n_step, float T_thresh, int* rays_alive,
                                       float* rays_t, const scalar_t* __restrict__ sigmas,
                                       const scalar_t* __restrict__ rgbs, const float* __restrict__ deltas,
                                       float* weights_sum, float* depth, float* image) {
    const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (n >= n_alive) return;
    const int64_t id = rays_alive[n];
    float t = rays_t[id], ws = weights_sum[id], dep = depth[id];
    float c[3] = {image[id * 3], image[id * 3 + 1], image[id * 3 + 2]};
    uint32_t step = 0;
    for (; step < n_step; ++step) {
        const int64_t i = n * n_step + step;
        const float delta = deltas[i * 2];
        if (delta == 0.0f) break;
        const float alpha = 1.0f - __expf(-static_cast<float>(sigmas[i]) * delta);
        const float T = 1.0f - ws;
        const float w = alpha * T;
        ws += w;
        t += deltas[i * 2 + 1];
        dep += w * t;
        for (int k = 0; k < 3; ++k) c[k] += w * static_cast<float>(rgbs[i * 3 + k]);
        if (T < T_thresh) break;
    }
    if (step < n_step) {
        rays_alive[n] = -1;
    } else {
        rays_t[id] = t;
    }
    weights_sum[id] = ws;
    depth[id] = dep;
    for (int k = 0; k < 3; ++k) image[id * 3 + k] = c[k];
}

Grid make_grid(const at::Tensor& bitfield, double bound, double dt_gamma, double dt_min, double dt_max, int64_t C,
               int64_t H) {
    return Grid{bitfield.data_ptr<uint8_t>(), static_cast<float>(bound), static_cast<float>(dt_gamma),
                static_cast<float>(dt_min), static_cast<float>(dt_max), static_cast<int>(C), static_cast<int>(H)};
}

}  // namespace

void near_far_from_aabb(at::Tensor rays_o, at::Tensor rays_d, at::Tensor aabb, double min_near, at::Tensor nears,
                        at::Tensor fars) {
    const c10::cuda::CUDAGuard guard(rays_o.device());
    const int64_t N = rays_o.size(0);
    if (N == 0) return;
    near_far_kernel<<<blocks_for(N), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        rays_o.data_ptr<float>(), rays_d.data_ptr<float>(), aabb.data_ptr<float>(), N, static_cast<float>(min_near),
        nears.data_ptr<float>(), fars.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void sph_from_ray(at::Tensor rays_o, at::Tensor rays_d, double radius, at::Tensor coords) {
    const c10::cuda::CUDAGuard guard(rays_o.device());
    const int64_t N = rays_o.size(0);
    if (N == 0) return;
    sph_from_ray_kernel<<<blocks_for(N), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        rays_o.data_ptr<float>(), rays_d.data_ptr<float>(), static_cast<float>(radius), N, coords.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void morton3D(at::Tensor coords, at::Tensor indices) {
    const c10::cuda::CUDAGuard guard(coords.device());
    const int64_t N = coords.size(0);
    if (N == 0) return;
    morton3D_kernel<<<blocks_for(N), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        coords.data_ptr<int>(), N, indices.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void morton3D_invert(at::Tensor indices, at::Tensor coords) {
    const c10::cuda::CUDAGuard guard(indices.device());
    const int64_t N = indices.size(0);
    if (N == 0) return;
    morton3D_invert_kernel<<<blocks_for(N), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        indices.data_ptr<int>(), N, coords.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void packbits(at::Tensor grid, double thresh, at::Tensor bitfield) {
    const c10::cuda::CUDAGuard guard(grid.device());
    const int64_t bytes = bitfield.numel();
    if (bytes == 0) return;
    packbits_kernel<<<blocks_for(bytes), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        grid.data_ptr<float>(), bytes, static_cast<float>(thresh), bitfield.data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void march_rays_train_count(at::Tensor rays_o, at::Tensor rays_d, at::Tensor bitfield, double bound, double dt_gamma,
                            double dt_min, double dt_max, int64_t C, int64_t H, int64_t max_steps, at::Tensor nears,
                            at::Tensor fars, at::Tensor noises, at::Tensor counts) {
    const c10::cuda::CUDAGuard guard(rays_o.device());
    const int64_t N = rays_o.size(0);
    if (N == 0) return;
    march_train_count_kernel<<<blocks_for(N), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        make_grid(bitfield, bound, dt_gamma, dt_min, dt_max, C, H), rays_o.data_ptr<float>(),
        rays_d.data_ptr<float>(), nears.data_ptr<float>(), fars.data_ptr<float>(), noises.data_ptr<float>(), N,
        static_cast<uint32_t>(max_steps), counts.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void march_rays_train_write(at::Tensor rays_o, at::Tensor rays_d, at::Tensor bitfield, double bound, double dt_gamma,
                            double dt_min, double dt_max, int64_t C, int64_t H, int64_t max_steps, at::Tensor nears,
                            at::Tensor fars, at::Tensor noises, at::Tensor rays, int64_t capacity, at::Tensor xyzs,
                            at::Tensor dirs, at::Tensor deltas) {
    const c10::cuda::CUDAGuard guard(rays_o.device());
    const int64_t N = rays_o.size(0);
    if (N == 0) return;
    march_train_write_kernel<<<blocks_for(N), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        make_grid(bitfield, bound, dt_gamma, dt_min, dt_max, C, H), rays_o.data_ptr<float>(),
        rays_d.data_ptr<float>(), nears.data_ptr<float>(), fars.data_ptr<float>(), noises.data_ptr<float>(),
        rays.data_ptr<int>(), N, static_cast<uint32_t>(max_steps), capacity, xyzs.data_ptr<float>(),
        dirs.data_ptr<float>(), deltas.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void march_rays(int64_t n_alive, int64_t n_step, at::Tensor rays_alive, at::Tensor rays_t, at::Tensor rays_o,
                at::Tensor rays_d, at::Tensor bitfield, double bound, double dt_gamma, double dt_min, double dt_max,
                int64_t C, int64_t H, at::Tensor fars, at::Tensor noises, at::Tensor xyzs, at::Tensor dirs,
                at::Tensor deltas) {
    const c10::cuda::CUDAGuard guard(rays_o.device());
    if (n_alive == 0) return;
    march_infer_kernel<<<blocks_for(n_alive), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        make_grid(bitfield, bound, dt_gamma, dt_min, dt_max, C, H), rays_alive.data_ptr<int>(),
        rays_t.data_ptr<float>(), rays_o.data_ptr<float>(), rays_d.data_ptr<float>(), fars.data_ptr<float>(),
        noises.data_ptr<float>(), n_alive, static_cast<uint32_t>(n_step), xyzs.data_ptr<float>(),
        dirs.data_ptr<float>(), deltas.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void composite_rays_train_forward(at::Tensor sigmas, at::Tensor rgbs, at::Tensor deltas, at::Tensor rays,
                                  double T_thresh, at::Tensor weights_sum, at::Tensor depth, at::Tensor image) {
    const c10::cuda::CUDAGuard guard(sigmas.device());
    const int64_t rows = rays.size(0), M = sigmas.size(0);
    if (rows == 0) return;
    const auto stream = c10::cuda::getCurrentCUDAStream();
    if (sigmas.scalar_type() == at::kHalf) {
        composite_train_forward_kernel<at::Half><<<blocks_for(rows), kThreads, 0, stream>>>(
            sigmas.data_ptr<at::Half>(), rgbs.data_ptr<at::Half>(), deltas.data_ptr<float>(), rays.data_ptr<int>(),
            rows, M, static_cast<float>(T_thresh), weights_sum.data_ptr<float>(), depth.data_ptr<float>(),
            image.data_ptr<float>());
    } else {
        composite_train_forward_kernel<float><<<blocks_for(rows), kThreads, 0, stream>>>(
            sigmas.data_ptr<float>(), rgbs.data_ptr<float>(), deltas.data_ptr<float>(), rays.data_ptr<int>(), rows,
            M, static_cast<float>(T_thresh), weights_sum.data_ptr<float>(), depth.data_ptr<float>(),
            image.data_ptr<float>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void composite_rays_train_backward(at::Tensor grad_weights_sum, at::Tensor grad_image, at::Tensor sigmas,
                                   at::Tensor rgbs, at::Tensor deltas, at::Tensor rays, at::Tensor weights_sum,
                                   at::Tensor image, double T_thresh, at::Tensor grad_sigmas, at::Tensor grad_rgbs) {
    const c10::cuda::CUDAGuard guard(sigmas.device());
    const int64_t rows = rays.size(0), M = sigmas.size(0);
    if (rows == 0) return;
    const auto stream = c10::cuda::getCurrentCUDAStream();
    if (sigmas.scalar_type() == at::kHalf) {
        composite_train_backward_kernel<at::Half><<<blocks_for(rows), kThreads, 0, stream>>>(
            grad_weights_sum.data_ptr<float>(), grad_image.data_ptr<float>(), sigmas.data_ptr<at::Half>(),
            rgbs.data_ptr<at::Half>(), deltas.data_ptr<float>(), rays.data_ptr<int>(), weights_sum.data_ptr<float>(),
            image.data_ptr<float>(), rows, M, static_cast<float>(T_thresh), grad_sigmas.data_ptr<at::Half>(),
            grad_rgbs.data_ptr<at::Half>());
    } else {
        composite_train_backward_kernel<float><<<blocks_for(rows), kThreads, 0, stream>>>(
            grad_weights_sum.data_ptr<float>(), grad_image.data_ptr<float>(), sigmas.data_ptr<float>(),
            rgbs.data_ptr<float>(), deltas.data_ptr<float>(), rays.data_ptr<int>(), weights_sum.data_ptr<float>(),
            image.data_ptr<float>(), rows, M, static_cast<float>(T_thresh), grad_sigmas.data_ptr<float>(),
            grad_rgbs.data_ptr<float>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void composite_rays(int64_t n_alive, int64_t n_step, double T_thresh, at::Tensor rays_alive, at::Tensor rays_t,
                    at::Tensor sigmas, at::Tensor rgbs, at::Tensor deltas, at::Tensor weights_sum, at::Tensor depth,
                    at::Tensor image) {
    const c10::cuda::CUDAGuard guard(sigmas.device());
    if (n_alive == 0) return;
    const auto stream = c10::cuda::getCurrentCUDAStream();
    if (sigmas.scalar_type() == at::kHalf) {
        composite_infer_kernel<at::Half><<<blocks_for(n_alive), kThreads, 0, stream>>>(
            n_alive, static_cast<uint32_t>(n_step), static_cast<float>(T_thresh), rays_alive.data_ptr<int>(),
            rays_t.data_ptr<float>(), sigmas.data_ptr<at::Half>(), rgbs.data_ptr<at::Half>(),
            deltas.data_ptr<float>(), weights_sum.data_ptr<float>(), depth.data_ptr<float>(),
            image.data_ptr<float>());
    } else {
        composite_infer_kernel<float><<<blocks_for(n_alive), kThreads, 0, stream>>>(
            n_alive, static_cast<uint32_t>(n_step), static_cast<float>(T_thresh), rays_alive.data_ptr<int>(),
            rays_t.data_ptr<float>(), sigmas.data_ptr<float>(), rgbs.data_ptr<float>(), deltas.data_ptr<float>(),
            weights_sum.data_ptr<float>(), depth.data_ptr<float>(), image.data_ptr<float>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

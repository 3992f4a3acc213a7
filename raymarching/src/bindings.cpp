// Python bindings of the ray-marching kernels. Outputs are allocated and validated by raymarching/cuda.py.

#include <torch/extension.h>

void near_far_from_aabb(at::Tensor rays_o, at::Tensor rays_d, at::Tensor aabb, double min_near, at::Tensor nears,
                        at::Tensor fars);
void sph_from_ray(at::Tensor rays_o, at::Tensor rays_d, double radius, at::Tensor coords);
void morton3D(at::Tensor coords, at::Tensor indices);
void morton3D_invert(at::Tensor indices, at::Tensor coords);
void packbits(at::Tensor grid, double thresh, at::Tensor bitfield);
void march_rays_train_count(at::Tensor rays_o, at::Tensor rays_d, at::Tensor bitfield, double bound, double dt_gamma,
                            double dt_min, double dt_max, int64_t C, int64_t H, int64_t max_steps, at::Tensor nears,
                            at::Tensor fars, at::Tensor noises, at::Tensor counts);
void march_rays_train_write(at::Tensor rays_o, at::Tensor rays_d, at::Tensor bitfield, double bound, double dt_gamma,
                            double dt_min, double dt_max, int64_t C, int64_t H, int64_t max_steps, at::Tensor nears,
                            at::Tensor fars, at::Tensor noises, at::Tensor rays, int64_t capacity, at::Tensor xyzs,
                            at::Tensor dirs, at::Tensor deltas);
void march_rays(int64_t n_alive, int64_t n_step, at::Tensor rays_alive, at::Tensor rays_t, at::Tensor rays_o,
                at::Tensor rays_d, at::Tensor bitfield, double bound, double dt_gamma, double dt_min, double dt_max,
                int64_t C, int64_t H, at::Tensor fars, at::Tensor noises, at::Tensor xyzs, at::Tensor dirs,
                at::Tensor deltas);
void composite_rays_train_forward(at::Tensor sigmas, at::Tensor rgbs, at::Tensor deltas, at::Tensor rays,
                                  double T_thresh, at::Tensor weights_sum, at::Tensor depth, at::Tensor image);
void composite_rays_train_backward(at::Tensor grad_weights_sum, at::Tensor grad_image, at::Tensor sigmas,
                                   at::Tensor rgbs, at::Tensor deltas, at::Tensor rays, at::Tensor weights_sum,
                                   at::Tensor image, double T_thresh, at::Tensor grad_sigmas, at::Tensor grad_rgbs);
void composite_rays(int64_t n_alive, int64_t n_step, double T_thresh, at::Tensor rays_alive, at::Tensor rays_t,
                    at::Tensor sigmas, at::Tensor rgbs, at::Tensor deltas, at::Tensor weights_sum, at::Tensor depth,
                    at::Tensor image);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("near_far_from_aabb", &near_far_from_aabb, "ray/box entry and exit distances");
    m.def("sph_from_ray", &sph_from_ray, "sphere exit point as normalised angles");
    m.def("morton3D", &morton3D, "Morton codes of cell coordinates");
    m.def("morton3D_invert", &morton3D_invert, "cell coordinates of Morton codes");
    m.def("packbits", &packbits, "occupancy bits of a density grid");
    m.def("march_rays_train_count", &march_rays_train_count, "training march, pass 1: samples per ray");
    m.def("march_rays_train_write", &march_rays_train_write, "training march, pass 2: write the samples");
    m.def("march_rays", &march_rays, "inference march: n_step samples per live ray");
    m.def("composite_rays_train_forward", &composite_rays_train_forward, "training compositing");
    m.def("composite_rays_train_backward", &composite_rays_train_backward, "training compositing, gradients");
    m.def("composite_rays", &composite_rays, "inference compositing, in place");
}

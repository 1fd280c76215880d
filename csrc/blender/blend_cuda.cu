// Blender CUDA kernels: one thread per output pixel; backward scatters with atomic adds.
// Half and bfloat16 inputs compute in float.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "blend_checks.h"
#include "blend_common.h"

namespace instseg {
namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096));
}

struct Geometry {
  int num_bases, height, width, attn_size, output_size, sampling_ratio;
  bool aligned, bilinear;
};

template <typename scalar_t, typename T>
__device__ BlendPixel<T> pixel_at(
    int64_t i, const scalar_t* bases, const scalar_t* rois, const scalar_t* attns, T scale,
    const Geometry& g, RoIBins<T>* bins_out, int64_t* box_out, int* y_out, int* x_out) {
  const int x = i % g.output_size;
  const int y = (i / g.output_size) % g.output_size;
  const int64_t p = i / g.output_size / g.output_size;
  const RoIBins<T> bins = roi_bins<T>(rois + p * 5, scale, g.output_size, g.output_size, g.sampling_ratio, g.aligned);
  const int64_t plane = int64_t(g.height) * g.width;
  const scalar_t* base = bases + int64_t(bins.batch) * g.num_bases * plane;
  const scalar_t* attn = attns + p * g.num_bases * g.attn_size * g.attn_size;
  *bins_out = bins;
  *box_out = p;
  *y_out = y;
  *x_out = x;
  return blend_pixel<T>(
      bins.grid_h, bins.grid_w, bins.count,
      [&](int iy) { return axis_sample(bins.sample_y(y, iy), g.height); },
      [&](int ix) { return axis_sample(bins.sample_x(x, ix), g.width); },
      resize_sample<T>(y, g.output_size, g.attn_size, g.bilinear),
      resize_sample<T>(x, g.output_size, g.attn_size, g.bilinear), g.num_bases,
      [&](int k, int yy, int xx) { return T(base[k * plane + yy * g.width + xx]); },
      [&](int k, int yy, int xx) { return T(attn[(k * g.attn_size + yy) * g.attn_size + xx]); });
}

template <typename scalar_t>
__global__ void blend_forward_kernel(
    int64_t total, const scalar_t* __restrict__ bases, const scalar_t* __restrict__ rois,
    const scalar_t* __restrict__ attns, at::opmath_type<scalar_t> scale, Geometry g,
    scalar_t* __restrict__ output) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x) {
    RoIBins<T> bins;
    int64_t p;
    int y, x;
    output[i] = static_cast<scalar_t>(pixel_at<scalar_t, T>(i, bases, rois, attns, scale, g, &bins, &p, &y, &x).mask);
  }
}

template <typename scalar_t>
__global__ void blend_backward_kernel(
    int64_t total, const scalar_t* __restrict__ grad, const scalar_t* __restrict__ bases,
    const scalar_t* __restrict__ rois, const scalar_t* __restrict__ attns,
    at::opmath_type<scalar_t> scale, Geometry g, scalar_t* __restrict__ grad_bases,
    scalar_t* __restrict__ grad_attns) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x) {
    const T gout = T(grad[i]);
    if (gout == T(0)) {
      continue;
    }
    RoIBins<T> bins;
    int64_t p;
    int y, x;
    const BlendPixel<T> px = pixel_at<scalar_t, T>(i, bases, rois, attns, scale, g, &bins, &p, &y, &x);
    const int attn_plane = g.attn_size * g.attn_size;
    scalar_t* grad_attn = grad_attns + p * g.num_bases * attn_plane;
    for (int k = 0; k < g.num_bases; ++k) {
      const T ga = gout * px.weight[k] * (px.crop[k] - px.mask);
      scalar_t* plane = grad_attn + k * attn_plane;
      gpuAtomicAdd(plane + px.ay.low * g.attn_size + px.ax.low, static_cast<scalar_t>(ga * px.ay.w_low * px.ax.w_low));
      gpuAtomicAdd(plane + px.ay.low * g.attn_size + px.ax.high, static_cast<scalar_t>(ga * px.ay.w_low * px.ax.w_high));
      gpuAtomicAdd(plane + px.ay.high * g.attn_size + px.ax.low, static_cast<scalar_t>(ga * px.ay.w_high * px.ax.w_low));
      gpuAtomicAdd(plane + px.ay.high * g.attn_size + px.ax.high, static_cast<scalar_t>(ga * px.ay.w_high * px.ax.w_high));
    }
    const int64_t base_plane = int64_t(g.height) * g.width;
    scalar_t* grad_base = grad_bases + int64_t(bins.batch) * g.num_bases * base_plane;
    for (int iy = 0; iy < bins.grid_h; ++iy) {
      const AxisSample<T> sy = axis_sample(bins.sample_y(y, iy), g.height);
      for (int ix = 0; ix < bins.grid_w; ++ix) {
        const AxisSample<T> sx = axis_sample(bins.sample_x(x, ix), g.width);
        if (sy.w_low + sy.w_high == T(0) || sx.w_low + sx.w_high == T(0)) {
          continue;  // outside the map
        }
        for (int k = 0; k < g.num_bases; ++k) {
          const T gc = gout * px.weight[k] / bins.count;
          scalar_t* plane = grad_base + k * base_plane;
          gpuAtomicAdd(plane + sy.low * g.width + sx.low, static_cast<scalar_t>(gc * sy.w_low * sx.w_low));
          gpuAtomicAdd(plane + sy.low * g.width + sx.high, static_cast<scalar_t>(gc * sy.w_low * sx.w_high));
          gpuAtomicAdd(plane + sy.high * g.width + sx.low, static_cast<scalar_t>(gc * sy.w_high * sx.w_low));
          gpuAtomicAdd(plane + sy.high * g.width + sx.high, static_cast<scalar_t>(gc * sy.w_high * sx.w_high));
        }
      }
    }
  }
}

Geometry geometry(const at::Tensor& bases, const at::Tensor& attns, int64_t output_size, int64_t sampling_ratio, bool aligned, bool bilinear) {
  return {static_cast<int>(bases.size(1)), static_cast<int>(bases.size(2)), static_cast<int>(bases.size(3)),
          static_cast<int>(attns.size(2)), static_cast<int>(output_size), static_cast<int>(sampling_ratio),
          aligned, bilinear};
}

at::Tensor blend_forward_cuda(
    const at::Tensor& bases, const at::Tensor& rois, const at::Tensor& attns, double spatial_scale,
    int64_t output_size, int64_t sampling_ratio, bool aligned, bool bilinear) {
  check_blend_args(bases, rois, attns, output_size);
  TORCH_CHECK(bases.is_cuda(), "blend: CUDA kernel got a tensor on ", bases.device());
  c10::cuda::CUDAGuard device_guard(bases.device());
  at::Tensor output = at::zeros({rois.size(0), output_size, output_size}, bases.options());
  if (output.numel() == 0 || bases.size(2) == 0 || bases.size(3) == 0) {
    return output;
  }
  at::Tensor bases_c = bases.contiguous(), rois_c = rois.contiguous(), attns_c = attns.contiguous();
  const Geometry g = geometry(bases, attns, output_size, sampling_ratio, aligned, bilinear);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bases.scalar_type(), "blend_forward_cuda", [&] {
    blend_forward_kernel<scalar_t><<<blocks_for(output.numel()), kThreads, 0, stream>>>(
        output.numel(), bases_c.data_ptr<scalar_t>(), rois_c.data_ptr<scalar_t>(), attns_c.data_ptr<scalar_t>(),
        static_cast<at::opmath_type<scalar_t>>(spatial_scale), g, output.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> blend_backward_cuda(
    const at::Tensor& grad, const at::Tensor& bases, const at::Tensor& rois, const at::Tensor& attns,
    double spatial_scale, int64_t output_size, int64_t sampling_ratio, bool aligned, bool bilinear) {
  check_blend_args(bases, rois, attns, output_size);
  TORCH_CHECK(grad.is_cuda() && bases.is_cuda(), "blend backward: CUDA kernel got a CPU tensor");
  TORCH_CHECK(
      grad.dim() == 3 && grad.size(0) == rois.size(0) && grad.size(1) == output_size && grad.size(2) == output_size,
      "blend backward: grad must be (P, R, R), got ", grad.sizes());
  // the kernel scatters with atomic adds: the order of the sums, so the result's rounding, varies
  // from run to run; torch.use_deterministic_algorithms(True) makes this an error (a warning with
  // warn_only=True)
  at::globalContext().alertNotDeterministic("blend_backward_cuda");
  c10::cuda::CUDAGuard device_guard(bases.device());
  at::Tensor grad_bases = at::zeros_like(bases, at::MemoryFormat::Contiguous);
  at::Tensor grad_attns = at::zeros_like(attns, at::MemoryFormat::Contiguous);
  if (grad.numel() == 0 || bases.numel() == 0) {
    return {grad_bases, grad_attns};
  }
  at::Tensor bases_c = bases.contiguous(), rois_c = rois.contiguous(), attns_c = attns.contiguous();
  at::Tensor grad_c = grad.contiguous();
  const Geometry g = geometry(bases, attns, output_size, sampling_ratio, aligned, bilinear);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bases.scalar_type(), "blend_backward_cuda", [&] {
    blend_backward_kernel<scalar_t><<<blocks_for(grad.numel()), kThreads, 0, stream>>>(
        grad.numel(), grad_c.data_ptr<scalar_t>(), bases_c.data_ptr<scalar_t>(), rois_c.data_ptr<scalar_t>(),
        attns_c.data_ptr<scalar_t>(), static_cast<at::opmath_type<scalar_t>>(spatial_scale), g,
        grad_bases.data_ptr<scalar_t>(), grad_attns.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_bases, grad_attns};
}

} // namespace

TORCH_LIBRARY_IMPL(instseg, CUDA, m) {
  m.impl("blend", &blend_forward_cuda);
  m.impl("_blend_backward", &blend_backward_cuda);
}

} // namespace instseg

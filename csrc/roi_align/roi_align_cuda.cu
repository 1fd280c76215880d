// RoIAlign CUDA kernels: one thread per output element; backward scatters with atomic adds.
// Half and bfloat16 inputs accumulate in float.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "roi_align_checks.h"
#include "roi_align_common.h"

namespace instseg {
namespace {

constexpr int kThreads = 256;

// Output element i of a (K, C, PH, PW) tensor as (roi, channel, ph, pw).
struct OutputIndex {
  int64_t roi;
  int c, ph, pw;
};

__device__ inline OutputIndex decode(int64_t i, int channels, int pooled_height, int pooled_width) {
  return {i / pooled_width / pooled_height / channels, static_cast<int>((i / pooled_width / pooled_height) % channels),
          static_cast<int>((i / pooled_width) % pooled_height), static_cast<int>(i % pooled_width)};
}

inline int blocks_for(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096));
}

template <typename scalar_t>
__global__ void roi_align_forward_kernel(
    int64_t total,
    const scalar_t* __restrict__ input,
    const scalar_t* __restrict__ rois,
    at::opmath_type<scalar_t> scale,
    int channels,
    int height,
    int width,
    int pooled_height,
    int pooled_width,
    int sampling_ratio,
    bool aligned,
    scalar_t* __restrict__ output) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x) {
    const OutputIndex o = decode(i, channels, pooled_height, pooled_width);
    const int64_t r = o.roi;
    const int c = o.c, ph = o.ph, pw = o.pw;
    const RoIBins<T> b =
        roi_bins<T>(rois + r * 5, scale, pooled_height, pooled_width, sampling_ratio, aligned);
    const scalar_t* plane = input + (int64_t(b.batch) * channels + c) * height * width;
    T acc = 0;
    for (int iy = 0; iy < b.grid_h; ++iy) {
      const AxisSample<T> y = axis_sample(b.sample_y(ph, iy), height);
      for (int ix = 0; ix < b.grid_w; ++ix) {
        const AxisSample<T> x = axis_sample(b.sample_x(pw, ix), width);
        acc += y.w_low *
                (x.w_low * T(plane[y.low * width + x.low]) +
                 x.w_high * T(plane[y.low * width + x.high])) +
            y.w_high *
                (x.w_low * T(plane[y.high * width + x.low]) +
                 x.w_high * T(plane[y.high * width + x.high]));
      }
    }
    output[i] = static_cast<scalar_t>(acc / b.count);
  }
}

template <typename scalar_t>
__global__ void roi_align_backward_kernel(
    int64_t total,
    const scalar_t* __restrict__ grad,
    int64_t sr,
    int64_t sc,
    int64_t sh,
    int64_t sw,
    const scalar_t* __restrict__ rois,
    at::opmath_type<scalar_t> scale,
    int channels,
    int height,
    int width,
    int pooled_height,
    int pooled_width,
    int sampling_ratio,
    bool aligned,
    scalar_t* __restrict__ grad_input) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x) {
    const OutputIndex o = decode(i, channels, pooled_height, pooled_width);
    const int64_t r = o.roi;
    const int c = o.c, ph = o.ph, pw = o.pw;
    const RoIBins<T> b =
        roi_bins<T>(rois + r * 5, scale, pooled_height, pooled_width, sampling_ratio, aligned);
    scalar_t* plane = grad_input + (int64_t(b.batch) * channels + c) * height * width;
    const T g = T(grad[r * sr + c * sc + ph * sh + pw * sw]) / b.count;
    for (int iy = 0; iy < b.grid_h; ++iy) {
      const AxisSample<T> y = axis_sample(b.sample_y(ph, iy), height);
      for (int ix = 0; ix < b.grid_w; ++ix) {
        const AxisSample<T> x = axis_sample(b.sample_x(pw, ix), width);
        if (y.w_low + y.w_high == T(0) || x.w_low + x.w_high == T(0)) {
          continue;  // outside the map
        }
        gpuAtomicAdd(plane + y.low * width + x.low, static_cast<scalar_t>(g * y.w_low * x.w_low));
        gpuAtomicAdd(plane + y.low * width + x.high, static_cast<scalar_t>(g * y.w_low * x.w_high));
        gpuAtomicAdd(plane + y.high * width + x.low, static_cast<scalar_t>(g * y.w_high * x.w_low));
        gpuAtomicAdd(
            plane + y.high * width + x.high, static_cast<scalar_t>(g * y.w_high * x.w_high));
      }
    }
  }
}

at::Tensor roi_align_forward_cuda(
    const at::Tensor& input,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t pooled_height,
    int64_t pooled_width,
    int64_t sampling_ratio,
    bool aligned) {
  check_roi_align_args(input, rois, pooled_height, pooled_width);
  TORCH_CHECK(input.is_cuda(), "roi_align: CUDA kernel got a tensor on ", input.device());
  at::CheckedFrom c = "roi_align_forward_cuda";
  at::checkAllSameGPU(c, {{input, "input", 1}, {rois, "rois", 2}});
  c10::cuda::CUDAGuard device_guard(input.device());
  const int64_t num_rois = rois.size(0);
  const int64_t channels = input.size(1);
  at::Tensor output =
      at::zeros({num_rois, channels, pooled_height, pooled_width}, input.options());
  if (output.numel() == 0 || input.size(2) == 0 || input.size(3) == 0) {
    return output;
  }
  at::Tensor input_c = input.contiguous();
  at::Tensor rois_c = rois.contiguous();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cuda", [&] {
        roi_align_forward_kernel<scalar_t><<<blocks_for(output.numel()), kThreads, 0, stream>>>(
            output.numel(), input_c.data_ptr<scalar_t>(), rois_c.data_ptr<scalar_t>(),
            static_cast<at::opmath_type<scalar_t>>(spatial_scale), channels, input.size(2),
            input.size(3), pooled_height, pooled_width, sampling_ratio, aligned,
            output.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

at::Tensor roi_align_backward_cuda(
    const at::Tensor& grad,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t pooled_height,
    int64_t pooled_width,
    int64_t batch_size,
    int64_t channels,
    int64_t height,
    int64_t width,
    int64_t sampling_ratio,
    bool aligned) {
  TORCH_CHECK(grad.is_cuda() && rois.is_cuda(), "roi_align backward: CUDA kernel got a CPU tensor");
  at::CheckedFrom c = "roi_align_backward_cuda";
  at::checkAllSameGPU(c, {{grad, "grad", 1}, {rois, "rois", 2}});
  check_roi_align_backward_args(grad, rois, channels, pooled_height, pooled_width);
  // the kernel scatters with atomic adds: the order of the sums, so the result's rounding, varies
  // from run to run; torch.use_deterministic_algorithms(True) makes this an error (a warning with
  // warn_only=True)
  at::globalContext().alertNotDeterministic("roi_align_backward_cuda");
  c10::cuda::CUDAGuard device_guard(grad.device());
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options());
  if (grad.numel() == 0 || grad_input.numel() == 0) {
    return grad_input;
  }
  at::Tensor rois_c = rois.contiguous();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
        roi_align_backward_kernel<scalar_t><<<blocks_for(grad.numel()), kThreads, 0, stream>>>(
            grad.numel(), grad.data_ptr<scalar_t>(), grad.stride(0), grad.stride(1),
            grad.stride(2), grad.stride(3), rois_c.data_ptr<scalar_t>(),
            static_cast<at::opmath_type<scalar_t>>(spatial_scale), channels, height, width,
            pooled_height, pooled_width, sampling_ratio, aligned, grad_input.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_input;
}

} // namespace

TORCH_LIBRARY_IMPL(instseg, CUDA, m) {
  m.impl("roi_align", &roi_align_forward_cuda);
  m.impl("_roi_align_backward", &roi_align_backward_cuda);
}

} // namespace instseg

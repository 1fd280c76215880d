// Blender CPU kernels, in parallel over boxes. Backward accumulates the bases' gradient in one
// buffer per thread (boxes of one image share base planes), summed at the end.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../roi_align/roi_samples_cpu.h"
#include "blend_checks.h"
#include "blend_common.h"

namespace instseg {
namespace {

template <typename T>
struct BlendGeometry {
  int64_t num_bases, height, width, attn_size, output_size;
  T scale;
  int sampling_ratio;
  bool aligned, bilinear;
};

// A box's RoIAlign samples (shared with the RoIAlign kernels) and the attention-resize samples of
// each output row / column, computed once per box instead of once per pixel.
template <typename T>
struct BoxSamples {
  std::vector<RoISamples<T>> rois;
  std::vector<AxisSample<T>> resize;  // index y (or x) of the R x R output; rows and columns alike
};

template <typename T>
BoxSamples<T> sample_boxes(const T* rois, int64_t num_boxes, int64_t batch_size, const BlendGeometry<T>& g) {
  BoxSamples<T> s;
  s.rois = sample_rois<T>(
      rois, num_boxes, batch_size, g.height, g.width, g.scale, g.output_size, g.output_size,
      g.sampling_ratio, g.aligned, "blend");
  for (int i = 0; i < g.output_size; ++i) {
    s.resize.push_back(resize_sample<T>(i, g.output_size, g.attn_size, g.bilinear));
  }
  return s;
}

template <typename T>
BlendPixel<T> pixel(const RoISamples<T>& r, const BoxSamples<T>& s, int y, int x, const T* base, const T* attn, const BlendGeometry<T>& g) {
  const int64_t plane = g.height * g.width;
  const int64_t attn_plane = g.attn_size * g.attn_size;
  const int grid_h = r.bins.grid_h > 0 ? r.bins.grid_h : 0;
  const int grid_w = r.bins.grid_w > 0 ? r.bins.grid_w : 0;
  return blend_pixel<T>(
      grid_h, grid_w, r.bins.count, [&](int iy) { return r.ys[y * grid_h + iy]; },
      [&](int ix) { return r.xs[x * grid_w + ix]; }, s.resize[y], s.resize[x], g.num_bases,
      [&](int k, int yy, int xx) { return base[k * plane + yy * g.width + xx]; },
      [&](int k, int yy, int xx) { return attn[k * attn_plane + yy * g.attn_size + xx]; });
}

template <typename T>
BlendGeometry<T> geometry(
    const at::Tensor& bases, const at::Tensor& attns, double scale, int64_t output_size,
    int64_t sampling_ratio, bool aligned, bool bilinear) {
  return {bases.size(1), bases.size(2), bases.size(3), attns.size(2), output_size,
          static_cast<T>(scale), static_cast<int>(sampling_ratio), aligned, bilinear};
}

at::Tensor blend_forward_cpu(
    const at::Tensor& bases,
    const at::Tensor& rois,
    const at::Tensor& attns,
    double spatial_scale,
    int64_t output_size,
    int64_t sampling_ratio,
    bool aligned,
    bool bilinear) {
  check_blend_args(bases, rois, attns, output_size);
  TORCH_CHECK(bases.is_cpu(), "blend: CPU kernel got a tensor on ", bases.device());
  const int64_t num_boxes = rois.size(0);
  at::Tensor output = at::zeros({num_boxes, output_size, output_size}, bases.options());
  if (num_boxes == 0 || bases.size(2) == 0 || bases.size(3) == 0) {
    return output;
  }
  at::Tensor bases_c = bases.contiguous(), rois_c = rois.contiguous(), attns_c = attns.contiguous();
  AT_DISPATCH_FLOATING_TYPES(bases.scalar_type(), "blend_forward_cpu", [&] {
    using T = scalar_t;
    const auto g = geometry<T>(bases, attns, spatial_scale, output_size, sampling_ratio, aligned, bilinear);
    const T* base_data = bases_c.data_ptr<T>();
    const T* roi_data = rois_c.data_ptr<T>();
    const T* attn_data = attns_c.data_ptr<T>();
    T* out = output.data_ptr<T>();
    const int64_t attn_box = g.num_bases * g.attn_size * g.attn_size;
    const int64_t base_image = g.num_bases * g.height * g.width;
    const BoxSamples<T> samples = sample_boxes(roi_data, num_boxes, bases.size(0), g);
    at::parallel_for(0, num_boxes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const RoISamples<T>& r = samples.rois[p];
        const T* base = base_data + r.bins.batch * base_image;
        const T* attn = attn_data + p * attn_box;
        T* mask = out + p * output_size * output_size;
        for (int y = 0; y < output_size; ++y) {
          for (int x = 0; x < output_size; ++x) {
            mask[y * output_size + x] = pixel(r, samples, y, x, base, attn, g).mask;
          }
        }
      }
    });
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> blend_backward_cpu(
    const at::Tensor& grad,
    const at::Tensor& bases,
    const at::Tensor& rois,
    const at::Tensor& attns,
    double spatial_scale,
    int64_t output_size,
    int64_t sampling_ratio,
    bool aligned,
    bool bilinear) {
  check_blend_args(bases, rois, attns, output_size);
  TORCH_CHECK(grad.is_cpu() && bases.is_cpu(), "blend backward: CPU kernel got a non-CPU tensor");
  TORCH_CHECK(
      grad.dim() == 3 && grad.size(0) == rois.size(0) && grad.size(1) == output_size &&
          grad.size(2) == output_size,
      "blend backward: grad must be (P, R, R) = (", rois.size(0), ", ", output_size, ", ",
      output_size, "), got ", grad.sizes());
  const int64_t num_boxes = rois.size(0);
  at::Tensor grad_attns = at::zeros_like(attns, at::MemoryFormat::Contiguous);
  if (num_boxes == 0 || bases.numel() == 0) {
    return {at::zeros_like(bases, at::MemoryFormat::Contiguous), grad_attns};
  }
  const int threads = at::get_num_threads();
  at::Tensor grad_bases_per_thread = at::zeros(
      {threads, bases.size(0), bases.size(1), bases.size(2), bases.size(3)}, bases.options());
  at::Tensor bases_c = bases.contiguous(), rois_c = rois.contiguous(), attns_c = attns.contiguous();
  at::Tensor grad_c = grad.contiguous();
  AT_DISPATCH_FLOATING_TYPES(bases.scalar_type(), "blend_backward_cpu", [&] {
    using T = scalar_t;
    const auto g = geometry<T>(bases, attns, spatial_scale, output_size, sampling_ratio, aligned, bilinear);
    const T* base_data = bases_c.data_ptr<T>();
    const T* roi_data = rois_c.data_ptr<T>();
    const T* attn_data = attns_c.data_ptr<T>();
    const T* grad_data = grad_c.data_ptr<T>();
    T* grad_attn_data = grad_attns.data_ptr<T>();
    T* grad_base_buffers = grad_bases_per_thread.data_ptr<T>();
    const int64_t attn_plane = g.attn_size * g.attn_size;
    const int64_t attn_box = g.num_bases * attn_plane;
    const int64_t plane = g.height * g.width;
    const int64_t base_image = g.num_bases * plane;
    const BoxSamples<T> samples = sample_boxes(roi_data, num_boxes, bases.size(0), g);
    at::parallel_for(0, num_boxes, 1, [&](int64_t begin, int64_t end) {
      T* grad_base_all = grad_base_buffers + at::get_thread_num() * bases.numel();
      for (int64_t p = begin; p < end; ++p) {
        const RoISamples<T>& r = samples.rois[p];
        const int grid_h = r.bins.grid_h > 0 ? r.bins.grid_h : 0;
        const int grid_w = r.bins.grid_w > 0 ? r.bins.grid_w : 0;
        const T* base = base_data + r.bins.batch * base_image;
        const T* attn = attn_data + p * attn_box;
        T* grad_base = grad_base_all + r.bins.batch * base_image;
        T* grad_attn = grad_attn_data + p * attn_box;
        for (int y = 0; y < output_size; ++y) {
          for (int x = 0; x < output_size; ++x) {
            const T gout = grad_data[(p * output_size + y) * output_size + x];
            if (gout == T(0)) {
              continue;
            }
            const BlendPixel<T> px = pixel(r, samples, y, x, base, attn, g);
            for (int k = 0; k < g.num_bases; ++k) {
              // d mask / d logit_k = s_k (crop_k - mask), spread over the resize taps
              const T ga = gout * px.weight[k] * (px.crop[k] - px.mask);
              T* ga_plane = grad_attn + k * attn_plane;
              ga_plane[px.ay.low * g.attn_size + px.ax.low] += ga * px.ay.w_low * px.ax.w_low;
              ga_plane[px.ay.low * g.attn_size + px.ax.high] += ga * px.ay.w_low * px.ax.w_high;
              ga_plane[px.ay.high * g.attn_size + px.ax.low] += ga * px.ay.w_high * px.ax.w_low;
              ga_plane[px.ay.high * g.attn_size + px.ax.high] += ga * px.ay.w_high * px.ax.w_high;
            }
            // d mask / d crop_k = s_k, spread over the RoIAlign samples
            for (int iy = 0; iy < grid_h; ++iy) {
              const AxisSample<T>& sy = r.ys[y * grid_h + iy];
              for (int ix = 0; ix < grid_w; ++ix) {
                const AxisSample<T>& sx = r.xs[x * grid_w + ix];
                for (int k = 0; k < g.num_bases; ++k) {
                  const T gc = gout * px.weight[k] / r.bins.count;
                  T* gb = grad_base + k * plane;
                  gb[sy.low * g.width + sx.low] += gc * sy.w_low * sx.w_low;
                  gb[sy.low * g.width + sx.high] += gc * sy.w_low * sx.w_high;
                  gb[sy.high * g.width + sx.low] += gc * sy.w_high * sx.w_low;
                  gb[sy.high * g.width + sx.high] += gc * sy.w_high * sx.w_high;
                }
              }
            }
          }
        }
      }
    });
  });
  return {grad_bases_per_thread.sum(0), grad_attns};
}

} // namespace

TORCH_LIBRARY_IMPL(instseg, CPU, m) {
  m.impl("blend", &blend_forward_cpu);
  m.impl("_blend_backward", &blend_backward_cpu);
}

} // namespace instseg

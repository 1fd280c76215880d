// Per-RoI bilinear samples for the CPU kernels (RoIAlign, blender): computed once per RoI and shared
// by all channels / output pixels; and RoIAlign of one plane with them, forward and backward.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "roi_align_common.h"

namespace instseg {

// The y- and x-samples of every bin of one RoI: y-samples of bin row ph are
// ys[ph * grid_h, (ph + 1) * grid_h), likewise xs for bin column pw.
template <typename T>
struct RoISamples {
  RoIBins<T> bins;
  std::vector<AxisSample<T>> ys;
  std::vector<AxisSample<T>> xs;
};

template <typename T>
inline std::vector<RoISamples<T>> sample_rois(
    const T* rois,
    int64_t num_rois,
    int64_t batch_size,
    int height,
    int width,
    T scale,
    int pooled_height,
    int pooled_width,
    int sampling_ratio,
    bool aligned,
    const char* op_name) {
  std::vector<RoISamples<T>> out(num_rois);
  for (int64_t r = 0; r < num_rois; ++r) {
    const T* roi = rois + r * 5;
    TORCH_CHECK(
        roi[0] >= 0 && roi[0] < batch_size,
        op_name, ": rois[", r, ", 0] = ", roi[0], " is not an image index in [0, ", batch_size, ")");
    RoISamples<T>& s = out[r];
    s.bins = roi_bins<T>(roi, scale, pooled_height, pooled_width, sampling_ratio, aligned);
    for (int ph = 0; ph < pooled_height; ++ph) {
      for (int iy = 0; iy < s.bins.grid_h; ++iy) {
        s.ys.push_back(axis_sample(s.bins.sample_y(ph, iy), height));
      }
    }
    for (int pw = 0; pw < pooled_width; ++pw) {
      for (int ix = 0; ix < s.bins.grid_w; ++ix) {
        s.xs.push_back(axis_sample(s.bins.sample_x(pw, ix), width));
      }
    }
  }
  return out;
}

// RoIAlign of one input plane: out[ph * pooled_width + pw].
template <typename T>
void forward_plane(
    const RoISamples<T>& s,
    const T* plane,
    int width,
    int pooled_height,
    int pooled_width,
    T* out) {
  const int grid_h = s.bins.grid_h > 0 ? s.bins.grid_h : 0;
  const int grid_w = s.bins.grid_w > 0 ? s.bins.grid_w : 0;
  for (int ph = 0; ph < pooled_height; ++ph) {
    for (int pw = 0; pw < pooled_width; ++pw) {
      T acc = 0;
      for (int iy = 0; iy < grid_h; ++iy) {
        const AxisSample<T>& y = s.ys[ph * grid_h + iy];
        const T* row_low = plane + y.low * width;
        const T* row_high = plane + y.high * width;
        for (int ix = 0; ix < grid_w; ++ix) {
          const AxisSample<T>& x = s.xs[pw * grid_w + ix];
          acc += y.w_low * (x.w_low * row_low[x.low] + x.w_high * row_low[x.high]) +
              y.w_high * (x.w_low * row_high[x.low] + x.w_high * row_high[x.high]);
        }
      }
      out[ph * pooled_width + pw] = acc / s.bins.count;
    }
  }
}

// Adds the gradient of forward_plane into grad_plane; grad_out is read with the given strides.
template <typename T>
void backward_plane(
    const RoISamples<T>& s,
    const T* grad_out,
    int64_t grad_stride_h,
    int64_t grad_stride_w,
    int width,
    int pooled_height,
    int pooled_width,
    T* grad_plane) {
  const int grid_h = s.bins.grid_h > 0 ? s.bins.grid_h : 0;
  const int grid_w = s.bins.grid_w > 0 ? s.bins.grid_w : 0;
  for (int ph = 0; ph < pooled_height; ++ph) {
    for (int pw = 0; pw < pooled_width; ++pw) {
      const T g = grad_out[ph * grad_stride_h + pw * grad_stride_w] / s.bins.count;
      for (int iy = 0; iy < grid_h; ++iy) {
        const AxisSample<T>& y = s.ys[ph * grid_h + iy];
        T* row_low = grad_plane + y.low * width;
        T* row_high = grad_plane + y.high * width;
        const T g_low = g * y.w_low;
        const T g_high = g * y.w_high;
        for (int ix = 0; ix < grid_w; ++ix) {
          const AxisSample<T>& x = s.xs[pw * grid_w + ix];
          row_low[x.low] += g_low * x.w_low;
          row_low[x.high] += g_low * x.w_high;
          row_high[x.low] += g_high * x.w_low;
          row_high[x.high] += g_high * x.w_high;
        }
      }
    }
  }
}

} // namespace instseg

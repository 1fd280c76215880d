// Per-RoI bilinear samples for the CPU kernels (RoIAlign, blender): computed once per RoI and shared
// by all channels / output pixels.
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

} // namespace instseg

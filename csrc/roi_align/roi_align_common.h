// RoIAlign geometry shared by the CPU and CUDA kernels (and by the blender's crop of the bases).
//
// Semantics follow Detectron's RoIAlign as torchvision implements it: a box is split into
// pooled_height x pooled_width bins; each bin averages grid_h x grid_w bilinear samples taken at the
// centres of a regular sub-grid; sampling_ratio <= 0 picks the grid adaptively (ceil(box / bins)).
// With aligned=true box corners are shifted by -0.5 pixel so that pixel centres line up.
#pragma once

#include <c10/macros/Macros.h>

namespace instseg {

// One bilinear sample along one axis of a plane of `size` pixels: the two neighbouring pixels and
// their weights. A sample more than one pixel outside the plane, or at NaN (the box of a diverged
// model), gets zero weights and reads pixel 0. Bilinear weights are separable, so a 2-D sample at
// (y, x) is the product of an y- and an x-sample.
template <typename T>
struct AxisSample {
  int low;
  int high;
  T w_low;
  T w_high;
};

template <typename T>
C10_HOST_DEVICE inline AxisSample<T> axis_sample(T v, int size) {
  if (!(v >= T(-1) && v <= T(size))) {
    return {0, 0, T(0), T(0)};
  }
  if (v <= T(0)) {
    v = T(0);
  }
  int low = static_cast<int>(v);
  int high;
  if (low >= size - 1) {
    high = low = size - 1;
    v = static_cast<T>(low);
  } else {
    high = low + 1;
  }
  T frac = v - static_cast<T>(low);
  return {low, high, T(1) - frac, frac};
}

// Where the bins of one RoI lie on the feature map, in feature-map pixels.
template <typename T>
struct RoIBins {
  int batch;  // image index of the RoI
  T start_y;
  T start_x;
  T bin_h;
  T bin_w;
  int grid_h;  // samples per bin along y
  int grid_w;  // samples per bin along x
  T count;  // samples per bin (>= 1), the averaging divisor

  C10_HOST_DEVICE T sample_y(int ph, int iy) const {
    return start_y + ph * bin_h + static_cast<T>(iy + .5f) * bin_h / static_cast<T>(grid_h);
  }
  C10_HOST_DEVICE T sample_x(int pw, int ix) const {
    return start_x + pw * bin_w + static_cast<T>(ix + .5f) * bin_w / static_cast<T>(grid_w);
  }
};

// Samples per bin along one axis: sampling_ratio, or ceil(extent / bins) when that is <= 0. None for
// an empty box, and for a NaN, infinite or absurdly large one (over 2^24 samples per bin: a diverged
// model's), whose conversion to int could be undefined.
template <typename T>
C10_HOST_DEVICE inline int grid_size(int sampling_ratio, T extent, int bins) {
  if (sampling_ratio > 0) {
    return sampling_ratio;
  }
  const T n = ceil(extent / static_cast<T>(bins));
  return n >= T(1) && n <= T(1 << 24) ? static_cast<int>(n) : 0;
}

// `roi` is (batch_index, x1, y1, x2, y2) in image coordinates; `scale` maps them to the feature map.
template <typename T, typename R>
C10_HOST_DEVICE inline RoIBins<T> roi_bins(
    const R* roi,
    T scale,
    int pooled_height,
    int pooled_width,
    int sampling_ratio,
    bool aligned) {
  RoIBins<T> b;
  b.batch = static_cast<int>(roi[0]);
  T offset = aligned ? T(0.5) : T(0);
  b.start_x = static_cast<T>(roi[1]) * scale - offset;
  b.start_y = static_cast<T>(roi[2]) * scale - offset;
  T roi_w = static_cast<T>(roi[3]) * scale - offset - b.start_x;
  T roi_h = static_cast<T>(roi[4]) * scale - offset - b.start_y;
  if (!aligned) {  // legacy behaviour: force malformed boxes to 1x1
    roi_w = roi_w > T(1) ? roi_w : T(1);
    roi_h = roi_h > T(1) ? roi_h : T(1);
  }
  b.bin_h = roi_h / static_cast<T>(pooled_height);
  b.bin_w = roi_w / static_cast<T>(pooled_width);
  b.grid_h = grid_size(sampling_ratio, roi_h, pooled_height);
  b.grid_w = grid_size(sampling_ratio, roi_w, pooled_width);
  const T count = static_cast<T>(b.grid_h) * static_cast<T>(b.grid_w);
  b.count = count > T(1) ? count : T(1);
  return b;
}

} // namespace instseg

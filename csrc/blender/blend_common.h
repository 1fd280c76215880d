// The BlendMask blender for one output pixel, shared by the CPU and CUDA kernels.
//
// For a box p and output pixel (y, x) of its R x R mask:
//   crop_k  = RoIAlign of base k at (y, x)                  (bases: N x K x H x W)
//   logit_k = attention k of box p resized to R x R at (y, x) (attns: P x K x A x A; bilinear with
//             align_corners=false, or nearest, as F.interpolate)
//   s       = softmax over k of logit
//   mask    = sum_k s_k * crop_k
#pragma once

#include <c10/macros/Macros.h>

#include "../roi_align/roi_align_common.h"

namespace instseg {

constexpr int kMaxBases = 16;  // K is small (4 in the paper); per-pixel arrays live in registers

// Sample of an A-pixel axis for output index `dst` of an R-pixel resize (F.interpolate semantics).
template <typename T>
C10_HOST_DEVICE inline AxisSample<T> resize_sample(int dst, int dst_size, int src_size, bool bilinear) {
  const T scale = static_cast<T>(src_size) / static_cast<T>(dst_size);
  if (!bilinear) {
    int idx = static_cast<int>(floor(static_cast<T>(dst) * scale));
    idx = idx < src_size - 1 ? idx : src_size - 1;
    return {idx, idx, T(1), T(0)};
  }
  T src = scale * (static_cast<T>(dst) + T(0.5)) - T(0.5);
  src = src > T(0) ? src : T(0);
  const int low = static_cast<int>(src);
  const int high = low < src_size - 1 ? low + 1 : low;
  const T frac = src - static_cast<T>(low);
  return {low, high, T(1) - frac, frac};
}

// Everything the forward and backward passes need at one output pixel.
template <typename T>
struct BlendPixel {
  int num_bases;
  T crop[kMaxBases];
  T weight[kMaxBases];  // softmax of the attention logits
  T mask;
  AxisSample<T> ay;
  AxisSample<T> ax;
};

// One output pixel. sample_y(iy) / sample_x(ix) give the pixel's RoIAlign samples along each axis
// (grid_h x grid_w of them, averaged with 1 / count); ay / ax its attention-resize samples;
// base(k, y, x) reads base k of the box's image, attn(k, y, x) attention k of the box.
template <typename T, typename SampleY, typename SampleX, typename BaseFn, typename AttnFn>
C10_HOST_DEVICE inline BlendPixel<T> blend_pixel(
    int grid_h,
    int grid_w,
    T count,
    SampleY sample_y,
    SampleX sample_x,
    const AxisSample<T>& ay,
    const AxisSample<T>& ax,
    int num_bases,
    BaseFn base,
    AttnFn attn) {
  BlendPixel<T> px;
  px.num_bases = num_bases;
  px.ay = ay;
  px.ax = ax;
  for (int k = 0; k < num_bases; ++k) {
    px.crop[k] = T(0);
  }
  for (int iy = 0; iy < grid_h; ++iy) {
    const AxisSample<T> sy = sample_y(iy);
    for (int ix = 0; ix < grid_w; ++ix) {
      const AxisSample<T> sx = sample_x(ix);
      for (int k = 0; k < num_bases; ++k) {
        px.crop[k] += sy.w_low * (sx.w_low * base(k, sy.low, sx.low) + sx.w_high * base(k, sy.low, sx.high)) +
            sy.w_high * (sx.w_low * base(k, sy.high, sx.low) + sx.w_high * base(k, sy.high, sx.high));
      }
    }
  }
  T max_logit = T(0);
  for (int k = 0; k < num_bases; ++k) {
    px.crop[k] /= count;
    const T logit = ay.w_low * (ax.w_low * attn(k, ay.low, ax.low) + ax.w_high * attn(k, ay.low, ax.high)) +
        ay.w_high * (ax.w_low * attn(k, ay.high, ax.low) + ax.w_high * attn(k, ay.high, ax.high));
    px.weight[k] = logit;
    max_logit = (k == 0 || logit > max_logit) ? logit : max_logit;
  }
  T total = T(0);
  for (int k = 0; k < num_bases; ++k) {
    px.weight[k] = exp(px.weight[k] - max_logit);
    total += px.weight[k];
  }
  px.mask = T(0);
  for (int k = 0; k < num_bases; ++k) {
    px.weight[k] /= total;
    px.mask += px.weight[k] * px.crop[k];
  }
  return px;
}

} // namespace instseg

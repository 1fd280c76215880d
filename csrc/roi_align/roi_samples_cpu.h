// Per-RoI bilinear samples for the CPU kernels (RoIAlign, blender): computed once per RoI and shared
// by all channels / output pixels; and RoIAlign of one plane with them, forward and backward.
//
// Bilinear weights are separable, so a plane is pooled in two passes: along x, each plane row
// that the y-samples read is interpolated once into a (rows read) x pooled_width buffer; then
// along y, out of that buffer, in loops over pw that vectorize. When a box spans fewer pixels
// than it has samples (the blender's 56 x 56 crops), neighbouring samples share rows, which a
// four-taps-per-sample loop would read again for each of them. Backward runs the two passes
// transposed. A channels-last image is pooled (and its gradient summed) a RoI at a time, the
// loops running over channels.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "roi_align_common.h"

namespace instseg {

// The y- and x-samples of every bin of one RoI: y-samples of bin row ph are
// ys[ph * grid_h, (ph + 1) * grid_h), likewise xs for bin column pw. A y-sample's low / high index
// `rows`, the plane rows read (increasing, each once); an x-sample's are plane columns.
template <typename T>
struct RoISamples {
  RoIBins<T> bins;
  std::vector<int> rows;
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
        const AxisSample<T> y = axis_sample(s.bins.sample_y(ph, iy), height);
        s.ys.push_back(y);
        s.rows.push_back(y.low);
        s.rows.push_back(y.high);
      }
    }
    std::sort(s.rows.begin(), s.rows.end());
    s.rows.erase(std::unique(s.rows.begin(), s.rows.end()), s.rows.end());
    const auto slot = [&s](int row) {
      return static_cast<int>(std::lower_bound(s.rows.begin(), s.rows.end(), row) - s.rows.begin());
    };
    for (AxisSample<T>& y : s.ys) {
      y.low = slot(y.low);
      y.high = slot(y.high);
    }
    for (int pw = 0; pw < pooled_width; ++pw) {
      for (int ix = 0; ix < s.bins.grid_w; ++ix) {
        s.xs.push_back(axis_sample(s.bins.sample_x(pw, ix), width));
      }
    }
  }
  return out;
}

// RoIAlign of one input plane: out[ph * pooled_width + pw]. `rows` is scratch.
template <typename T>
void forward_plane(
    const RoISamples<T>& s,
    const T* plane,
    int width,
    int pooled_height,
    int pooled_width,
    std::vector<T>& rows,
    T* out) {
  const int grid_h = s.bins.grid_h, grid_w = s.bins.grid_w;  // >= 0 (grid_size)
  rows.resize(s.rows.size() * pooled_width);
  for (size_t j = 0; j < s.rows.size(); ++j) {
    const T* src = plane + static_cast<int64_t>(s.rows[j]) * width;
    T* dst = rows.data() + j * pooled_width;
    for (int pw = 0; pw < pooled_width; ++pw) {
      T acc = 0;
      for (int ix = 0; ix < grid_w; ++ix) {
        const AxisSample<T>& x = s.xs[pw * grid_w + ix];
        acc += x.w_low * src[x.low] + x.w_high * src[x.high];
      }
      dst[pw] = acc;
    }
  }
  const T inv_count = T(1) / s.bins.count;
  for (int ph = 0; ph < pooled_height; ++ph) {
    T* dst = out + ph * pooled_width;
    std::fill(dst, dst + pooled_width, T(0));
    for (int iy = 0; iy < grid_h; ++iy) {
      const AxisSample<T>& y = s.ys[ph * grid_h + iy];
      const T* low = rows.data() + y.low * pooled_width;
      const T* high = rows.data() + y.high * pooled_width;
      const T w_low = y.w_low * inv_count, w_high = y.w_high * inv_count;
      for (int pw = 0; pw < pooled_width; ++pw) {
        dst[pw] += w_low * low[pw] + w_high * high[pw];
      }
    }
  }
}

// RoIAlign of one RoI on a channels-last image, for the channels [c0, c1): image is (H, W, C), out
// this RoI's (PH, PW, C) output, zero on entry. The same two passes as forward_plane, each step a
// loop over the contiguous channels; `rows` is scratch.
template <typename T>
void forward_roi_channels_last(
    const RoISamples<T>& s,
    const T* image,
    int width,
    int64_t channels,
    int64_t c0,
    int64_t c1,
    int pooled_height,
    int pooled_width,
    std::vector<T>& rows,
    T* out) {
  const int grid_h = s.bins.grid_h, grid_w = s.bins.grid_w;  // >= 0 (grid_size)
  const int64_t nc = c1 - c0;
  rows.assign(s.rows.size() * pooled_width * nc, T(0));
  for (size_t j = 0; j < s.rows.size(); ++j) {
    const T* src = image + static_cast<int64_t>(s.rows[j]) * width * channels + c0;
    T* dst = rows.data() + j * pooled_width * nc;
    for (int pw = 0; pw < pooled_width; ++pw, dst += nc) {
      for (int ix = 0; ix < grid_w; ++ix) {
        const AxisSample<T>& x = s.xs[pw * grid_w + ix];
        const T* low = src + x.low * channels;
        const T* high = src + x.high * channels;
        for (int64_t c = 0; c < nc; ++c) {
          dst[c] += x.w_low * low[c] + x.w_high * high[c];
        }
      }
    }
  }
  const T inv_count = T(1) / s.bins.count;
  for (int ph = 0; ph < pooled_height; ++ph) {
    for (int iy = 0; iy < grid_h; ++iy) {
      const AxisSample<T>& y = s.ys[ph * grid_h + iy];
      const T w_low = y.w_low * inv_count, w_high = y.w_high * inv_count;
      for (int pw = 0; pw < pooled_width; ++pw) {
        T* dst = out + (static_cast<int64_t>(ph) * pooled_width + pw) * channels + c0;
        const T* low = rows.data() + (static_cast<int64_t>(y.low) * pooled_width + pw) * nc;
        const T* high = rows.data() + (static_cast<int64_t>(y.high) * pooled_width + pw) * nc;
        for (int64_t c = 0; c < nc; ++c) {
          dst[c] += w_low * low[c] + w_high * high[c];
        }
      }
    }
  }
}

// Adds the gradient of forward_plane into grad_plane; grad_out is read with the given strides.
// `rows` is scratch.
template <typename T>
void backward_plane(
    const RoISamples<T>& s,
    const T* grad_out,
    int64_t grad_stride_h,
    int64_t grad_stride_w,
    int width,
    int pooled_height,
    int pooled_width,
    std::vector<T>& rows,
    T* grad_plane) {
  const int grid_h = s.bins.grid_h, grid_w = s.bins.grid_w;  // >= 0 (grid_size)
  rows.assign(s.rows.size() * pooled_width, T(0));
  const T inv_count = T(1) / s.bins.count;
  for (int ph = 0; ph < pooled_height; ++ph) {
    const T* src = grad_out + ph * grad_stride_h;
    for (int iy = 0; iy < grid_h; ++iy) {
      const AxisSample<T>& y = s.ys[ph * grid_h + iy];
      T* low = rows.data() + y.low * pooled_width;
      T* high = rows.data() + y.high * pooled_width;
      const T w_low = y.w_low * inv_count, w_high = y.w_high * inv_count;
      for (int pw = 0; pw < pooled_width; ++pw) {
        const T g = src[pw * grad_stride_w];
        low[pw] += w_low * g;
        high[pw] += w_high * g;
      }
    }
  }
  for (size_t j = 0; j < s.rows.size(); ++j) {
    T* dst = grad_plane + static_cast<int64_t>(s.rows[j]) * width;
    const T* src = rows.data() + j * pooled_width;
    for (int pw = 0; pw < pooled_width; ++pw) {
      for (int ix = 0; ix < grid_w; ++ix) {
        const AxisSample<T>& x = s.xs[pw * grid_w + ix];
        dst[x.low] += x.w_low * src[pw];
        dst[x.high] += x.w_high * src[pw];
      }
    }
  }
}

// Adds the gradient of forward_roi_channels_last into the plane rows [row_begin, row_end) of
// grad_image, the (H, W, C) gradient of the RoI's image: grad_out is this RoI's (PH, PW, C) output
// gradient, its rows and columns read with the given strides and its channels contiguous. For each
// element the additions are those of backward_plane, in the same order. `rows` is scratch.
template <typename T>
void backward_roi_channels_last(
    const RoISamples<T>& s,
    const T* grad_out,
    int64_t grad_stride_h,
    int64_t grad_stride_w,
    int width,
    int64_t channels,
    int row_begin,
    int row_end,
    int pooled_height,
    int pooled_width,
    std::vector<T>& rows,
    T* grad_image) {
  const int grid_h = s.bins.grid_h, grid_w = s.bins.grid_w;  // >= 0 (grid_size)
  if (s.rows.empty() || s.rows.front() >= row_end || s.rows.back() < row_begin) {
    return;
  }
  const auto in_band = [&](int slot) { return s.rows[slot] >= row_begin && s.rows[slot] < row_end; };
  rows.assign(s.rows.size() * pooled_width * channels, T(0));
  const T inv_count = T(1) / s.bins.count;
  for (int ph = 0; ph < pooled_height; ++ph) {
    for (int iy = 0; iy < grid_h; ++iy) {
      const AxisSample<T>& y = s.ys[ph * grid_h + iy];
      if (!in_band(y.low) && !in_band(y.high)) {
        continue;  // it adds only to rows another band writes: no need to sum it here too
      }
      const T w_low = y.w_low * inv_count, w_high = y.w_high * inv_count;
      for (int pw = 0; pw < pooled_width; ++pw) {
        const T* g = grad_out + ph * grad_stride_h + pw * grad_stride_w;
        T* low = rows.data() + (static_cast<int64_t>(y.low) * pooled_width + pw) * channels;
        T* high = rows.data() + (static_cast<int64_t>(y.high) * pooled_width + pw) * channels;
        for (int64_t c = 0; c < channels; ++c) {
          low[c] += w_low * g[c];
          high[c] += w_high * g[c];
        }
      }
    }
  }
  for (size_t j = 0; j < s.rows.size(); ++j) {
    if (!in_band(static_cast<int>(j))) {
      continue;
    }
    T* dst = grad_image + static_cast<int64_t>(s.rows[j]) * width * channels;
    const T* src = rows.data() + j * pooled_width * channels;
    for (int pw = 0; pw < pooled_width; ++pw, src += channels) {
      for (int ix = 0; ix < grid_w; ++ix) {
        const AxisSample<T>& x = s.xs[pw * grid_w + ix];
        T* low = dst + x.low * channels;
        T* high = dst + x.high * channels;
        for (int64_t c = 0; c < channels; ++c) {
          low[c] += x.w_low * src[c];
          high[c] += x.w_high * src[c];
        }
      }
    }
  }
}

} // namespace instseg

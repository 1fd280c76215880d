// Argument checks shared by the RoIAlign kernels of every device.
#pragma once

#include <ATen/ATen.h>

namespace instseg {

inline void check_roi_align_args(
    const at::Tensor& input,
    const at::Tensor& rois,
    int64_t pooled_height,
    int64_t pooled_width) {
  TORCH_CHECK(
      input.dim() == 4, "roi_align: input must be (N, C, H, W), got ", input.dim(), " dims");
  TORCH_CHECK(
      rois.dim() == 2 && rois.size(1) == 5,
      "roi_align: rois must be (K, 5) rows of (batch_index, x1, y1, x2, y2), got shape ",
      rois.sizes());
  TORCH_CHECK(
      at::isFloatingType(input.scalar_type()),
      "roi_align: input must be a floating-point tensor, got ", input.scalar_type());
  TORCH_CHECK(
      rois.scalar_type() == input.scalar_type(),
      "roi_align: rois must have the input's dtype ", input.scalar_type(), ", got ",
      rois.scalar_type());
  TORCH_CHECK(
      rois.device() == input.device(),
      "roi_align: rois must be on the input's device ", input.device(), ", got ", rois.device());
  TORCH_CHECK(
      pooled_height > 0 && pooled_width > 0,
      "roi_align: output size must be positive, got ", pooled_height, "x", pooled_width);
}

inline void check_roi_align_backward_args(
    const at::Tensor& grad,
    const at::Tensor& rois,
    int64_t channels,
    int64_t pooled_height,
    int64_t pooled_width) {
  TORCH_CHECK(
      grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
          grad.size(2) == pooled_height && grad.size(3) == pooled_width,
      "roi_align backward: grad must be (K, C, PH, PW) = (", rois.size(0), ", ", channels, ", ",
      pooled_height, ", ", pooled_width, "), got ", grad.sizes());
  TORCH_CHECK(
      grad.scalar_type() == rois.scalar_type(),
      "roi_align backward: grad and rois must have the same dtype");
}

} // namespace instseg

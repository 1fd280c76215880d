// Argument checks shared by the blender kernels of every device.
#pragma once

#include <ATen/ATen.h>

#include "blend_common.h"

namespace instseg {

inline void check_blend_args(
    const at::Tensor& bases,
    const at::Tensor& rois,
    const at::Tensor& attns,
    int64_t output_size) {
  TORCH_CHECK(bases.dim() == 4, "blend: bases must be (N, K, H, W), got ", bases.dim(), " dims");
  TORCH_CHECK(
      rois.dim() == 2 && rois.size(1) == 5,
      "blend: rois must be (P, 5) rows of (batch_index, x1, y1, x2, y2), got shape ", rois.sizes());
  TORCH_CHECK(
      attns.dim() == 4 && attns.size(0) == rois.size(0) && attns.size(1) == bases.size(1) &&
          attns.size(2) == attns.size(3),
      "blend: attns must be (P, K, A, A) with P = ", rois.size(0), " rois and K = ", bases.size(1),
      " bases, got shape ", attns.sizes());
  TORCH_CHECK(
      attns.size(2) > 0, "blend: attns must have a positive size A, got shape ", attns.sizes());
  TORCH_CHECK(
      bases.size(1) >= 1 && bases.size(1) <= kMaxBases, "blend: K must be 1 to ", kMaxBases, " bases, got ",
      bases.size(1));
  TORCH_CHECK(
      at::isFloatingType(bases.scalar_type()),
      "blend: bases must be a floating-point tensor, got ", bases.scalar_type());
  TORCH_CHECK(
      rois.scalar_type() == bases.scalar_type() && attns.scalar_type() == bases.scalar_type(),
      "blend: rois and attns must have the bases' dtype ", bases.scalar_type(), ", got ",
      rois.scalar_type(), " and ", attns.scalar_type());
  TORCH_CHECK(
      rois.device() == bases.device() && attns.device() == bases.device(),
      "blend: rois and attns must be on the bases' device ", bases.device());
  TORCH_CHECK(output_size > 0, "blend: output size must be positive, got ", output_size);
}

} // namespace instseg

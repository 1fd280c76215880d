"""The blender: combines the bases with each box's attentions into its mask (BlendMask Sec. 3.3).

Training uses every positive FCOS location: its ground-truth box crops the bases and its predicted
attentions blend them; the loss is per-pixel BCE against the ground-truth mask cropped to the box,
weighted by the location's centerness target (as FCOS weights its box loss). Inference blends for
the final detections.

Shape legend: N images, K bases, A x A attentions, R x R masks, P boxes.
"""
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.structures import Instances
from torch import Tensor
from torch.nn import functional as F

from instseg.layers import ATTN_INTERPS, blend, blend_reference, boxes_for, rois_from_indices
from instseg.modeling import FCOSPositives, crop_gt_masks, set_per_image

from .config import BLENDER_IMPLS


class Blender:
    """Has no parameters (so no nn.Module and no checkpoint keys, as in AdelaiDet)."""

    @configurable
    def __init__(
        self,
        *,
        num_bases: int,
        attn_size: int,
        output_size: int,
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool,
        attn_interp: str,
        impl: str,
    ):
        """
        Args:
            num_bases: K.
            attn_size: A.
            output_size: R.
            spatial_scale: 1 / stride of the bases.
            sampling_ratio, aligned: of the RoIAlign crop of the bases.
            attn_interp: "bilinear" or "nearest" resizing of the attentions.
            impl: "fused" (the csrc op) or "reference" (plain PyTorch).
        """
        if impl not in BLENDER_IMPLS:
            raise ValueError(f"MODEL.BLENDMASK.BLENDER_IMPL must be one of {BLENDER_IMPLS}, got {impl!r}")
        if attn_interp not in ATTN_INTERPS:
            raise ValueError(f"MODEL.BLENDMASK.TOP_INTERP must be one of {ATTN_INTERPS}, got {attn_interp!r}")
        self.num_bases = num_bases
        self.attn_size = attn_size
        self.output_size = output_size
        self.op_args = (spatial_scale, output_size, sampling_ratio, aligned, attn_interp)
        self.blend = blend if impl == "fused" else blend_reference

    @classmethod
    def from_config(cls, cfg, bases_stride: int):
        bm = cfg.MODEL.BLENDMASK
        if len(bm.POOLER_SCALES) != 1 or abs(bm.POOLER_SCALES[0] * bases_stride - 1) > 1e-6:
            raise ValueError(
                f"MODEL.BLENDMASK.POOLER_SCALES must be ({1 / bases_stride},), 1 / the stride of the bases "
                f"(half that of MODEL.BASIS_MODULE.IN_FEATURES[0]), got {bm.POOLER_SCALES}"
            )
        if bm.POOLER_TYPE not in ("ROIAlign", "ROIAlignV2"):
            raise ValueError(f"MODEL.BLENDMASK.POOLER_TYPE must be ROIAlign or ROIAlignV2, got {bm.POOLER_TYPE}")
        return {
            "num_bases": cfg.MODEL.BASIS_MODULE.NUM_BASES,
            "attn_size": bm.ATTN_SIZE,
            "output_size": bm.BOTTOM_RESOLUTION,
            "spatial_scale": bm.POOLER_SCALES[0],
            "sampling_ratio": bm.POOLER_SAMPLING_RATIO,
            "aligned": bm.POOLER_TYPE == "ROIAlignV2",
            "attn_interp": bm.TOP_INTERP,
            "impl": bm.BLENDER_IMPL,
        }

    @property
    def attn_channels(self) -> int:
        """K * A * A: the top layer's output channels."""
        return self.num_bases * self.attn_size**2

    def _masks(self, bases: Tensor, image_inds: Tensor, boxes: Tensor, attn: Tensor) -> Tensor:
        rois = rois_from_indices(image_inds, boxes)
        attn = attn.reshape(-1, self.num_bases, self.attn_size, self.attn_size)
        return self.blend(bases, boxes_for(bases, rois), attn.to(bases.dtype), *self.op_args)

    def losses(
        self, bases: Tensor, positives: FCOSPositives, attentions: Tensor, gt_instances: List[Instances]
    ) -> Dict[str, Tensor]:
        """
        Args:
            bases: (N, K, H, W).
            positives: the FCOS positives of the batch.
            attentions: (P, K * A * A) those of the positives.
            gt_instances: per image, gt_boxes and gt_masks.
        """
        if len(positives.gt_inds) == 0:
            return {"loss_mask": bases.sum() * 0 + attentions.sum() * 0}
        boxes = torch.cat([gt.gt_boxes.tensor for gt in gt_instances])
        offsets = torch.tensor([0] + [len(gt) for gt in gt_instances], device=bases.device).cumsum(0)
        gt_index = offsets[positives.image_inds] + positives.gt_inds
        targets = crop_gt_masks(gt_instances, "gt_boxes", self.output_size)[gt_index].to(bases)
        logits = self._masks(bases, positives.image_inds, boxes[gt_index], attentions)
        per_box = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=(1, 2))
        return {"loss_mask": (per_box * positives.ctrness_targets).sum() / positives.loss_denorm}

    def predict(self, bases: Tensor, detections: List[Instances]) -> None:
        """Sets pred_masks, (n, 1, R, R) mask probabilities, on each image's detections, which carry
        their attentions as top_feat (n, K * A * A)."""
        image_inds = cat([torch.full((len(d),), i, device=bases.device) for i, d in enumerate(detections)])
        boxes = cat([d.pred_boxes.tensor for d in detections])
        attn = cat([d.top_feat for d in detections])
        probs = self._masks(bases, image_inds, boxes, attn).sigmoid()[:, None] if len(boxes) else (
            bases.new_zeros((0, 1, self.output_size, self.output_size))
        )
        set_per_image(detections, "pred_masks", probs)

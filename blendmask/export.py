"""The export module of BlendMask (FCOS, the bottom module's bases, the top layer's attentions at the
detections, the blender written as standard ops: RoIAlign crops of the bases, resized attentions,
softmax over the bases, weighted sum)."""
from typing import Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

from instseg.export.common import require_type
from instseg.export.fcos import check_fcos, fcos_detections
from instseg.export.rcnn import ExportBase
from instseg.layers.conv_at import conv2d_at
from instseg.layers.roi_align import roi_align

from .basis_module import BasisModule
from .blendmask import BlendMask


def attentions_at_locations(top_layer, box_tower, locations: Tensor) -> Tensor:
    """blendmask.attentions_at for one image: the top layer at flat FCOS locations (P,) -> (P, C).
    Every level evaluates it at every detection (its position clamped into the level) and each
    detection takes its own level's value: no per-level gather of data-dependent size."""
    out, start = None, 0
    for feat in box_tower:
        h, w = feat.shape[-2:]
        # the level's sizes as tensors: ONNX has no remainder by a symbolic scalar
        width_t, area_t = locations.new_ones(()) * w, locations.new_ones(()) * (h * w)
        index = torch.minimum((locations - start).clamp(min=0), area_t - 1)
        ys = torch.div(index, width_t, rounding_mode="floor")
        values = conv2d_at(top_layer, feat, torch.zeros_like(index), ys, index - ys * width_t)
        on_level = ((locations >= start) & (locations < start + h * w))[:, None]
        out = values if out is None else torch.where(on_level, values, out)
        start = start + h * w
    return out


def blend_standard(bases: Tensor, boxes: Tensor, attns: Tensor, spatial_scale: float, output_size: int,
                   sampling_ratio: int, aligned: bool, attn_interp: str) -> Tensor:
    """instseg::blend (one image) composed of RoIAlign (this project's op, ONNX RoiAlign), resize,
    softmax and a weighted sum, as instseg.layers.blend_reference: (P, R, R) mask logits."""
    rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
    crops = roi_align(bases, rois, output_size, spatial_scale, sampling_ratio, aligned)
    align = {"align_corners": False} if attn_interp == "bilinear" else {}
    weights = F.interpolate(attns, (output_size, output_size), mode=attn_interp, **align).softmax(dim=1)
    return (crops * weights).sum(dim=1)


class ExportBlendMask(ExportBase):
    """forward(image) -> boxes, scores, classes, mask_probs (D, 1, R, R) (R = BOTTOM_RESOLUTION, 56)."""

    output_names = ("boxes", "scores", "classes", "mask_probs")

    def __init__(self, model):
        super().__init__(model)
        require_type("the model", model, (BlendMask,))
        check_fcos("proposal_generator", model.proposal_generator)
        require_type("basis_module", model.basis_module, (BasisModule,))

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        height, width = image.shape[-2:]
        features = self.backbone_features(image)
        model = self.model
        fcos = model.proposal_generator
        boxes, scores, classes, locations, box_tower = fcos_detections(
            fcos, [features[f] for f in fcos.in_features], height, width, keep_box_tower=True
        )
        bases, _ = model.basis_module(features)
        blender = model.blender
        attns = attentions_at_locations(model.top_layer, box_tower, locations)
        attns = attns.reshape(-1, blender.num_bases, blender.attn_size, blender.attn_size)
        spatial_scale, output_size, sampling_ratio, aligned, attn_interp = blender.op_args
        logits = blend_standard(bases.float(), boxes, attns.float(), spatial_scale, output_size, sampling_ratio,
                                aligned, attn_interp)
        return boxes, scores, classes, logits.sigmoid()[:, None]

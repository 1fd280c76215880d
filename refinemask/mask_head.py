"""RefineMask's mask head: a coarse 14 x 14 instance mask refined in stages to 28, 56 and 112 by the
semantic fusion module (SFM), and its boundary-aware loss.

Shape legend: M RoIs, N images, C channels of a stage (256, 128, 64), S its size (14, 28, 56),
K classes (1 for a class-agnostic stage). Module names follow the official code where a converter
needs them (projects/convert_refinemask_checkpoint.py).
"""
from typing import List

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, cat
from detectron2.structures import Boxes, Instances
from torch import Tensor, nn
from torch.nn import functional as F

from instseg.layers import ROIPooler
from instseg.modeling import crop_gt_masks

from .boundary import bilinear2x, boundary_region, merge_stage, upsample2x


def _init_predictor(conv: nn.Conv2d) -> None:
    """Mask logits start near 0 (probability 0.5), as detectron2 initialises its mask predictor."""
    nn.init.normal_(conv.weight, std=0.001)
    nn.init.constant_(conv.bias, 0)


def _channels_last(x: Tensor) -> Tensor:
    """The head keeps its (M, C, S, S) maps channels-last: on CPU (torch 2.14, 2 threads, 100 RoIs)
    its convs run 1.3-2x faster so and the bilinear 2x upsampling 7-8x faster than on NCHW maps."""
    return x.contiguous(memory_format=torch.channels_last)


# The refinement stages run on chunks of this many RoIs. A chunk's largest map (16 RoIs x 64 channels
# x 56 x 56 floats, 13 MB) stays under glibc's 32 MB mmap threshold, so the memory of one chunk's
# maps is reused by the next instead of being mapped and page-faulted anew: on CPU (2 threads, 100
# RoIs of the R50 benchmark) the head runs 1.2-1.4x faster so, with equal results.
ROIS_PER_CHUNK = 16


def _roi_chunks(boxes: List[Boxes], size: int):
    """Split the RoIs, in their concatenated order, into chunks of at most `size`. Yields (start, end,
    per-image Boxes of the chunk): every image keeps its place in the list (empty when none of its
    RoIs is in the chunk), as RoI pooling takes an RoI's image from it. One empty chunk when there
    are no RoIs."""
    offsets = [0]
    for b in boxes:
        offsets.append(offsets[-1] + len(b))
    for start in range(0, max(offsets[-1], 1), size):
        end = min(start + size, offsets[-1])
        # slicing clamps past an image's end; only the start of the image needs a bound
        yield start, end, [b[max(start - o, 0) : max(end - o, 0)] for b, o in zip(boxes, offsets)]


def _class_logits(classifier: nn.Conv2d, x: Tensor, labels: Tensor) -> Tensor:
    """(M, C, S, S) -> (M, S, S): the 1x1 classifier evaluated for each RoI's own class only (its
    single channel when class-agnostic), not for all K classes."""
    k = labels if classifier.out_channels > 1 else torch.zeros_like(labels)
    weight = classifier.weight[k, :, 0, 0]  # (M, C)
    return torch.einsum("mchw,mc->mhw", x, weight) + classifier.bias[k][:, None, None]


class SFMStage(nn.Module):
    """One refinement stage at size S: predicts this stage's mask, fuses the instance features with
    RoI crops of the semantic features and foreground mask (1x1 reduce, three parallel dilated 3x3
    convs, 1x1 merge) and halves the channels; the head upsamples them 2x for the next stage."""

    def __init__(
        self, channels: int, semantic_channels: int, semantic_stride: int, size: int, num_classes: int, dilations, roi_align_impl: str
    ):
        super().__init__()
        self.pooler = ROIPooler(size, (1.0 / semantic_stride,), 0, "ROIAlignV2", roi_align_impl=roi_align_impl)
        self.semantic_transform_in = nn.Conv2d(semantic_channels, channels, 1)
        self.semantic_transform_out = nn.Conv2d(channels, channels, 1)
        self.instance_logits = nn.Conv2d(channels, num_classes, 1)
        self.reduce = nn.Conv2d(2 * channels + 2, channels, 1)
        self.dilated_convs = nn.ModuleList(
            Conv2d(channels, channels, 3, padding=d, dilation=d, activation=nn.ReLU(inplace=True)) for d in dilations
        )
        self.merge = nn.Conv2d(channels, channels, 1)
        self.fuse_transform_out = nn.Conv2d(channels, channels // 2 - 2, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                weight_init.c2_msra_fill(m)
        _init_predictor(self.instance_logits)

    def transform_semantic(self, semantic_feat: Tensor) -> Tensor:
        """The stage's whole-image part: (N, D, H, W) semantic features (at semantic_stride, 4 on P2) ->
        (N, C, H, W), computed once for all RoIs, in the features' memory format: channels-last from
        the semantic head, which our CPU RoIAlign pools without a copy to NCHW (at R50 sizes the copy
        of the first stage's 256 x 200 x 304 map alone took about 70 ms)."""
        return F.relu_(self.semantic_transform_in(semantic_feat))

    def forward(self, x: Tensor, semantic_map: Tensor, foreground: Tensor, boxes: List[Boxes], labels: Tensor):
        """
        Args:
            x: (M, C, S, S) instance features.
            semantic_map: (N, C, H, W) transform_semantic's output; foreground: (N, 1, H, W) the semantic
                head's foreground probabilities.
            boxes: per image, the RoIs; labels: (M,) their classes.

        Returns:
            this stage's mask logits (M, S, S) and the next stage's features before upsampling (M, C/2, S, S).
        """
        logits = _class_logits(self.instance_logits, x, labels)
        # no ReLU between pooling and transform_out: RoIAlign of a map >= 0 is >= 0
        sem = self.pooler([semantic_map], boxes)
        sem = F.relu_(self.semantic_transform_out(_channels_last(sem)))
        sem_mask = self.pooler([foreground], boxes)
        masks = _channels_last(torch.stack([logits.sigmoid(), sem_mask[:, 0]], dim=1))
        y = F.relu_(self.reduce(cat([x, sem, masks], dim=1)))
        y = F.relu_(self.merge(sum(conv(y) for conv in self.dilated_convs)))
        y = F.relu_(self.fuse_transform_out(y))
        return logits, cat([y, masks], dim=1)


class RefineMaskHead(nn.Module):
    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        conv_dim: int,
        num_instance_convs: int,
        semantic_channels: int,
        semantic_stride: int,
        stage_sizes: List[int],
        num_classes: int,
        class_agnostic_last_stage: bool,
        dilations: List[int],
        boundary_width: int,
        inference_boundary_width: int,
        start_stage: int,
        stage_loss_weights: List[float],
        roi_align_impl: str = "instseg",
    ):
        super().__init__()
        if len(stage_loss_weights) != len(stage_sizes):
            raise ValueError("MODEL.REFINEMASK.STAGE_LOSS_WEIGHTS needs one weight per STAGE_SIZES entry")
        if any(b != 2 * a for a, b in zip(stage_sizes, stage_sizes[1:])):
            raise ValueError(f"MODEL.REFINEMASK.STAGE_SIZES must double at each stage, got {stage_sizes}")
        self.instance_convs = nn.ModuleList(
            Conv2d(in_channels if i == 0 else conv_dim, conv_dim, 3, padding=1, activation=nn.ReLU(inplace=True))
            for i in range(num_instance_convs)
        )
        for conv in self.instance_convs:
            weight_init.c2_msra_fill(conv)
        channels = conv_dim
        self.stages = nn.ModuleList()
        for size in stage_sizes[:-1]:
            self.stages.append(
                SFMStage(channels, semantic_channels, semantic_stride, size, num_classes, dilations, roi_align_impl)
            )
            channels //= 2
        self.final_instance_logits = nn.Conv2d(channels, 1 if class_agnostic_last_stage else num_classes, 1)
        _init_predictor(self.final_instance_logits)
        self.boundary_width = boundary_width
        self.inference_boundary_width = inference_boundary_width
        self.start_stage = start_stage
        self.stage_loss_weights = stage_loss_weights

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec, semantic_channels: int, semantic_stride: int):
        rm = cfg.MODEL.REFINEMASK
        if rm.STAGE_SIZES[0] != input_shape.height:
            raise ValueError(
                f"MODEL.REFINEMASK.STAGE_SIZES starts at {rm.STAGE_SIZES[0]} but the RoI features are "
                f"{input_shape.height} x {input_shape.width} (MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION): they must be equal"
            )
        return {
            "in_channels": input_shape.channels,
            "conv_dim": rm.CONV_DIM,
            "num_instance_convs": rm.NUM_INSTANCE_CONVS,
            "semantic_channels": semantic_channels,
            "semantic_stride": semantic_stride,
            "stage_sizes": list(rm.STAGE_SIZES),
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "class_agnostic_last_stage": rm.CLASS_AGNOSTIC_LAST_STAGE,
            "dilations": list(rm.DILATIONS),
            "boundary_width": rm.BOUNDARY_WIDTH,
            "inference_boundary_width": rm.INFERENCE_BOUNDARY_WIDTH,
            "start_stage": rm.START_STAGE,
            "stage_loss_weights": list(rm.STAGE_LOSS_WEIGHTS),
            "roi_align_impl": cfg.MODEL.ROI_ALIGN_IMPL,
        }

    def forward(self, x: Tensor, semantic_feat: Tensor, semantic_logits: Tensor, boxes: List[Boxes], labels: Tensor) -> List[Tensor]:
        """
        Args:
            x: (M, C_in, 14, 14) RoI features.
            semantic_feat: (N, D, H, W) and semantic_logits (N, 1, H, W): the semantic head's outputs.
            boxes: per image, the RoIs; labels: (M,) their classes (ground truth in training,
                predicted at test time).

        Returns:
            per stage, (M, S, S) mask logits: sizes 14, 28, 56, 112.
        """
        semantic_maps = [stage.transform_semantic(semantic_feat) for stage in self.stages]
        foreground = semantic_logits.sigmoid()
        per_chunk = [
            self._refine(x[start:end], semantic_maps, foreground, chunk_boxes, labels[start:end])
            for start, end, chunk_boxes in _roi_chunks(boxes, ROIS_PER_CHUNK)
        ]
        return [cat(logits) for logits in zip(*per_chunk)]

    def _refine(self, x: Tensor, semantic_maps: List[Tensor], foreground: Tensor, boxes: List[Boxes], labels: Tensor) -> List[Tensor]:
        """forward for one chunk of RoIs, given the stages' whole-image semantic maps."""
        x = _channels_last(x)
        for conv in self.instance_convs:
            x = conv(x)
        stage_logits = []
        for i, (stage, semantic_map) in enumerate(zip(self.stages, semantic_maps)):
            if i > 0:
                x = bilinear2x(x)
            logits, x = stage(x, semantic_map, foreground, boxes, labels)
            stage_logits.append(logits)
        # The last 1x1 classifier commutes with the bilinear 2x upsampling (both are linear and the
        # interpolation weights sum to 1): classify at S and upsample one channel, not C/2 of them.
        last = _class_logits(self.final_instance_logits, x, labels)
        stage_logits.append(bilinear2x(last[:, None])[:, 0])
        return stage_logits

    def losses(self, stage_logits: List[Tensor], instances: List[Instances]) -> Tensor:
        """Boundary-aware loss: stages up to start_stage are trained on the whole RoI; a later stage
        only inside the union of the boundary regions of the previous stage's (merged, binarised)
        prediction and of the previous-size ground truth, upsampled 2x; BCE averaged over that
        region, stages weighted by stage_loss_weights."""
        total = stage_logits[0].sum() * 0
        if stage_logits[0].numel() == 0:
            return total
        previous, previous_target = None, None
        for i, (logits, weight) in enumerate(zip(stage_logits, self.stage_loss_weights)):
            size = logits.shape[-1]
            target = crop_gt_masks(instances, "proposal_boxes", size).to(logits)
            if i <= self.start_stage:
                loss = F.binary_cross_entropy_with_logits(logits, target)
                merged = logits
            else:
                region = upsample2x(
                    boundary_region(previous > 0, self.boundary_width)
                    | boundary_region(previous_target > 0.5, self.boundary_width)
                )
                per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
                loss = (per_pixel * region).sum() / region.sum().clamp(min=1)
                merged = merge_stage(previous, logits, self.inference_boundary_width)
            total = total + weight * loss
            previous, previous_target = merged.detach(), target
        return total

    def inference(self, stage_logits: List[Tensor]) -> Tensor:
        """Merge the stages from 28 x 28 up (the 14 x 14 stage only feeds the next one): (M, 1, R, R)
        mask probabilities at the last size."""
        merged = stage_logits[1]
        for logits in stage_logits[2:]:
            merged = merge_stage(merged, logits, self.inference_boundary_width)
        return merged.sigmoid()[:, None]

"""RefineMask's mask head: a coarse 14 x 14 instance mask refined in stages to 28, 56 and 112 by the
semantic fusion module (SFM), and its boundary-aware loss. Two variants (MODEL.REFINEMASK.HEAD):
RefineMaskHead, the paper's, and SimpleRefineMaskHead, the official code's "faster-better" one.

Shape legend: M RoIs, N images, C channels of a stage (256, 128, 64), S its size (14, 28, 56),
K classes (1 for a class-agnostic stage). Module names follow the official code where a converter
needs them (projects/convert_refinemask_checkpoint.py).
"""
from typing import List, Tuple

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, cat
from detectron2.structures import Boxes, Instances
from torch import Tensor, nn
from torch.nn import functional as F

from instseg.layers import ROIPooler
from instseg.layers.memory_format import to_channels_last
from instseg.modeling import crop_gt_masks, with_roi_align_impl

from .boundary import bilinear2x, binarize, boundary_region, merge_stage, upsample2x


def _init_predictor(conv: nn.Conv2d) -> None:
    """Mask logits start near 0 (probability 0.5), as detectron2 initialises its mask predictor."""
    nn.init.normal_(conv.weight, std=0.001)
    nn.init.constant_(conv.bias, 0)


# The refinement stages run on chunks of this many RoIs, so that one chunk's maps stay under glibc's
# mmap threshold and the next chunk reuses their memory (docs/notes/refinemask_cpu_latency.md).
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


def _class_weights(classifier: nn.Conv2d, labels: Tensor) -> Tuple[Tensor, Tensor]:
    """The 1x1 classifier's weights (M, C) and bias (M,) of each RoI's own class (its single
    channel when class-agnostic)."""
    k = labels if classifier.out_channels > 1 else torch.zeros_like(labels)
    return classifier.weight[k, :, 0, 0], classifier.bias[k]


def _class_logits(classifier: nn.Conv2d, x: Tensor, labels: Tensor) -> Tensor:
    """(M, C, S, S) -> (M, S, S): the 1x1 classifier evaluated for each RoI's own class only, not
    for all K classes."""
    weight, bias = _class_weights(classifier, labels)
    return torch.einsum("mchw,mc->mhw", x, weight) + bias[:, None, None]


class _FusionStage(nn.Module):
    """What both SFM stages share: the whole-image semantic transform, the stage's classifier and the
    fusion of the instance features with the RoI crops of the semantic features and of the masks
    (1x1 reduce, parallel dilated 3x3 convs summed, 1x1 merge, 1x1 to C/2 channels less the masks,
    which are passed on with them). Subclasses build the modules in their order (it sets the random
    initialisation at a SEED) and call _init_weights."""

    num_masks: int  # mask channels at the end of the stage's output

    @staticmethod
    def upsample_output(x: Tensor) -> Tensor:
        """(M, C/2, S, S) stage output -> (M, C/2, 2S, 2S), the next stage's input: all channels
        bilinearly with align_corners False (the official SimpleSFMStage upsamples after appending
        the mask)."""
        return bilinear2x(x)

    def _add_fusion(self, channels: int, num_masks: int, dilations: List[int]) -> None:
        self.reduce = nn.Conv2d(2 * channels + num_masks, channels, 1)
        self.dilated_convs = nn.ModuleList(
            Conv2d(channels, channels, 3, padding=d, dilation=d, activation=nn.ReLU(inplace=True)) for d in dilations
        )
        self.merge = nn.Conv2d(channels, channels, 1)
        self.fuse_transform_out = nn.Conv2d(channels, channels // 2 - num_masks, 1)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                weight_init.c2_msra_fill(m)
        _init_predictor(self.instance_logits)

    def transform_semantic(self, semantic_feat: Tensor) -> Tensor:
        """The stage's whole-image part: (N, D, H, W) semantic features (at semantic_stride, 4 on P2) ->
        (N, C, H, W), computed once for all RoIs, in the features' memory format: channels-last from
        the semantic head, which our CPU RoIAlign pools without a copy to NCHW."""
        return F.relu_(self.semantic_transform_in(semantic_feat))

    def _branches(self, y: Tensor) -> Tensor:
        """(M, C, S, S) reduced features -> the sum of the dilated branches, (M, C, S, S)."""
        return sum(conv(y) for conv in self.dilated_convs)

    def _fuse(self, x: Tensor, sem: Tensor, masks: Tensor) -> Tensor:
        """x (M, C, S, S), sem (M, C, S, S), masks (M, num_masks, S, S) -> (M, C/2, S, S)."""
        y = F.relu_(self.reduce(cat([x, sem, masks], dim=1)))
        y = F.relu_(self.merge(self._branches(y)))
        y = F.relu_(self.fuse_transform_out(y))
        return cat([y, masks], dim=1)


class SFMStage(_FusionStage):
    """One refinement stage at size S: predicts this stage's mask, fuses the instance features with
    RoI crops of the semantic features and foreground mask (1x1 reduce, three parallel dilated 3x3
    convs, 1x1 merge) and halves the channels; the head upsamples them 2x for the next stage."""

    num_masks = 2  # the stage's own mask and the foreground crop

    @staticmethod
    def upsample_output(x: Tensor) -> Tensor:
        """As the official SFMStage: the fused features bilinearly with align_corners False (mmcv's
        "bilinear" upsample layer), the two mask channels re-interpolated with align_corners True."""
        features, masks = x[:, : -SFMStage.num_masks], x[:, -SFMStage.num_masks :]
        return cat([bilinear2x(features), bilinear2x(masks, align_corners=True)], dim=1)

    def __init__(
        self, channels: int, semantic_channels: int, semantic_stride: int, size: int, num_classes: int, dilations, roi_align_impl: str
    ):
        super().__init__()
        self.pooler = with_roi_align_impl(ROIPooler(size, (1.0 / semantic_stride,), 0, "ROIAlignV2"), roi_align_impl)
        self.semantic_transform_in = nn.Conv2d(semantic_channels, channels, 1)
        self.semantic_transform_out = nn.Conv2d(channels, channels, 1)
        self.instance_logits = nn.Conv2d(channels, num_classes, 1)
        self._add_fusion(channels, self.num_masks, dilations)
        self._init_weights()

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
        sem = F.relu_(self.semantic_transform_out(to_channels_last(sem)))
        sem_mask = self.pooler([foreground], boxes)
        masks = to_channels_last(torch.stack([logits.sigmoid(), sem_mask[:, 0]], dim=1))
        return logits, self._fuse(x, sem, masks)


class SimpleSFMStage(_FusionStage):
    """The faster-better variant's stage (official SimpleSFMStage with fusion_type
    "MultiBranchFusionAvg"): no foreground mask and no transform of the semantic crop, one bilinear
    sample per bin for that crop, and the global average of the reduced features added to the
    dilated branches.

    The official code crops with mmcv's SimpleRoIAlign (grid_sample at the bin centres, zero outside
    the map); RoIAlign with one sample per bin takes the same samples but clamps those within half a
    pixel outside the map to its edge, so crops of RoIs at the map's border differ slightly."""

    num_masks = 1  # the stage's own mask

    def __init__(
        self, channels: int, semantic_channels: int, semantic_stride: int, size: int, num_classes: int, dilations, roi_align_impl: str
    ):
        super().__init__()
        self.pooler = with_roi_align_impl(ROIPooler(size, (1.0 / semantic_stride,), 1, "ROIAlignV2"), roi_align_impl)
        self.semantic_transform_in = nn.Conv2d(semantic_channels, channels, 1)
        self.instance_logits = nn.Conv2d(channels, num_classes, 1)
        self._add_fusion(channels, self.num_masks, dilations)
        self._init_weights()

    def _branches(self, y: Tensor) -> Tensor:
        return super()._branches(y) + y.mean(dim=(2, 3), keepdim=True)

    def forward(self, x: Tensor, semantic_map: Tensor, boxes: List[Boxes], labels: Tensor):
        """
        Args:
            x: (M, C, S, S) instance features.
            semantic_map: (N, C, H, W) transform_semantic's output.
            boxes: per image, the RoIs; labels: (M,) their classes.

        Returns:
            this stage's mask logits (M, S, S) and the next stage's features before upsampling (M, C/2, S, S).
        """
        logits = _class_logits(self.instance_logits, x, labels)
        sem = to_channels_last(self.pooler([semantic_map], boxes))
        masks = to_channels_last(logits.sigmoid()[:, None])
        return logits, self._fuse(x, sem, masks)


class RefineMaskHead(nn.Module):
    """The paper's head (official RefineMaskHead): SFM stages fed by the semantic features and the
    semantic head's foreground mask."""

    stage_class = SFMStage
    uses_foreground = True  # whether the semantic head predicts a foreground mask for the stages

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
                self.stage_class(channels, semantic_channels, semantic_stride, size, num_classes, dilations, roi_align_impl)
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
        foreground = semantic_logits.sigmoid()
        stage_maps = [(stage.transform_semantic(semantic_feat), foreground) for stage in self.stages]
        return self._in_chunks(x, stage_maps, boxes, labels)

    def _in_chunks(
        self, x: Tensor, stage_maps: List[Tuple[Tensor, ...]], boxes: List[Boxes], labels: Tensor
    ) -> List[Tensor]:
        """forward's stages run on chunks of RoIs. stage_maps: per stage, the whole-image maps that its
        forward takes after the instance features."""
        per_chunk = [
            self._refine(x[start:end], stage_maps, chunk_boxes, labels[start:end])
            for start, end, chunk_boxes in _roi_chunks(boxes, ROIS_PER_CHUNK)
        ]
        return [cat(logits) for logits in zip(*per_chunk)]

    def _refine(self, x: Tensor, stage_maps: List[Tuple[Tensor, ...]], boxes: List[Boxes], labels: Tensor) -> List[Tensor]:
        """forward for one chunk of RoIs, given the stages' whole-image maps."""
        x = to_channels_last(x)
        for conv in self.instance_convs:
            x = conv(x)
        stage_logits = []
        for i, (stage, maps) in enumerate(zip(self.stages, stage_maps)):
            if i > 0:
                x = stage.upsample_output(x)
            logits, x = stage(x, *maps, boxes, labels)
            stage_logits.append(logits)
        stage_logits.append(self._last_logits(x, labels))
        return stage_logits

    def _last_logits(self, x: Tensor, labels: Tensor) -> Tensor:
        """(M, C/2, S, S) last stage output -> (M, 2S, 2S) last mask logits. The official head
        upsamples the output as between stages (features with align_corners False, the mask channels
        with True), then classifies; the 1x1 classifier commutes with each bilinear 2x upsampling
        (both are linear and the interpolation weights sum to 1), so the features' and the masks'
        parts are classified at S and their one-channel logits upsampled by their own rule."""
        n = self.stage_class.num_masks
        weight, bias = _class_weights(self.final_instance_logits, labels)
        features = torch.einsum("mchw,mc->mhw", x[:, :-n], weight[:, :-n])
        masks = torch.einsum("mchw,mc->mhw", x[:, -n:], weight[:, -n:])
        upsampled = bilinear2x(features[:, None]) + bilinear2x(masks[:, None], align_corners=True)
        return upsampled[:, 0] + bias[:, None, None]

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
                    boundary_region(binarize(previous), self.boundary_width)
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


class SimpleRefineMaskHead(RefineMaskHead):
    """The official code's "faster-better" head (SimpleRefineMaskHead,
    configs/refinemask/coco/r50-refinemask-1x-faster-better.py): SimpleSFMStage stages fed by the
    semantic features alone, so the semantic head has no foreground classifier and no loss. The
    losses (the official BARCrossEntropyLoss: RefineCrossEntropyLoss without its semantic term) and
    the inference (boundary-aware merging of the stages from 28 on) are RefineMaskHead's."""

    stage_class = SimpleSFMStage
    uses_foreground = False

    def forward(self, x: Tensor, semantic_feat: Tensor, boxes: List[Boxes], labels: Tensor) -> List[Tensor]:
        """
        Args:
            x: (M, C_in, 14, 14) RoI features.
            semantic_feat: (N, D, H, W) the semantic head's features.
            boxes: per image, the RoIs; labels: (M,) their classes (ground truth in training,
                predicted at test time).

        Returns:
            per stage, (M, S, S) mask logits: sizes 14, 28, 56, 112.
        """
        stage_maps = [(stage.transform_semantic(semantic_feat),) for stage in self.stages]
        return self._in_chunks(x, stage_maps, boxes, labels)

    def _last_logits(self, x: Tensor, labels: Tensor) -> Tensor:
        """(M, C/2, S, S) -> (M, 2S, 2S): as the official head (pre_upsample_last_stage False), the last
        mask is classified at S and its logits upsampled with align_corners True."""
        return bilinear2x(_class_logits(self.final_instance_logits, x, labels)[:, None], align_corners=True)[:, 0]


# MODEL.REFINEMASK.HEAD -> the head class
MASK_HEADS = {cls.__name__: cls for cls in (RefineMaskHead, SimpleRefineMaskHead)}

"""RoI heads whose poolers follow cfg.MODEL.ROI_ALIGN_IMPL, and the parts the methods' own mask
branches build on: the mask pooler built from cfg and the RoIs a mask head sees."""
from typing import Dict, List, Tuple

from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.poolers import ROIPooler as D2ROIPooler
from detectron2.modeling.roi_heads import select_foreground_proposals
from detectron2.structures import Boxes, Instances
from torch import Tensor

from ..layers.poolers import ROIPooler, use_instseg_roi_align
from .backbone import feature_shapes


def with_roi_align_impl(pooler: D2ROIPooler, impl: str) -> D2ROIPooler:
    """`pooler`, its RoIAlign levels running the op MODEL.ROI_ALIGN_IMPL names: "instseg" (this
    project's csrc op, swapped in place) or "detectron2" (left as built). The one place where that
    choice is made, for detectron2's poolers and ours alike."""
    if impl == "instseg":
        use_instseg_roi_align(pooler)
    elif impl != "detectron2":
        raise ValueError(f'MODEL.ROI_ALIGN_IMPL must be "instseg" or "detectron2", got {impl!r}')
    return pooler


def build_mask_pooler(cfg, input_shape: Dict[str, ShapeSpec], assign_criterion: str = "area") -> Tuple[dict, ShapeSpec]:
    """For RoI heads that replace detectron2's mask head: their `mask_in_features` and `mask_pooler`
    arguments (a pooler over MODEL.ROI_HEADS.IN_FEATURES with the MODEL.ROI_MASK_HEAD pooler keys and
    the level rule `assign_criterion`, "area" or "ratio") and the ShapeSpec of what it pools."""
    shapes = feature_shapes(input_shape, cfg.MODEL.ROI_HEADS.IN_FEATURES, "MODEL.ROI_HEADS.IN_FEATURES")
    channels = {s.channels for s in shapes}
    if len(channels) != 1:
        raise ValueError(f"MODEL.ROI_HEADS.IN_FEATURES must share one width, got {channels}")
    resolution = cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
    pooler = ROIPooler(
        output_size=resolution,
        scales=tuple(1.0 / s.stride for s in shapes),
        sampling_ratio=cfg.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO,
        pooler_type=cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE,
        assign_criterion=assign_criterion,
    )
    pooled = ShapeSpec(channels=channels.pop(), height=resolution, width=resolution)
    args = {"mask_in_features": cfg.MODEL.ROI_HEADS.IN_FEATURES, "mask_pooler": with_roi_align_impl(pooler, cfg.MODEL.ROI_ALIGN_IMPL)}
    return args, pooled


@ROI_HEADS_REGISTRY.register()
class InstSegROIHeads(StandardROIHeads):
    """detectron2's StandardROIHeads (Mask R-CNN) with the RoIAlign chosen by MODEL.ROI_ALIGN_IMPL.

    The methods' RoI heads derive from this class, so one config value picks the op for all of them.
    """

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        return _with_config_roi_align(cfg, super()._init_box_head(cfg, input_shape), "box_pooler")

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        return _with_config_roi_align(cfg, super()._init_mask_head(cfg, input_shape), "mask_pooler")

    @classmethod
    def _init_keypoint_head(cls, cfg, input_shape):
        return _with_config_roi_align(cfg, super()._init_keypoint_head(cfg, input_shape), "keypoint_pooler")

    def mask_rois(self, features: Dict[str, Tensor], instances: List[Instances]) -> Tuple[List[Instances], List[Boxes], Tensor]:
        """What a mask head sees: the instances (in training the foreground proposals, at test time
        the detections), per image their boxes (proposal_boxes / pred_boxes), and the mask pooler's
        (M, C, S, S) features of those boxes, images in order."""
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
        boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
        pooled = self.mask_pooler(
            [features[f] for f in self.mask_in_features], boxes, [x.image_size for x in instances]
        )
        return instances, boxes, pooled


def _with_config_roi_align(cfg, head_args: dict, pooler_key: str) -> dict:
    """detectron2's head arguments with their pooler (None where the head is off) following
    MODEL.ROI_ALIGN_IMPL."""
    if head_args.get(pooler_key) is not None:
        with_roi_align_impl(head_args[pooler_key], cfg.MODEL.ROI_ALIGN_IMPL)
    return head_args

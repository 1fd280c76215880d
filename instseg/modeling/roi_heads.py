"""RoI heads whose poolers follow cfg.MODEL.ROI_ALIGN_IMPL."""
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads import select_foreground_proposals

from ..layers.poolers import ROIPooler, use_instseg_roi_align
from .backbone import feature_shapes


@ROI_HEADS_REGISTRY.register()
class InstSegROIHeads(StandardROIHeads):
    """detectron2's StandardROIHeads (Mask R-CNN) with the RoIAlign chosen by MODEL.ROI_ALIGN_IMPL.

    The methods' RoI heads derive from this class, so one config value picks the op for all of them.
    """

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        return _with_roi_align_impl(cfg, super()._init_box_head(cfg, input_shape), "box_pooler")

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        return _with_roi_align_impl(cfg, super()._init_mask_head(cfg, input_shape), "mask_pooler")

    @classmethod
    def _init_mask_pooler(cls, cfg, input_shape, assign_criterion: str = "area"):
        """For heads that replace detectron2's mask head: the mask_in_features and mask_pooler
        arguments (a pooler over MODEL.ROI_HEADS.IN_FEATURES with the MODEL.ROI_MASK_HEAD pooler keys)
        and the ShapeSpec of the features it pools."""
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
            roi_align_impl=cfg.MODEL.ROI_ALIGN_IMPL,
        )
        pooled = ShapeSpec(channels=channels.pop(), height=resolution, width=resolution)
        return {"mask_in_features": cfg.MODEL.ROI_HEADS.IN_FEATURES, "mask_pooler": pooler}, pooled

    def _mask_rois(self, features, instances):
        """For heads that replace detectron2's mask head: the instances the mask head sees (in
        training the foreground proposals, at test time the detections), their boxes and the mask
        pooler's features of those boxes."""
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
        boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
        pooled = self.mask_pooler(
            [features[f] for f in self.mask_in_features], boxes, [x.image_size for x in instances]
        )
        return instances, boxes, pooled

    @classmethod
    def _init_keypoint_head(cls, cfg, input_shape):
        return _with_roi_align_impl(
            cfg, super()._init_keypoint_head(cfg, input_shape), "keypoint_pooler"
        )


def _with_roi_align_impl(cfg, head_args: dict, pooler_key: str) -> dict:
    pooler = head_args.get(pooler_key)
    if pooler is not None and cfg.MODEL.ROI_ALIGN_IMPL == "instseg":
        use_instseg_roi_align(pooler)
    return head_args

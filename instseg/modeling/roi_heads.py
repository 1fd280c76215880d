"""RoI heads whose poolers follow cfg.MODEL.ROI_ALIGN_IMPL."""
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads

from ..layers.poolers import ROIPooler, use_instseg_roi_align


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
    def _build_mask_pooler(cls, cfg, input_shape, assign_criterion: str = "area"):
        """The mask pooler over MODEL.ROI_HEADS.IN_FEATURES (MODEL.ROI_MASK_HEAD pooler keys) and the
        ShapeSpec of the features it pools, for heads that replace detectron2's mask head."""
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"MODEL.ROI_HEADS.IN_FEATURES must share one width, got {channels}")
        resolution = cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
        pooler = ROIPooler(
            output_size=resolution,
            scales=tuple(1.0 / input_shape[f].stride for f in in_features),
            sampling_ratio=cfg.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO,
            pooler_type=cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE,
            assign_criterion=assign_criterion,
            roi_align_impl=cfg.MODEL.ROI_ALIGN_IMPL,
        )
        return pooler, ShapeSpec(channels=channels.pop(), height=resolution, width=resolution)

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

"""RoI heads whose poolers follow cfg.MODEL.ROI_ALIGN_IMPL."""
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads

from ..layers.poolers import use_instseg_roi_align


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
    def _init_keypoint_head(cls, cfg, input_shape):
        return _with_roi_align_impl(
            cfg, super()._init_keypoint_head(cfg, input_shape), "keypoint_pooler"
        )


def _with_roi_align_impl(cfg, head_args: dict, pooler_key: str) -> dict:
    pooler = head_args.get(pooler_key)
    if pooler is not None and cfg.MODEL.ROI_ALIGN_IMPL == "instseg":
        use_instseg_roi_align(pooler)
    return head_args

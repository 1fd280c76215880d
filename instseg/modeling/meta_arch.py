"""The base of the methods whose detector is detectron2's GeneralizedRCNN with RoI heads of their own."""
from detectron2.config import configurable
from detectron2.modeling import GeneralizedRCNN


class MethodRCNN(GeneralizedRCNN):
    """detectron2's GeneralizedRCNN (same parameters, so the upstream checkpoints load unchanged)
    under a method's own META_ARCHITECTURE name, which checks that the config builds that method's
    RoI heads: a config naming the method but another head is an error, not a silent Mask R-CNN."""

    roi_heads_class: type  # the RoI heads the method needs, set by each subclass

    @configurable
    def __init__(self, *, roi_heads, **kwargs):
        if not isinstance(roi_heads, self.roi_heads_class):
            raise ValueError(
                f"META_ARCHITECTURE {type(self).__name__} needs MODEL.ROI_HEADS.NAME "
                f"{self.roi_heads_class.__name__} (or a subclass), got {type(roi_heads).__name__}"
            )
        super().__init__(roi_heads=roi_heads, **kwargs)

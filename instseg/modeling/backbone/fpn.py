"""FPN backbones for the FCOS-based methods: P3-P5 from the bottom-up network plus P6/P7 made from P5
(MODEL.FCOS.TOP_LEVELS of them), named like AdelaiDet's and centermask2's (``top_block.p6``)."""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone import FPN, build_resnet_backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from torch import nn

import fvcore.nn.weight_init as weight_init


class LastLevelP6(nn.Module):
    """One extra level: P6 = 3x3 stride-2 conv of P5."""

    num_levels = 1
    in_feature = "p5"

    def __init__(self, channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        weight_init.c2_xavier_fill(self.p6)

    def forward(self, p5):
        return [self.p6(p5)]


def build_fcos_fpn(cfg, bottom_up: Backbone) -> FPN:
    """detectron2's FPN over `bottom_up` with MODEL.FCOS.TOP_LEVELS (0, 1 or 2) extra levels from P5."""
    channels = cfg.MODEL.FPN.OUT_CHANNELS
    top_levels = cfg.MODEL.FCOS.TOP_LEVELS
    if top_levels == 2:
        top_block = LastLevelP6P7(channels, channels, in_feature="p5")
    elif top_levels == 1:
        top_block = LastLevelP6(channels)
    elif top_levels == 0:
        top_block = None
    else:
        raise ValueError(f"MODEL.FCOS.TOP_LEVELS must be 0, 1 or 2, got {top_levels}")
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    return build_fcos_fpn(cfg, build_resnet_backbone(cfg, input_shape))

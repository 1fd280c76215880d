"""RefineMask's semantic head: convs on P2 and a binary foreground classifier. Its feature map and
foreground mask are the fine-grained inputs of every refinement stage (the faster-better variant,
SimpleRefineMaskHead, takes the feature map only: its semantic head has no classifier).

Shape legend: N images, C in channels, D = CONV_DIM, H x W the P2 map.
"""
from typing import List, NamedTuple, Optional, Tuple

import fvcore.nn.weight_init as weight_init
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.structures import Instances
from torch import Tensor, nn
from torch.nn import functional as F

from instseg.layers.memory_format import to_channels_last
from instseg.modeling import feature_shapes, semantic_targets


class SemanticOutputs(NamedTuple):
    """What the semantic head gives the mask head: its features (N, D, H, W) and its foreground
    logits (N, 1, H, W), None without the foreground classifier."""

    features: Tensor
    foreground_logits: Optional[Tensor]

    def mask_head_inputs(self) -> Tuple[Tensor, ...]:
        """The maps the mask head refines with, in its argument order."""
        return (self.features,) if self.foreground_logits is None else tuple(self)


class SemanticHead(nn.Module):
    @configurable
    def __init__(
        self,
        *,
        in_feature: str,
        in_shape: ShapeSpec,
        conv_dim: int,
        num_convs: int,
        predict_foreground: bool,
        num_classes: int,
        loss_weight: float,
    ):
        """
        Args:
            in_feature, in_shape: the feature map it runs on (P2) and its shape.
            conv_dim, num_convs: width and number of the 3x3 convs.
            predict_foreground: whether it has the foreground classifier (and loss), as the mask head
                needs (RefineMaskHead.uses_foreground).
            num_classes: classes of the dataset (the targets are their union).
            loss_weight: weight of the foreground loss.
        """
        super().__init__()
        self.in_feature = in_feature
        self.num_classes = num_classes
        self.convs = nn.ModuleList(
            Conv2d(in_shape.channels if i == 0 else conv_dim, conv_dim, 3, padding=1, activation=nn.ReLU(inplace=True))
            for i in range(num_convs)
        )
        self.logits = nn.Conv2d(conv_dim, 1, 1) if predict_foreground else None
        for conv in self.convs:
            weight_init.c2_msra_fill(conv)
        if self.logits is not None:
            nn.init.normal_(self.logits.weight, std=0.001)  # start at probability 0.5
            nn.init.constant_(self.logits.bias, 0)
        self.loss_weight = loss_weight

    @classmethod
    def from_config(cls, cfg, input_shape, predict_foreground: bool):
        rm = cfg.MODEL.REFINEMASK
        (in_shape,) = feature_shapes(input_shape, [rm.SEMANTIC_IN_FEATURE], "MODEL.REFINEMASK.SEMANTIC_IN_FEATURE")
        return {
            "in_feature": rm.SEMANTIC_IN_FEATURE,
            "in_shape": in_shape,
            "conv_dim": rm.CONV_DIM,
            "num_convs": rm.NUM_SEMANTIC_CONVS,
            "predict_foreground": predict_foreground,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "loss_weight": rm.SEMANTIC_LOSS_WEIGHT,
        }

    def forward(self, x: Tensor) -> SemanticOutputs:
        """(N, C, H, W) -> features (N, D, H, W) and foreground logits (N, 1, H, W), channels-last; the
        logits are None without the foreground classifier."""
        # channels-last: mkldnn would reorder an NCHW map before and after each of these large convs
        x = to_channels_last(x)
        for conv in self.convs:
            x = conv(x)
        return SemanticOutputs(x, self.logits(x) if self.logits is not None else None)

    def loss(self, logits: Tensor, gt_instances: List[Instances], image_size: Tuple[int, int]) -> Tensor:
        """BCE against the image's foreground (the union of its instance masks), sampled at the
        logits' stride of the padded (H, W) `image_size`."""
        foreground = semantic_targets(gt_instances, image_size, self.num_classes, logits.shape[-2:]) > 0
        return F.binary_cross_entropy_with_logits(logits[:, 0], foreground.to(logits)) * self.loss_weight

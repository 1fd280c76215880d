"""BlendMask's bottom module: predicts K bases at stride 4 from FPN levels, plus an auxiliary semantic
segmentation head on the first level whose targets are drawn from the instance masks.

Parameter names follow AdelaiDet's "ProtoNet" (``refine.i``, ``tower.j``, ``seg_head.k``).
Shape legend: N images, C FPN channels, D = CONVS_DIM, K bases, H x W the padded input size.
"""
from typing import Dict, List, Optional, Tuple

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.structures import Instances
from torch import Tensor, nn
from torch.nn import functional as F

from instseg.modeling import feature_shapes, semantic_targets


def _conv_block(in_ch: int, out_ch: int, norm: str) -> nn.Sequential:
    conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=not norm)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0)
    layers = [conv] + ([get_norm(norm, out_ch)] if norm else []) + [nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class BasisModule(nn.Module):
    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        in_shape: ShapeSpec,
        convs_dim: int,
        num_bases: int,
        num_convs: int,
        norm: str,
        num_classes: int,
        semantic_loss_weight: Optional[float],
    ):
        """
        Args:
            in_features: FPN levels fused into the bases, finest first (e.g. p3, p4, p5).
            in_shape: shape of in_features[0] (C channels, stride s); every level has C channels.
            convs_dim: D, width of the module.
            num_bases: K.
            num_convs: 3x3 convs before the 2x upsampling.
            norm: norm of the conv blocks ("SyncBN", "BN", "GN", "").
            num_classes: foreground classes of the auxiliary semantic head.
            semantic_loss_weight: weight of the auxiliary loss; None disables the head.
        """
        super().__init__()
        self.in_features = in_features
        # the bases: K channels at half the stride of the finest input (the tower upsamples 2x)
        self.output_shape = ShapeSpec(channels=num_bases, stride=in_shape.stride // 2)
        in_channels = in_shape.channels
        self.num_classes = num_classes
        self.refine = nn.ModuleList(_conv_block(in_channels, convs_dim, norm) for _ in in_features)
        tower = [_conv_block(convs_dim, convs_dim, norm) for _ in range(num_convs)]
        tower += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
        tower += [_conv_block(convs_dim, convs_dim, norm), nn.Conv2d(convs_dim, num_bases, 1)]
        self.tower = nn.Sequential(*tower)
        self.semantic_loss_weight = semantic_loss_weight
        if semantic_loss_weight is not None:
            self.seg_head = nn.Sequential(
                nn.Conv2d(in_channels, convs_dim, 3, padding=1, bias=False),
                get_norm(norm or "BN", convs_dim),
                nn.ReLU(inplace=True),
                nn.Conv2d(convs_dim, convs_dim, 3, padding=1, bias=False),
                get_norm(norm or "BN", convs_dim),
                nn.ReLU(inplace=True),
                nn.Conv2d(convs_dim, num_classes + 1, 1),
            )

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        basis = cfg.MODEL.BASIS_MODULE
        return {
            "in_features": list(basis.IN_FEATURES),
            "in_shape": feature_shapes(input_shape, basis.IN_FEATURES, "MODEL.BASIS_MODULE.IN_FEATURES")[0],
            "convs_dim": basis.CONVS_DIM,
            "num_bases": basis.NUM_BASES,
            "num_convs": basis.NUM_CONVS,
            "norm": basis.NORM,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "semantic_loss_weight": basis.LOSS_WEIGHT if basis.LOSS_ON else None,
        }

    def forward(
        self,
        features: Dict[str, Tensor],
        gt_instances: Optional[List[Instances]] = None,
        image_size: Optional[Tuple[int, int]] = None,
    ):
        """
        Args:
            features: FPN levels; in_features[0] has stride s (8 for p3).
            gt_instances, image_size: in training, the ground truth and the padded (H, W) of the
                batch, for the semantic targets.

        Returns:
            bases: (N, K, 2 H/s, 2 W/s), i.e. at stride s / 2.
            losses: {"loss_basis_sem"} in training with the semantic head, else {}.
        """
        first = features[self.in_features[0]]
        x = self.refine[0](first)
        for refine, name in zip(self.refine[1:], self.in_features[1:]):
            y = refine(features[name])
            x = x + F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        bases = self.tower(x)
        losses = {}
        if self.training and self.semantic_loss_weight is not None:
            logits = self.seg_head(first)  # (N, classes + 1, H/s, W/s)
            targets = semantic_targets(gt_instances, image_size, self.num_classes, logits.shape[-2:]).to(logits.device)
            losses["loss_basis_sem"] = F.cross_entropy(logits, targets) * self.semantic_loss_weight
        return bases, losses

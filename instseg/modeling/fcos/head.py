"""The FCOS head: per-level classification, box regression and centerness from shared towers.

Module and parameter names follow AdelaiDet's FCOS (``cls_tower.{0,3,6,9}`` convs with their norms at
``{1,4,7,10}``, ``cls_logits``, ``bbox_pred``, ``ctrness``, ``scales.<level>.scale``), so its checkpoints
and centermask2's load without renaming.
"""
import math
from typing import List

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from torch import Tensor, nn
from torch.nn import functional as F


class Scale(nn.Module):
    """A learnable scalar that rescales one level's box regression."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class PerLevelNorm(nn.ModuleList):
    """One BatchNorm per FPN level (levels differ in statistics); GroupNorm needs no such split."""

    def forward(self, x: Tensor, level: int) -> Tensor:
        return self[level](x)


def _tower(channels: int, num_convs: int, norm: str, num_levels: int) -> nn.Sequential:
    layers = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, 3, padding=1, bias=True))
        if norm in ("BN", "SyncBN"):
            layers.append(PerLevelNorm(get_norm(norm, channels) for _ in range(num_levels)))
        elif norm:
            layers.append(get_norm(norm, channels))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _run_tower(tower: nn.Sequential, x: Tensor, level: int) -> Tensor:
    for layer in tower:
        x = layer(x, level) if isinstance(layer, PerLevelNorm) else layer(x)
    return x


class FCOSHead(nn.Module):
    """Shape legend: N images, C channels, Hl x Wl the size of level l, K classes."""

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        num_levels: int,
        num_classes: int,
        num_cls_convs: int = 4,
        num_box_convs: int = 4,
        num_share_convs: int = 0,
        norm: str = "GN",
        use_scale: bool = True,
        prior_prob: float = 0.01,
    ):
        """
        Args:
            in_channels: channels of every input level (the FPN width).
            num_levels: number of FPN levels the head runs on.
            num_classes: K, foreground classes.
            num_cls_convs, num_box_convs, num_share_convs: tower depths; the share tower runs first
                and feeds both others.
            norm: "GN", "BN"/"SyncBN" (one per level) or "" for none.
            use_scale: learn one regression scale per level.
            prior_prob: initial foreground probability of the classifier (focal-loss init).
        """
        super().__init__()
        self.cls_tower = _tower(in_channels, num_cls_convs, norm, num_levels)
        self.bbox_tower = _tower(in_channels, num_box_convs, norm, num_levels)
        self.share_tower = _tower(in_channels, num_share_convs, norm, num_levels)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.ctrness = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels)) if use_scale else None
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.constant_(module.bias, 0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(f"FCOS head: all MODEL.FCOS.IN_FEATURES must have one width, got {channels}")
        fcos = cfg.MODEL.FCOS
        return {
            "in_channels": channels.pop(),
            "num_levels": len(input_shape),
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "num_cls_convs": fcos.NUM_CLS_CONVS,
            "num_box_convs": fcos.NUM_BOX_CONVS,
            "num_share_convs": fcos.NUM_SHARE_CONVS,
            "norm": fcos.NORM,
            "use_scale": fcos.USE_SCALE,
            "prior_prob": fcos.PRIOR_PROB,
        }

    def forward(self, features: List[Tensor]):
        """
        Args:
            features: per level, (N, C, Hl, Wl).

        Returns:
            Four lists over levels: class logits (N, K, Hl, Wl); box distances (l, t, r, b) in
            units of the level's stride, >= 0, (N, 4, Hl, Wl); centerness logits (N, 1, Hl, Wl);
            box-tower outputs (N, C, Hl, Wl) (what bbox_pred and ctrness read; FCOS.predict keeps them
            on request, for a caller's own per-location layers).
        """
        logits, box_reg, ctrness, box_feats = [], [], [], []
        for level, x in enumerate(features):
            x = _run_tower(self.share_tower, x, level)
            cls_feat = _run_tower(self.cls_tower, x, level)
            box_feat = _run_tower(self.bbox_tower, x, level)
            logits.append(self.cls_logits(cls_feat))
            ctrness.append(self.ctrness(box_feat))
            reg = self.bbox_pred(box_feat)
            if self.scales is not None:
                reg = self.scales[level](reg)
            box_reg.append(F.relu(reg))
            box_feats.append(box_feat)
        return logits, box_reg, ctrness, box_feats

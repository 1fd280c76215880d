"""BlendMask (Chen et al., CVPR 2020) meta-architecture: FCOS + bottom module + top layer + blender.

Top-level module names follow AdelaiDet (``backbone``, ``proposal_generator``, ``basis_module``,
``top_layer``), so its checkpoints load without renaming.
"""
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import ImageList
from torch import nn

from instseg.modeling import FCOS

from .basis_module import BasisModule
from .blender import Blender


@META_ARCH_REGISTRY.register()
class BlendMask(nn.Module):
    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        proposal_generator: FCOS,
        basis_module: BasisModule,
        blender: Blender,
        top_layer_in_channels: int,
        instance_loss_weight: float,
        pixel_mean: List[float],
        pixel_std: List[float],
    ):
        """
        Args:
            backbone: FPN backbone.
            proposal_generator: FCOS; its box towers feed the top layer.
            basis_module: the bottom module (bases + auxiliary semantic loss).
            blender: combines bases and attentions.
            top_layer_in_channels: width of FCOS's box tower.
            instance_loss_weight: weight of the mask loss.
            pixel_mean, pixel_std: input normalisation (detectron2's convention).
        """
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.basis_module = basis_module
        self.blender = blender
        self.instance_loss_weight = instance_loss_weight
        # the top layer: per-location attentions (K x A x A) from each level's box tower
        self.top_layer = nn.Conv2d(top_layer_in_channels, blender.attn_channels, 3, padding=1)
        nn.init.normal_(self.top_layer.weight, std=0.01)
        nn.init.constant_(self.top_layer.bias, 0)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        # FCOS before the bottom module: the order sets their random initialisation at a SEED
        proposal_generator = FCOS(cfg, shapes)
        basis_module = BasisModule(cfg, shapes)
        return {
            "backbone": backbone,
            "proposal_generator": proposal_generator,
            "basis_module": basis_module,
            "blender": Blender(cfg, bases_stride=basis_module.output_shape.stride),
            "top_layer_in_channels": shapes[cfg.MODEL.FCOS.IN_FEATURES[0]].channels,
            "instance_loss_weight": cfg.MODEL.BLENDMASK.INSTANCE_LOSS_WEIGHT,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def forward(self, batched_inputs: List[Dict]):
        """detectron2's model interface: a list of dicts with "image" (C, H, W) and, in training,
        "instances"; returns losses in training, else a list of {"instances": ...}."""
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        predictions = self.proposal_generator.predict(features, self.top_layer)
        if self.training:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            bases, losses = self.basis_module(features, gt_instances, tuple(images.tensor.shape[-2:]))
            fcos_losses, positives = self.proposal_generator.losses(predictions, gt_instances)
            mask_losses = self.blender.losses(bases, positives, gt_instances)
            losses.update(fcos_losses)
            losses.update({k: v * self.instance_loss_weight for k, v in mask_losses.items()})
            return losses
        bases, _ = self.basis_module(features)
        detections = self.proposal_generator.detect(predictions, images.image_sizes)
        self.blender.predict(bases, detections)
        return [
            {"instances": detector_postprocess(det, x.get("height", size[0]), x.get("width", size[1]))}
            for det, x, size in zip(detections, batched_inputs, images.image_sizes)
        ]

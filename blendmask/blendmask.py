"""BlendMask (Chen et al., CVPR 2020) meta-architecture: FCOS + bottom module + top layer + blender.

Top-level module names follow AdelaiDet (``backbone``, ``proposal_generator``, ``basis_module``,
``top_layer``), so its checkpoints load without renaming. The top layer is BlendMask's, as in
AdelaiDet (where FCOS's head runs it densely as its "top module"): here BlendMask evaluates it itself
on FCOS's box-tower output, and only at the locations it needs (the positives in training, the
detections at test time; see instseg.layers.conv_at).
"""
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, PROPOSAL_GENERATOR_REGISTRY, Backbone, build_backbone
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.proposal_generator import build_proposal_generator
from detectron2.structures import ImageList
from torch import Tensor, nn

from instseg.layers.conv_at import conv2d_at
from instseg.modeling import FCOS, FCOSPredictions

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
            proposal_generator: FCOS (MODEL.PROPOSAL_GENERATOR.NAME "FCOS"); its box tower feeds the
                top layer.
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
        _check_proposal_generator(cfg)
        proposal_generator = build_proposal_generator(cfg, shapes)
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
        predictions = self.proposal_generator.predict(features, keep_box_tower=True)
        if self.training:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            bases, losses = self.basis_module(features, gt_instances, tuple(images.tensor.shape[-2:]))
            fcos_losses, positives = self.proposal_generator.losses(predictions, gt_instances)
            attentions = attentions_at(self.top_layer, predictions, positives.image_inds, positives.loc_inds)
            mask_losses = self.blender.losses(bases, positives, attentions, gt_instances)
            losses.update(fcos_losses)
            losses.update({k: v * self.instance_loss_weight for k, v in mask_losses.items()})
            return losses
        bases, _ = self.basis_module(features)
        detections = self.proposal_generator.detect(predictions, images.image_sizes)
        for i, det in enumerate(detections):
            # top_feat: AdelaiDet's name of a detection's attentions
            image_inds = torch.full_like(det.location_inds, i)
            det.top_feat = attentions_at(self.top_layer, predictions, image_inds, det.location_inds)
        self.blender.predict(bases, detections)
        return [
            {"instances": detector_postprocess(det, x.get("height", size[0]), x.get("width", size[1]))}
            for det, x, size in zip(detections, batched_inputs, images.image_sizes)
        ]


def attentions_at(top_layer: nn.Conv2d, predictions: FCOSPredictions, image_inds: Tensor, loc_inds: Tensor) -> Tensor:
    """The top layer's output on FCOS's box tower at flat locations ``loc_inds`` of images
    ``image_inds`` (FCOS's positives or detections): (P, K * A * A) attentions, the dense top layer's
    values there, computed at these locations only (conv2d_at). `predictions` must hold the box tower
    (FCOS.predict(..., keep_box_tower=True))."""
    box_tower = predictions.box_tower
    out = box_tower[0].new_empty((len(loc_inds), top_layer.out_channels))
    levels, ys, xs = predictions.positions(loc_inds)
    for level, feat in enumerate(box_tower):
        (sel,) = torch.nonzero(levels == level, as_tuple=True)
        out[sel] = conv2d_at(top_layer, feat, image_inds[sel], ys[sel], xs[sel])
    return out


def _check_proposal_generator(cfg) -> None:
    """MODEL.PROPOSAL_GENERATOR.NAME must name FCOS (or a subclass), whose steps, positives and box
    tower BlendMask uses: a ValueError otherwise, before anything is built, and detectron2's KeyError
    for a name that is not registered."""
    name = cfg.MODEL.PROPOSAL_GENERATOR.NAME
    generator = PROPOSAL_GENERATOR_REGISTRY.get(name)
    if not (isinstance(generator, type) and issubclass(generator, FCOS)):
        raise ValueError(
            f"BlendMask runs on FCOS: MODEL.PROPOSAL_GENERATOR.NAME must be 'FCOS' (or a proposal generator "
            f"subclassing instseg.modeling.FCOS), got {name!r}"
        )

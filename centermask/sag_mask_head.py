"""SAG-Mask: the spatial-attention-guided mask head of CenterMask.

It is detectron2's MaskRCNNConvUpsampleHead (``mask_fcn1..N``, ``deconv``, ``predictor``: the names of
centermask2's checkpoints) with a spatial attention module (``spatialAtt``) between the convs and the
deconv, which stresses informative pixels and suppresses noise before upsampling to 28 x 28.
"""
from typing import List

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.layers import cat
from detectron2.modeling.roi_heads import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference, mask_rcnn_loss
from detectron2.structures import Instances
from torch import Tensor, nn

from instseg.modeling import set_per_image


class SpatialAttention(nn.Module):
    """Channel-wise average and max maps -> 3x3 conv -> sigmoid -> multiply the input."""

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        weight_init.c2_msra_fill(self.conv)

    def forward(self, x: Tensor) -> Tensor:
        """(M, C, S, S) -> (M, C, S, S)."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


@ROI_MASK_HEAD_REGISTRY.register()
class SpatialAttentionMaskHead(MaskRCNNConvUpsampleHead):
    """Arguments as MaskRCNNConvUpsampleHead (cfg.MODEL.ROI_MASK_HEAD: NUM_CONV 4, or 2 for Lite).

    As a detectron2 mask head, `forward(x, instances)` gives the loss dict in training and the
    instances with `pred_masks` at test time. In training it also leaves each foreground proposal's
    logits of its ground-truth class in `gt_class_mask_logits`, which the MaskIoU head learns from."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.spatialAtt = SpatialAttention()  # centermask2's name

    def layers(self, x: Tensor) -> Tensor:
        """(M, C, 14, 14) RoI features -> (M, K, 28, 28) mask logits."""
        for conv in self.conv_norm_relus:
            x = conv(x)
        x = self.spatialAtt(x)
        x = self.deconv_relu(self.deconv(x))
        return self.predictor(x)

    def forward(self, x: Tensor, instances: List[Instances]):
        logits = self.layers(x)
        if not self.training:
            mask_rcnn_inference(logits, instances)
            return instances
        if instances:
            classes = cat([i.gt_classes for i in instances]) if logits.shape[1] > 1 else logits.new_zeros(len(logits), dtype=torch.long)
            set_per_image(instances, "gt_class_mask_logits", logits[torch.arange(len(logits), device=logits.device), classes])
        return {"loss_mask": mask_rcnn_loss(logits, instances, self.vis_period) * self.loss_weight}

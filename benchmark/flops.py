"""FLOPs of one inference, counted by fvcore's tracing counter (as detectron2.utils.analysis does)."""
import copy
from collections import OrderedDict

import torch


class _ImageToBoxes(torch.nn.Module):
    """The model as a function of one image tensor, for fvcore's tracing FLOP counter (detectron2
    v0.6's own wrapper needs caffe2)."""

    def __init__(self, model, size):
        super().__init__()
        self.model, self.size = model, size

    def forward(self, image):
        out = self.model([{"image": image, "height": self.size[0], "width": self.size[1]}])[0]["instances"]
        return out.pred_boxes.tensor, out.pred_masks


def slash_free(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model without "/" in module names: fvcore splits trace scopes on "/", and
    VoVNet's centermask2-compatible names contain it (``stem_1/conv``)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        module._modules = OrderedDict((n.replace("/", "_"), m) for n, m in module._modules.items())
    return model


def count_flops(model: torch.nn.Module, image: torch.Tensor, size) -> dict:
    """{"flops": the FLOPs of the inference of `model` on `image` (C, H, W), reported as `size`
    (H, W)}, or {"flops_error": why there is no count}: tracing is best effort."""
    from fvcore.nn import FlopCountAnalysis

    try:
        flops = FlopCountAnalysis(_ImageToBoxes(slash_free(model), size), (image,))
        return {"flops": flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False).total()}
    except Exception as e:  # say why there is no number
        return {"flops_error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}

"""Inference in mixed precision (TEST.AUTOCAST): autocast around the model, outputs in float32."""
import contextlib

import torch
from detectron2.config import CfgNode
from detectron2.structures import Boxes, Instances
from torch import nn


@contextlib.contextmanager
def mixed_precision(device: str, dtype: str):
    """torch.autocast on `device`'s type in `dtype` ("bfloat16", "float16"); nothing for ""."""
    with torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype) if dtype else None, enabled=bool(dtype)):
        yield


def _half_to_float32(value):
    if isinstance(value, Boxes):
        return Boxes(_half_to_float32(value.tensor))
    if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value


def outputs_in_float32(outputs):
    """A model's outputs (a dict, or a list of dicts, of Instances and tensors) with half-precision
    tensors in float32: under autocast the scores come out in its dtype, which numpy cannot take."""
    if isinstance(outputs, list):
        return [outputs_in_float32(o) for o in outputs]
    converted = {}
    for key, value in outputs.items():
        if isinstance(value, Instances):
            value = Instances(value.image_size, **{k: _half_to_float32(v) for k, v in value.get_fields().items()})
        converted[key] = _half_to_float32(value)
    return converted


class MixedPrecisionInference(nn.Module):
    """Wraps a model so that its inference runs as cfg.TEST.AUTOCAST says, outputs in float32."""

    def __init__(self, model: nn.Module, cfg: CfgNode):
        super().__init__()
        self.model = model
        self.device = cfg.MODEL.DEVICE
        self.dtype = cfg.TEST.AUTOCAST
        self.train(model.training)  # evaluation restores the mode it finds on the wrapper

    def forward(self, batched_inputs):
        with mixed_precision(self.device, self.dtype):
            return outputs_in_float32(self.model(batched_inputs))

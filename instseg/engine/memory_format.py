"""The memory format of a model's weights (MODEL.CHANNELS_LAST), for training and prediction."""
import torch
from detectron2.config import CfgNode
from torch import nn


def to_memory_format(model: nn.Module, cfg: CfgNode) -> nn.Module:
    """`model`, in place, in channels-last memory format when cfg.MODEL.CHANNELS_LAST: its 4-D
    weights, and so its conv outputs (PyTorch's convs follow the weights' format, whatever the input's)."""
    if cfg.MODEL.CHANNELS_LAST:
        model.to(memory_format=torch.channels_last)
    return model

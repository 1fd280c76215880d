"""The one rule for "channels-last" across the project's Python code and its CPU kernels."""
import torch
from torch import Tensor


def is_channels_last(t: Tensor) -> bool:
    """Strided like NHWC and not like NCHW. A tensor that is both (C == 1, or H == W == 1) counts as
    NCHW, as in csrc/roi_align/roi_align_cpu.cpp's is_channels_last."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def to_channels_last(x: Tensor) -> Tensor:
    """`x` laid out channels-last (no copy when it already is): the layout that mkldnn's CPU convs and
    upsampling run fastest on (docs/notes/channels_last.md)."""
    return x.contiguous(memory_format=torch.channels_last)

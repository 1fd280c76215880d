"""A convolution evaluated at chosen positions of a feature map only.

BlendMask needs its top layer's output (a 3x3 conv with 784 output channels) at the FCOS positives in
training and at the detections at test time: a few hundred of the ~20k locations of an 800 px image.
Computing it there alone gives the same numbers as the dense conv at a small fraction of its cost.
"""
import torch
from torch import Tensor, nn


def conv2d_at(conv: nn.Conv2d, x: Tensor, batch_inds: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
    """``conv(x)[batch_inds, :, ys, xs]`` without computing ``conv(x)`` elsewhere.

    Args:
        conv: a stride-1, undilated, ungrouped conv with odd kernel k and "same" padding k // 2.
        x: (N, C, H, W) input.
        batch_inds, ys, xs: (P,) integer positions in x.

    Returns:
        (P, out_channels).
    """
    k = conv.kernel_size[0]
    if (
        conv.kernel_size != (k, k) or k % 2 == 0 or conv.padding != (k // 2, k // 2)
        or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1
    ):
        raise ValueError(f"conv2d_at supports stride-1 'same' convs with an odd square kernel, got {conv}")
    r = k // 2
    padded = nn.functional.pad(x, (r, r, r, r))
    # (P, C, k * k) in the order of conv.weight's (C, ky, kx) dims
    patches = torch.stack(
        [padded[batch_inds, :, ys + dy, xs + dx] for dy in range(k) for dx in range(k)], dim=2
    )
    # F.linear, not matmul + bias: under autocast it returns the dtype the dense conv would
    return nn.functional.linear(patches.flatten(1), conv.weight.flatten(1), conv.bias)

"""BlendMask's blender as one fused op, ``torch.ops.instseg.blend`` (csrc/blender/), and the same
computation composed from plain PyTorch and torchvision ops (the reference of the tests and the
config-selectable fallback).

For each box p and pixel (y, x) of its R x R mask:
    mask[p, y, x] = sum_k softmax_k(resize(attns[p], R)[k, y, x]) * roi_align(bases, box p, R)[k, y, x]

Shape legend: N images, K bases, H x W the bases' map, P boxes, A x A attentions, R x R masks.
The fused op never materialises the (P, K, R, R) crops and resized attentions; its backward
recomputes them from the inputs. Double backward raises; float16 and bfloat16 are computed in
float32; the CUDA backward adds with atomics, so under ``torch.use_deterministic_algorithms(True)``
it raises. The output size is a SymInt (``torch.compile(dynamic=True)``, ``torch.export``).
"""
import torch
import torchvision
from torch import Tensor
from torch.nn import functional as F

import instseg._C  # noqa: F401  (loads the extension: registers the ops' CPU/CUDA kernels)

from .autocast import register_float32_autocast
from .roi_align import register_no_double_backward

__all__ = ["ATTN_INTERPS", "blend", "blend_reference"]

ATTN_INTERPS = ("bilinear", "nearest")  # how the attentions are resized to R x R


@torch.library.register_fake("instseg::blend")
def _blend_fake(bases, rois, attns, spatial_scale, output_size, sampling_ratio, aligned, bilinear):
    torch._check(bases.dim() == 4, lambda: "blend: bases must be (N, K, H, W)")
    torch._check(rois.dim() == 2 and rois.size(1) == 5, lambda: "blend: rois must be (P, 5)")
    torch._check(attns.dim() == 4 and attns.size(0) == rois.size(0), lambda: "blend: attns must be (P, K, A, A)")
    return bases.new_empty((rois.size(0), output_size, output_size))


@torch.library.register_fake("instseg::_blend_backward")
def _blend_backward_fake(grad, bases, rois, attns, spatial_scale, output_size, sampling_ratio, aligned, bilinear):
    return bases.new_empty(bases.shape), attns.new_empty(attns.shape)


def _setup_context(ctx, inputs, output):
    bases, rois, attns, *params = inputs
    ctx.save_for_backward(bases, rois, attns)
    ctx.params = params


def _backward(ctx, grad):
    bases, rois, attns = ctx.saved_tensors
    grad_bases, grad_attns = torch.ops.instseg._blend_backward(grad, bases, rois, attns, *ctx.params)
    return grad_bases, None, grad_attns, None, None, None, None, None


torch.library.register_autograd("instseg::blend", _backward, setup_context=_setup_context)
register_no_double_backward("blend")
register_float32_autocast("blend")


def _check_attn_interp(attn_interp: str) -> None:
    if attn_interp not in ATTN_INTERPS:
        raise ValueError(f"blend: attn_interp must be one of {ATTN_INTERPS}, got {attn_interp!r}")


def blend(
    bases: Tensor,
    rois: Tensor,
    attns: Tensor,
    spatial_scale: float,
    output_size: int,
    sampling_ratio: int = 1,
    aligned: bool = True,
    attn_interp: str = "bilinear",
) -> Tensor:
    """The fused blender.

    Args:
        bases: (N, K, H, W) bases.
        rois: (P, 5) rows of (batch_index, x1, y1, x2, y2) in image coordinates.
        attns: (P, K, A, A) attention logits of each box.
        spatial_scale: 1 / stride of the bases.
        output_size: R.
        sampling_ratio, aligned: of the RoIAlign crop of the bases (see instseg.layers.roi_align).
        attn_interp: "bilinear" or "nearest" resizing of the attentions to R x R.

    Returns:
        (P, R, R) mask logits.
    """
    _check_attn_interp(attn_interp)
    return torch.ops.instseg.blend(
        bases, rois, attns, float(spatial_scale), int(output_size), int(sampling_ratio), bool(aligned),
        attn_interp == "bilinear",
    )


def blend_reference(
    bases: Tensor,
    rois: Tensor,
    attns: Tensor,
    spatial_scale: float,
    output_size: int,
    sampling_ratio: int = 1,
    aligned: bool = True,
    attn_interp: str = "bilinear",
) -> Tensor:
    """`blend` composed from torchvision's roi_align, F.interpolate, softmax and a weighted sum."""
    _check_attn_interp(attn_interp)
    crops = torchvision.ops.roi_align(bases, rois, output_size, spatial_scale, sampling_ratio, aligned)
    align = {"align_corners": False} if attn_interp == "bilinear" else {}
    weights = F.interpolate(attns, (output_size, output_size), mode=attn_interp, **align).softmax(dim=1)
    return (crops * weights).sum(dim=1)

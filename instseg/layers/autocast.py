"""Mixed precision for this project's ops, as torchvision has it for its RoIAlign: under
``torch.autocast`` (CPU or CUDA) an op computes in float32 and returns the dtype of its first input.
Returning that dtype matters: detectron2's ROIPooler writes each level's pooled features into a
tensor of the features' dtype, which fails for a float32 result."""
import torch
from torch import Tensor

_LIB = torch.library.Library("instseg", "IMPL")  # kept alive: registrations last as long as it
_AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}


def _float32(arg):
    return arg.float() if isinstance(arg, Tensor) and arg.is_floating_point() else arg


def register_float32_autocast(opname: str) -> None:
    """Register the autocast kernels of ``torch.ops.instseg.<opname>`` (one tensor output)."""
    op = getattr(torch.ops.instseg, opname).default
    for device, key in _AUTOCAST_KEYS.items():

        def kernel(_keyset, *args, device=device):
            with torch.autocast(device, enabled=False):
                out = op(*[_float32(a) for a in args])
            return out.to(args[0].dtype)

        _LIB.impl(opname, kernel, key, with_keyset=True)


def boxes_for(input: Tensor, boxes: Tensor) -> Tensor:
    """`boxes` in the dtype the ops take them for `input`: the input's dtype, except under autocast,
    where the op runs in float32 and half-precision box corners would lose up to several pixels."""
    if torch.is_autocast_enabled(input.device.type):
        return boxes.float()
    return boxes.to(input.dtype)

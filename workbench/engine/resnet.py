"""``resnet18`` as a PCN: each residual block one layer (docs/method.md §9).

The paper's stated future work is "deep ResNets with batch normalization". Here every BasicBlock
of ResNet-18 (He et al. 2016) is one PCN layer: its pre-activation is the block's output before
its final ReLU, ``a_k = BN(conv(ReLU(BN(conv(h_{k−1}))))) + shortcut(h_{k−1})``, and its state is
``h_k = ReLU(a_k)``; the ReLU inside the block stays inside ``g_k``. A stem layer comes first —
3×3 conv + BN below 64 px (the CIFAR stem), 7×7/2 conv + BN + 3×3/2 max-pool from 64 px up (the
ImageNet stem; max-pool and ReLU commute) — and a head last: global average pool and a linear
map to the logits. 10 PCN layers, 11.2M parameters at ``width=64`` with 1000 classes.
Initialisation as torchvision's: convolutions Kaiming-normal (fan-out), BN weight 1, bias 0.
"""
from __future__ import annotations

from torch import nn

from .models import PCN, from_blocks, register

__all__ = ["BasicBlock", "resnet18"]


class BasicBlock(nn.Module):
    """``BN(conv3x3(ReLU(BN(conv3x3(h, stride))))) + shortcut(h)``, the shortcut the identity
    or, where the shape changes, a strided 1×1 conv + BN. Returns the pre-activation: the
    block's final ReLU is the PCN layer's activation."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, h):
        return self.bn2(self.conv2(self.bn1(self.conv1(h)).relu())) + self.shortcut(h)


def _init(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet18(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, *,
             width: int = 64, stem: str = "auto") -> PCN:
    """ResNet-18 as 10 PCN layers: stem, 8 BasicBlocks (widths ``width``, 2·, 4·, 8·``width``;
    stride 2 at the first block of stages 2–4), head. ``stem``: ``cifar`` (3×3 conv), ``imagenet``
    (7×7/2 conv and 3×3/2 max-pool) or ``auto`` (cifar below 64 px). ``width``: 64 is the
    standard network; smaller values give CPU-sized variants."""
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"resnet18 width must be a positive integer, got {width!r}")
    if stem not in ("auto", "cifar", "imagenet"):
        raise ValueError(f"unknown resnet18 stem {stem!r}; accepted: auto, cifar, imagenet")
    if stem == "auto":
        stem = "cifar" if image_size < 64 else "imagenet"
    if stem == "cifar":
        blocks = [nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                nn.BatchNorm2d(width))]
    else:
        blocks = [nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                                nn.BatchNorm2d(width), nn.MaxPool2d(3, 2, 1))]
    c = width
    for stage, out in enumerate((width, 2 * width, 4 * width, 8 * width)):
        for i in range(2):
            blocks.append(BasicBlock(c, out, 2 if stage and not i else 1))
            c = out
    blocks.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)))
    net = from_blocks(blocks, activations="relu", in_shape=(in_channels, image_size, image_size),
                      num_classes=num_classes, name="resnet18")
    _init(net)
    return net


register("resnet18", resnet18, image_size=32, general=True)

"""PCN models: a feedforward chain of layer maps, and the model registry.

A predictive coding network here is a chain ``h_0 = x``, ``h_k = f_k(θ_k, h_{k-1})`` for
``k = 1..L`` (METHOD.md §1). Each :class:`PCNLayer` is one map ``f_k``:

* hidden conv layer:   ``f_k(h) = relu(maxpool(conv3x3(h)))`` or ``relu(conv3x3(h))``
* hidden dense layer:  ``f_k(h) = relu(W h + b)``
* output layer:        ``f_L(h) = W h + b`` (linear, no activation)

States ``h_k`` are layer outputs *after* activation and pooling. ``a_k`` is the
pre-activation *after* pooling (ReLU commutes with max-pool). ``net(x)`` is the ordinary forward
pass: the free-phase equilibrium, returning the output ``h_L`` (logits), shape ``(N, classes)``.

Layers hold their parameters directly (``layers.<k-1>.weight`` / ``layers.<k-1>.bias``) so the
parameter names that the estimators report are short and stable.

Build models by name with :func:`build`; every model takes the same signature.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PCNLayer", "PCN", "build", "available", "register"]


class PCNLayer(nn.Module):
    """One map ``f_k``: a 3×3 conv (padding 1) or a dense layer, optional 2×2 max-pool, ReLU.

    Args:
        kind: ``"conv"`` or ``"dense"``. A dense layer flattens its input.
        in_features / out_features: channels for conv, features for dense.
        pool: 2×2 stride-2 max-pool after the conv (conv only).
        activation: ``"relu"`` (hidden layers) or ``"identity"`` (the output layer).
    """

    def __init__(self, kind: str, in_features: int, out_features: int, *, pool: bool = False,
                 activation: str = "relu"):
        super().__init__()
        if kind not in ("conv", "dense"):
            raise ValueError(f"layer kind must be 'conv' or 'dense', got {kind!r}")
        if activation not in ("relu", "identity"):
            raise ValueError(f"activation must be 'relu' or 'identity', got {activation!r}")
        if pool and kind != "conv":
            raise ValueError("only conv layers can pool")
        self.kind, self.pool, self.activation = kind, pool, activation
        shape = (out_features, in_features, 3, 3) if kind == "conv" else (out_features, in_features)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(out_features))

    # -- the map, in pieces the engine reuses --------------------------------------------------
    def linear(self, h: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """The conv / dense part (before pooling). Without bias it is linear in ``h``."""
        b = self.bias if bias else None
        if self.kind == "conv":
            return F.conv2d(h, self.weight, b, padding=1)
        return F.linear(h.flatten(1), self.weight, b)

    def pre(self, h: torch.Tensor) -> torch.Tensor:
        """Pre-activation ``a_k`` after pooling."""
        z = self.linear(h)
        return F.max_pool2d(z, 2, 2) if self.pool else z

    def act(self, a: torch.Tensor) -> torch.Tensor:
        return torch.relu(a) if self.activation == "relu" else a

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(self.pre(h))

    def extra_repr(self) -> str:
        o, i = self.weight.shape[:2]
        return f"{self.kind} {i}->{o}" + (", maxpool" if self.pool else "") + f", {self.activation}"


class PCN(nn.Module):
    """A chain of :class:`PCNLayer`; ``forward(x)`` returns the logits ``h_L``.

    Attributes:
        layers: the maps ``f_1..f_L`` (``layers[k-1]`` is ``f_k``).
        in_shape: shape of one input example, e.g. ``(1, 32, 32)`` or ``(784,)``.
        num_classes: width of the output layer.
    """

    def __init__(self, layers: Sequence[PCNLayer], in_shape: tuple[int, ...], num_classes: int,
                 name: str = "pcn"):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.in_shape = tuple(in_shape)
        self.num_classes = num_classes
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def free_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """States ``[h_0 = x, h_1, …, h_L]`` of the free phase (the forward pass)."""
        states = [x]
        for layer in self.layers:
            states.append(layer(states[-1]))
        return states


# ---------------------------------------------------------------------------------------------
# initialisation (METHOD.md §4): uniform(-b, b) with b = gain * sqrt(1 / fan)
# ---------------------------------------------------------------------------------------------
def _init_layer(layer: PCNLayer, gain: float, conv_fan: str) -> None:
    if conv_fan not in ("fan_in", "fan_out"):
        raise ValueError(f"conv_fan must be 'fan_in' or 'fan_out', got {conv_fan!r}")
    w = layer.weight
    receptive = w[0, 0].numel() if w.dim() == 4 else 1
    fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
    fan = fan_out if (layer.kind == "conv" and conv_fan == "fan_out") else fan_in
    bound = gain * math.sqrt(1.0 / fan)
    with torch.no_grad():
        w.uniform_(-bound, bound)
        layer.bias.zero_()


def _vgg(spec: Sequence[tuple[int, bool]], dense: Sequence[int], num_classes: int,
         in_channels: int, image_size: int, init_gain: float, output_gain: float,
         conv_fan: str, name: str) -> PCN:
    pools = sum(p for _, p in spec)
    if image_size % (2 ** pools) or image_size < 2 ** pools:
        raise ValueError(f"{name} pools {pools} times: image_size must be a positive multiple of "
                         f"{2 ** pools}, got {image_size}")
    layers, c = [], in_channels
    for out, pool in spec:
        layers.append(PCNLayer("conv", c, out, pool=pool))
        c = out
    feats = c * (image_size // 2 ** pools) ** 2
    for width in dense:
        layers.append(PCNLayer("dense", feats, width))
        feats = width
    layers.append(PCNLayer("dense", feats, num_classes, activation="identity"))
    for layer in layers:
        _init_layer(layer, init_gain, conv_fan)
    _init_layer(layers[-1], output_gain, conv_fan)
    return PCN(layers, (in_channels, image_size, image_size), num_classes, name=name)


def mlp(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, *,
        widths: Sequence[int] = (512, 512), init_gain: float = 1.0,
        output_gain: float = 1.0) -> PCN:
    """Dense ReLU layers of the given ``widths``, then a linear output. Input is flattened."""
    widths = [int(w) for w in widths]
    if any(w < 1 for w in widths):
        raise ValueError(f"mlp widths must be positive integers, got {widths}")
    feats = in_channels * image_size * image_size
    layers = []
    for w in widths:
        layers.append(PCNLayer("dense", feats, w))
        feats = w
    layers.append(PCNLayer("dense", feats, num_classes, activation="identity"))
    for layer in layers:
        _init_layer(layer, init_gain, "fan_in")
    _init_layer(layers[-1], output_gain, "fan_in")
    return PCN(layers, (in_channels, image_size, image_size), num_classes, name="mlp")


def vgg5(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, *,
         channels: Sequence[int] = (128, 256, 512, 512, 512), init_gain: float = 1.0,
         output_gain: float = 1.0, conv_fan: str = "fan_out") -> PCN:
    """METHOD.md §4: conv 128 | 256, pool | 512, pool | 512, pool | 512, pool | dense → classes."""
    if len(channels) != 5:
        raise ValueError(f"vgg5 takes 5 conv widths, got {list(channels)}")
    spec = list(zip(channels, (False, True, True, True, True)))
    return _vgg(spec, (), num_classes, in_channels, image_size, init_gain, output_gain,
                conv_fan, "vgg5")


def vgg10(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, *,
          channels: Sequence[int] = (64, 128, 256, 256, 512, 512, 512, 512),
          dense: int = 2048, init_gain: float = 1.0, output_gain: float = 1.0,
          conv_fan: str = "fan_out") -> PCN:
    """METHOD.md §4: conv 64, pool | 128, pool | 256 | 256, pool | 512 | 512, pool | 512 |
    512, pool | dense 2048 | dense → classes (≈ 62M parameters at 224×224, 1000 classes)."""
    if len(channels) != 8:
        raise ValueError(f"vgg10 takes 8 conv widths, got {list(channels)}")
    pools = (True, True, False, True, False, True, False, True)
    return _vgg(list(zip(channels, pools)), (int(dense),), num_classes, in_channels, image_size,
                init_gain, output_gain, conv_fan, "vgg10")


_REGISTRY: dict[str, Callable[..., PCN]] = {"mlp": mlp, "vgg5": vgg5, "vgg10": vgg10}


def register(name: str, fn: Callable[..., PCN]) -> None:
    """Add a model constructor ``fn(num_classes, in_channels, image_size, **overrides)``."""
    _REGISTRY[name] = fn


def available() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
          **overrides) -> PCN:
    """Build a model by name: ``build("vgg5", num_classes=10, in_channels=1, image_size=32)``.

    ``overrides`` go to the constructor (e.g. ``widths=(256,)`` for mlp, ``channels=...``,
    ``init_gain``, ``output_gain``). Unknown names or overrides raise ``ValueError``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    for arg, v in (("num_classes", num_classes), ("in_channels", in_channels),
                   ("image_size", image_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{arg} must be a positive integer, got {v!r}")
    fn = _REGISTRY[name]
    accepted = [p.name for p in inspect.signature(fn).parameters.values()
                if p.kind == p.KEYWORD_ONLY]
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise ValueError(f"model {name!r} does not take {unknown}; overrides accepted: {accepted}")
    return fn(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **overrides)

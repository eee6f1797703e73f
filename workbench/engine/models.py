"""PCN models: a feedforward chain of layer maps, and the model registry.

A predictive coding network here is a chain ``h_0 = x``, ``h_k = f_k(θ_k, h_{k-1})`` for
``k = 1..L`` (docs/method.md §1). Each :class:`PCNLayer` is one map ``f_k``:

* hidden conv layer:   ``f_k(h) = relu(maxpool(conv3x3(h)))`` or ``relu(conv3x3(h))``
* hidden dense layer:  ``f_k(h) = relu(W h + b)``
* output layer:        ``f_L(h) = W h + b`` (linear, no activation)

States ``h_k`` are layer outputs *after* activation and pooling. ``a_k`` is the
pre-activation *after* pooling (ReLU commutes with max-pool). ``net(x)`` is the ordinary forward
pass: the free-phase equilibrium, returning the output ``h_L`` (logits), shape ``(N, classes)``.

Layers hold their parameters directly (``layers.<k-1>.weight`` / ``layers.<k-1>.bias``) so the
parameter names that the estimators report are short and stable.

Any other ``nn.Module`` can be a layer too: :func:`from_blocks` makes a PCN whose layer k is a
block returning ``a_k`` (a residual block with BatchNorm, a transformer block, …), with the
blocks' own parameter names under ``layers.<k-1>.`` (docs/method.md §9; ``resnet18`` and ``vit``
are built that way, in :mod:`workbench.engine.resnet` and :mod:`workbench.engine.vit`).

Build models by name with :func:`build`; every model takes the same signature.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .blocks import check_block, frozen_statistics
from .layers import ConvLayer, DenseLayer, PCNLayer, SkipLayer
from .wiring import ACTIVATIONS, Wiring

__all__ = ["PCNLayer", "ConvLayer", "DenseLayer", "SkipLayer", "PCN", "from_blocks",
           "as_blocks", "build", "available", "register", "default_image_size", "input_size",
           "general", "init_bound", "vgg7", "vgg9", "vgg10skip"]


class PCN(nn.Module):
    """A chain of layer maps (plus optional skips); ``forward(x)`` returns the logits.

    Attributes:
        layers: the maps ``f_1..f_L`` (``layers[k-1]`` is layer k): built-in
            :class:`~workbench.engine.layers.PCNLayer` s, or any ``nn.Module`` returning the layer's
            pre-activation (:func:`from_blocks`).
        skips: :class:`~workbench.engine.layers.SkipLayer` maps ``S`` from a layer ``src`` into a layer
            ``dst`` (parameters ``skips.<i>.weight`` / ``.bias``); empty for a plain chain.
        activations: per layer, ``relu`` or ``identity`` (the output: ``identity``).
        wiring: the :class:`~workbench.engine.wiring.Wiring` every walk through the network reads.
        in_shape: shape of one input example, e.g. ``(1, 32, 32)`` or ``(784,)``; None until the
            first batch for a network of general blocks whose input was not given.
        num_classes: width of the output layer (None until the first batch, likewise).
    """

    def __init__(self, layers: Sequence[nn.Module], in_shape: Optional[tuple[int, ...]] = None,
                 num_classes: Optional[int] = None, name: str = "pcn",
                 skips: Sequence[SkipLayer] = (), activations: Optional[Sequence[str]] = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.skips = nn.ModuleList(skips)
        self.in_shape = None if in_shape is None else tuple(in_shape)
        self.num_classes = num_classes
        self.name = name
        L = len(self.layers)
        if activations is None:
            activations = [m.activation if isinstance(m, PCNLayer) else
                           ("identity" if k == L else "relu")
                           for k, m in enumerate(self.layers, start=1)]
        self.activations = tuple(activations)
        pools = [isinstance(m, PCNLayer) and m.pool for m in self.layers]
        self.wiring = Wiring.build(self.layers, self.skips, self.activations, pools,
                                   linear=lambda m: isinstance(m, PCNLayer))

    def predict(self, k: int, states: Sequence[torch.Tensor]) -> torch.Tensor:
        """``f_k(h_{k−1}, h_src…)`` from the states ``[h_0, …]``: layer k's module on
        ``h_{k−1}`` (its forward hooks fire) with the outputs of its skips added to its linear
        part before pooling (a general block: to its output), then the activation."""
        node, edges = self.wiring.nodes[k], self.wiring.edges
        extra = None
        for i in node.into[1:]:
            out = edges[i].module(states[edges[i].src])
            extra = out if extra is None else extra + out
        chain = edges[node.into[0]]
        if chain.linear:
            return chain.module(states[k - 1], extra)
        a = self._block_output(k, states[k - 1])
        if extra is not None:
            a = a + extra.reshape(a.shape)
        return torch.relu(a) if node.relu else a

    def _block_output(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """General block k on ``h``, checked while the shapes are being learnt (first batch)."""
        block = self.layers[k - 1]
        if self.in_shape is not None and self.num_classes is not None:
            return block(h)
        where = f"{self.name}: block {k} ({type(block).__name__})"
        try:
            out = block(h)
        except Exception as err:
            raise ValueError(f"{where} failed on its input of shape {tuple(h.shape)}: "
                             f"{type(err).__name__}: {err}") from err
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"{where} returned a {type(out).__name__}; a block must return one "
                             f"tensor, its pre-activation a_{k}")
        if out.dim() < 2 or out.shape[0] != h.shape[0]:
            raise ValueError(f"{where} changed the batch: input {tuple(h.shape)}, output "
                             f"{tuple(out.shape)}; a block must map each example to one "
                             f"(batch dimension first, kept)")
        return out

    def free_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """States ``[h_0 = x, h_1, …, h_L]`` of the free phase (the forward pass)."""
        self.infer_shapes(x)
        states = [x]
        for k in range(1, len(self.layers) + 1):
            states.append(self.predict(k, states))
        return states

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.free_states(x)[-1]

    def infer_shapes(self, x: torch.Tensor) -> None:
        """Set ``in_shape`` and ``num_classes`` from a first batch ``x`` (nothing to do when they
        are known), checking every general block on the way: it must return one tensor and keep
        the batch size, and the last layer must give ``(N, classes)`` logits. The running
        statistics of normalisation layers do not move."""
        if self.in_shape is not None and self.num_classes is not None:
            return
        with torch.no_grad(), frozen_statistics(self):
            states = [x]
            for k in range(1, len(self.layers) + 1):
                states.append(self.predict(k, states))
        if states[-1].dim() != 2:
            raise ValueError(f"{self.name}: the last block must return (N, classes) logits, got "
                             f"shape {tuple(states[-1].shape)}")
        self.in_shape, self.num_classes = tuple(x.shape[1:]), int(states[-1].shape[1])


def from_blocks(blocks, *, activations="relu", in_shape: Optional[Sequence[int]] = None,
                num_classes: Optional[int] = None, name: str = "blocks") -> PCN:
    """A PCN whose layer k is the module ``blocks[k-1]`` (docs/method.md §9).

    Block k maps ``h_{k−1}`` to the pre-activation ``a_k``; the state is ``h_k = act_k(a_k)``.
    ``blocks``: a sequence of ``nn.Module`` s (an ``nn.Sequential`` is taken block by block).
    ``activations``: ``"relu"`` or ``"identity"`` for every hidden layer, or a list with one entry
    per block; the last block is the output, whose activation is ``identity``. Parameters keep
    the blocks' own names under their layer (``layers.<k-1>.<name>``), the names that ``.grad``
    and ``est.grads`` use. ``in_shape`` / ``num_classes`` are taken from the first batch unless
    given. A block with dropout is refused (:func:`workbench.engine.blocks.check_block`).
    """
    if isinstance(blocks, nn.Module) and not isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        raise ValueError(f"blocks must be a sequence of nn.Module (a list, tuple, nn.Sequential "
                         f"or nn.ModuleList), got one {type(blocks).__name__}")
    blocks = list(blocks)
    if not blocks:
        raise ValueError("blocks must hold at least one nn.Module (the output block)")
    for k, b in enumerate(blocks, start=1):
        if not isinstance(b, nn.Module):
            raise ValueError(f"block {k} is a {type(b).__name__}, not an nn.Module")
        check_block(b, f"{name}: block {k} ({type(b).__name__})")
    L = len(blocks)
    if isinstance(activations, str):
        if activations not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activations!r}; accepted: "
                             f"{', '.join(ACTIVATIONS)}")
        acts = [activations] * (L - 1) + ["identity"]
    else:
        acts = list(activations)
        if len(acts) != L:
            raise ValueError(f"activations must be one of {', '.join(ACTIVATIONS)} or a list "
                             f"with one entry per block ({L}), got {len(acts)} entries")
        for k, a in enumerate(acts, start=1):
            if a not in ACTIVATIONS:
                raise ValueError(f"block {k}: unknown activation {a!r}; accepted: "
                                 f"{', '.join(ACTIVATIONS)}")
        if acts[-1] != "identity":
            raise ValueError(f"the last block is the output layer: its activation must be "
                             f"'identity' (its output are the logits), got {acts[-1]!r}")
    for k, (b, a) in enumerate(zip(blocks, acts), start=1):
        if isinstance(b, PCNLayer) and b.activation != a:
            raise ValueError(f"block {k} is a built-in {b.kind} layer with activation "
                             f"{b.activation!r}, but activations says {a!r}")
    return PCN(blocks, in_shape, num_classes, name=name, activations=acts)


def as_blocks(net: PCN) -> PCN:
    """The same network (same weights, copied) written as plain torch blocks for
    :func:`from_blocks`: ``nn.Conv2d`` (+ ``nn.MaxPool2d``), ``nn.Flatten`` + ``nn.Linear`` —
    the general path's twin of a built-in mlp / vgg (no skips), for comparing the two paths."""
    if len(net.skips):
        raise ValueError("as_blocks writes chains only: this network has skips")
    blocks = []
    for layer in net.layers:
        w = layer.weight
        if layer.kind == "conv":
            conv = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1).to(w.dtype)
            parts = [conv] + ([nn.MaxPool2d(2, 2)] if layer.pool else [])
        elif layer.kind == "dense":
            conv = nn.Linear(w.shape[1], w.shape[0]).to(w.dtype)
            parts = [nn.Flatten(), conv]
        else:
            raise ValueError(f"as_blocks does not know a {layer.kind} layer")
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(layer.bias)
        blocks.append(nn.Sequential(*parts).to(w.device))
    return from_blocks(blocks, activations=list(net.activations), in_shape=net.in_shape,
                       num_classes=net.num_classes, name=f"{net.name}-blocks")


# ---------------------------------------------------------------------------------------------
# initialisation (docs/method.md §4): uniform(-b, b) with b = gain * sqrt(1 / fan)
# ---------------------------------------------------------------------------------------------
def init_bound(layer: PCNLayer, gain: float, conv_fan: str) -> float:
    """The half-width ``c = γ·√(1/fan)`` of a layer's uniform initialisation (paper App. B.2,
    Eq. 21): dense layers use fan-in (the size of the layer below); convolutions fan-in
    (``channels_in·3·3``, VGG5) or fan-out (``channels_out·3·3``, VGG10) as ``conv_fan`` says."""
    if conv_fan not in ("fan_in", "fan_out"):
        raise ValueError(f"conv_fan must be 'fan_in' or 'fan_out', got {conv_fan!r}")
    w = layer.weight
    receptive = w[0, 0].numel() if w.dim() == 4 else 1
    fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
    fan = fan_out if (layer.spatial and conv_fan == "fan_out") else fan_in
    return gain * math.sqrt(1.0 / fan)


def _init_layer(layer: PCNLayer, gain: float, conv_fan: str) -> None:
    bound = init_bound(layer, gain, conv_fan)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound)
        layer.bias.zero_()


def _state_shapes(layers: Sequence[PCNLayer], in_shape: tuple) -> list[tuple]:
    """One example's state shape per layer, index 0 the input; and for layer k the shape of its
    linear part's output (before pooling) as the second list."""
    states, linear = [tuple(in_shape)], [None]
    for layer in layers:
        prev = states[-1]
        if layer.spatial:
            z = (layer.weight.shape[0], prev[-2], prev[-1])
            linear.append(z)
            states.append((z[0], z[1] // 2, z[2] // 2) if layer.pool else z)
        else:
            linear.append((layer.weight.shape[0],))
            states.append((layer.weight.shape[0],))
    return states, linear


def _skips(pairs, layers: Sequence[PCNLayer], in_shape: tuple, name: str) -> list[SkipLayer]:
    """Skip layers for ``pairs`` ``((src, dst), …)``, their kind and stride derived from the
    shapes; impossible pairs are refused naming the layers and shapes."""
    L = len(layers)
    states, linear = _state_shapes(layers, in_shape)
    out, seen = [], set()
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)):
            raise ValueError(f"{name}: skips must be pairs of layer indices (src, dst), got "
                             f"{pair!r}")
        src, dst = pair
        if not (0 <= src < dst <= L):
            raise ValueError(f"{name}: skip ({src}, {dst}) must go forward between layers 0 "
                             f"(the input) and {L} (the output): 0 <= src < dst <= {L}")
        if dst - src < 2:
            raise ValueError(f"{name}: skip ({src}, {dst}) joins neighbouring layers, which the "
                             f"chain already connects; a skip must jump at least one layer")
        if (src, dst) in seen:
            raise ValueError(f"{name}: skip ({src}, {dst}) is given twice")
        seen.add((src, dst))
        target, s_shape, z_shape = layers[dst - 1], states[src], linear[dst]
        if target.spatial:
            if len(s_shape) != 3:
                raise ValueError(f"{name}: skip ({src}, {dst}) cannot feed conv layer {dst}'s "
                                 f"{z_shape} map from the flat state {s_shape} of layer {src}")
            stride = s_shape[-1] // z_shape[-1]
            if stride < 1 or s_shape[-1] != stride * z_shape[-1] \
                    or s_shape[-2] != stride * z_shape[-2]:
                raise ValueError(f"{name}: skip ({src}, {dst}) cannot map layer {src}'s state "
                                 f"{s_shape} onto layer {dst}'s {z_shape} map before pooling with "
                                 f"a strided 1x1 convolution (sizes must be a whole multiple)")
            out.append(SkipLayer(src, dst, s_shape[0], z_shape[0], spatial=True, stride=stride,
                                 src_shape=s_shape))
        else:
            feats = math.prod(s_shape)
            out.append(SkipLayer(src, dst, feats, z_shape[0], spatial=False, src_shape=s_shape))
    return out


def _vgg(spec: Sequence[tuple[int, bool]], dense: Sequence[int], num_classes: int,
         in_channels: int, image_size: int, init_gain: float, output_gain: float,
         conv_fan: str, name: str, skips=()) -> PCN:
    pools = sum(p for _, p in spec)
    if image_size % (2 ** pools) or image_size < 2 ** pools:
        raise ValueError(f"{name} pools {pools} times: image_size must be a positive multiple of "
                         f"{2 ** pools}, got {image_size}")
    layers, c = [], in_channels
    for out, pool in spec:
        layers.append(ConvLayer(c, out, pool=pool))
        c = out
    feats = c * (image_size // 2 ** pools) ** 2
    for width in dense:
        layers.append(DenseLayer(feats, width))
        feats = width
    layers.append(DenseLayer(feats, num_classes, relu=False))
    shape = (in_channels, image_size, image_size)
    skip_layers = _skips(skips, layers, shape, name)
    for layer in [*layers, *skip_layers]:
        _init_layer(layer, init_gain, conv_fan)
    _init_layer(layers[-1], output_gain, conv_fan)
    return PCN(layers, shape, num_classes, name=name, skips=skip_layers)


def mlp(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, *,
        widths: Sequence[int] = (512, 512), init_gain: float = 1.0,
        output_gain: float = 1.0, skips: Sequence = ()) -> PCN:
    """Dense ReLU layers of the given ``widths``, then a linear output. Input is flattened.
    ``skips``: ``((src, dst), …)`` dense skip maps (docs/method.md §4)."""
    widths = [int(w) for w in widths]
    if any(w < 1 for w in widths):
        raise ValueError(f"mlp widths must be positive integers, got {widths}")
    feats = in_channels * image_size * image_size
    layers = []
    for w in widths:
        layers.append(DenseLayer(feats, w))
        feats = w
    layers.append(DenseLayer(feats, num_classes, relu=False))
    shape = (in_channels, image_size, image_size)
    skip_layers = _skips(skips, layers, shape, "mlp")
    for layer in [*layers, *skip_layers]:
        _init_layer(layer, init_gain, "fan_in")
    _init_layer(layers[-1], output_gain, "fan_in")
    return PCN(layers, shape, num_classes, name="mlp", skips=skip_layers)


def vgg5(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, *,
         channels: Sequence[int] = (128, 256, 512, 512, 512), init_gain: float = 1.0,
         output_gain: float = 1.0, conv_fan: str = "fan_in", skips: Sequence = ()) -> PCN:
    """docs/method.md §4: conv 128 | 256, pool | 512, pool | 512, pool | 512, pool | dense → classes.
    ``skips``: ``((src, dst), …)`` strided 1×1 convolutions (or dense maps) added into ``dst``."""
    if len(channels) != 5:
        raise ValueError(f"vgg5 takes 5 conv widths, got {list(channels)}")
    spec = list(zip(channels, (False, True, True, True, True)))
    return _vgg(spec, (), num_classes, in_channels, image_size, init_gain, output_gain,
                conv_fan, "vgg5", skips)


def vgg7(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, *,
         channels: Sequence[int] = (128, 128, 256, 256, 512, 512), init_gain: float = 1.0,
         output_gain: float = 1.0, conv_fan: str = "fan_in", skips: Sequence = ()) -> PCN:
    """VGG5 made deeper, for the depth question (docs/method.md §10; not in the paper): conv 128 |
    128, pool | 256 | 256, pool | 512, pool | 512, pool | dense → classes (7 layers, 4 pools)."""
    if len(channels) != 6:
        raise ValueError(f"vgg7 takes 6 conv widths, got {list(channels)}")
    pools = (False, True, False, True, True, True)
    return _vgg(list(zip(channels, pools)), (), num_classes, in_channels, image_size, init_gain,
                output_gain, conv_fan, "vgg7", skips)


def vgg9(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, *,
         channels: Sequence[int] = (128, 128, 256, 256, 512, 512, 512, 512),
         init_gain: float = 1.0, output_gain: float = 1.0, conv_fan: str = "fan_in",
         skips: Sequence = ()) -> PCN:
    """Deeper still (docs/method.md §10; not in the paper): conv 128 | 128, pool | 256 | 256,
    pool | 512 | 512, pool | 512 | 512, pool | dense → classes (9 layers, 4 pools)."""
    if len(channels) != 8:
        raise ValueError(f"vgg9 takes 8 conv widths, got {list(channels)}")
    pools = (False, True, False, True, False, True, False, True)
    return _vgg(list(zip(channels, pools)), (), num_classes, in_channels, image_size, init_gain,
                output_gain, conv_fan, "vgg9", skips)


def vgg10(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, *,
          channels: Sequence[int] = (64, 128, 256, 256, 512, 512, 512, 512),
          dense: int = 2048, init_gain: float = 1.0, output_gain: float = 1.0,
          conv_fan: str = "fan_out", skips: Sequence = ()) -> PCN:
    """docs/method.md §4: conv 64, pool | 128, pool | 256 | 256, pool | 512 | 512, pool | 512 |
    512, pool | dense 2048 | dense → classes (62,651,752 parameters at 224×224, 1000 classes).
    ``skips``: ``((src, dst), …)`` strided 1×1 convolutions added into ``dst``."""
    if len(channels) != 8:
        raise ValueError(f"vgg10 takes 8 conv widths, got {list(channels)}")
    pools = (True, True, False, True, False, True, False, True)
    return _vgg(list(zip(channels, pools)), (int(dense),), num_classes, in_channels, image_size,
                init_gain, output_gain, conv_fan, "vgg10", skips)


def vgg10skip(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, *,
              channels: Sequence[int] = (64, 128, 256, 256, 512, 512, 512, 512),
              dense: int = 2048, init_gain: float = 1.0, output_gain: float = 1.0,
              conv_fan: str = "fan_out", skips: Sequence = ((2, 5), (5, 8))) -> PCN:
    """VGG10 with the paper's skips (§5.5): strided 1×1 convolutions from layer 2 into layer 5
    and from layer 5 into layer 8 (62,980,456 parameters at 224×224, 1000 classes)."""
    net = vgg10(num_classes, in_channels, image_size, channels=channels, dense=dense,
                init_gain=init_gain, output_gain=output_gain, conv_fan=conv_fan, skips=skips)
    net.name = "vgg10skip"
    return net


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., PCN]
    image_size: int
    general: bool = False
    sized_input: bool = False      # the data is prepared at image_size unless a run says


_REGISTRY: dict[str, _Entry] = {"mlp": _Entry(mlp, 28), "vgg5": _Entry(vgg5, 32, sized_input=True),
                                "vgg7": _Entry(vgg7, 32), "vgg9": _Entry(vgg9, 32),
                                "vgg10": _Entry(vgg10, 224), "vgg10skip": _Entry(vgg10skip, 224)}


def register(name: str, fn: Callable[..., PCN], image_size: int = 32,
             general: bool = False, sized_input: bool = False) -> None:
    """Add a model constructor ``fn(num_classes, in_channels, image_size, **overrides)``, its
    default input size, whether its layers are general blocks (strict precision only), and
    whether a run prepares its data at that size when it names none (:func:`input_size`)."""
    _REGISTRY[name] = _Entry(fn, image_size, general, sized_input)


def general(name: str) -> bool:
    """Are model ``name``'s layers general blocks (no fast precision, docs/method.md §9)?"""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name].general


def available() -> list[str]:
    return sorted(_REGISTRY)


def default_image_size(name: str) -> int:
    """The input size a model is built for when none is given (mlp 28 — MNIST's; vgg5 32 — the
    paper's 32×32, MNIST zero-padded; vgg10 224 — ImageNet's). Every command uses this."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name].image_size


def input_size(name: str) -> Optional[int]:
    """The size a run prepares its data at when it names none: the model's default size for a
    model registered with ``sized_input`` (vgg5: 32, the paper's 28×28 MNIST zero-padded), else
    None — the dataset's own size, which the model is then built for."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    entry = _REGISTRY[name]
    return entry.image_size if entry.sized_input else None


def build(name: str, num_classes: int = 10, in_channels: int = 1,
          image_size: Optional[int] = None, **overrides) -> PCN:
    """Build a model by name: ``build("vgg5", num_classes=10, in_channels=1, image_size=32)``.
    ``image_size`` defaults to the model's :func:`default_image_size`.

    ``overrides`` go to the constructor (e.g. ``widths=(256,)`` for mlp, ``channels=...``,
    ``init_gain``, ``output_gain``). Unknown names or overrides raise ``ValueError``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    image_size = default_image_size(name) if image_size is None else image_size
    for arg, v in (("num_classes", num_classes), ("in_channels", in_channels),
                   ("image_size", image_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{arg} must be a positive integer, got {v!r}")
    fn = _REGISTRY[name].fn
    accepted = [p.name for p in inspect.signature(fn).parameters.values()
                if p.kind == p.KEYWORD_ONLY]
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise ValueError(f"model {name!r} does not take {unknown}; overrides accepted: {accepted}")
    return fn(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **overrides)

"""The layer maps of a PCN and their linear algebra in a given precision.

A layer is one map ``f_k(h) = act(pool(W h + b))`` (docs/method.md §1): :class:`ConvLayer`
(3×3 convolution, padding 1, optional 2×2 max-pool) or :class:`DenseLayer` (flattens its input),
each with ReLU or, for the output layer, no activation. A layer knows its own linear algebra —
``W h + b``, ``Wᵀ g`` and the parameter gradients ``Σ g ⊗ h`` — written once here and used both
by its ``forward`` (the free phase, BP) and by the engine through :meth:`PCNLayer.map`, which
returns a :class:`LayerMap`: the same operators on weights cast once to a precision's compute
dtype and layout.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .precision import Precision

__all__ = ["PCNLayer", "ConvLayer", "DenseLayer", "SkipLayer", "LayerMap"]


class PCNLayer(nn.Module):
    """One map ``f_k = act(pool(W h + b))``; see :class:`ConvLayer` and :class:`DenseLayer`.

    Attributes: ``kind`` (``"conv"`` | ``"dense"``, for reports), ``spatial`` (states are
    ``(N, C, H, W)`` maps), ``pool`` (a 2×2 max-pool after the linear part), ``relu`` (ReLU, else
    the identity: the output layer). Parameters ``weight`` and ``bias`` (biases start at zero).
    """
    kind = "layer"
    spatial = False

    def __init__(self, weight_shape: tuple[int, ...], *, relu: bool, pool: bool = False):
        super().__init__()
        if pool and not self.spatial:
            raise ValueError("only conv layers can pool")
        self.pool, self.relu = bool(pool), bool(relu)
        self.weight = nn.Parameter(torch.empty(weight_shape))
        self.bias = nn.Parameter(torch.zeros(weight_shape[0]))

    @property
    def activation(self) -> str:
        return "relu" if self.relu else "identity"

    # -- the linear part with given weights (subclasses) ----------------------------------------
    def linear_with(self, h: torch.Tensor, weight: torch.Tensor,
                    bias: Optional[torch.Tensor]) -> torch.Tensor:
        """``W h (+ b)`` before pooling."""
        raise NotImplementedError

    def transpose_with(self, g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``Wᵀ g``: the vector–Jacobian product of the linear part w.r.t. its input."""
        raise NotImplementedError

    def grads_with(self, h: torch.Tensor, g: torch.Tensor,
                   weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Σ_n g_n ⊗ h_n, Σ_n g_n)``: gradients of ``Σ_n ⟨g_n, W h_n + b⟩`` w.r.t. W, b."""
        raise NotImplementedError

    def operand(self, t: torch.Tensor, dtype: torch.dtype,
                memory_format=torch.contiguous_format) -> torch.Tensor:
        """``t`` as the linear part takes it: in ``dtype`` (and layout; dense: flattened)."""
        raise NotImplementedError

    # -- the map -------------------------------------------------------------------------------
    def linear(self, h: torch.Tensor) -> torch.Tensor:
        """The conv / dense part ``W h + b`` (before pooling)."""
        return self.linear_with(h, self.weight, self.bias)

    def pre(self, h: torch.Tensor, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pre-activation ``a_k`` after pooling; ``extra`` (skip outputs) is added to the linear
        part before the pool."""
        z = self.linear(h)
        if extra is not None:
            z = z + extra.reshape(z.shape)
        return F.max_pool2d(z, 2, 2) if self.pool else z

    def act(self, a: torch.Tensor) -> torch.Tensor:
        return torch.relu(a) if self.relu else a

    def forward(self, h: torch.Tensor, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.act(self.pre(h, extra))

    def map(self, precision: Precision, prefix: str) -> "LayerMap":
        """This layer's linear algebra with its weights cast to ``precision``; ``prefix``: the
        layer's name in the network (``layers.3``), for the names of its gradients."""
        return LayerMap(self, precision, prefix)

    def extra_repr(self) -> str:
        o, i = self.weight.shape[:2]
        return f"{self.kind} {i}->{o}" + (", maxpool" if self.pool else "") + \
            f", {self.activation}"


class ConvLayer(PCNLayer):
    """3×3 convolution (stride 1, padding 1), optional 2×2 stride-2 max-pool, ReLU."""
    kind = "conv"
    spatial = True

    def __init__(self, in_channels: int, out_channels: int, *, pool: bool = False,
                 relu: bool = True):
        super().__init__((out_channels, in_channels, 3, 3), pool=pool, relu=relu)

    def linear_with(self, h, weight, bias):
        return F.conv2d(h, weight, bias, padding=1)

    def transpose_with(self, g, weight):
        return F.conv_transpose2d(g, weight, padding=1)

    def grads_with(self, h, g, weight):
        _, gw, gb = torch.ops.aten.convolution_backward(
            g, h, weight, [weight.shape[0]], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
            [False, True, True])
        return gw, gb

    def operand(self, t, dtype, memory_format=torch.contiguous_format):
        return t.to(dtype, memory_format=memory_format)


class DenseLayer(PCNLayer):
    """Dense layer on the flattened input, ReLU (or none: the output layer)."""
    kind = "dense"

    def __init__(self, in_features: int, out_features: int, *, relu: bool = True):
        super().__init__((out_features, in_features), relu=relu)

    def linear_with(self, h, weight, bias):
        return F.linear(h.flatten(1), weight, bias)

    def transpose_with(self, g, weight):
        return g @ weight

    def grads_with(self, h, g, weight):
        return g.t() @ h, g.sum(0)

    def operand(self, t, dtype, memory_format=torch.contiguous_format):
        return t.to(dtype).flatten(1)


class SkipLayer(PCNLayer):
    """A skip connection ``S`` from layer ``src`` into layer ``dst`` (docs/method.md §4): its
    output is added to ``dst``'s linear part before pooling and ReLU, ``f_dst = ReLU(pool(W
    h_{dst−1} + b + S(h_src)))``. A 1×1 convolution with stride ``stride`` and a bias between
    spatial maps, a dense map (on the flattened source) into a dense layer. ``src_shape`` is one
    example's source state (for the transposed map's output size)."""
    kind = "skip"

    def __init__(self, src: int, dst: int, in_features: int, out_features: int, *,
                 spatial: bool, stride: int = 1, src_shape: tuple = ()):
        self.spatial = spatial                  # before PCNLayer's checks
        shape = (out_features, in_features, 1, 1) if spatial else (out_features, in_features)
        super().__init__(shape, relu=False)
        self.src, self.dst, self.stride, self.src_shape = src, dst, int(stride), tuple(src_shape)

    def linear_with(self, h, weight, bias):
        if self.spatial:
            return F.conv2d(h, weight, bias, stride=self.stride)
        return F.linear(h.flatten(1), weight, bias)

    def transpose_with(self, g, weight):
        if not self.spatial:
            return g @ weight
        # the source's height and width, each rounded down by the stride: restore the remainder
        pad = [size - ((n - 1) * self.stride + 1)
               for size, n in zip(self.src_shape[-2:], g.shape[-2:])]
        return F.conv_transpose2d(g, weight, stride=self.stride, output_padding=pad)

    def grads_with(self, h, g, weight):
        if not self.spatial:
            return g.t() @ h, g.sum(0)
        _, gw, gb = torch.ops.aten.convolution_backward(
            g, h, weight, [weight.shape[0]], [self.stride] * 2, [0, 0], [1, 1], False, [0, 0], 1,
            [False, True, True])
        return gw, gb

    def operand(self, t, dtype, memory_format=torch.contiguous_format):
        if self.spatial:
            return t.to(dtype, memory_format=memory_format)
        return t.to(dtype).flatten(1)

    def extra_repr(self) -> str:
        o, i = self.weight.shape[:2]
        what = f"1x1 conv stride {self.stride}" if self.spatial else "dense"
        return f"skip {self.src}->{self.dst}: {what} {i}->{o}"


class LayerMap:
    """A built-in layer's linear algebra in one precision: ``W d``, ``Wᵀ g`` and ``g ⊗ h`` — the
    engine's view of a linear edge of the wiring (:mod:`workbench.engine.wiring`).

    The weights are cast once: to the precision's compute dtype (``precision.conv`` for conv
    layers, ``precision.dense`` for dense ones; channels_last where the precision asks for it)
    and, when it differs, to the free phase's dtype. Results come back in the state dtype, or
    in the compute dtype with ``keep`` (for a consumer that widens them itself).

    The engine calls four methods, which a general block's map (:class:`workbench.engine.blocks.BlockMap`)
    has too: :meth:`free` (the free phase), :meth:`delta` (the deviation of the output),
    :meth:`vjp` (the top-down term) and :meth:`grads` (the parameter gradients, by name);
    ``src`` is the state the edge
    reads, as the nudged phase holds it (``src.d``: its deviation, None when exactly zero;
    ``src.h0``: its free value; ``src.state``: ``h0 + d``).
    """
    linear = True

    def __init__(self, layer: PCNLayer, precision: Precision, prefix: str):
        self.layer, self.prefix = layer, prefix
        self.dtype = precision.conv if layer.spatial else precision.dense
        self.out_dtype = precision.state
        self.channels_last = layer.spatial and precision.channels_last
        self.memory_format = torch.channels_last if self.channels_last \
            else torch.contiguous_format
        self.weight, self.bias = self._params(self.dtype)
        self.free_weight, self.free_bias = (self._params(precision.free)
                                            if precision.free != self.dtype
                                            else (self.weight, self.bias))

    def _params(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.layer.weight.detach()
        w = w.to(dtype, memory_format=self.memory_format) if self.layer.spatial else w.to(dtype)
        return w, self.layer.bias.detach().to(dtype)

    def operand(self, t: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return self.layer.operand(t, dtype or self.dtype, self.memory_format)

    def apply(self, h: torch.Tensor, bias: bool, free: bool = False,
              keep: bool = False) -> torch.Tensor:
        """``W h (+ b)`` before pooling, in the state dtype (``keep``: in the compute dtype);
        ``free``: with the free phase's weights."""
        w, b = (self.free_weight, self.free_bias) if free else (self.weight, self.bias)
        out = self.layer.linear_with(self.operand(h, w.dtype), w, b if bias else None)
        return out if keep else out.to(self.out_dtype)

    def transpose(self, g: torch.Tensor, in_shape: torch.Size, keep: bool = False) -> torch.Tensor:
        """``Wᵀ g`` shaped like the layer's input (state dtype; ``keep``: compute dtype)."""
        gi = self.layer.transpose_with(self.operand(g), self.weight)
        return (gi if keep else gi.to(self.out_dtype)).reshape(in_shape)

    # -- the edge interface ----------------------------------------------------------------------
    def free(self, h: torch.Tensor) -> torch.Tensor:
        """The free phase's output ``W h + b`` (before pooling), in the state dtype."""
        return self.apply(h, bias=True, free=True)

    def delta(self, src, keep: bool = False):
        """``W d_src``: the deviation of the output (linear; None when ``d_src`` is zero)."""
        return None if src.d is None else self.apply(src.d, bias=False, keep=keep)

    def vjp(self, g: torch.Tensor, src, keep: bool = False) -> torch.Tensor:
        """``Wᵀ g``, shaped like the state the edge reads (it does not depend on that state)."""
        return self.transpose(g, src.h0.shape, keep)

    def param_grads(self, h: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Σ_n g_n ⊗ h_n, Σ_n g_n)`` in the parameters' dtype."""
        gw, gb = self.layer.grads_with(self.operand(h), self.operand(g), self.weight)
        wdt = self.layer.weight.dtype
        return gw.to(wdt).contiguous(), gb.to(wdt)

    def grads(self, g: torch.Tensor, src) -> dict:
        """``{prefix.weight, prefix.bias}``: :meth:`param_grads` at the state ``src``."""
        gw, gb = self.param_grads(src.state, g)
        return {f"{self.prefix}.weight": gw, f"{self.prefix}.bias": gb}

"""Any PyTorch module as a PCN layer: the engine's view of a general block, and the rules for
modules with state (docs/method.md §9).

A general block ``g_k`` maps ``h_{k−1}`` to the pre-activation ``a_k``; the engine needs from it
what it has in closed form for a conv or dense layer (:class:`workbench.engine.layers.LayerMap`), here by
autograd on the block's own forward:

* the deviation of its output  ``g(h⁰ + d) − g(h⁰)``                 (:meth:`BlockMap.delta`)
* the top-down term            ``J_g(h)ᵀ u``, a vector–Jacobian product at the current state
* the parameter gradient       ``(∂g/∂θ)ᵀ u`` at the nudged state, another VJP

Each is taken on one forward *graph* per state of the block's input: the free phase keeps its
graph (so the free state costs no second forward), the nudged phase builds one each time the input
moves (``Source.graph``), and every VJP at that state reuses it.

BatchNorm in train mode uses the statistics of the batch it is given, so the energy of a batch
couples its examples; EP's theorem holds for the batch's joint energy and EP tends to train-mode
backprop. Its running statistics move once per estimate, in the free phase (like backprop's one
forward pass), never in the nudged phases (:func:`frozen_statistics`). Eval mode uses the running
statistics. Dropout is refused: a new mask at every evaluation makes the energy random, with no
fixed point to settle into.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from .wiring import Edge

__all__ = ["BlockMap", "frozen_statistics", "kept_statistics", "couples_examples",
           "check_block"]

_NORMS = nn.modules.batchnorm._NormBase
_BATCH_NORMS = nn.modules.batchnorm._BatchNorm
_DROPOUTS = nn.modules.dropout._DropoutNd


def check_block(block: nn.Module, where: str) -> None:
    """Refuse a block the energy cannot be written for: one with a dropout of p > 0 (a module,
    or ``nn.MultiheadAttention(dropout=…)``). ``where`` names it in the message."""
    for name, m in block.named_modules():
        p = m.p if isinstance(m, _DROPOUTS) else (
            m.dropout if isinstance(m, nn.MultiheadAttention) else 0.0)
        if p:
            inner = f" ({name})" if name else ""
            raise ValueError(f"{where}{inner} has dropout p={p}: dropout draws a new mask at "
                             f"every evaluation, so the energy has no fixed point to equilibrate "
                             f"to. Use p=0 (or remove it); BatchNorm and LayerNorm are accepted")


def couples_examples(net: nn.Module) -> bool:
    """Does the energy couple the examples of a batch? True where a BatchNorm normalises by the
    batch's statistics: in train mode, or in eval mode without running statistics."""
    return any(isinstance(m, _BATCH_NORMS) and (m.training or m.running_mean is None)
               for m in net.modules())


@contextlib.contextmanager
def frozen_statistics(net: nn.Module):
    """For the duration, normalisation layers in train mode still normalise by the batch's
    statistics but do not update their running statistics (``track_running_stats`` off); the
    previous flags are restored on exit."""
    changed = [m for m in net.modules()
               if isinstance(m, _NORMS) and m.training and m.track_running_stats]
    for m in changed:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in changed:
            m.track_running_stats = True


@contextlib.contextmanager
def kept_statistics(net: nn.Module):
    """Every buffer (running statistics, batch counters) as it was on entry, restored on exit:
    for measurements — a probe, a gradient check — that must not move a training run's
    statistics."""
    saved = [(b, b.detach().clone()) for b in net.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


class BlockMap:
    """A general block as an edge of the wiring, differentiated by autograd. Computes in the
    block's own dtype (strict precision: the parameters' dtype, TF32 off); the same four methods
    as :class:`workbench.engine.layers.LayerMap`.

    A *graph* is ``(input, output)`` of one forward of the block with autograd on: the input a
    detached leaf (requiring grad unless the edge reads the network's input), so that the VJPs
    with respect to it and to the parameters can be taken any number of times.
    """
    linear = False

    def __init__(self, edge: Edge):
        self.edge, self.module, self.prefix = edge, edge.module, edge.prefix
        self.params = [(f"{edge.prefix}.{n}", p) for n, p in edge.module.named_parameters()
                       if p.requires_grad]
        self.z0: Optional[torch.Tensor] = None
        self.free_graph: Optional[tuple] = None

    def trace(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A graph of the block at input ``h``."""
        with torch.enable_grad():
            inp = h.detach().requires_grad_(self.edge.src > 0)
            return inp, self.module(inp)

    def free(self, h: torch.Tensor) -> torch.Tensor:
        """The free phase's output ``g(h⁰)``; its graph is kept for the VJPs at the free state."""
        self.free_graph = self.trace(h)
        self.z0 = self.free_graph[1].detach()
        return self.z0

    def delta(self, src, keep: bool = False):
        """``g(h⁰ + d) − g(h⁰)`` on the graph at the current state (None when ``d`` is zero:
        exactly zero, no forward)."""
        return None if src.d is None else src.graph(self)[1].detach() - self.z0

    def _grads(self, outputs: torch.Tensor, inputs: list, g: torch.Tensor) -> tuple:
        if not outputs.requires_grad:          # the output depends on none of them
            return (None,) * len(inputs)
        return torch.autograd.grad(outputs, inputs, g.reshape(outputs.shape).to(outputs.dtype),
                                   retain_graph=True, allow_unused=True)

    def vjp(self, g: torch.Tensor, src, keep: bool = False) -> torch.Tensor:
        """``J_g(h)ᵀ g`` at the current state of the input."""
        inp, out = src.graph(self)
        gi, = self._grads(out, [inp], g)
        return torch.zeros_like(inp) if gi is None else gi

    def grads(self, g: torch.Tensor, src) -> dict:
        """``{name: (∂g/∂θ)ᵀ g}`` for every trainable parameter of the block, at the current
        state of its input (zeros for a parameter the output does not depend on)."""
        if not self.params:
            return {}
        _, out = src.graph(self)
        grads = self._grads(out, [p for _, p in self.params], g)
        return {name: torch.zeros_like(p) if gp is None else gp
                for (name, p), gp in zip(self.params, grads)}

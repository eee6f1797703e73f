"""Free and nudged phases of a PCN (docs/method.md §2), carried in *deviation form*.

The free phase is the forward pass. The nudged phase runs projected gradient descent on
``F = E + β·C`` with respect to the states, step size 1, so that each layer's update is closed
form (``Δ_k = J_{f_{k+1}}(h_k)ᵀ ε_{k+1}`` is the top-down term, summed over every edge that reads
``h_k``, :mod:`workbench.engine.wiring`):

* hidden ReLU, ``mod_pgd``:  ``h_k ← relu(a_k + Δ_k)``   (the paper's scheme, default)
* hidden ReLU, ``pgd``:      ``h_k ← relu(f_k(h_{k−1}) + Δ_k)``
* hidden identity:           ``h_k ← a_k + Δ_k``          (both rules: f_k = a_k)
* output (linear):           ``h_L ← a_L − β ∂C/∂h_L(h_L, y)``

Order ``async`` (default) updates the layers of one parity, then the other, starting with the
output's parity (for an even L: even layers first, as in the paper); one *iteration* is both
half-sweeps. Order ``sync`` updates all layers at once from the old states. Each layer's rule is
chosen once, when the phase is set up (:func:`hidden_rule`).

Deviation form: the engine carries ``d_k = h_k − h_k⁰`` (``h⁰`` the free state) instead of
``h_k``. Convolutions and dense maps are linear, so ``W(h⁰ + d) = z⁰ + W d``; a general block
gives its deviation as ``g(h⁰ + d) − g(h⁰)`` (:mod:`workbench.engine.blocks`). Pooling is taken over
``(z⁰ − a⁰ spread over each window) + W d``, whose maximum is the pre-activation deviation ``δa``
itself (exactly ``W d`` where the free choice stands), and ReLU differences are taken as
``relu(c + s) − relu(c) = max(s, −c) + min(c, 0)``, so that
``ε_k = d_k − (relu(a⁰_k + δa_k) − h⁰_k)`` and every new deviation are formed from deviations only,
exactly wherever a unit stays active. In exact arithmetic this *is* the update above; in low
precision it avoids the cancellation ``h − f(h)`` (both O(1), difference O(β)). It also makes
untouched layers free: a deviation that the nudge has not reached yet is exactly zero, stored
as ``None`` and skipped.

Shapes: states are ``(N, C, H, W)`` for conv layers, ``(N, features)`` for dense layers and
whatever a general block returns. β is a ``(N, 1)`` tensor (one value per example, so the
``random`` scheme needs one phase). The recording loop is :mod:`workbench.engine.recording`, the
diagnostics :mod:`workbench.engine.diagnostics`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from . import kernels
from .blocks import BlockMap
from .energy import cost, cost_grad
from .precision import Precision, ieee_fp32
from .recording import PhaseTrace, run_phase
from .settings import ORDERS, UPDATES

__all__ = ["UPDATES", "ORDERS", "FreeState", "Source", "free_phase", "PhaseState", "NudgedPhase",
           "hidden_rule", "Precision", "ieee_fp32"]

Opt = Optional[torch.Tensor]


# ---------------------------------------------------------------------------------------------
# free phase
# ---------------------------------------------------------------------------------------------
@dataclass
class FreeState:
    """The free-phase equilibrium, index ``k`` for layer ``k`` (index 0 is the input).

    ``h[k]`` states after activation, ``a[k]`` pre-activations after pooling, ``idx[k]`` the
    pooling indices and ``zc[k]`` the summed edges' output before pooling *centred on its pooled
    value*, ``z − a`` spread over each 2×2 window (≤ 0, and 0 where the pool chose); the last two
    only for pooling layers, else ``None``. All in the state dtype. ``h[0]`` is the input.
    ``maps[i]``: the map of ``net.wiring.edges[i]`` in ``precision`` (a
    :class:`~workbench.engine.layers.LayerMap` or a :class:`~workbench.engine.blocks.BlockMap`).
    """
    h: list
    a: list
    zc: list
    idx: list
    maps: list
    precision: Precision

    @property
    def logits(self) -> torch.Tensor:
        return self.h[-1]


def edge_map(edge, precision: Precision):
    """The engine's view of ``edge`` in ``precision``: closed-form linear algebra for a built-in
    layer, autograd for a general block (strict precision only; :func:`workbench.engine.ep.estimate`
    refuses fast precision for a network with general blocks)."""
    return edge.module.map(precision, edge.prefix) if edge.linear else BlockMap(edge)


@torch.no_grad()
def free_phase(net, x: torch.Tensor, precision: Union[Precision, str] = "strict") -> FreeState:
    """The forward pass, kept layer by layer for the nudged phases (``precision``: a
    :class:`~workbench.engine.precision.Precision` or its name). Normalisation layers in train mode
    update their running statistics here, once, as in backprop's forward pass."""
    if isinstance(precision, str):
        p = next(net.parameters())
        precision = Precision.make(precision, p.dtype, p.device)
    wiring = net.wiring
    maps = [edge_map(e, precision) for e in wiring.edges]
    with ieee_fp32() if precision.free_ieee else contextlib.nullcontext():
        h, a, zc, idx = [x.to(precision.state)], [None], [None], [None]
        for k in range(1, wiring.L + 1):
            node, out = wiring.nodes[k], None
            for i in node.into:
                z = maps[i].free(h[wiring.edges[i].src])
                out = z if out is None else out + z.reshape(out.shape)
            if node.pool:
                if out.shape[-1] % 2 or out.shape[-2] % 2:
                    raise ValueError(f"layer {k} max-pools a {out.shape[-2]}x{out.shape[-1]} map; "
                                     f"the 2x2 pool needs even sizes: choose another image size")
                pooled, i = F.max_pool2d(out, 2, 2, return_indices=True)
                zc.append(out.sub_(F.interpolate(pooled, scale_factor=2, mode="nearest")))
                a.append(pooled)
                idx.append(i)
            else:
                zc.append(None)
                a.append(out)
                idx.append(None)
            h.append(torch.relu(a[-1]) if node.relu else a[-1])
    return FreeState(h, a, zc, idx, maps, precision)


# ---------------------------------------------------------------------------------------------
# nudged phase
# ---------------------------------------------------------------------------------------------
class Source:
    """State ``h_k`` of one nudged phase as the maps that read it see it: ``h0`` (free),
    ``d`` (the deviation, None when exactly zero), ``state = h0 + d``, and the forward graphs of
    the general blocks that read it, built once per value of ``d`` (:meth:`graph`)."""
    __slots__ = ("h0", "d", "_graphs")

    def __init__(self, h0: torch.Tensor):
        self.h0, self.d, self._graphs = h0, None, {}

    @property
    def state(self) -> torch.Tensor:
        return self.h0 if self.d is None else self.h0 + self.d

    def set(self, d: Opt) -> None:
        self.d = d
        if self._graphs:
            self._graphs = {}

    def graph(self, block_map):
        """``block_map``'s forward graph at the current state (the free phase's at ``d = 0``)."""
        if self.d is None:
            return block_map.free_graph
        g = self._graphs.get(block_map)
        if g is None:
            g = self._graphs[block_map] = block_map.trace(self.state)
        return g


Rule = Callable[..., Opt]


def hidden_rule(activation: str, update: str, step_size: float) -> Rule:
    """The update of a hidden layer, ``rule(ew, a0, h0, d, da, delta) -> new d`` (None: exactly
    zero), chosen once per layer: ``ew(name, *args)`` runs the elementwise piece ``name`` of
    :mod:`workbench.engine.kernels`; ``a0`` / ``h0`` the free pre-activation and state, ``d`` the
    current deviation, ``da`` the pre-activation deviation, ``delta`` the top-down term."""
    if step_size == 1.0:
        if activation == "identity":
            def rule(ew, a0, h0, d, da, delta):
                return None if da is None and delta is None else \
                    ew("linear_update", a0, da, delta)
        elif update == "pgd":
            def rule(ew, a0, h0, d, da, delta):
                return None if da is None and delta is None else \
                    ew("pgd_update", a0, h0, da, delta)
        else:
            def rule(ew, a0, h0, d, da, delta):
                return None if da is None and delta is None else \
                    ew("mod_pgd_update", a0, da, delta)
        return rule
    alpha = float(step_size)
    piece, with_h0 = {"identity": ("linear_step", False), "pgd": ("pgd_step", True),
                      "mod_pgd": ("mod_pgd_step", False)}[
        "identity" if activation == "identity" else update]

    def stepped(ew, a0, h0, d, da, delta):
        if delta is None and da is None and d is None:
            return None
        args = (a0, h0) if with_h0 else (a0,)
        return ew(piece, *args, d, da, delta, alpha)
    return stepped


class StateMoments:
    """The memory of one layer's state optimizer (IL, docs/method.md §10): ``direction(g, t)``
    → ``u``, the step being ``α u``: ``momentum`` (``m ← μ m + g``, ``u = m``) or ``adam``
    (``β₁ = μ``, ``β₂ = 0.999``, bias-corrected at step count ``t``, ``u = m̂ / (√v̂ + 1e-8)``).
    Used by the engine's IL rule and by iPC (:mod:`workbench.engine.pc`)."""

    def __init__(self, kind: str, momentum: float):
        self.kind, self.mu = kind, float(momentum)
        self.m: Opt = None
        self.v: Opt = None

    def direction(self, g: torch.Tensor, t: int) -> torch.Tensor:
        if self.kind == "momentum":
            self.m = g if self.m is None else self.mu * self.m + g
            return self.m
        b1, b2 = self.mu, 0.999
        self.m = (1 - b1) * g if self.m is None else b1 * self.m + (1 - b1) * g
        self.v = (1 - b2) * g * g if self.v is None else b2 * self.v + (1 - b2) * g * g
        return (self.m / (1 - b1 ** t)) / ((self.v / (1 - b2 ** t)).sqrt() + 1e-8)


class StateOptimizerRule:
    """A hidden layer's inference step under a state optimizer with memory (IL, docs/method.md
    §10): the gradient of E with respect to the state, ``g = ε_k − Δ_k`` (from deviations only),
    a :class:`StateMoments` step ``α u``, and the projection of a ReLU layer
    (``h ← relu(h − α u)``). The moments live in the rule: one rule per layer per phase."""

    def __init__(self, kind: str, relu: bool, step_size: float, momentum: float):
        self.relu, self.alpha = relu, float(step_size)
        self.moments = StateMoments(kind, momentum)
        self.t = 0

    def __call__(self, ew, a0, h0, d, da, delta):
        if da is None:
            eps = d
        else:
            da = da.to(a0.dtype)
            eps = (kernels.relu_shift(a0, da) if self.relu else da).neg()
            eps = eps if d is None else eps + d
        g = eps if delta is None else (-delta.to(a0.dtype) if eps is None
                                       else eps - delta.to(a0.dtype))
        self.t += 1                          # Adam's step count: every step, moved or not
        if g is None and self.moments.m is None:
            return d
        g = torch.zeros_like(self.moments.m) if g is None else g
        step = self.alpha * self.moments.direction(g, self.t)
        s = -step if d is None else d - step
        return kernels.relu_shift(h0, s) if self.relu else s


class PhaseState:
    """The state of one phase away from the free state, in deviation form: the sources
    (:class:`Source`, ``d_k`` per layer), the pre-activation deviations and pooling choices
    cached at each layer's current inputs, and what is read from them — the errors ``ε_k``, the
    drives, the top-down terms ``Δ_k``, the energies, the costs and ``∂F/∂θ``
    (:meth:`param_grads`). How the state moves is :class:`NudgedPhase`.

    Args:
        net: a :class:`workbench.engine.models.PCN`.
        free: the free state (it holds the edge maps); ``y``: labels ``(N,)``.
        cost_name: ``ce`` | ``mse``. ``fused``: run the elementwise work as
            ``torch.compile``-d kernels. ``output_energy``, ``prediction_cost``: as
            :class:`NudgedPhase` reads them.
    """

    def __init__(self, net, free: FreeState, y: torch.Tensor, cost_name: str, fused: bool,
                 output_energy: str, prediction_cost: bool):
        self.net, self.free, self.maps, self.y = net, free, free.maps, y
        self.output_energy, self.prediction_cost = output_energy, prediction_cost
        self.cost_name = cost_name
        self.wiring = net.wiring
        self.nodes, self.edges = self.wiring.nodes, self.wiring.edges
        self.L = L = self.wiring.L
        self._fx = kernels.compiled() if fused else kernels.EAGER
        self._keep = fused          # fused pieces widen the maps' outputs themselves
        self.src = [Source(h) for h in free.h]          # d_k, None == exactly zero
        # cached at the current inputs of layer k: pre-activation deviation δa_k (None == zero)
        # and the pooling selection (flat indices, or window codes when fused)
        self._da: list[Opt] = [None] * (L + 1)
        if self._fx.coded:
            self._free_sel = [None] + [None if zc is None else self._fx.pool(zc, None)[1]
                                       for zc in free.zc[1:]]
        else:
            self._free_sel = list(free.idx)
        self._sel: list[Opt] = list(self._free_sel)
        self._fresh = [True] * (L + 1)             # is the cache valid for layer k's inputs?

    def deviation(self, k: int) -> Opt:
        """``d_k = h_k − h⁰_k`` (None when exactly zero)."""
        return self.src[k].d

    def hold_zeros(self) -> None:
        """Hold every deviation that is exactly zero (None) as an explicit zero tensor, so that
        nothing is skipped from now on: the same states, with every map evaluated (a check of
        the skipping, and of the cost it saves)."""
        for k in range(1, self.L + 1):
            if self.src[k].d is None:
                self._set(k, torch.zeros_like(self.free.h[k]))

    def selection(self, k: int) -> Opt:
        """The pooling choice of layer ``k`` at the current state: max_pool2d's flat indices
        (eager) or 2-bit window codes (fused); None for a layer that does not pool."""
        self.da(k)
        return self._sel[k] if self.nodes[k].pool else None

    def free_selection(self, k: int) -> Opt:
        """The pooling choice of layer ``k`` at the free state (as :meth:`selection` gives it)."""
        return self._free_sel[k]

    def _set(self, k: int, d: Opt) -> None:
        """``d_k`` changes: the pre-activations that read it are stale."""
        self.src[k].set(d)
        for i in self.nodes[k].out:
            self._fresh[self.edges[i].dst] = False

    # -- cached pieces -------------------------------------------------------------------------
    def _ew(self, name: str, *args):
        """The elementwise piece ``name`` (fused pieces get plain aliases, not views, so that
        no guard depends on a view's base)."""
        if self._fx is kernels.EAGER:
            return getattr(kernels.EAGER, name)(*args)
        return getattr(self._fx, name)(*(a.detach() if isinstance(a, torch.Tensor) else a
                                         for a in args))

    def _sum(self, parts: list) -> Opt:
        """None, the one part as it is, or the parts summed in the state dtype."""
        if len(parts) < 2:
            return parts[0] if parts else None
        state = self.free.precision.state
        out = parts[0].to(state)
        for p in parts[1:]:
            out = out + p.to(state).reshape(out.shape)
        return out

    def da(self, k: int) -> Opt:
        """``δa_k = a_k − a⁰_k`` at the current inputs of layer k (None: zero)."""
        if not self._fresh[k]:
            parts = []
            for i in self.nodes[k].into:
                dz = self.maps[i].delta(self.src[self.edges[i].src], self._keep)
                if dz is not None:
                    parts.append(dz)
            dz = self._sum(parts)
            if dz is None:
                self._da[k], self._sel[k] = None, self._free_sel[k]
            elif self.nodes[k].pool:
                self._da[k], self._sel[k] = self._ew("pool", self.free.zc[k], dz)
            else:
                self._da[k] = dz
            self._fresh[k] = True
        return self._da[k]

    def error(self, k: int) -> Opt:
        """``ε_k = d_k − (f_k(h_{k−1}) − h⁰_k)``, from deviations only (None when zero); the
        output's with ``output_energy="ce"``: ``onehot(y) − softmax(a_L)``."""
        if k == self.L and self.output_energy == "ce":
            return F.one_hot(self.y, self.free.a[k].shape[1]).to(self.free.a[k].dtype) \
                - torch.softmax(self.prediction(), 1)
        d, da = self.src[k].d, self.da(k)
        if da is None:
            return d
        if not self.nodes[k].relu:
            da = da.to(self.free.a[k].dtype)
            return -da if d is None else d - da
        return self._ew("relu_error", d, self.free.a[k], da)

    def drive(self, k: int, scale: Opt = None, cache: Optional[dict] = None) -> Opt:
        """``g_k = f_k'(a_k) ⊙ ε_k`` (times ``scale``, one factor per example, if given)
        unpooled to the summed edges' shape (None when zero): what the edges into layer k carry
        back to their sources, and into their parameter gradients.

        Fused, for a built-in conv layer: one kernel that also writes the result in the layer's
        compute dtype and layout, the input of the transposed convolution or the weight
        gradient. ``cache``: the drives of the half-sweep being computed, so that each is
        computed once (a skip's target feeds two updates)."""
        if cache is not None:
            if k not in cache:
                cache[k] = self._drive(k, None)
            return cache[k]
        return self._drive(k, scale)

    def _drive(self, k: int, scale: Opt) -> Opt:
        d, da = self.src[k].d, self.da(k)
        if d is None and da is None:
            return None
        node, free, m = self.nodes[k], self.free, self.maps[k - 1]
        if self._fx.drive is not None and m.linear and m.layer.spatial and node.relu:
            return self._ew("drive", d, free.a[k], da, self._sel[k] if node.pool else None,
                            m.dtype, m.channels_last, scale)
        if not node.relu:
            g = self.error(k)
        else:
            g = self._ew("relu_drive", d, free.a[k], da)
        if node.pool:
            g = F.max_unpool2d(g, self._sel[k], 2, 2, output_size=free.zc[k].shape[-2:])
        return g if scale is None else g * scale.view(-1, *([1] * (g.dim() - 1)))

    # -- the top-down term -----------------------------------------------------------------------
    def top_down(self, k: int, cache: Optional[dict] = None) -> Opt:
        """``Δ_k``: the VJPs of everything that reads ``h_k`` — layer k+1 and the skips from k —
        applied to their drives (None when all are zero)."""
        parts = []
        for i in self.nodes[k].out:
            g = self.drive(self.edges[i].dst, cache=cache)
            if g is not None:
                parts.append(self.maps[i].vjp(g, self.src[k], self._keep))
        return self._sum(parts)

    # -- observables ---------------------------------------------------------------------------
    def energies(self) -> torch.Tensor:
        """Per-layer energy ``½‖ε_k‖²``, mean over the batch, shape ``(L,)`` (the output's with
        ``output_energy="ce"``: the cross-entropy of its prediction)."""
        out = []
        for k in range(1, self.L + 1):
            if k == self.L and self.output_energy == "ce":
                out.append(cost("ce", self.prediction(), self.y).mean())
                continue
            e = self.error(k)
            out.append(self.free.h[k].new_zeros(()) if e is None
                       else 0.5 * e.flatten(1).pow(2).sum(1).mean())
        return torch.stack(out)

    def prediction(self) -> torch.Tensor:
        """The output layer's prediction ``a_L = f_L(h_{L−1})`` at the current state."""
        da = self.da(self.L)
        a0 = self.free.a[self.L]
        return a0 if da is None else a0 + da.to(a0.dtype)

    def costs(self) -> torch.Tensor:
        """Per-example cost: at the output state (with clamping: the clamped output), or, with
        ``prediction_cost`` (IL), at the output's prediction."""
        out = self.prediction() if self.prediction_cost else self.state(self.L)
        return cost(self.cost_name, out, self.y)

    def state(self, k: int) -> torch.Tensor:
        """``h_k`` at the current nudged state."""
        return self.src[k].state

    def param_grads(self, weight: torch.Tensor) -> dict:
        """``Σ_n w_n ∂F_n/∂θ`` at the current state, ``w`` a ``(N,)`` weight: parameter name
        (as in ``net.named_parameters()``) → gradient.

        ``∂F/∂θ_k = −(∂f_k/∂θ_k)ᵀ ε_k``: built from the deviation-form ``ε_k``, one drive per
        layer shared by every edge into it. Maps whose error is exactly zero are left out.
        """
        out = {}
        for k in range(1, self.L + 1):
            h = self.free.h[k]
            g = self.drive(k, scale=(-weight).to(h.dtype).view(-1, *([1] * (h.dim() - 1))))
            if g is None:
                continue
            for i in self.nodes[k].into:
                out.update(self.maps[i].grads(g, self.src[self.edges[i].src]))
        return out


class NudgedPhase(PhaseState):
    """One nudged phase: a :class:`PhaseState` with its update rules and one iteration
    (:meth:`step`); :meth:`run` records it (:func:`workbench.engine.recording.run_phase`) and
    :meth:`param_grads` gives ``∂F/∂θ`` at its end.

    Args:
        net: a :class:`workbench.engine.models.PCN`.
        free: the free state (it holds the edge maps); ``y``: labels ``(N,)``.
        beta: ``(N, 1)`` signed β per example. ``cost_name``: ``ce`` | ``mse``.
        update: ``mod_pgd`` | ``pgd``; ``order``: ``async`` | ``sync``.
        fused: run the elementwise work of each update as ``torch.compile``-d kernels.
        perturbation: ``nudge`` | ``clamp``; ``step_size``: α (1: the closed forms).
        output_energy: with clamping, the output layer's energy term — ``squared`` (½‖ε_L‖²,
            the default) or ``ce`` (the cross-entropy of its prediction, IL's PC-CE:
            ``ε_L = onehot(y) − softmax(a_L)``). ``state_optimizer``: ``gd`` (the update rules)
            or ``momentum`` / ``adam`` (:class:`StateOptimizerRule`, with ``state_momentum``).
        prediction_cost: report the cost at the output's prediction ``a_L`` rather than at its
            (clamped) state (IL).
    """

    def __init__(self, net, free: FreeState, y: torch.Tensor, beta: torch.Tensor,
                 cost_name: str, update: str = "mod_pgd", order: str = "async",
                 fused: bool = False, perturbation: str = "nudge", step_size: float = 1.0,
                 output_energy: str = "squared", state_optimizer: str = "gd",
                 state_momentum: float = 0.9, prediction_cost: bool = False):
        super().__init__(net, free, y, cost_name, fused, output_energy, prediction_cost)
        self.beta, self.update, self.order = beta, update, order
        self.perturbation, self.step_size = perturbation, float(step_size)
        L = self.L
        if state_optimizer == "gd":
            self.rules = [None] + [hidden_rule(self.nodes[k].activation, update, self.step_size)
                                   for k in range(1, L)]
        else:
            self.rules = [None] + [StateOptimizerRule(state_optimizer, self.nodes[k].relu,
                                                      self.step_size, state_momentum)
                                   for k in range(1, L)]
        top = [k for k in range(1, L + 1) if k % 2 == L % 2]
        rest = [k for k in range(1, L + 1) if k % 2 != L % 2]
        self.sweeps = [top, rest] if order == "async" else [list(range(1, L + 1))]
        if perturbation == "clamp":
            # Eq. 8: h_L = (1 − β) h⁰_L + β onehot(y), held; the hidden layers equilibrate
            h_out = free.h[L]
            target = F.one_hot(y, h_out.shape[1]).to(h_out.dtype)
            self.src[L].set(beta * (target - h_out))
            self.sweeps = [[k for k in sweep if k != L] for sweep in self.sweeps]

    @property
    def held(self) -> set:
        """Layers that no update moves (the clamped output)."""
        return {self.L} if self.perturbation == "clamp" else set()

    # -- one update ----------------------------------------------------------------------------
    def updates(self, layers) -> list:
        """``[(k, new d_k)]`` for ``layers``, all from the current state (one half-sweep)."""
        cache: dict = {}
        return [(k, self._new_deviation(k, cache)) for k in layers]

    def _new_deviation(self, k: int, cache: dict) -> Opt:
        if k == self.L:
            return self._output_deviation()
        free = self.free
        delta = self.top_down(k, cache)
        return self.rules[k](self._ew, free.a[k], free.h[k], self.src[k].d, self.da(k), delta)

    def _output_deviation(self) -> torch.Tensor:
        """``h_L ← a_L − β ∂C/∂h_L`` (with step size α: ``(1 − α) h_L + α (…)``)."""
        L, alpha = self.L, self.step_size
        nudge = self.beta * cost_grad(self.cost_name, self.state(L), self.y)
        da = self.da(L)
        target = -nudge if da is None else da.to(nudge.dtype) - nudge
        if alpha == 1.0:
            return target
        d = self.src[L].d
        return alpha * target if d is None else (1 - alpha) * d + alpha * target

    def step(self, measure: bool = True) -> Opt:
        """One iteration (both half-sweeps for ``async``).

        Returns the largest change of any unit per layer, shape ``(L,)``, when ``measure`` (a
        device tensor: no host sync), else None.
        """
        change = self.free.h[-1].new_zeros(self.L) if measure else None
        for sweep in self.sweeps:
            for k, d_new in self.updates(sweep):
                old = self.src[k].d
                if measure and (d_new is not None or old is not None):
                    diff = d_new if old is None else (-old if d_new is None else d_new - old)
                    change[k - 1] = diff.abs().amax()
                self._set(k, d_new)
        return change

    def run(self, iterations: int, tol: Optional[float] = None, record: bool = True,
            signs: Optional[torch.Tensor] = None, diagnostics: bool = False) -> PhaseTrace:
        """:func:`workbench.engine.recording.run_phase` on this phase."""
        return run_phase(self, iterations, tol=tol, record=record, signs=signs,
                         diagnostics=diagnostics)

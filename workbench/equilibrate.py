"""Free and nudged phases of a PCN (docs/method.md §2), carried in *deviation form*.

The free phase is the forward pass. The nudged phase runs projected gradient descent on
``F = E + β·C`` with respect to the states, step size 1, so that each layer's update is closed
form (``Δ_k = J_{f_{k+1}}(h_k)ᵀ ε_{k+1}`` is the top-down term):

* hidden, ``mod_pgd``:  ``h_k ← relu(a_k + Δ_k)``   (the paper's scheme, default)
* hidden, ``pgd``:      ``h_k ← relu(f_k(h_{k−1}) + Δ_k)``
* output (linear):      ``h_L ← a_L − β ∂C/∂h_L(h_L, y)``

Order ``async`` (default) updates the layers of one parity, then the other, starting with the
output's parity (for an even L: even layers first, as in the paper); one *iteration* is both
half-sweeps. Order ``sync`` updates all layers at once from the old states.

Deviation form: the engine carries ``d_k = h_k − h_k⁰`` (``h⁰`` the free state) instead of
``h_k``. Convolutions and dense maps are linear, so ``W(h⁰ + d) = z⁰ + W d``. Pooling is taken
over ``(z⁰ − a⁰ spread over each window) + W d``, whose maximum is the pre-activation deviation
``δa`` itself (exactly ``W d`` where the free choice stands), and ReLU differences are taken as
``relu(c + s) − relu(c) = max(s, −c) + min(c, 0)``, so that
``ε_k = d_k − (relu(a⁰_k + δa_k) − h⁰_k)`` and every new deviation are formed from deviations only,
exactly wherever a unit stays active. In exact arithmetic this *is* the update above; in low
precision it avoids the cancellation ``h − f(h)`` (both O(1), difference O(β)). It also makes
untouched layers free: a deviation that the nudge has not reached yet is exactly zero, stored
as ``None`` and skipped.

Shapes: states are ``(N, C, H, W)`` for conv layers and ``(N, features)`` for dense layers. β is a
``(N, 1)`` tensor (one value per example, so the ``random`` scheme needs one phase).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
import torch.nn.functional as F

from . import kernels
from .energy import cost, cost_grad
from .precision import Precision, ieee_fp32
from .settings import ORDERS, UPDATES

__all__ = ["UPDATES", "ORDERS", "FreeState", "PhaseTrace", "Trace", "free_phase", "NudgedPhase"]

Opt = Optional[torch.Tensor]


# ---------------------------------------------------------------------------------------------
# free phase
# ---------------------------------------------------------------------------------------------
@dataclass
class FreeState:
    """The free-phase equilibrium, index ``k`` for layer ``k`` (index 0 is the input).

    ``h[k]`` states after activation, ``a[k]`` pre-activations after pooling, ``idx[k]`` the
    pooling indices and ``zc[k]`` the conv output before pooling *centred on its pooled value*,
    ``z − a`` spread over each 2×2 window (≤ 0, and 0 where the pool chose); the last two only
    for pooling layers, else ``None``. All in the state dtype. ``h[0]`` is the input.
    ``maps[k - 1]``: layer k's :class:`~workbench.layers.LayerMap` in ``precision``;
    ``skip_maps[i]``: the map of ``net.skips[i]``.
    """
    h: list
    a: list
    zc: list
    idx: list
    maps: list
    precision: Precision
    skip_maps: list = field(default_factory=list)

    @property
    def logits(self) -> torch.Tensor:
        return self.h[-1]


@torch.no_grad()
def free_phase(net, x: torch.Tensor, precision: Union[Precision, str] = "strict") -> FreeState:
    """The forward pass, kept layer by layer for the nudged phases (``precision``: a
    :class:`~workbench.precision.Precision` or its name)."""
    if isinstance(precision, str):
        p = next(net.parameters())
        precision = Precision.make(precision, p.dtype, p.device)
    maps = [layer.map(precision) for layer in net.layers]
    skip_maps = [skip.map(precision) for skip in net.skips]
    with ieee_fp32() if precision.free_ieee else contextlib.nullcontext():
        h, a, zc, idx = [x.to(precision.state)], [None], [None], [None]
        for k, (layer, m) in enumerate(zip(net.layers, maps), start=1):
            out = m.apply(h[-1], bias=True, free=True)
            for i, skip in enumerate(net.skips):
                if skip.dst == k:
                    out = out + skip_maps[i].apply(h[skip.src], bias=True,
                                                   free=True).reshape(out.shape)
            if layer.pool:
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
            h.append(layer.act(a[-1]))
    return FreeState(h, a, zc, idx, maps, precision, skip_maps)


# ---------------------------------------------------------------------------------------------
# traces
# ---------------------------------------------------------------------------------------------
@dataclass
class PhaseTrace:
    """One nudged phase, recorded after every iteration ``t = 0..T`` (``t = 0``: free state).

    ``energy``: ``(T+1, L)`` per-layer energy ``½‖ε_k‖²``, mean over the batch.
    ``cost``: ``(T+1,)`` mean cost ``C(h_L, y)``.
    ``total``: ``(T+1,)`` mean ``F = E + β_n C`` (β_n the example's signed β); with clamping,
    which defines no cost function, ``E`` alone (``cost`` is still reported, at the clamped
    output).
    ``state_change``: ``(T, L)`` largest absolute change of any unit of layer k in iteration t.
    ``beta``: the phase's signed β (for ``random`` with per-example signs: ``+β`` with
    ``signs`` holding ±1 per example). ``iterations``: iterations run (< K if ``tol`` stopped it).
    Only the final row is kept when tracing is off (``energy`` is then ``(1, L)``).

    Diagnostics (``diagnostics=True``; else None), rows like ``energy``: ``switched`` the
    fraction of layer k's ReLU units whose pre-activation sign differs from the free state's
    (0 for the linear output); ``pool_changed`` the fraction of its 2×2 pooling windows whose
    winner changed (0 where it does not pool); ``residual_max`` / ``residual_rms`` the largest
    and root-mean-square entry of the fixed-point residual ``h_k − T_k(h)``, ``T`` the update
    map applied to every layer at once from the current state (so for ``order="sync"`` it is
    the next iteration's change; zero at a fixed point whatever the order).
    """
    beta: float
    energy: torch.Tensor
    cost: torch.Tensor
    total: torch.Tensor
    state_change: torch.Tensor
    iterations: int
    signs: Optional[torch.Tensor] = None
    switched: Optional[torch.Tensor] = None
    pool_changed: Optional[torch.Tensor] = None
    residual_max: Optional[torch.Tensor] = None
    residual_rms: Optional[torch.Tensor] = None

    @property
    def final_energy(self) -> float:
        return float(self.energy[-1].sum())


@dataclass
class Trace:
    """All nudged phases of one estimate, in the order they ran; ``free_cost`` is C at h⁰."""
    phases: list = field(default_factory=list)
    free_cost: float = float("nan")


# ---------------------------------------------------------------------------------------------
# nudged phase
# ---------------------------------------------------------------------------------------------
class NudgedPhase:
    """Equilibrates one nudged phase from the free state and yields ``∂F/∂θ`` at its end.

    Args:
        net: a :class:`workbench.models.PCN`.
        free: the free state (it holds the layer maps); ``y``: labels ``(N,)``.
        beta: ``(N, 1)`` signed β per example. ``cost_name``: ``ce`` | ``mse``.
        update: ``mod_pgd`` | ``pgd``; ``order``: ``async`` | ``sync``.
        fused: run the elementwise work of each update as ``torch.compile``-d kernels.
    """

    def __init__(self, net, free: FreeState, y: torch.Tensor, beta: torch.Tensor,
                 cost_name: str, update: str = "mod_pgd", order: str = "async",
                 fused: bool = False, perturbation: str = "nudge", step_size: float = 1.0):
        self.net, self.free, self.maps, self.y = net, free, free.maps, y
        self.beta, self.cost_name, self.update, self.order = beta, cost_name, update, order
        self.perturbation, self.step_size = perturbation, float(step_size)
        self.L = len(net.layers)
        # skips: index i of net.skips into / from each layer
        self._into = [[] for _ in range(self.L + 1)]
        self._from = [[] for _ in range(self.L + 1)]
        for i, skip in enumerate(net.skips):
            self._into[skip.dst].append(i)
            self._from[skip.src].append(i)
        self._fx = kernels.compiled() if fused else kernels.EAGER
        self._drives: Optional[dict] = None     # drives of the half-sweep being computed
        self._keep = fused          # fused pieces widen the maps' outputs themselves
        self.d: list[Opt] = [None] * (self.L + 1)       # deviations d_k, None == exactly zero
        # cached at the current d_{k-1}: pre-activation deviation δa_k (None == zero) and the
        # pooling selection (flat indices, or window codes when fused)
        self._da: list[Opt] = [None] * (self.L + 1)
        if self._fx.coded:
            self._free_sel = [None] + [None if zc is None else self._fx.pool(zc, None)[1]
                                       for zc in free.zc[1:]]
        else:
            self._free_sel = list(free.idx)
        self._sel: list[Opt] = list(self._free_sel)
        self._fresh = [True] * (self.L + 1)             # is the cache valid for d[k-1]?
        top = [k for k in range(1, self.L + 1) if k % 2 == self.L % 2]
        rest = [k for k in range(1, self.L + 1) if k % 2 != self.L % 2]
        self.sweeps = [top, rest] if order == "async" else [list(range(1, self.L + 1))]
        if perturbation == "clamp":
            # Eq. 8: h_L = (1 − β) h⁰_L + β onehot(y), held; the hidden layers equilibrate
            h_out = free.h[self.L]
            target = F.one_hot(y, h_out.shape[1]).to(h_out.dtype)
            self.d[self.L] = beta * (target - h_out)
            self._fresh[self.L] = True
            self.sweeps = [[k for k in sweep if k != self.L] for sweep in self.sweeps]

    def hold_zeros(self) -> None:
        """Hold every deviation that is exactly zero (None) as an explicit zero tensor, so that
        nothing is skipped from now on: the same states, with every map evaluated (a check of
        the skipping, and of the cost it saves)."""
        for k in range(1, self.L + 1):
            if self.d[k] is None:
                self.d[k] = torch.zeros_like(self.free.h[k])
                self._changed(k)

    def selection(self, k: int) -> Opt:
        """The pooling choice of layer ``k`` at the current state: max_pool2d's flat indices
        (eager) or 2-bit window codes (fused); None for a layer that does not pool."""
        self.da(k)
        return self._sel[k] if self.net.layers[k - 1].pool else None

    def _changed(self, k: int) -> None:
        """``d_k`` changed: the pre-activations that read it are stale."""
        if k < self.L:
            self._fresh[k + 1] = False
        for i in self._from[k]:
            self._fresh[self.net.skips[i].dst] = False

    # -- cached pieces -------------------------------------------------------------------------
    def _ew(self, name: str, *args):
        """The elementwise piece ``name`` (fused pieces get plain aliases, not views, so that
        no guard depends on a view's base)."""
        if self._fx is kernels.EAGER:
            return getattr(kernels.EAGER, name)(*args)
        return getattr(self._fx, name)(*(a.detach() if isinstance(a, torch.Tensor) else a
                                         for a in args))

    def _dz(self, k: int) -> Opt:
        """``W_k d_{k−1} + Σ S(d_src)``: the deviation of layer k's linear part (None: zero)."""
        parts = [] if self.d[k - 1] is None else [
            self.maps[k - 1].apply(self.d[k - 1], bias=False, keep=self._keep)]
        for i in self._into[k]:
            d_src = self.d[self.net.skips[i].src]
            if d_src is not None:
                parts.append(self.free.skip_maps[i].apply(d_src, bias=False, keep=self._keep))
        return self._sum(parts)

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
        """``δa_k = a_k − a⁰_k`` at the current ``d_{k−1}`` (and skip sources; None: zero)."""
        if not self._fresh[k]:
            layer, free = self.net.layers[k - 1], self.free
            dz = self._dz(k)
            if dz is None:
                self._da[k], self._sel[k] = None, self._free_sel[k]
            else:
                if layer.pool:
                    self._da[k], self._sel[k] = self._ew("pool", free.zc[k], dz)
                else:
                    self._da[k] = dz
            self._fresh[k] = True
        return self._da[k]

    def error(self, k: int) -> Opt:
        """``ε_k = d_k − (f_k(h_{k−1}) − h⁰_k)``, from deviations only (None when zero)."""
        d, da = self.d[k], self.da(k)
        if da is None:
            return d
        if not self.net.layers[k - 1].relu:
            da = da.to(self.free.a[k].dtype)
            return -da if d is None else d - da
        return self._ew("relu_error", d, self.free.a[k], da)

    def drive(self, k: int, scale: Opt = None) -> Opt:
        """``g_k = f_k'(a_k) ⊙ ε_k`` (times ``scale``, one factor per example, if given)
        unpooled to the conv output's shape (None when zero).

        Fused, for a conv layer: one kernel that also writes the result in the layer's compute
        dtype and layout, the input of the transposed convolution or the weight gradient.
        Within one half-sweep a drive is computed once (a skip's target feeds two updates)."""
        if scale is None and self._drives is not None:
            if k not in self._drives:
                self._drives[k] = self._drive(k, None)
            return self._drives[k]
        return self._drive(k, scale)

    def _drive(self, k: int, scale: Opt) -> Opt:
        d, da = self.d[k], self.da(k)
        if d is None and da is None:
            return None
        layer, free, m = self.net.layers[k - 1], self.free, self.maps[k - 1]
        if self._fx.drive is not None and layer.spatial and layer.relu:
            return self._ew("drive", d, free.a[k], da, self._sel[k] if layer.pool else None,
                            m.dtype, m.channels_last, scale)
        if not layer.relu:
            g = self.error(k)
        else:
            g = self._ew("relu_drive", d, free.a[k], da)
        if layer.pool:
            g = F.max_unpool2d(g, self._sel[k], 2, 2, output_size=free.zc[k].shape[-2:])
        return g if scale is None else g * scale.view(-1, *([1] * (g.dim() - 1)))

    # -- one update ----------------------------------------------------------------------------
    def _top_down(self, k: int) -> Opt:
        """``Δ_k``: the transposed maps of everything that reads ``h_k`` — layer k+1 and the
        skips from k — applied to their drives (None when all are zero)."""
        shape = self.free.h[k].shape
        g = self.drive(k + 1)
        parts = [] if g is None else [self.maps[k].transpose(g, shape, keep=self._keep)]
        for i in self._from[k]:
            gd = self.drive(self.net.skips[i].dst)
            if gd is not None:
                parts.append(self.free.skip_maps[i].transpose(gd, shape, keep=self._keep))
        return self._sum(parts)

    def _updates(self, layers) -> list:
        """``[(k, new d_k)]`` for ``layers``, all from the current state (one half-sweep)."""
        self._drives = {}
        try:
            return [(k, self._new_deviation(k)) for k in layers]
        finally:
            self._drives = None

    def _new_deviation(self, k: int) -> Opt:
        free, alpha = self.free, self.step_size
        if k == self.L:
            nudge = self.beta * cost_grad(self.cost_name, self.state(k), self.y)
            da = self.da(k)
            target = -nudge if da is None else da.to(nudge.dtype) - nudge
            if alpha == 1.0:
                return target
            d = self.d[k]
            return alpha * target if d is None else (1 - alpha) * d + alpha * target
        delta = self._top_down(k)
        da = self.da(k)
        if alpha != 1.0:
            if delta is None and da is None and self.d[k] is None:
                return None
            if self.update == "pgd":
                return self._ew("pgd_step", free.a[k], free.h[k], self.d[k], da, delta, alpha)
            return self._ew("mod_pgd_step", free.a[k], self.d[k], da, delta, alpha)
        if delta is None and da is None:
            return None
        if self.update == "pgd":
            return self._ew("pgd_update", free.a[k], free.h[k], da, delta)
        return self._ew("mod_pgd_update", free.a[k], da, delta)

    def step(self, measure: bool = True) -> Opt:
        """One iteration (both half-sweeps for ``async``).

        Returns the largest change of any unit per layer, shape ``(L,)``, when ``measure`` (a
        device tensor: no host sync), else None.
        """
        change = self.free.h[-1].new_zeros(self.L) if measure else None
        for sweep in self.sweeps:
            new = self._updates(sweep)
            for k, d_new in new:
                old = self.d[k]
                if measure and (d_new is not None or old is not None):
                    diff = d_new if old is None else (-old if d_new is None else d_new - old)
                    change[k - 1] = diff.abs().amax()
                self.d[k] = d_new
                self._changed(k)
        return change

    # -- observables ---------------------------------------------------------------------------
    def energies(self) -> torch.Tensor:
        """Per-layer energy ``½‖ε_k‖²``, mean over the batch, shape ``(L,)``."""
        out = []
        for k in range(1, self.L + 1):
            e = self.error(k)
            out.append(self.free.h[k].new_zeros(()) if e is None
                       else 0.5 * e.flatten(1).pow(2).sum(1).mean())
        return torch.stack(out)

    def costs(self) -> torch.Tensor:
        return cost(self.cost_name, self.state(self.L), self.y)

    def diagnose(self) -> torch.Tensor:
        """``(4, L)``: per layer, the switched ReLU fraction, the changed pooling fraction and
        the max and RMS of the fixed-point residual at the current state (see
        :class:`PhaseTrace`). Costs one update of every layer (nothing is changed)."""
        L, free = self.L, self.free
        out = free.h[-1].new_zeros((4, L), dtype=torch.float64)
        for k in range(1, L + 1):
            layer, da = self.net.layers[k - 1], self.da(k)
            if layer.relu and da is not None:
                a0 = free.a[k]
                out[0, k - 1] = ((a0 + da.to(a0.dtype) > 0) != (a0 > 0)).double().mean()
            if layer.pool and self._sel[k] is not self._free_sel[k]:
                out[1, k - 1] = (self._sel[k] != self._free_sel[k]).double().mean()
        held = {self.L} if self.perturbation == "clamp" else set()
        new = self._updates([k for k in range(1, L + 1) if k not in held])
        for k, d_new in new:
            old = self.d[k]
            if d_new is None and old is None:
                continue
            r = (d_new if old is None else (-old if d_new is None else d_new - old)).double()
            out[2, k - 1], out[3, k - 1] = r.abs().amax(), r.pow(2).mean().sqrt()
        return out

    def run(self, iterations: int, tol: Optional[float] = None, record: bool = True,
            signs: Optional[torch.Tensor] = None, diagnostics: bool = False) -> PhaseTrace:
        """Run up to ``iterations`` iterations (fewer if every state changed by < ``tol``).

        With ``record`` off, only the final iteration's state change is measured (every
        iteration's when ``tol`` is set) and nothing waits for the device inside the loop
        unless ``tol`` is set. ``diagnostics``: also record :meth:`diagnose` (every iteration
        with ``record``, else at the end).
        """
        beta = self.beta.flatten()
        e_rows, c_rows, f_rows, changes, d_rows = [], [], [], [], []

        def observe():
            e, c = self.energies(), self.costs()
            e_rows.append(e)
            c_rows.append(c.mean())
            f_rows.append(e.sum() if self.perturbation == "clamp" else e.sum() + (beta * c).mean())
            if diagnostics:
                d_rows.append(self.diagnose())

        if record:
            observe()
        t = 0
        for t in range(1, iterations + 1):
            ch = self.step(measure=record or tol is not None or t == iterations)
            if record:
                changes.append(ch)
                observe()
            elif ch is not None:
                changes = [ch]
            if tol is not None and float(ch.max()) < tol:
                break
        if not record:
            observe()
        mag = float(beta.abs().max())
        diag = torch.stack(d_rows).cpu() if diagnostics else None
        parts = {} if diag is None else dict(switched=diag[:, 0], pool_changed=diag[:, 1],
                                             residual_max=diag[:, 2], residual_rms=diag[:, 3])
        return PhaseTrace(beta=mag if signs is not None else float(beta[0]),
                          energy=torch.stack(e_rows).cpu(), cost=torch.stack(c_rows).cpu(),
                          total=torch.stack(f_rows).cpu(), state_change=torch.stack(changes).cpu(),
                          iterations=t, signs=None if signs is None else signs.cpu(), **parts)

    def state(self, k: int) -> torch.Tensor:
        """``h_k`` at the current nudged state."""
        return self.free.h[k] if self.d[k] is None else self.free.h[k] + self.d[k]

    def param_grads(self, weight: torch.Tensor) -> dict:
        """``Σ_n w_n ∂F_n/∂θ`` at the current state, ``w`` a ``(N,)`` weight: per layer ``k``
        (key ``k``) and per skip ``i`` of ``net.skips`` (key ``("skip", i)``), each a pair
        (weight gradient, bias gradient).

        ``∂F/∂θ_k = −(∂f_k/∂θ_k)ᵀ ε_k``: built from the deviation-form ``ε_k``; a skip into
        layer k shares its drive. Maps whose error is exactly zero are left out.
        """
        out = {}
        for k in range(1, self.L + 1):
            h = self.free.h[k]
            g = self.drive(k, scale=(-weight).to(h.dtype).view(-1, *([1] * (h.dim() - 1))))
            if g is None:
                continue
            out[k] = self.maps[k - 1].param_grads(self.state(k - 1), g)
            for i in self._into[k]:
                src = self.net.skips[i].src
                out[("skip", i)] = self.free.skip_maps[i].param_grads(self.state(src), g)
        return out

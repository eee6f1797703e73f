"""Free and nudged phases of a PCN (METHOD.md §2), carried in *deviation form*.

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
import functools
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .energy import cost, cost_grad

UPDATES = ("mod_pgd", "pgd")
ORDERS = ("async", "sync")
PRECISIONS = ("auto", "strict", "fast")

__all__ = ["UPDATES", "ORDERS", "PRECISIONS", "Precision", "FreeState", "PhaseTrace", "Trace",
           "free_phase", "NudgedPhase", "precision_context", "fp32_math"]

Opt = Optional[torch.Tensor]


# ---------------------------------------------------------------------------------------------
# precision
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Precision:
    """Dtypes of one run.

    ``strict``: everything in the parameters' dtype, with TF32 (and oneDNN's reduced fp32
    modes) switched off for the duration (see :func:`precision_context`). ``fast``: the nudged
    phases' conv maps in bfloat16 (channels_last on CUDA); the free phase (one forward pass, the
    O(1) states every deviation is measured from) in IEEE float32 (TF32 off: with TF32 the
    fidelity rule failed on an H200, BENCHMARKS.md); dense maps, pooling, ReLU, errors and
    states in float32. ``auto``: fast for a float32 model on CUDA, else strict.

    ``conv`` / ``dense``: compute dtypes of the nudged phases' maps; ``free``: of the free
    phase's maps; ``state``: states, deviations and errors. ``free_ieee``: run the free phase's
    fp32 maps with TF32 off (as strict mode does) even in fast mode.
    """
    name: str
    state: torch.dtype
    conv: torch.dtype
    dense: torch.dtype
    free: torch.dtype
    channels_last: bool = False
    free_ieee: bool = False     # fast: the free phase's fp32 maps with TF32 off

    @staticmethod
    def resolve(name: str, param_dtype: torch.dtype, device) -> str:
        """``auto`` → ``fast`` for a float32 model on CUDA (where fast mode passed the
        fidelity rule, BENCHMARKS.md), ``strict`` everywhere else; other names unchanged."""
        if name not in PRECISIONS:
            raise ValueError(f"unknown precision {name!r}; accepted: {', '.join(PRECISIONS)}")
        if name != "auto":
            return name
        cuda = torch.device(device).type == "cuda"
        return "fast" if cuda and param_dtype == torch.float32 else "strict"

    @staticmethod
    def make(name: str, param_dtype: torch.dtype, device: torch.device) -> "Precision":
        name = Precision.resolve(name, param_dtype, device)
        if name == "strict":
            return Precision("strict", param_dtype, param_dtype, param_dtype, param_dtype)
        return Precision("fast", torch.float32, torch.bfloat16, torch.float32, torch.float32,
                         channels_last=device.type == "cuda", free_ieee=True)


# the switches that let fp32 convs / matmuls round to TF32 (or bf16 on oneDNN): torch >= 2.9
# names them backend.op.fp32_precision; older versions only have the two CUDA allow_tf32 flags
_FP32_SWITCHES = ("cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul", "mkldnn.conv")


def _switches() -> dict:
    out = {}
    for name in _FP32_SWITCHES:
        module = torch.backends
        for part in name.split("."):
            module = getattr(module, part, None)
        if module is not None and hasattr(module, "fp32_precision"):
            out[name] = module
    return out


def fp32_math() -> dict:
    """How fp32 convs and matmuls may round now: switch name → ``ieee`` | ``tf32`` | …

    With torch < 2.9 the two legacy CUDA flags are reported as ``tf32`` / ``ieee``.
    """
    switches = _switches()
    if switches:
        return {name: m.fp32_precision for name, m in switches.items()}
    return {"cuda.matmul": "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee",
            "cudnn.conv": "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"}


@contextlib.contextmanager
def precision_context(precision: Precision):
    """In strict mode fp32 convs and matmuls round as IEEE fp32 (no TF32, on CUDA and oneDNN)
    for the duration; the previous settings are restored on exit. Fast mode changes nothing."""
    if precision.name != "strict":
        yield
        return
    with ieee_fp32():
        yield


@contextlib.contextmanager
def ieee_fp32():
    """fp32 convs and matmuls round as IEEE fp32 (no TF32, on CUDA and oneDNN) for the
    duration; the previous settings are restored on exit."""
    switches = _switches()
    if switches:
        # the matmul precision level first (it also sets the matmul switch, so a level the
        # user chose, e.g. "high", cannot disagree with it), then every switch; torch refuses
        # to report a level when the user set the per-operator switches differently
        try:
            saved_level = torch.get_float32_matmul_precision()
        except RuntimeError:
            saved_level = None
        saved = {name: m.fp32_precision for name, m in switches.items()}
        if saved_level is not None:
            torch.set_float32_matmul_precision("highest")
        for m in switches.values():
            m.fp32_precision = "ieee"
        try:
            yield
        finally:
            if saved_level is not None:
                torch.set_float32_matmul_precision(saved_level)
            for name, m in switches.items():
                m.fp32_precision = saved[name]
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ---------------------------------------------------------------------------------------------
# per-layer linear algebra on deviations (the only place that touches weights)
# ---------------------------------------------------------------------------------------------
class _LayerOps:
    """The linear part of one layer in the compute dtype: ``W d``, ``Wᵀ g`` and ``g ⊗ h``."""

    def __init__(self, layer, precision: Precision):
        self.layer = layer
        self.conv = layer.kind == "conv"
        self.dtype = precision.conv if self.conv else precision.dense
        self.out_dtype = precision.state
        self.memory_format = (torch.channels_last if self.conv and precision.channels_last
                              else torch.contiguous_format)
        self.weight, self.bias = self._params(self.dtype)
        self.free_weight, self.free_bias = (self._params(precision.free)
                                            if precision.free != self.dtype
                                            else (self.weight, self.bias))

    def _params(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.layer.weight.detach()
        w = w.to(dtype, memory_format=self.memory_format) if self.conv else w.to(dtype)
        return w, self.layer.bias.detach().to(dtype)

    def _cast(self, t: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        dtype = dtype or self.dtype
        if self.conv:
            return t.to(dtype, memory_format=self.memory_format)
        return t.to(dtype).flatten(1)

    def apply(self, h: torch.Tensor, bias: bool, free: bool = False,
              keep: bool = False) -> torch.Tensor:
        """``W h (+ b)`` before pooling, in the state dtype (``keep``: in the compute dtype, for
        a consumer that widens it itself); ``free``: with the free phase's weights."""
        w, b = (self.free_weight, self.free_bias) if free else (self.weight, self.bias)
        b = b if bias else None
        if self.conv:
            out = F.conv2d(self._cast(h, w.dtype), w, b, padding=1)
        else:
            out = F.linear(self._cast(h, w.dtype), w, b)
        return out if keep else out.to(self.out_dtype)

    def transpose(self, g: torch.Tensor, in_shape: torch.Size, keep: bool = False) -> torch.Tensor:
        """``Wᵀ g``: the vector–Jacobian product of the linear part w.r.t. its input (in the
        state dtype; ``keep``: in the compute dtype)."""
        if self.conv:
            gi = F.conv_transpose2d(self._cast(g), self.weight, padding=1)
        else:
            gi = self._cast(g) @ self.weight
        return (gi if keep else gi.to(self.out_dtype)).reshape(in_shape)

    def param_grads(self, h: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Σ_n g_n ⊗ h_n, Σ_n g_n)``: gradients of ``Σ_n ⟨g_n, W h_n + b⟩`` w.r.t. W and b."""
        if self.conv:
            _, gw, gb = torch.ops.aten.convolution_backward(
                self._cast(g), self._cast(h), self.weight, [self.weight.shape[0]], [1, 1],
                [1, 1], [1, 1], False, [0, 0], 1, [False, True, True])
        else:
            gc = self._cast(g)
            gw, gb = gc.t() @ self._cast(h), gc.sum(0)
        wdt = self.layer.weight.dtype
        return gw.to(wdt).contiguous(), gb.to(wdt)


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
    """
    h: list
    a: list
    zc: list
    idx: list

    @property
    def logits(self) -> torch.Tensor:
        return self.h[-1]


@torch.no_grad()
def free_phase(net, x: torch.Tensor, ops: list[_LayerOps], precision: Precision) -> FreeState:
    with ieee_fp32() if precision.free_ieee else contextlib.nullcontext():
        return _free_phase(net, x, ops, precision)


def _free_phase(net, x, ops, precision) -> FreeState:
    h, a, zc, idx = [x.to(precision.state)], [None], [None], [None]
    for k, (layer, op) in enumerate(zip(net.layers, ops), start=1):
        out = op.apply(h[-1], bias=True, free=True)
        if layer.pool:
            if out.shape[-1] % 2 or out.shape[-2] % 2:
                raise ValueError(f"layer {k} max-pools a {out.shape[-2]}x{out.shape[-1]} map; the "
                                 f"2x2 pool needs even sizes: choose another image size")
            pooled, i = F.max_pool2d(out, 2, 2, return_indices=True)
            zc.append(out.sub_(F.interpolate(pooled, scale_factor=2, mode="nearest")))
            a.append(pooled)
            idx.append(i)
        else:
            zc.append(None)
            a.append(out)
            idx.append(None)
        h.append(layer.act(a[-1]))
    return FreeState(h, a, zc, idx)


# ---------------------------------------------------------------------------------------------
# traces
# ---------------------------------------------------------------------------------------------
@dataclass
class PhaseTrace:
    """One nudged phase, recorded after every iteration ``t = 0..T`` (``t = 0``: free state).

    ``energy``: ``(T+1, L)`` per-layer energy ``½‖ε_k‖²``, mean over the batch.
    ``cost``: ``(T+1,)`` mean cost ``C(h_L, y)``.
    ``total``: ``(T+1,)`` mean ``F = E + β_n C`` (β_n the example's signed β).
    ``state_change``: ``(T, L)`` largest absolute change of any unit of layer k in iteration t.
    ``beta``: the phase's signed β (for ``random`` with per-example signs: ``+β`` with
    ``signs`` holding ±1 per example). ``iterations``: iterations run (< K if ``tol`` stopped it).
    Only the final row is kept when tracing is off (``energy`` is then ``(1, L)``).
    """
    beta: float
    energy: torch.Tensor
    cost: torch.Tensor
    total: torch.Tensor
    state_change: torch.Tensor
    iterations: int
    signs: Optional[torch.Tensor] = None

    @property
    def final_energy(self) -> float:
        return float(self.energy[-1].sum())


@dataclass
class Trace:
    """All nudged phases of one estimate, in the order they ran; ``free_cost`` is C at h⁰."""
    phases: list = field(default_factory=list)
    free_cost: float = float("nan")


# ---------------------------------------------------------------------------------------------
# the elementwise work of one update, as pure functions (eager, or fused by torch.compile)
# ---------------------------------------------------------------------------------------------
# Every function takes its tensors in any dtype and computes in the dtype of the free state
# (``a0`` / ``zc``): in fast mode the convolutions' bf16 outputs are read as they are and
# widened inside the fused kernel, and the fused ``drive`` writes the bf16 channels_last input
# of the next transposed convolution directly, so no separate cast pass remains.
def _relu_shift(c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``relu(c + s) − relu(c) = max(s, −c) + min(c, 0)``: exactly ``s`` where ``c`` and
    ``c + s`` are both positive, exactly ``−c`` where the unit switches off."""
    return torch.maximum(s, -c).add_(c.clamp(max=0))


def _widen(t: Opt, like: torch.Tensor) -> Opt:
    return None if t is None else t.to(like.dtype)


def _layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` in the memory format of ``like`` (channels_last or contiguous). A no-op in eager
    mode where it already is; for the compiler it fixes every output of a piece to one layout,
    so that they are written by one kernel in the order the inputs are read (coalesced)."""
    if like.dim() == 4 and not like.is_contiguous() \
            and like.is_contiguous(memory_format=torch.channels_last):
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


def _pool(zc: torch.Tensor, dz: torch.Tensor):
    """``(δa, sel)``: max-pool of ``zc + δz`` (``zc`` from :class:`FreeState`); ``sel`` are
    max_pool2d's flat indices."""
    return F.max_pool2d(zc + dz.to(zc.dtype), 2, 2, return_indices=True)


def _pool_code(zc: torch.Tensor, dz: Opt):
    """``(δa, code)`` as :func:`_pool`, written pointwise for the compiler: ``code`` (uint8) is
    the winner's place in its 2×2 window, 0..3 row-major, the first maximum winning ties and a
    NaN winning like max_pool2d's."""
    z = zc if dz is None else zc + dz.to(zc.dtype)
    # (N, C, 2H, 2W) → (N, C, H, 2, W, 2): the four members of each window have one shape, so
    # that the compiler sees a single iteration space (strided slices would leave it unsure
    # whether 2H and 2W are even, and split the work into two kernels)
    w = z.unflatten(3, (z.shape[3] // 2, 2)).unflatten(2, (z.shape[2] // 2, 2))
    m = w[:, :, :, 0, :, 0]
    code = torch.zeros(m.shape, dtype=torch.uint8, device=m.device)
    for i, v in enumerate((w[:, :, :, 0, :, 1], w[:, :, :, 1, :, 0], w[:, :, :, 1, :, 1]), 1):
        take = (v > m) | torch.isnan(v)
        m = torch.where(take, v, m)
        code = torch.where(take, i, code)
    return _layout(m, zc), _layout(code, zc)


def _unpool_code(g: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_pool_code`'s selection: ``g`` ``(N, C, H, W)`` placed at each
    window's winner of the ``(N, C, 2H, 2W)`` map, zeros elsewhere (written as one pointwise
    expression over the output, for the compiler)."""
    n, c, h, w = g.shape
    place = torch.arange(4, dtype=code.dtype, device=code.device).view(1, 1, 1, 2, 1, 2)
    out = torch.where(code[:, :, :, None, :, None] == place, g[:, :, :, None, :, None],
                      torch.zeros((), dtype=g.dtype, device=g.device))
    return out.reshape(n, c, 2 * h, 2 * w)


def _relu_error(d: Opt, a0: torch.Tensor, da: torch.Tensor) -> torch.Tensor:
    """``ε = d − (relu(a⁰ + δa) − relu(a⁰))`` for a ReLU layer (``d`` None means zero)."""
    eps = _relu_shift(a0, da.to(a0.dtype)).neg_()
    return _layout(eps if d is None else eps.add_(d), a0)


def _relu_drive(d: Opt, a0: torch.Tensor, da: Opt) -> torch.Tensor:
    """``relu'(a⁰ + δa) ⊙ ε`` (``δa`` None means zero; ``d`` None means zero)."""
    if da is None:
        return _layout(d * (a0 > 0), a0)
    da = da.to(a0.dtype)
    return _relu_error(d, a0, da).mul_(da > -a0)


def _drive_code(d: Opt, a0: torch.Tensor, da: Opt, code: Optional[torch.Tensor],
                dtype: torch.dtype, channels_last: bool, scale: Opt = None) -> torch.Tensor:
    """The fused drive of a ReLU conv layer: ``relu'(a⁰ + δa) ⊙ ε`` (times a per-example
    ``scale``, if given), unpooled by ``code`` (None: no pooling), written in ``dtype`` (and
    channels_last): the input of the next transposed convolution, or of the weight gradient."""
    g = _relu_drive(d, a0, da)
    if scale is not None:
        g = g * scale
    if code is not None:
        g = _unpool_code(g, code)
    g = g.to(dtype)
    return g.contiguous(memory_format=torch.channels_last) if channels_last else g


def _mod_pgd_update(a0: torch.Tensor, da: Opt, delta: Opt) -> torch.Tensor:
    """New deviation ``relu(a⁰ + δa + Δ) − h⁰`` (None means zero; not both)."""
    da, delta = _widen(da, a0), _widen(delta, a0)
    return _layout(_relu_shift(a0, delta if da is None else (da if delta is None else da + delta)),
                   a0)


def _pgd_update(a0: torch.Tensor, h0: torch.Tensor, da: Opt, delta: Opt) -> torch.Tensor:
    """New deviation ``relu(relu(a⁰ + δa) + Δ) − h⁰`` (None means zero; not both)."""
    da, delta = _widen(da, a0), _widen(delta, a0)
    df = None if da is None else _relu_shift(a0, da)
    return _layout(_relu_shift(h0, delta if df is None else (df if delta is None else df + delta)),
                   a0)


@dataclass(frozen=True)
class _Elementwise:
    """The elementwise pieces of the nudged phase. ``coded``: pooling selections are 2-bit
    window codes (:func:`_pool_code`) rather than max_pool2d's flat indices."""
    pool: Callable
    relu_error: Callable
    relu_drive: Callable
    mod_pgd_update: Callable
    pgd_update: Callable
    drive: Optional[Callable] = None
    coded: bool = False


_EAGER = _Elementwise(_pool, _relu_error, _relu_drive, _mod_pgd_update, _pgd_update)


@functools.cache
def _fused() -> _Elementwise:
    """The pieces compiled by ``torch.compile`` (lazily; symbolic shapes, so that every layer
    shares one kernel per tensor rank and pattern of absent arguments). Pooling is in its
    pointwise form (window codes), so that the pool, the error, the ReLU derivative, the
    unpooling and the cast to the convolution's dtype each fuse into one kernel."""
    # one code object serves every layer, dtype and pattern of absent (None) arguments: more
    # variants than dynamo's default of 8 per function (a hard error with fullgraph)
    import torch._dynamo.config as dynamo_config
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, limit):
            setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), 64))

    def compiled(f):
        return torch.compile(f, dynamic=True, fullgraph=True)
    return _Elementwise(compiled(_pool_code), compiled(_relu_error), compiled(_relu_drive),
                        compiled(_mod_pgd_update), compiled(_pgd_update),
                        drive=compiled(_drive_code), coded=True)


# ---------------------------------------------------------------------------------------------
# nudged phase
# ---------------------------------------------------------------------------------------------
class NudgedPhase:
    """Equilibrates one nudged phase from the free state and yields ``∂F/∂θ`` at its end.

    Args:
        net: a :class:`workbench.models.PCN`.
        free: the free state; ``ops``: per-layer compute ops; ``y``: labels ``(N,)``.
        beta: ``(N, 1)`` signed β per example. ``cost_name``: ``ce`` | ``mse``.
        update: ``mod_pgd`` | ``pgd``; ``order``: ``async`` | ``sync``.
        fused: run the elementwise work of each update as ``torch.compile``-d kernels.
    """

    def __init__(self, net, free: FreeState, ops: list[_LayerOps], y: torch.Tensor,
                 beta: torch.Tensor, cost_name: str, update: str = "mod_pgd",
                 order: str = "async", fused: bool = False):
        self.net, self.free, self.ops, self.y = net, free, ops, y
        self.beta, self.cost_name, self.update, self.order = beta, cost_name, update, order
        self.L = len(net.layers)
        self._fx = _fused() if fused else _EAGER
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

    # -- cached pieces -------------------------------------------------------------------------
    def _ew(self, name: str, *args):
        """The elementwise piece ``name`` (fused pieces get plain aliases, not views, so that
        no guard depends on a view's base)."""
        if self._fx is _EAGER:
            return getattr(_EAGER, name)(*args)
        return getattr(self._fx, name)(*(a.detach() if isinstance(a, torch.Tensor) else a
                                         for a in args))

    def da(self, k: int) -> Opt:
        """``δa_k = a_k − a⁰_k`` at the current ``d_{k−1}`` (None when it is zero)."""
        if not self._fresh[k]:
            layer, d_in, free = self.net.layers[k - 1], self.d[k - 1], self.free
            if d_in is None:
                self._da[k], self._sel[k] = None, self._free_sel[k]
            else:
                dz = self.ops[k - 1].apply(d_in, bias=False, keep=self._keep)
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
        if self.net.layers[k - 1].activation == "identity":
            da = da.to(self.free.a[k].dtype)
            return -da if d is None else d - da
        return self._ew("relu_error", d, self.free.a[k], da)

    def drive(self, k: int, scale: Opt = None) -> Opt:
        """``g_k = f_k'(a_k) ⊙ ε_k`` (times ``scale``, one factor per example, if given)
        unpooled to the conv output's shape (None when zero).

        Fused, for a conv layer: one kernel that also writes the result in the layer's compute
        dtype and layout, the input of the transposed convolution or the weight gradient."""
        d, da = self.d[k], self.da(k)
        if d is None and da is None:
            return None
        layer, free, op = self.net.layers[k - 1], self.free, self.ops[k - 1]
        if self._fx.drive is not None and op.conv:
            return self._ew("drive", d, free.a[k], da, self._sel[k] if layer.pool else None,
                            op.dtype, op.memory_format == torch.channels_last, scale)
        if layer.activation == "identity":
            g = self.error(k)
        else:
            g = self._ew("relu_drive", d, free.a[k], da)
        if layer.pool:
            g = F.max_unpool2d(g, self._sel[k], 2, 2, output_size=free.zc[k].shape[-2:])
        return g if scale is None else g * scale.view(-1, *([1] * (g.dim() - 1)))

    # -- one update ----------------------------------------------------------------------------
    def _new_deviation(self, k: int) -> Opt:
        free = self.free
        if k == self.L:
            nudge = self.beta * cost_grad(self.cost_name, self.state(k), self.y)
            da = self.da(k)
            return -nudge if da is None else da.to(nudge.dtype) - nudge
        g = self.drive(k + 1)
        delta = None if g is None else self.ops[k].transpose(g, free.h[k].shape, keep=self._keep)
        da = self.da(k)
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
            new = [(k, self._new_deviation(k)) for k in sweep]
            for k, d_new in new:
                old = self.d[k]
                if measure and (d_new is not None or old is not None):
                    diff = d_new if old is None else (-old if d_new is None else d_new - old)
                    change[k - 1] = diff.abs().amax()
                self.d[k] = d_new
                if k < self.L:
                    self._fresh[k + 1] = False
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

    def run(self, iterations: int, tol: Optional[float] = None, record: bool = True,
            signs: Optional[torch.Tensor] = None) -> PhaseTrace:
        """Run up to ``iterations`` iterations (fewer if every state changed by < ``tol``).

        With ``record`` off, only the final iteration's state change is measured (every
        iteration's when ``tol`` is set) and nothing waits for the device inside the loop
        unless ``tol`` is set.
        """
        beta = self.beta.flatten()
        e_rows, c_rows, f_rows, changes = [], [], [], []

        def observe():
            e, c = self.energies(), self.costs()
            e_rows.append(e)
            c_rows.append(c.mean())
            f_rows.append(e.sum() + (beta * c).mean())

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
        return PhaseTrace(beta=mag if signs is not None else float(beta[0]),
                          energy=torch.stack(e_rows).cpu(), cost=torch.stack(c_rows).cpu(),
                          total=torch.stack(f_rows).cpu(), state_change=torch.stack(changes).cpu(),
                          iterations=t, signs=None if signs is None else signs.cpu())

    def state(self, k: int) -> torch.Tensor:
        """``h_k`` at the current nudged state."""
        return self.free.h[k] if self.d[k] is None else self.free.h[k] + self.d[k]

    def param_grads(self, weight: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """``Σ_n w_n ∂F_n/∂θ_k`` per layer k at the current state, ``w`` a ``(N,)`` weight.

        ``∂F/∂θ_k = −(∂f_k/∂θ_k)ᵀ ε_k``: built from the deviation-form ``ε_k``; layers whose
        error is exactly zero are left out.
        """
        out = {}
        for k in range(1, self.L + 1):
            h = self.free.h[k]
            g = self.drive(k, scale=(-weight).to(h.dtype).view(-1, *([1] * (h.dim() - 1))))
            if g is None:
                continue
            out[k] = self.ops[k - 1].param_grads(self.state(k - 1), g)
        return out

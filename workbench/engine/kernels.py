"""The elementwise work of the nudged phase, as pure functions: eager, or fused by
``torch.compile`` (docs/method.md §6).

Every function takes its tensors in any dtype and computes in the dtype of the free state
(``a0`` / ``zc``): in fast mode the convolutions' bf16 outputs are read as they are and widened
inside the fused kernel, and the fused :func:`drive_window` writes the bf16 channels_last input
of the next transposed convolution directly, so no separate cast pass remains. ``None`` stands
for an exactly zero deviation. :data:`EAGER` holds the eager pieces (pooling by max_pool2d's
flat indices); :data:`POINTWISE` the pieces that :func:`compiled` compiles (pooling by 2-bit
window codes, written pointwise so that pool, error, ReLU derivative, unpooling and cast each
fuse into one kernel), which also run as they are: the fused path's logic, eagerly.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

__all__ = ["relu_shift", "pool_indices", "pool_window", "unpool_window", "relu_error",
           "relu_drive", "drive_window", "mod_pgd_update", "pgd_update", "mod_pgd_step",
           "pgd_step", "linear_update", "linear_step", "Elementwise", "EAGER", "POINTWISE",
           "compiled"]

Opt = Optional[torch.Tensor]


def relu_shift(c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``relu(c + s) − relu(c) = max(s, −c) + min(c, 0)``: exactly ``s`` where ``c`` and
    ``c + s`` are both positive, exactly ``−c`` where the unit switches off."""
    return torch.maximum(s, -c).add_(c.clamp(max=0))


def widen(t: Opt, like: torch.Tensor) -> Opt:
    return None if t is None else t.to(like.dtype)


def match_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` in the memory format of ``like`` (channels_last or contiguous). A no-op in eager
    mode where it already is; for the compiler it fixes every output of a piece to one layout,
    so that they are written by one kernel in the order the inputs are read (coalesced)."""
    if like.dim() == 4 and not like.is_contiguous() \
            and like.is_contiguous(memory_format=torch.channels_last):
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


def pool_indices(zc: torch.Tensor, dz: torch.Tensor):
    """``(δa, sel)``: max-pool of ``zc + δz`` (``zc`` from :class:`FreeState`); ``sel`` are
    max_pool2d's flat indices."""
    return F.max_pool2d(zc + dz.to(zc.dtype), 2, 2, return_indices=True)


def pool_window(zc: torch.Tensor, dz: Opt):
    """``(δa, code)`` as :func:`pool_indices`, written pointwise for the compiler: ``code`` (uint8) is
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
    return match_layout(m, zc), match_layout(code, zc)


def unpool_window(g: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pool_window`'s selection: ``g`` ``(N, C, H, W)`` placed at each
    window's winner of the ``(N, C, 2H, 2W)`` map, zeros elsewhere (written as one pointwise
    expression over the output, for the compiler)."""
    n, c, h, w = g.shape
    place = torch.arange(4, dtype=code.dtype, device=code.device).view(1, 1, 1, 2, 1, 2)
    out = torch.where(code[:, :, :, None, :, None] == place, g[:, :, :, None, :, None],
                      torch.zeros((), dtype=g.dtype, device=g.device))
    return out.reshape(n, c, 2 * h, 2 * w)


def relu_error(d: Opt, a0: torch.Tensor, da: torch.Tensor) -> torch.Tensor:
    """``ε = d − (relu(a⁰ + δa) − relu(a⁰))`` for a ReLU layer (``d`` None means zero)."""
    eps = relu_shift(a0, da.to(a0.dtype)).neg_()
    return match_layout(eps if d is None else eps.add_(d), a0)


def relu_drive(d: Opt, a0: torch.Tensor, da: Opt) -> torch.Tensor:
    """``relu'(a⁰ + δa) ⊙ ε`` (``δa`` None means zero; ``d`` None means zero)."""
    if da is None:
        return match_layout(d * (a0 > 0), a0)
    da = da.to(a0.dtype)
    return relu_error(d, a0, da).mul_(da > -a0)


def drive_window(d: Opt, a0: torch.Tensor, da: Opt, code: Optional[torch.Tensor],
                dtype: torch.dtype, channels_last: bool, scale: Opt = None) -> torch.Tensor:
    """The fused drive of a ReLU conv layer: ``relu'(a⁰ + δa) ⊙ ε`` (times a per-example
    ``scale``, if given), unpooled by ``code`` (None: no pooling), written in ``dtype`` (and
    channels_last): the input of the next transposed convolution, or of the weight gradient."""
    g = relu_drive(d, a0, da)
    if scale is not None:
        g = g * scale
    if code is not None:
        g = unpool_window(g, code)
    g = g.to(dtype)
    return g.contiguous(memory_format=torch.channels_last) if channels_last else g


def mod_pgd_update(a0: torch.Tensor, da: Opt, delta: Opt) -> torch.Tensor:
    """New deviation ``relu(a⁰ + δa + Δ) − h⁰`` (None means zero; not both)."""
    da, delta = widen(da, a0), widen(delta, a0)
    s = delta if da is None else (da if delta is None else da + delta)
    return match_layout(relu_shift(a0, s), a0)


def pgd_update(a0: torch.Tensor, h0: torch.Tensor, da: Opt, delta: Opt) -> torch.Tensor:
    """New deviation ``relu(relu(a⁰ + δa) + Δ) − h⁰`` (None means zero; not both)."""
    da, delta = widen(da, a0), widen(delta, a0)
    df = None if da is None else relu_shift(a0, da)
    s = delta if df is None else (df if delta is None else df + delta)
    return match_layout(relu_shift(h0, s), a0)


def mod_pgd_step(a0: torch.Tensor, d: Opt, da: Opt, delta: Opt, alpha: float) -> torch.Tensor:
    """mod-PGD with step size ``alpha``: new deviation ``relu((1 − α) h + α (a + Δ)) − h⁰``
    with ``h = h⁰ + d``, ``a = a⁰ + δa`` (docs/method.md §2). Since ``h⁰ − a⁰ = relu(−a⁰)``,
    that is ``relu_shift(a⁰, (1 − α)(relu(−a⁰) + d) + α(δa + Δ))``."""
    d, da, delta = widen(d, a0), widen(da, a0), widen(delta, a0)
    inner = torch.relu(-a0) if d is None else torch.relu(-a0) + d
    drive = da if delta is None else (delta if da is None else da + delta)
    s = (1 - alpha) * inner if drive is None else (1 - alpha) * inner + alpha * drive
    return match_layout(relu_shift(a0, s), a0)


def pgd_step(a0: torch.Tensor, h0: torch.Tensor, d: Opt, da: Opt, delta: Opt,
             alpha: float) -> torch.Tensor:
    """PGD with step size ``alpha``: ``relu(h − α ∂F/∂h) − h⁰ = relu((1 − α) h + α (f + Δ)) − h⁰``
    with ``f = relu(a⁰ + δa)`` (Eq. 15), i.e. ``relu_shift(h⁰, (1 − α) d + α (δf + Δ))``."""
    d, da, delta = widen(d, a0), widen(da, a0), widen(delta, a0)
    df = None if da is None else relu_shift(a0, da)
    drive = df if delta is None else (delta if df is None else df + delta)
    if d is None:
        s = alpha * drive
    else:
        s = (1 - alpha) * d if drive is None else (1 - alpha) * d + alpha * drive
    return match_layout(relu_shift(h0, s), a0)


def linear_update(a0: torch.Tensor, da: Opt, delta: Opt) -> torch.Tensor:
    """New deviation of an identity (linear) hidden layer, ``a⁰ + δa + Δ − h⁰ = δa + Δ`` (its
    state is its pre-activation, ``h⁰ = a⁰``; None means zero; not both)."""
    da, delta = widen(da, a0), widen(delta, a0)
    return match_layout(delta if da is None else (da if delta is None else da + delta), a0)


def linear_step(a0: torch.Tensor, d: Opt, da: Opt, delta: Opt, alpha: float) -> torch.Tensor:
    """An identity hidden layer with step size ``alpha``: ``(1 − α) d + α (δa + Δ)``."""
    d, da, delta = widen(d, a0), widen(da, a0), widen(delta, a0)
    drive = da if delta is None else (delta if da is None else da + delta)
    if d is None:
        return match_layout(alpha * drive, a0)
    s = (1 - alpha) * d if drive is None else (1 - alpha) * d + alpha * drive
    return match_layout(s, a0)


@dataclass(frozen=True)
class Elementwise:
    """The elementwise pieces of the nudged phase. ``coded``: pooling selections are 2-bit
    window codes (:func:`pool_window`) rather than max_pool2d's flat indices."""
    pool: Callable
    relu_error: Callable
    relu_drive: Callable
    mod_pgd_update: Callable
    pgd_update: Callable
    mod_pgd_step: Callable
    pgd_step: Callable
    linear_update: Callable
    linear_step: Callable
    drive: Optional[Callable] = None
    coded: bool = False


EAGER = Elementwise(pool_indices, relu_error, relu_drive, mod_pgd_update, pgd_update,
                    mod_pgd_step, pgd_step, linear_update, linear_step)

# what the fused path compiles, before compiling: runs eagerly too (a check of its logic that
# needs no compiler, and the way to step through it in a debugger)
POINTWISE = Elementwise(pool_window, relu_error, relu_drive, mod_pgd_update, pgd_update,
                        mod_pgd_step, pgd_step, linear_update, linear_step, drive=drive_window,
                        coded=True)


@functools.cache
def compiled() -> Elementwise:
    """:data:`POINTWISE`, each piece compiled by ``torch.compile`` (lazily; symbolic shapes, so
    that every layer shares one kernel per tensor rank and pattern of absent arguments).
    Pooling is in its pointwise form (window codes), so that the pool, the error, the ReLU
    derivative, the unpooling and the cast to the convolution's dtype each fuse into one
    kernel."""
    # one code object serves every layer, dtype and pattern of absent (None) arguments: more
    # variants than dynamo's default of 8 per function (a hard error with fullgraph)
    import torch._dynamo.config as dynamo_config
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, limit):
            setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), 64))
    return dataclasses.replace(POINTWISE, **{
        f.name: torch.compile(getattr(POINTWISE, f.name), dynamic=True, fullgraph=True)
        for f in dataclasses.fields(POINTWISE) if callable(getattr(POINTWISE, f.name))})

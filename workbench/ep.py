"""Equilibrium-propagation gradient estimators and the backprop reference (METHOD.md §3).

``estimate(net, x, y, scheme=..., beta=..., iterations=...)`` writes an estimate of the gradient
of the **batch-mean** cost into every parameter's ``.grad`` (accumulating, like
``loss.backward()``), so any torch optimizer, scheduler or DDP wrapper works unchanged.

Schemes (``beta`` is the magnitude β > 0; the scheme sets the sign):

* ``forward``   one phase at +β:  ``∇ ≈ (1/β) ∂F/∂θ(h^{+β})``
* ``backward``  one phase at −β:  ``∇ ≈ (1/(−β)) ∂F/∂θ(h^{−β})``
* ``random``    one phase, the sign of β drawn per example (or per batch)
* ``centered``  two phases:       ``∇ ≈ (1/(2β)) [∂F/∂θ(h^{+β}) − ∂F/∂θ(h^{−β})]``  (bias O(β²))
* ``bp``        the backprop gradient of the mean cost at the free state (the reference)

The free-phase term ``∂F/∂θ(h⁰)`` is zero for a PCN, so it never appears.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from . import energy
from .energy import check_cost
from .equilibrate import (ORDERS, UPDATES, NudgedPhase, Precision, Trace, _LayerOps, free_phase,
                          precision_context)

SCHEMES = ("forward", "backward", "centered", "random")
ALL_SCHEMES = SCHEMES + ("bp",)
SIGN_MODES = ("example", "batch")

__all__ = ["SCHEMES", "ALL_SCHEMES", "SIGN_MODES", "Estimate", "estimate", "bp_gradients",
           "compare", "check_batch"]


@dataclass
class Estimate:
    """What :func:`estimate` returns.

    ``grads``: parameter name (as in ``net.named_parameters()``) → gradient estimate, in the
    parameter's dtype. ``trace``: one :class:`~workbench.equilibrate.PhaseTrace` per nudged phase
    (none for ``bp``) and the free cost. ``loss``: mean cost at the free state (the forward pass).
    ``logits``: the free-phase output, ``(N, classes)``, detached.
    """
    grads: dict
    trace: Trace
    loss: float
    logits: torch.Tensor
    scheme: str
    beta: float
    iterations: int


def _check_choice(what: str, value, accepted) -> None:
    if value not in accepted:
        raise ValueError(f"unknown {what} {value!r}; accepted: {', '.join(map(str, accepted))}")


def check_batch(net, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a batch against the model; return ``x`` in the parameters' dtype and ``y``."""
    p = next(net.parameters())
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError("x and y must be torch tensors")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    want = tuple(net.in_shape)
    if x.dim() < 2 or (tuple(x.shape[1:]) != want and not (
            net.layers[0].kind == "dense" and math.prod(x.shape[1:]) == math.prod(want))):
        raise ValueError(f"x must have shape (N, {', '.join(map(str, want))}) for this "
                         f"{getattr(net, 'name', 'model')}, got {tuple(x.shape)}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"y must hold integer class indices (int64), got dtype {y.dtype}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape (N,) = ({x.shape[0]},), got {tuple(y.shape)}")
    if x.device != p.device or y.device != p.device:
        raise ValueError(f"x ({x.device}) and y ({y.device}) must be on the model's device "
                         f"({p.device})")
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one example, got an empty batch")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= net.num_classes):
        raise ValueError(f"labels must lie in [0, {net.num_classes}), got range "
                         f"[{int(y.min())}, {int(y.max())}]")
    return x.to(p.dtype), y.long()


def _write_grads(net, grads: dict, accumulate: bool = True) -> None:
    for name, p in net.named_parameters():
        g = grads[name]
        if p.grad is None or not accumulate:
            p.grad = g.clone()
        else:
            p.grad.add_(g)


def bp_gradients(net, x: torch.Tensor, y: torch.Tensor, cost_name: str = "ce",
                 precision: str = "strict") -> tuple[dict, float, torch.Tensor]:
    """Backprop gradient of the batch-mean cost at the free state, without touching ``.grad``.

    Returns ``(grads, mean cost, logits)``. ``precision="fast"`` runs the forward pass under
    bfloat16 autocast (on CUDA with channels_last), the usual mixed-precision BP.
    """
    check_cost(cost_name)
    params = [p for _, p in net.named_parameters()]
    prec = Precision.make(precision, params[0].dtype, params[0].device)
    with precision_context(prec), torch.enable_grad():
        if prec.name == "fast":
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                xin = x.contiguous(memory_format=torch.channels_last) \
                    if prec.channels_last and x.dim() == 4 else x
                logits = net(xin)
            logits = logits.float()
        else:
            logits = net(x)
        loss = energy.cost(cost_name, logits, y).mean()
        gs = torch.autograd.grad(loss, params)
    names = [n for n, _ in net.named_parameters()]
    return dict(zip(names, gs)), float(loss.detach()), logits.detach()


def estimate(net, x: torch.Tensor, y: torch.Tensor, scheme: str = "centered", beta: float = 0.05,
             iterations: int = 10, cost: str = "ce", *, update: str = "mod_pgd",
             order: str = "async", signs="example", tol: Optional[float] = None,
             precision: str = "strict", trace: bool = True, accumulate: bool = True,
             generator: Optional[torch.Generator] = None, fused: bool = False) -> Estimate:
    """Estimate the gradient of the batch-mean cost and write it into ``.grad``.

    Args:
        net: a PCN from :func:`workbench.models.build`.
        x: inputs ``(N, *net.in_shape)``, floating point (cast to the parameters' dtype).
        y: class indices ``(N,)``, integer.
        scheme: ``forward`` | ``backward`` | ``centered`` | ``random`` | ``bp``.
        beta: nudging strength β > 0 (its sign comes from the scheme).
        iterations: K ≥ 1 iterations per nudged phase.
        cost: ``ce`` | ``mse``.
        update: ``mod_pgd`` (default) | ``pgd``. order: ``async`` (default) | ``sync``.
        signs: for ``random``: ``example`` (default, a sign per example) | ``batch`` (one sign) |
            a ``(N,)`` tensor of ±1 (signs chosen by the caller, e.g. drawn for a global batch
            and sliced per process).
        tol: stop a phase early once no state changed by more than ``tol`` in an iteration.
        precision: ``strict`` (the parameters' dtype, TF32 off) | ``fast`` (bf16 convs).
        trace: record every iteration (else only the final energies and cost).
        accumulate: add to existing ``.grad`` like ``backward()`` (default), or overwrite.
        generator: RNG for the ``random`` scheme's signs (default: torch's global RNG).
        fused: compile each update's elementwise work into single kernels with
            ``torch.compile`` (same results up to rounding; first call compiles; off by default
            until measured on the GPU, see BENCHMARKS.md).

    The parameters and the inputs are never modified.
    """
    _check_choice("scheme", scheme, ALL_SCHEMES)
    check_cost(cost)
    _check_choice("update rule", update, UPDATES)
    _check_choice("order", order, ORDERS)
    if scheme != "bp":
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta):
            raise ValueError(f"beta must be a finite positive number, got {beta!r}")
        if beta <= 0:
            raise ValueError(f"beta must be > 0 (the scheme sets the sign: 'backward' nudges "
                             f"with -beta), got {beta!r}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float))
                            or not tol >= 0):
        raise ValueError(f"tol must be None or a number >= 0, got {tol!r}")
    x, y = check_batch(net, x, y)
    if isinstance(signs, torch.Tensor):
        if scheme != "random":
            raise ValueError("a tensor of signs is only accepted with scheme='random'")
        if signs.shape != (x.shape[0],) or not bool(((signs == 1) | (signs == -1)).all()):
            raise ValueError(f"signs as a tensor must have shape ({x.shape[0]},) and hold only "
                             f"+1 and -1, got shape {tuple(signs.shape)}")
    else:
        _check_choice("sign mode", signs, SIGN_MODES)
    names = [n for n, _ in net.named_parameters()]

    if scheme == "bp":
        grads, loss, logits = bp_gradients(net, x, y, cost, precision)
        _write_grads(net, grads, accumulate)
        return Estimate(grads, Trace(free_cost=loss), loss, logits, scheme, float(beta), 0)

    p0 = next(net.parameters())
    prec = Precision.make(precision, p0.dtype, p0.device)
    n = x.shape[0]
    with precision_context(prec), torch.no_grad():
        ops = [_LayerOps(layer, prec) for layer in net.layers]
        free = free_phase(net, x, ops, prec)
        sdt, dev = prec.state, x.device
        if scheme == "random" and isinstance(signs, torch.Tensor):
            sign_list = [signs.to(dev, sdt)]
        elif scheme == "random":
            shape = (n,) if signs == "example" else (1,)
            draw = torch.randint(0, 2, shape, generator=generator,
                                 device=generator.device if generator is not None else "cpu")
            sign_list = [(draw.to(dev, sdt) * 2 - 1).expand(n)]
        else:
            sign_list = {"forward": [1.0], "backward": [-1.0], "centered": [1.0, -1.0]}[scheme]
            sign_list = [torch.full((n,), s, dtype=sdt, device=dev) for s in sign_list]
        totals: dict[int, list] = {}
        tr = Trace(free_cost=float(energy.cost(cost, free.logits, y).mean()))
        for s in sign_list:
            b = beta * s
            phase = NudgedPhase(net, free, ops, y, b.view(-1, 1), cost, update, order, fused)
            tr.phases.append(phase.run(iterations, tol=tol, record=trace,
                                       signs=s if scheme == "random" else None))
            weight = 1.0 / (b * n * len(sign_list))
            for k, (gw, gb) in phase.param_grads(weight).items():
                if k in totals:
                    totals[k][0] += gw
                    totals[k][1] += gb
                else:
                    totals[k] = [gw, gb]
        grads = {}
        for k, layer in enumerate(net.layers, start=1):
            gw, gb = totals.get(k, (torch.zeros_like(layer.weight), torch.zeros_like(layer.bias)))
            grads[f"layers.{k - 1}.weight"], grads[f"layers.{k - 1}.bias"] = gw, gb
        grads = {name: grads[name] for name in names}
    _write_grads(net, grads, accumulate)
    return Estimate(grads, tr, tr.free_cost, free.logits.detach(), scheme, float(beta), iterations)


def compare(net, estimate_grads: dict, reference_grads: dict) -> list[dict]:
    """Per-layer cosine and relative error of an estimate against a reference gradient.

    Each layer's weight and bias gradients are concatenated. Returns one dict per layer:
    ``{"layer": k, "cosine": c, "rel_error": ‖g − r‖/‖r‖, "norm": ‖g‖, "ref_norm": ‖r‖}``.
    Computed in float64.
    """
    rows = []
    for k, layer in enumerate(net.layers, start=1):
        keys = [f"layers.{k - 1}.weight", f"layers.{k - 1}.bias"]
        g = torch.cat([estimate_grads[q].detach().double().flatten() for q in keys])
        r = torch.cat([reference_grads[q].detach().double().flatten().to(g.device) for q in keys])
        gn, rn = float(g.norm()), float(r.norm())
        cos = float(g @ r) / (gn * rn) if gn > 0 and rn > 0 else float("nan")
        rel = float((g - r).norm()) / rn if rn > 0 else float("nan")
        rows.append({"layer": k, "kind": layer.kind, "cosine": cos, "rel_error": rel,
                     "norm": gn, "ref_norm": rn})
    return rows

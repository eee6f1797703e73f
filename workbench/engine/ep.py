"""Equilibrium-propagation gradient estimators and the backprop reference (docs/method.md §3).

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
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from . import energy
from .blocks import couples_examples, frozen_statistics
from .equilibrate import NudgedPhase, free_phase
from .precision import Precision, forward, precision_context
from .recording import Trace
from .settings import ALL_SCHEMES, SCHEMES, SIGN_MODES, EstimatorSettings

__all__ = ["SCHEMES", "ALL_SCHEMES", "SIGN_MODES", "EstimatorSettings", "Estimate", "estimate",
           "bp_gradients", "compare", "relative_error", "check_batch", "random_signs",
           "trainable"]


@dataclass
class Estimate:
    """What :func:`estimate` returns.

    ``grads``: parameter name (as in ``net.named_parameters()``) → gradient estimate, in the
    parameter's dtype. ``trace``: one :class:`~workbench.engine.equilibrate.PhaseTrace` per nudged phase
    (none for ``bp``) and the free cost. ``loss``: mean cost at the free state (the forward pass).
    ``logits``: the free-phase output, ``(N, classes)``, detached. ``settings``: what computed it.
    """
    grads: dict
    trace: Trace
    loss: float
    logits: torch.Tensor
    settings: EstimatorSettings

    @property
    def scheme(self) -> str:
        return self.settings.scheme

    @property
    def beta(self) -> float:
        return float(self.settings.beta)

    @property
    def iterations(self) -> int:
        return 0 if self.settings.scheme == "bp" else self.settings.iterations


def random_signs(n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``n`` signs ±1 (int64, on the generator's device, else the CPU), each +1 or −1 with
    probability ½: the ``random`` scheme's draw."""
    device = generator.device if generator is not None else "cpu"
    return torch.randint(0, 2, (n,), generator=generator, device=device) * 2 - 1


def check_batch(net, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a batch against the model; return ``x`` in the parameters' dtype and ``y``."""
    p = next(net.parameters())
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError("x and y must be torch tensors")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must be a batch (N, ...) of inputs, got shape {tuple(x.shape)}")
    net.infer_shapes(x.to(p.device, p.dtype))
    want = tuple(net.in_shape)
    flat_ok = not getattr(net.layers[0], "spatial", True)       # a dense first layer flattens
    if (tuple(x.shape[1:]) != want and not (
            flat_ok and math.prod(x.shape[1:]) == math.prod(want))):
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


def trainable(net) -> list:
    """``[(name, parameter)]`` of the parameters that require a gradient, in
    ``named_parameters()`` order: what every estimate (and BP) writes."""
    return [(n, p) for n, p in net.named_parameters() if p.requires_grad]


def _write_grads(net, grads: dict, accumulate: bool) -> None:
    for name, p in trainable(net):
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
    energy.check_cost(cost_name)
    named = trainable(net)
    params = [p for _, p in named]
    prec = Precision.make(precision, params[0].dtype, params[0].device)
    with precision_context(prec), torch.enable_grad():
        logits = forward(net, x, prec)
        loss = energy.cost(cost_name, logits, y).mean()
        gs = torch.autograd.grad(loss, params, allow_unused=True)
    gs = [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]  # unused: zero
    return dict(zip([n for n, _ in named], gs)), float(loss.detach()), logits.detach()


_FUSED_BROKEN: list = []        # set once when compiling the fused path failed (fused=None)


def _compile_error(e: Exception) -> bool:
    """Did ``torch.compile`` fail (dynamo, inductor or its C++/CUDA compiler)? Other errors, an
    out-of-memory for one, are not a reason to drop the fused kernels."""
    import torch._dynamo.exc as dynamo_exc
    import torch._inductor.exc as inductor_exc
    kinds = tuple(getattr(mod, name) for mod, name in (
        (dynamo_exc, "TorchDynamoException"), (inductor_exc, "InductorError"),
        (inductor_exc, "CppCompileError"), (inductor_exc, "CUDACompileError"))
        if hasattr(mod, name))
    return isinstance(e, kinds)


def _check_signs(signs: torch.Tensor, scheme: str, n: int) -> None:
    if scheme != "random":
        raise ValueError("a tensor of signs is only accepted with scheme='random'")
    if signs.shape != (n,) or not bool(((signs == 1) | (signs == -1)).all()):
        raise ValueError(f"signs as a tensor must have shape ({n},) and hold only +1 and -1, "
                         f"got shape {tuple(signs.shape)}")


def _phase_signs(s: EstimatorSettings, n: int, signs: Optional[torch.Tensor],
                 generator: Optional[torch.Generator], device, dtype) -> list[torch.Tensor]:
    """One ``(n,)`` tensor of ±1 per nudged phase."""
    if s.scheme == "random":
        if signs is None:
            draw = random_signs(n if s.signs == "example" else 1, generator)
            signs = draw.expand(n)
        return [signs.to(device, dtype)]
    values = {"forward": [1.0], "backward": [-1.0], "centered": [1.0, -1.0], "il": [1.0]}[s.scheme]
    return [torch.full((n,), v, dtype=dtype, device=device) for v in values]


def phase_options(s: EstimatorSettings) -> dict:
    """The nudged phase's options for settings ``s``: EP's perturbation and update rule, or
    inference learning's (``il``: the output clamped at β = 1 — onehot(y), or with the CE cost
    the cross-entropy of the prediction as the output's energy — projected gradient descent
    with the state optimizer, the cost reported at the prediction)."""
    if s.scheme == "il":
        return dict(perturbation="clamp", update="pgd",
                    output_energy="ce" if s.cost == "ce" else "squared",
                    state_optimizer=s.state_optimizer, state_momentum=s.state_momentum,
                    prediction_cost=True)
    return dict(perturbation=s.perturbation, update=s.update)


def _ep_gradients(net, x, y, s: EstimatorSettings, prec: Precision, sign_list, fused: bool,
                  trace: bool, diagnostics: bool):
    """The free phase, one nudged phase per entry of ``sign_list`` (running statistics frozen),
    and the summed estimate, by parameter name (zero where a layer's error stayed zero)."""
    n = x.shape[0]
    with precision_context(prec), torch.no_grad():
        free = free_phase(net, x, prec)
        totals: dict[str, torch.Tensor] = {}
        tr = Trace(free_cost=float(energy.cost(s.cost, free.logits, y).mean()))
        with frozen_statistics(net):
            for sign in sign_list:
                b = sign if s.scheme == "il" else s.beta * sign
                phase = NudgedPhase(net, free, y, b.view(-1, 1), s.cost, order=s.order,
                                    fused=fused, step_size=s.step_size, **phase_options(s))
                tr.phases.append(phase.run(s.iterations, tol=s.tol, record=trace,
                                           signs=sign if s.scheme == "random" else None,
                                           diagnostics=diagnostics))
                weight = 1.0 / (b * n * len(sign_list))
                for name, g in phase.param_grads(weight).items():
                    if name in totals:
                        totals[name] += g
                    else:
                        totals[name] = g
    grads = {name: totals[name] if name in totals else torch.zeros_like(p)
             for name, p in trainable(net)}
    return grads, tr, free.logits.detach()


def estimate(net, x: torch.Tensor, y: torch.Tensor, settings: Optional[EstimatorSettings] = None,
             *, signs=None, trace: bool = True, accumulate: bool = True,
             generator: Optional[torch.Generator] = None, diagnostics: bool = False,
             **overrides) -> Estimate:
    """Estimate the gradient of the batch-mean cost and write it into ``.grad``.

    Args:
        net: a PCN from :func:`workbench.engine.models.build`.
        x: inputs ``(N, *net.in_shape)``, floating point (cast to the parameters' dtype).
        y: class indices ``(N,)``, integer.
        settings: an :class:`~workbench.engine.settings.EstimatorSettings` (default: its defaults);
            ``overrides`` replace single fields: ``estimate(net, x, y, scheme="forward",
            beta=0.01)`` — scheme, beta, iterations, cost, update, order, signs, tol,
            precision, fused (see the dataclass).
        signs: for ``random``: ``example`` | ``batch`` (the ``signs`` setting), or a ``(N,)``
            tensor of ±1 chosen by the caller (e.g. drawn for a global batch and sliced per
            process).
        trace: record every iteration (else only the final energies and cost).
        accumulate: add to existing ``.grad`` like ``backward()`` (default), or overwrite.
        generator: RNG for the ``random`` scheme's signs (default: torch's global RNG).
        diagnostics: also record, per layer, the switched ReLU units, the changed pooling
            winners and the fixed-point residual (``PhaseTrace.switched`` etc.; one extra
            update of every layer per recorded row).

    With ``fused`` left at None (auto) on CUDA, a failure to compile the fused kernels is
    reported once as a warning and the eager kernels are used from then on.
    The parameters and the inputs are never modified.
    """
    tensor_signs = signs if isinstance(signs, torch.Tensor) else None
    if signs is not None and tensor_signs is None:
        overrides["signs"] = signs
    s = (settings or EstimatorSettings()).replace(**overrides)
    x, y = check_batch(net, x, y)
    if tensor_signs is not None:
        _check_signs(tensor_signs, s.scheme, x.shape[0])
    if s.scheme == "bp":
        grads, loss, logits = bp_gradients(net, x, y, s.cost, s.precision)
        _write_grads(net, grads, accumulate)
        return Estimate(grads, Trace(free_cost=loss), loss, logits, s)

    p0 = next(net.parameters())
    linear = net.wiring.linear
    if s.precision == "fast" and not linear:
        raise ValueError("precision='fast' is only for networks of built-in conv/dense layers: "
                         "a general block's deviation g(h⁰ + d) − g(h⁰) is a difference of two "
                         "O(1) values, which bf16 or TF32 cannot carry (docs/method.md §9); use "
                         "'strict' (or 'auto', which picks it)")
    r = s.resolved(p0.dtype, p0.device, linear=linear)
    prec = Precision.make(r.precision, p0.dtype, p0.device, linear=linear)
    sign_list = _phase_signs(s, x.shape[0], tensor_signs, generator, x.device, prec.state)
    if len(sign_list) == 1 and bool((sign_list[0] != sign_list[0][0]).any()) \
            and couples_examples(net):
        raise ValueError("the random scheme with a sign of beta per example needs an energy "
                         "that is a sum over examples, but train-mode BatchNorm couples the "
                         "examples of a batch (docs/method.md §9): use signs='batch' (one sign "
                         "per batch), another scheme, or the model in eval mode")
    auto = s.fused is None
    fused = r.fused and not (auto and _FUSED_BROKEN)
    try:
        grads, tr, logits = _ep_gradients(net, x, y, s, prec, sign_list, fused, trace,
                                          diagnostics)
    except Exception as e:      # only the automatic choice falls back; fused=True raises
        if not (auto and fused and _compile_error(e)):
            raise
        _FUSED_BROKEN.append(repr(e))
        warnings.warn(f"compiling the fused elementwise kernels failed ({type(e).__name__}: "
                      f"{e}); using the eager kernels from now on (pass fused=False to "
                      f"silence this)", RuntimeWarning, stacklevel=2)
        grads, tr, logits = _ep_gradients(net, x, y, s, prec, sign_list, False, trace,
                                          diagnostics)
    grads = {name: grads[name] for name, _ in trainable(net)}
    _write_grads(net, grads, accumulate)
    return Estimate(grads, tr, tr.free_cost, logits, s)


def _flat(grads: dict, keys: list[str], device=None) -> torch.Tensor:
    if not keys:
        return torch.zeros(0, dtype=torch.float64, device=device)
    return torch.cat([grads[k].detach().double().flatten().to(device) for k in keys])


def compare(net, estimate_grads: dict, reference_grads: dict) -> list[dict]:
    """Per-layer cosine and relative error of an estimate against a reference gradient.

    Each map's gradients (a layer's weight and bias, or every parameter of a general block)
    are concatenated. Returns one dict per layer: ``{"layer": k, "kind": …, "cosine": c,
    "rel_error": ‖g − r‖/‖r‖, "norm": ‖g‖, "ref_norm": ‖r‖}`` (``kind``: ``conv`` | ``dense``
    | ``block``; NaN for a layer without trainable parameters), then one per skip (``"layer":
    "2→5"``, ``"kind": "skip"``). Computed in float64.
    """
    rows = []
    for e in net.wiring.edges:
        keys = [n for n in reference_grads if n.startswith(e.prefix + ".")]
        g = _flat(estimate_grads, keys)
        r = _flat(reference_grads, keys, g.device)
        gn, rn = float(g.norm()), float(r.norm())
        cos = float(g @ r) / (gn * rn) if gn > 0 and rn > 0 else float("nan")
        rel = float((g - r).norm()) / rn if rn > 0 else float("nan")
        rows.append({"layer": e.dst if e.chain else f"{e.src}→{e.dst}",
                     "kind": e.module.kind if e.linear else "block", "cosine": cos,
                     "rel_error": rel, "norm": gn, "ref_norm": rn})
    return rows


def relative_error(estimate_grads: dict, reference_grads: dict,
                   layer: Optional[int] = None) -> float:
    """``‖g − r‖ / ‖r‖`` over all parameters, or over layer ``layer`` (1-based) only, in
    float64 (the whole-model companion of :func:`compare`)."""
    keys = [k for k in reference_grads if layer is None or k.startswith(f"layers.{layer - 1}.")]
    g = _flat(estimate_grads, keys)
    r = _flat(reference_grads, keys, g.device)
    return float((g - r).norm() / r.norm())

"""The PCN energy and the costs, written plainly (docs/method.md §1).

Sign conventions, stated once:

* prediction error      ``ε_k = h_k − f_k(θ_k, h_{k−1})``            (state minus prediction)
* energy                ``E = ½ Σ_k ‖ε_k‖²``                           (per example)
* total energy          ``F = E + β · C(h_L, y)``                     (β > 0 pulls towards y)
* cost ``ce``           ``C = −log softmax(h_L)[y]``,   ``∂C/∂h_L = softmax(h_L) − onehot(y)``
* cost ``mse``          ``C = ½ ‖h_L − onehot(y)‖²``,   ``∂C/∂h_L = h_L − onehot(y)``
* parameter gradient    ``∂F/∂θ_k = −(∂f_k/∂θ_k)ᵀ ε_k``               (C has no θ)

The free phase (β = 0) is the forward pass: every ``ε_k = 0`` and ``E = 0``.
The engine in :mod:`workbench.engine.equilibrate` never evaluates these formulas in this form (it carries
deviations from the free state for precision); this module is the readable definition that the
tests use as an oracle and the widgets use to explain.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

COSTS = ("ce", "mse")

__all__ = ["COSTS", "check_cost", "cost", "cost_grad", "layer_energies", "total_energy"]


def check_cost(name: str) -> str:
    if name not in COSTS:
        raise ValueError(f"unknown cost {name!r}; accepted: {', '.join(COSTS)}")
    return name


def cost(name: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cost ``C(h_L, y)``, shape ``(N,)``. ``y`` holds class indices, int64."""
    check_cost(name)
    if name == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return 0.5 * (logits - target).pow(2).sum(1)


def cost_grad(name: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``∂C/∂h_L`` per example, shape ``(N, classes)``, in closed form."""
    check_cost(name)
    target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    if name == "ce":
        return torch.softmax(logits, 1) - target
    return logits - target


def layer_energies(net, states: list[torch.Tensor]) -> torch.Tensor:
    """``½‖ε_k‖²`` per example and layer, shape ``(N, L)``, from states ``[h_0, …, h_L]``."""
    errs = [states[k] - net.predict(k, states) for k in range(1, len(net.layers) + 1)]
    return torch.stack([0.5 * e.flatten(1).pow(2).sum(1) for e in errs], 1)


def total_energy(net, states: list[torch.Tensor], y: torch.Tensor, beta, cost_name: str):
    """``F = E + β·C`` per example, shape ``(N,)``; ``beta`` a float or a ``(N,)`` tensor."""
    return layer_energies(net, states).sum(1) + beta * cost(cost_name, states[-1], y)

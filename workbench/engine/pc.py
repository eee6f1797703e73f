"""Incremental predictive coding (iPC; Salvatori et al., "A stable, fast, and fully automatic
learning algorithm for predictive coding networks", ICLR 2024), docs/method.md §10.

Inference learning (IL, ``ep.estimate(scheme="il")``) relaxes the states with the weights fixed,
then takes one weight step. iPC interleaves the two: after every inference step on the states the
optimizer takes a step on the weights, from ∂E/∂θ at the states as they are. The weights move
inside the relaxation, so the free state the engine's deviation form is measured from does not
stay fixed; this module therefore works on full states, with E written plainly (as
:mod:`workbench.engine.energy` writes it) and differentiated by autograd — any PCN the engine takes
(built-in layers, skips, general blocks) works, with BatchNorm's running statistics moved once
per training step, by the forward pass.

One training step on a batch ``(x, y)``: the states from the forward pass, the output clamped to
the target (IL's: ``mse`` the one-hot target in E's last term, ``ce`` the cross-entropy of the
prediction), then ``iterations`` times: one inference step of every hidden layer (``order`` sync
or async, ``step_size`` α, the ``state_optimizer`` gd / momentum / adam and ReLU's projection,
as IL's), then ``.grad`` = ∂E/∂θ (batch mean) and ``optimizer.step()``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import energy
from .blocks import frozen_statistics
from .ep import check_batch, trainable
from .equilibrate import StateMoments
from .settings import EstimatorSettings

__all__ = ["ipc_step", "il_energy"]


def il_energy(net, states: list, y: torch.Tensor, cost: str) -> torch.Tensor:
    """E of a clamped PCN, summed over the batch: ``½ Σ_{k<L} ‖h_k − f_k(h_{k−1})‖²`` plus the
    output's term at its prediction ``f_L(h_{L−1})``: ``½‖onehot(y) − f_L‖²`` (mse) or
    ``CE(f_L, y)`` (ce)."""
    L = len(net.layers)
    e = sum(0.5 * (states[k] - net.predict(k, states)).flatten(1).pow(2).sum()
            for k in range(1, L))
    prediction = net.predict(L, states)
    if cost == "ce":
        return e + F.cross_entropy(prediction, y, reduction="sum")
    target = F.one_hot(y, prediction.shape[1]).to(prediction.dtype)
    return e + 0.5 * (target - prediction).pow(2).sum()


class _StateSteps:
    """The state optimizer of one training step: ``step(k, h, g)`` → the new ``h_k`` (its
    memory per layer: :class:`~workbench.engine.equilibrate.StateMoments`, as IL's)."""

    def __init__(self, s: EstimatorSettings, relu: list):
        self.s, self.relu, self.moments, self.t = s, relu, {}, {}

    def step(self, k: int, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        s = self.s
        if s.state_optimizer == "gd":
            u = g
        else:
            self.t[k] = self.t.get(k, 0) + 1
            moments = self.moments.setdefault(
                k, StateMoments(s.state_optimizer, s.state_momentum))
            u = moments.direction(g, self.t[k])
        h = h - s.step_size * u
        return torch.relu(h) if self.relu[k] else h


def ipc_step(net, x: torch.Tensor, y: torch.Tensor, settings: EstimatorSettings,
             optimizer: torch.optim.Optimizer,
             before_update: Optional[Callable[[list], None]] = None) -> dict:
    """One iPC training step (see the module docstring); ``before_update(grads)`` is called on
    the list of ``.grad`` tensors before every optimizer step (the trainer averages them over
    processes and checks them there). Returns ``{"loss": mean cost at the free state (the
    forward pass), "energy": E per example at the end, "state_change": the last step's largest
    change of any state}``."""
    s = settings
    x, y = check_batch(net, x, y)
    L = len(net.layers)
    with torch.no_grad():
        states = net.free_states(x)                 # running statistics move here, once
    loss = float(energy.cost(s.cost, states[-1], y).mean())
    hidden = list(range(1, L))
    sweeps = [hidden] if s.order == "sync" else [
        [k for k in hidden if k % 2 == L % 2], [k for k in hidden if k % 2 != L % 2]]
    steps = _StateSteps(s, [None] + [net.wiring.nodes[k].relu for k in range(1, L + 1)])
    params = [p for _, p in trainable(net)]
    n, change = x.shape[0], 0.0
    with frozen_statistics(net):
        for _ in range(s.iterations):
            change = 0.0
            for sweep in sweeps:
                hs = [states[0]] + [h.detach().requires_grad_() for h in states[1:]]
                grads = torch.autograd.grad(il_energy(net, hs, y, s.cost), hs[1:],
                                            allow_unused=True)
                new = list(states)
                with torch.no_grad():
                    for k in sweep:
                        g = grads[k - 1]
                        if g is None:
                            continue
                        new[k] = steps.step(k, states[k], g)
                        change = max(change, float((new[k] - states[k]).abs().max()))
                states = new
            optimizer.zero_grad(set_to_none=True)
            hs = [h.detach() for h in states]
            gs = torch.autograd.grad(il_energy(net, hs, y, s.cost) / n, params)
            for p, g in zip(params, gs):
                p.grad = g
            if before_update is not None:
                before_update([p.grad for p in params])
            optimizer.step()
        with torch.no_grad():
            final = float(il_energy(net, [h.detach() for h in states], y, s.cost)) / n
    return {"loss": loss, "energy": final, "state_change": change}

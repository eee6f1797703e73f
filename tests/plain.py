"""The nudged phase written plainly on full states (docs/method.md §2): the tests' oracle for
the engine's deviation form. No deviations, nothing skipped; Δ_k = ε_k − ∂E/∂h_k by autograd
of the energy as workbench.engine.energy writes it (skips and general blocks included)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.engine import energy
from workbench.engine.blocks import frozen_statistics
from workbench.engine.layers import PCNLayer


def skips_into(net, k: int) -> list:
    """The skip maps whose output enters layer k (read from ``net.skips`` directly)."""
    return [s for s in net.skips if s.dst == k]


def pre_activation(net, k: int, states) -> torch.Tensor:
    """a_k: layer k's linear part plus its skips, pooled; a general block's own output."""
    layer = net.layers[k - 1]
    if not isinstance(layer, PCNLayer):
        return layer(states[k - 1])
    z = layer.linear(states[k - 1])
    for skip in skips_into(net, k):
        z = z + skip.linear(states[skip.src]).reshape(z.shape)
    return F.max_pool2d(z, 2, 2) if layer.pool else z


def plain_iteration(net, states, y, beta, update, sweeps, cost="ce", hold_output=False,
                    step_size=1.0):
    """One iteration (every sweep in ``sweeps``); the output layer is held fixed when
    ``hold_output`` (clamping), else nudged by ``β ∂C/∂h_L``. An identity hidden layer moves to
    ``a_k + Δ_k`` (no projection, either rule). With a step size α every target T (the α = 1
    update) becomes ``(1 − α) h + α T`` before the projection (docs/method.md §2, Eq. 15).
    Normalisation layers in train mode use the batch's statistics without updating their
    running ones."""
    a = step_size
    L = len(net.layers)
    with frozen_statistics(net):
        for sweep in sweeps:
            hs = [states[0]] + [h.detach().requires_grad_() for h in states[1:]]
            grads = torch.autograd.grad(energy.layer_energies(net, hs).sum(), hs[1:])
            new = {}
            with torch.no_grad():
                for k in sweep:
                    pre = pre_activation(net, k, states)
                    h = states[k]
                    if k == L:
                        if not hold_output:
                            target = pre - beta * energy.cost_grad(cost, h, y)
                            new[k] = (1 - a) * h + a * target
                        continue
                    delta = (h - net.predict(k, states)) - grads[k - 1]
                    if net.activations[k - 1] == "identity":
                        new[k] = (1 - a) * h + a * (pre + delta)
                        continue
                    base = pre if update == "mod_pgd" else torch.relu(pre)
                    new[k] = torch.relu((1 - a) * h + a * (base + delta))
            states = [new.get(k, h) for k, h in enumerate(states)]
    return states

"""Recording a nudged phase: what it did, iteration by iteration (:class:`PhaseTrace`), and the
loop that runs it (:func:`run_phase`). The phase's state and update rules are
:class:`workbench.engine.equilibrate.NudgedPhase`; its diagnostics :mod:`workbench.engine.diagnostics`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .diagnostics import diagnose

__all__ = ["PhaseTrace", "Trace", "run_phase"]


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


def run_phase(phase, iterations: int, tol: Optional[float] = None, record: bool = True,
              signs: Optional[torch.Tensor] = None, diagnostics: bool = False) -> PhaseTrace:
    """Run ``phase`` (a :class:`~workbench.engine.equilibrate.NudgedPhase`) for up to ``iterations``
    iterations (fewer if every state changed by < ``tol``).

    With ``record`` off, only the final iteration's state change is measured (every
    iteration's when ``tol`` is set) and nothing waits for the device inside the loop
    unless ``tol`` is set. ``diagnostics``: also record :func:`~workbench.engine.diagnostics.diagnose`
    (every iteration with ``record``, else at the end).
    """
    beta = phase.beta.flatten()
    clamp = phase.perturbation == "clamp"
    e_rows, c_rows, f_rows, changes, d_rows = [], [], [], [], []

    def observe():
        e, c = phase.energies(), phase.costs()
        e_rows.append(e)
        c_rows.append(c.mean())
        f_rows.append(e.sum() if clamp else e.sum() + (beta * c).mean())
        if diagnostics:
            d_rows.append(diagnose(phase))

    if record:
        observe()
    t = 0
    for t in range(1, iterations + 1):
        ch = phase.step(measure=record or tol is not None or t == iterations)
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

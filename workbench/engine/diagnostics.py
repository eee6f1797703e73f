"""Where a nudged phase stands against the free state (docs/method.md §2): switched ReLU units,
changed pooling winners, and the fixed-point residual — the checks that say whether EP's
smoothness assumptions hold at a given β (:class:`~workbench.engine.recording.PhaseTrace`)."""
from __future__ import annotations

import torch

__all__ = ["diagnose"]


def diagnose(phase) -> torch.Tensor:
    """``(4, L)`` float64 for a :class:`~workbench.engine.equilibrate.NudgedPhase`: per layer, the
    fraction of its ReLU units whose pre-activation sign differs from the free state's, the
    fraction of its pooling windows whose winner changed, and the max and RMS of the fixed-point
    residual ``h_k − T_k(h)`` (``T`` the update applied to every layer at once from the current
    state; the clamped output is held). Costs one update of every layer; nothing is changed."""
    L, free, nodes = phase.L, phase.free, phase.nodes
    out = free.h[-1].new_zeros((4, L), dtype=torch.float64)
    for k in range(1, L + 1):
        da = phase.da(k)
        if nodes[k].relu and da is not None:
            a0 = free.a[k]
            out[0, k - 1] = ((a0 + da.to(a0.dtype) > 0) != (a0 > 0)).double().mean()
        if nodes[k].pool:
            sel, free_sel = phase.selection(k), phase.free_selection(k)
            if sel is not free_sel:
                out[1, k - 1] = (sel != free_sel).double().mean()
    for k, d_new in phase.updates([k for k in range(1, L + 1) if k not in phase.held]):
        old = phase.deviation(k)
        if d_new is None and old is None:
            continue
        r = (d_new if old is None else (-old if d_new is None else d_new - old)).double()
        out[2, k - 1], out[3, k - 1] = r.abs().amax(), r.pow(2).mean().sqrt()
    return out

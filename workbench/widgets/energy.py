"""The equilibration explorer: F, E and C per iteration, per-layer energy and state change."""
from __future__ import annotations

import math

import ipywidgets as W
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..engine import ep
from .common import (ESTIMATORS, MARGIN, PHASE_DASH, Explorer, finite, layer_options, positive,
                     replace_traces)
from .lab import Lab

__all__ = ["EnergyExplorer", "phase_names"]


class EnergyExplorer(Explorer):
    """Equilibration of one batch: F, E, C per iteration, per-layer energy and state change.

    Controls (``.controls``): ``model``, ``batch``, ``scheme``, ``beta`` (log scale),
    ``iterations`` (K), ``update``, ``order``; view only: ``phase`` (for the heat map and the
    state change) and ``layers`` (the state-change curves shown). Figures (``.figures``):
    ``energy`` (three panels F | E | C, one line per phase, row ``t`` = after iteration ``t``),
    ``heatmap`` (``log10 ½‖ε_k‖²``, layers × iterations), ``change`` (max |Δh_k| per iteration,
    log scale), ``switched`` (the fraction of each layer's ReLU units whose pre-activation sign
    differs from the free state's, and of its pooling windows whose winner changed: where the
    nudge has left the linear regime), ``residual`` (max |h_k − T_k(h)|, the fixed-point
    residual: the nudged state is a critical point of F, not a minimum, so convergence is this
    going to zero, not F falling). ``.estimate`` is the engine's result for the current
    settings.
    """

    def __init__(self, models=None, data=None, *, batch_size: int = 16, cost: str = "ce",
                 beta: float = 0.05, iterations: int = 10, scheme: str = "centered",
                 dtype: torch.dtype = torch.float64, seed: int = 0):
        if scheme not in ESTIMATORS:
            raise ValueError(f"unknown scheme {scheme!r}; accepted: {', '.join(ESTIMATORS)}")
        extra = {
            "scheme": W.Dropdown(options=list(ESTIMATORS), value=scheme, description="scheme"),
            "phase": W.Dropdown(options=[("+β", 0)], value=0, description="phase"),
            "layers": W.SelectMultiple(options=[], description="layers", rows=4),
        }
        super().__init__(Lab(models, data, batch_size, cost, dtype, seed), beta, iterations, extra)

    def _build_figures(self) -> dict:
        energy = make_subplots(rows=1, cols=3, subplot_titles=(
            "F = E + βC", "E = ½Σ‖ε_k‖²", "cost C"), horizontal_spacing=0.08)
        energy.update_yaxes(type="log", row=1, col=2)
        energy.update_xaxes(title_text="iteration")
        energy.update_layout(height=300, margin=MARGIN)
        heat = go.Figure(layout=dict(title="per-layer energy log10 ½‖ε_k‖²", height=320,
                                     xaxis_title="iteration", yaxis_title="layer", margin=MARGIN))
        change = go.Figure(layout=dict(title="largest state change max|Δh_k|", height=320,
                                       xaxis_title="iteration", yaxis_type="log", margin=MARGIN))
        switched = make_subplots(rows=1, cols=2, subplot_titles=(
            "ReLU units switched vs the free state", "pooling winners changed"))
        switched.update_xaxes(title_text="iteration")
        switched.update_yaxes(title_text="fraction", row=1, col=1)
        switched.update_layout(height=300, margin=MARGIN)
        residual = go.Figure(layout=dict(title="fixed-point residual max|h_k − T_k(h)|",
                                         height=320, xaxis_title="iteration", yaxis_type="log",
                                         margin=MARGIN))
        return {k: go.FigureWidget(f) for k, f in
                (("energy", energy), ("heatmap", heat), ("change", change),
                 ("switched", switched), ("residual", residual))}

    def _model_changed(self, change=None) -> None:
        n = self.lab.layers(self.controls["model"].value)
        sel = self.controls["layers"]
        sel.options = layer_options(n)
        sel.value = tuple(range(1, n + 1))

    @property
    def estimate(self) -> ep.Estimate:
        s = self._common()
        return self.lab.estimate(scheme=self.controls["scheme"].value, **s)

    def redraw(self) -> None:
        est = self.estimate
        phases = est.trace.phases
        names = phase_names(est)
        phase_ctl = self.controls["phase"]
        if [o[0] for o in phase_ctl.options] != names:
            self._quietly(lambda: setattr(phase_ctl, "options",
                                          [(n, i) for i, n in enumerate(names)]))
        self._draw_energy(phases, names)
        self._draw_phase(phases[phase_ctl.value], names[phase_ctl.value])
        self.status.value = (f"<b>{self.controls['model'].value}</b>, batch "
                             f"{self.controls['batch'].value}: free cost "
                             f"{est.trace.free_cost:.4f}; final E per phase "
                             + ", ".join(f"{n}: {p.final_energy:.3e}"
                                         for n, p in zip(names, phases)))

    def _draw_energy(self, phases, names) -> None:
        fig = self.figures["energy"]
        traces = []
        for i, (ph, name) in enumerate(zip(phases, names)):
            t = list(range(ph.energy.shape[0]))
            style = dict(mode="lines+markers", line=dict(dash=PHASE_DASH[i % 2]),
                         legendgroup=name)
            traces.append(go.Scatter(x=t, y=finite(ph.total.tolist()), name=f"F {name}", xaxis="x",
                                     yaxis="y", **style))
            traces.append(go.Scatter(x=t, y=positive(ph.energy.sum(1)), name=f"E {name}",
                                     xaxis="x2", yaxis="y2", **style))
            traces.append(go.Scatter(x=t, y=finite(ph.cost.tolist()), name=f"C {name}", xaxis="x3",
                                     yaxis="y3", **style))
        replace_traces(fig, traces)

    def _draw_phase(self, ph, name: str) -> None:
        energy = ph.energy.double()
        z = [[math.log10(v) if v > 0 else None for v in row] for row in energy.T.tolist()]
        heat = go.Heatmap(z=z, x=list(range(energy.shape[0])),
                          y=list(range(1, energy.shape[1] + 1)), colorscale="Viridis",
                          colorbar=dict(title="log10"), name=name)
        replace_traces(self.figures["heatmap"], [heat])
        self.figures["heatmap"].layout.title.text = f"per-layer energy log10 ½‖ε_k‖², {name}"
        change = ph.state_change.double()
        shown = self.controls["layers"].value
        lines = [go.Scatter(x=list(range(1, change.shape[0] + 1)), y=positive(change[:, k - 1]),
                            mode="lines+markers", name=f"layer {k}") for k in shown]
        replace_traces(self.figures["change"], lines)
        self.figures["change"].layout.title.text = f"largest state change max|Δh_k|, {name}"
        t = list(range(ph.switched.shape[0]))
        pooled = [k for k in shown if float(ph.pool_changed[:, k - 1].max()) > 0
                  or self.lab.models[self.controls["model"].value].wiring.nodes[k].pool]
        replace_traces(self.figures["switched"], [
            go.Scatter(x=t, y=ph.switched[:, k - 1].tolist(), mode="lines+markers",
                       name=f"layer {k}", legendgroup=f"layer {k}", xaxis="x", yaxis="y")
            for k in shown] + [
            go.Scatter(x=t, y=ph.pool_changed[:, k - 1].tolist(), mode="lines+markers",
                       name=f"layer {k} pool", legendgroup=f"layer {k}", showlegend=False,
                       xaxis="x2", yaxis="y2") for k in pooled])
        replace_traces(self.figures["residual"], [
            go.Scatter(x=t, y=positive(ph.residual_max[:, k - 1]), mode="lines+markers",
                       name=f"layer {k}") for k in shown])
        self.figures["residual"].layout.title.text = (
            f"fixed-point residual max|h_k − T_k(h)|, {name} (0 at a fixed point)")


def phase_names(est: ep.Estimate) -> list[str]:
    if est.scheme == "random":
        return ["±β (random signs)"]
    return {"forward": ["+β"], "backward": ["−β"], "centered": ["+β", "−β"],
            "il": ["IL (output clamped)"]}[est.scheme]

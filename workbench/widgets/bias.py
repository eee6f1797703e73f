"""The gradient-bias explorer: each scheme's estimate against backprop, against β and K."""
from __future__ import annotations

from typing import Sequence

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..engine import ep
from .common import ESTIMATORS, COLORS, MARGIN, Explorer, finite, layer_options, replace_traces
from .lab import Lab, log_slope, relative_error

__all__ = ["GradientBiasExplorer"]


class GradientBiasExplorer(Explorer):
    """Each scheme's estimate against the backprop gradient of the same batch.

    Controls: ``model``, ``batch``, ``beta``, ``iterations``, ``update``, ``order``, ``schemes``
    (those compared); view only: ``layer`` (0 = all parameters; else one layer, for the sweeps)
    and ``fit`` (the largest β of the slope fit). Figures: ``layers`` (per-layer cosine and
    relative error, one bar group per scheme, at the current β and K), ``beta`` (relative error
    against β on log–log axes over ``betas``, with the least-squares slope over β ≤ ``fit`` in
    each legend entry and as a dashed line), ``iterations`` (relative error against K over
    ``iterations_sweep`` at the current β). ``.slopes``: scheme → that slope (theory, docs/method.md
    §3: one-sided O(β) → 1, centered O(β²) → 2, while no ReLU unit switches between the free and
    nudged states; the default ``fit`` is the largest β ≤ 1e-3, below the usual first switch),
    ``split`` (per layer and scheme, the error split into the finite-β bias of the converged
    estimate and the truncation at the chosen K, :meth:`split`).
    """

    def __init__(self, models=None, data=None, *, batch_size: int = 16, cost: str = "ce",
                 beta: float = 0.05, iterations: int = 20,
                 schemes: Sequence[str] = ("forward", "backward", "centered", "random"),
                 betas: Sequence[float] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1),
                 iterations_sweep: Sequence[int] = (1, 2, 4, 8, 16, 32),
                 converged_iterations: int = 200,
                 dtype: torch.dtype = torch.float64, seed: int = 0):
        for s in schemes:
            if s not in ESTIMATORS:
                raise ValueError(f"unknown scheme {s!r}; accepted: {', '.join(ESTIMATORS)}")
        if len(betas) < 2 or min(betas) <= 0:
            raise ValueError(f"betas must hold at least two values > 0, got {list(betas)}")
        if not iterations_sweep or min(iterations_sweep) < 1:
            raise ValueError(f"iterations_sweep must hold integers >= 1, got "
                             f"{list(iterations_sweep)}")
        if isinstance(converged_iterations, bool) or not isinstance(converged_iterations, int) \
                or converged_iterations < 1:
            raise ValueError(f"converged_iterations must be an integer >= 1, got "
                             f"{converged_iterations!r}")
        self.converged_iterations = converged_iterations
        self.betas = sorted(float(b) for b in betas)
        self.iterations_sweep = sorted(int(k) for k in iterations_sweep)
        self.slopes: dict[str, float] = {}
        extra = {
            "schemes": W.SelectMultiple(options=list(ESTIMATORS), value=tuple(schemes),
                                        description="schemes", rows=4),
            "layer": W.Dropdown(options=[("all", 0)], value=0, description="sweep layer"),
            "fit": W.Dropdown(options=[(f"{b:g}", b) for b in self.betas[1:]],
                              value=max([b for b in self.betas[1:] if b <= 1e-3],
                                        default=self.betas[-1]), description="fit β ≤"),
        }
        super().__init__(Lab(models, data, batch_size, cost, dtype, seed), beta, iterations, extra)

    def _build_figures(self) -> dict:
        per_layer = make_subplots(rows=1, cols=2, subplot_titles=(
            "cosine with BP", "relative error ‖g − g_BP‖ / ‖g_BP‖"))
        per_layer.update_xaxes(title_text="layer", dtick=1)
        per_layer.update_yaxes(type="log", row=1, col=2)
        per_layer.update_layout(barmode="group", height=320, margin=MARGIN)
        sweep = dict(height=340, yaxis_type="log", yaxis_title="relative error",
                     margin=MARGIN)
        beta = go.Figure(layout=dict(title="relative error against β", xaxis_type="log",
                                     xaxis_title="β", **sweep))
        iters = go.Figure(layout=dict(title="relative error against K", xaxis_type="log",
                                      xaxis_title="iterations K", **sweep))
        split = make_subplots(rows=1, cols=2, subplot_titles=(
            "finite-β bias ‖g_∞ − g_BP‖ / ‖g_BP‖", "truncation at K ‖g_K − g_∞‖ / ‖g_BP‖"))
        split.update_xaxes(title_text="layer", dtick=1)
        split.update_yaxes(type="log")
        split.update_layout(barmode="group", height=320, margin=MARGIN)
        return {k: go.FigureWidget(f) for k, f in
                (("layers", per_layer), ("beta", beta), ("iterations", iters),
                 ("split", split))}

    def _model_changed(self, change=None) -> None:
        ctl = self.controls["layer"]
        n = self.lab.layers(self.controls["model"].value)
        ctl.options = [("all", 0)] + layer_options(n)
        ctl.value = 0

    def _pair(self, scheme: str, settings: dict) -> tuple[ep.Estimate, ep.Estimate]:
        s = self._common() | settings
        return (self.lab.estimate(scheme=scheme, **s),
                self.lab.estimate(s["model"], s["batch"], "bp"))

    def rows(self, scheme: str, **settings) -> list[dict]:
        """``ep.compare`` of one scheme against BP for the given (else the current) settings."""
        est, ref = self._pair(scheme, settings)
        return ep.compare(self.lab.models[self.controls["model"].value], est.grads, ref.grads)

    def split(self, scheme: str, **settings) -> list[dict]:
        """Per layer, the estimate's error against BP split in two (each relative to the BP
        gradient's norm): ``bias`` of the converged estimate g_∞ (``converged_iterations``
        iterations: what β alone costs) and ``truncation``, g_K − g_∞ (what stopping at K
        costs); ``total`` is g_K − g_BP, so total ≤ bias + truncation."""
        s = self._common() | settings
        net = self.lab.models[s["model"]]
        est, ref = self._pair(scheme, settings)
        conv = self.lab.estimate(scheme=scheme, **(s | {"iterations": self.converged_iterations}))
        bias = ep.compare(net, conv.grads, ref.grads)
        trunc = ep.compare(net, est.grads, conv.grads)
        total = ep.compare(net, est.grads, ref.grads)
        return [{"layer": b["layer"], "bias": b["rel_error"],
                 "truncation": t["rel_error"] * t["ref_norm"] / b["ref_norm"],
                 "total": c["rel_error"]} for b, t, c in zip(bias, trunc, total)]

    def error(self, scheme: str, **settings) -> float:
        """Relative error against BP of the sweep layer (or all parameters)."""
        est, ref = self._pair(scheme, settings)
        return relative_error(est.grads, ref.grads, self.controls["layer"].value or None)

    def _bar_pairs(self, figure: str, rows: dict, left: str, right: str) -> None:
        """Per-layer bars of ``left`` and ``right`` (two subplots), one group per scheme."""
        bars = []
        for side, (key, axes) in enumerate(((left, ("x", "y")), (right, ("x2", "y2")))):
            for s, rs in rows.items():
                bars.append(go.Bar(x=[r["layer"] for r in rs], y=finite(r[key] for r in rs),
                                   xaxis=axes[0], yaxis=axes[1], name=s,
                                   marker_color=COLORS[s], legendgroup=s, showlegend=not side))
        replace_traces(self.figures[figure], bars)

    def redraw(self) -> None:
        schemes = [s for s in ESTIMATORS if s in self.controls["schemes"].value]
        self._bar_pairs("layers", {s: self.rows(s) for s in schemes}, "cosine", "rel_error")
        self._bar_pairs("split", {s: self.split(s) for s in schemes}, "bias", "truncation")
        self.slopes = {}
        beta_traces, k_traces = [], []
        fitted = [b for b in self.betas if b <= self.controls["fit"].value]
        for s in schemes:
            errs = [self.error(s, beta=b) for b in self.betas]
            self.slopes[s] = log_slope(fitted, errs[:len(fitted)])
            line = np.polyfit(np.log10(fitted), np.log10(errs[:len(fitted)]), 1)
            beta_traces += [
                go.Scatter(x=self.betas, y=errs, mode="markers", marker_color=COLORS[s],
                           name=f"{s} (slope {self.slopes[s]:.2f})", legendgroup=s),
                go.Scatter(x=fitted, y=(10 ** np.polyval(line, np.log10(fitted))).tolist(),
                           mode="lines", line=dict(dash="dash", color=COLORS[s]),
                           showlegend=False, legendgroup=s, name=f"{s} fit")]
            k_traces.append(go.Scatter(
                x=self.iterations_sweep, mode="lines+markers", marker_color=COLORS[s], name=s,
                y=[self.error(s, iterations=k) for k in self.iterations_sweep]))
        replace_traces(self.figures["beta"], beta_traces)
        replace_traces(self.figures["iterations"], k_traces)
        layer = self.controls["layer"].value
        where = "all parameters" if not layer else f"layer {layer}"
        self.figures["beta"].layout.title.text = (
            f"relative error against β ({where}, K = {self.controls['iterations'].value}; "
            f"slopes fitted for β ≤ {fitted[-1]:g})")
        self.figures["iterations"].layout.title.text = (
            f"relative error against K ({where}, β={self.controls['beta'].value:.2g})")
        self.status.value = (f"<b>{self.controls['model'].value}</b>, batch "
                             f"{self.controls['batch'].value}; engine calls so far: "
                             f"{self.lab.engine_calls}")

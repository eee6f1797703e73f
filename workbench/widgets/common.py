"""What both explorers share: the common controls (:class:`Explorer`) and plot helpers."""
from __future__ import annotations

import math

import ipywidgets as W
import plotly.graph_objects as go
import torch

from ..engine.settings import ORDERS, PC_SCHEMES, PERTURBATIONS, SCHEMES, UPDATES
from .lab import Lab, load_run

__all__ = ["Explorer", "ESTIMATORS", "COLORS", "PHASE_DASH", "MARGIN", "layer_options", "positive", "finite",
           "replace_traces"]

#: what the explorers compare: the EP schemes and inference learning (docs/method.md §10)
ESTIMATORS = SCHEMES + PC_SCHEMES
COLORS = {"forward": "#1f77b4", "backward": "#d62728", "centered": "#2ca02c",
          "random": "#9467bd", "il": "#ff7f0e"}
PHASE_DASH = ("solid", "dash")
MARGIN = dict(t=40, b=40, l=50, r=10)


class Explorer(W.VBox):
    """Controls shared by both explorers; subclasses add theirs and implement ``redraw``."""

    def __init__(self, lab: Lab, beta: float, iterations: int, extra: dict):
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
        self.lab = lab
        first = next(iter(lab.models))
        # the sliders span at least 1e-4..1 and 1..60, widened to hold the values asked for
        # (a slider would silently clamp them)
        log_beta = math.log10(beta)
        self.controls = {
            "model": W.Dropdown(options=list(lab.models), value=first, description="model"),
            "batch": W.IntSlider(value=0, min=0, max=lab.num_batches - 1, description="batch",
                                 continuous_update=False),
            "beta": W.FloatLogSlider(value=beta, base=10, min=min(-4, math.floor(log_beta)),
                                     max=max(0, math.ceil(log_beta)), step=0.1,
                                     description="β", readout_format=".2g",
                                     continuous_update=False),
            "iterations": W.IntSlider(value=iterations, min=1, max=max(60, iterations),
                                      description="K",
                                      continuous_update=False),
            "update": W.Dropdown(options=list(UPDATES), value="mod_pgd", description="update"),
            "order": W.Dropdown(options=list(ORDERS), value="async", description="order"),
            "perturbation": W.Dropdown(options=list(PERTURBATIONS), value="nudge",
                                       description="perturb"),
            **extra,
        }
        self.status = W.HTML()
        self._quiet = False
        self.figures = self._build_figures()
        for c in self.controls.values():
            c.observe(self._changed, names="value")
        boxes = list(self.controls.values())
        super().__init__([W.HBox(boxes[:4]), W.HBox(boxes[4:]), self.status,
                          *self.figures.values()])
        self._quietly(self._model_changed)
        self.redraw()

    @classmethod
    def from_checkpoint(cls, run_dir: str, batch_size: int = 16, **kw):
        """An explorer on the trained model of a run folder, on its dataset's test images."""
        net, config, data = load_run(run_dir)
        kw = {"beta": config.estimator.beta, "iterations": config.estimator.iterations} | kw
        return cls(models={f"{config.model} ({run_dir})": net}, data=data,
                   batch_size=batch_size, cost=config.estimator.cost, **kw)

    @property
    def settings(self) -> dict:
        """The current value of every control."""
        return {k: c.value for k, c in self.controls.items()}

    def _common(self) -> dict:
        """The settings every engine call takes."""
        s = self.settings
        return {k: s[k] for k in ("model", "batch", "beta", "iterations", "update", "order",
                                  "perturbation")}

    def _quietly(self, fn) -> None:
        """Run ``fn`` (which sets controls) without redrawing for each control it sets."""
        self._quiet = True
        try:
            fn()
        finally:
            self._quiet = False

    def _changed(self, change) -> None:
        if self._quiet:
            return
        if change["owner"] is self.controls["model"]:
            self._quietly(self._model_changed)
        self.redraw()


def layer_options(n: int) -> list:
    return [(f"layer {k}", k) for k in range(1, n + 1)]


def positive(values: torch.Tensor) -> list:
    """Values for a log axis: non-positive entries become gaps (None)."""
    return [float(v) if v > 0 else None for v in values.tolist()]


def finite(values) -> list:
    """Values for a plot: NaN and ±inf become gaps (None), which JSON and plotly accept."""
    return [v if v is not None and math.isfinite(v) else None for v in values]


def replace_traces(fig: go.FigureWidget, traces: list) -> None:
    with fig.batch_update():
        fig.data = []
    fig.add_traces(traces)

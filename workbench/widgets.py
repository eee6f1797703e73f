"""Interactive explorers for JupyterLab: equilibration dynamics and the bias of EP gradients.

* :class:`EnergyExplorer` — one estimate's nudged phases: ``F``, ``E`` and the cost ``C`` per
  iteration for each phase, a per-layer energy heat map, and the per-layer state change.
* :class:`GradientBiasExplorer` — per-layer cosine and relative error of each scheme's estimate
  against the backprop gradient; the error against β (log–log, with fitted slopes) and against K.

Both are ipywidgets boxes (display them as the last expression of a cell) holding plotly
``FigureWidget`` plots (plotly ≥ 6 renders them through anywidget). Both build with no arguments
— three small random models on a seeded synthetic batch, computed on the CPU in a second or two
— from models and data you pass, or from a training run folder with :meth:`from_checkpoint`.

Every control redraws the plots. Engine results are cached by the settings that determine them
(model, batch, scheme, β, K, update rule, order), so view-only controls (the phase shown, the
layers shown) and returning to earlier settings never rerun the equilibration. The models are
copied and run in float64 by default, so that the error shown is the estimator's, not rounding.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Optional, Sequence

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots

from . import ep, models
from .energy import check_cost
from .settings import ORDERS, UPDATES

__all__ = ["Lab", "EnergyExplorer", "GradientBiasExplorer", "TrainingMonitor", "default_models",
           "synthetic_data", "examples", "fit_input", "log_slope", "relative_error", "load_run"]

COLORS = {"forward": "#1f77b4", "backward": "#d62728", "centered": "#2ca02c",
          "random": "#9467bd"}
PHASE_DASH = ("solid", "dash")
MARGIN = dict(t=40, b=40, l=50, r=10)


# ---------------------------------------------------------------------------------------------
# models, data and the cached engine calls
# ---------------------------------------------------------------------------------------------
def default_models(num_classes: int = 10, in_channels: int = 1,
                   image_size: int = 28) -> dict:
    """Three small randomly initialised models (seed 0) that equilibrate on a CPU in
    milliseconds. The vgg5 takes the next multiple of 16 ≥ 32: :func:`fit_input` pads to it."""
    padded = max(32, -(-image_size // 16) * 16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return {
            "mlp 128-64": models.build("mlp", num_classes, in_channels, image_size,
                                       widths=(128, 64)),
            "mlp 6×64": models.build("mlp", num_classes, in_channels, image_size,
                                     widths=(64,) * 6),
            "vgg5 tiny": models.build("vgg5", num_classes, in_channels, padded,
                                      channels=(4, 8, 8, 8, 8)),
        }


def synthetic_data(n: int = 64, in_channels: int = 1, image_size: int = 28,
                   num_classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded pool of ``n`` uniform [0, 1) images ``(n, C, S, S)`` and random labels ``(n,)``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((n, in_channels, image_size, image_size), generator=gen)
    return x, torch.randint(0, num_classes, (n,), generator=gen)


def examples(dataset="fashion-mnist", n: int = 256, *, split: str = "test",
             data_root: Optional[str] = None,
             image_size: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` examples of a dataset split as a model sees them: float images
    ``(n, C, S, S)`` (normalised by the dataset's ``device_transform``) and labels ``(n,)``.
    ``dataset``: a name of :mod:`workbench.data` or a dataset it built."""
    from . import data
    ds = data.build(dataset, split, data_root=data_root, image_size=image_size) \
        if isinstance(dataset, str) else dataset
    items = [ds[i] for i in range(min(n, len(ds)))]
    x = torch.stack([torch.as_tensor(image) for image, _ in items])
    y = torch.tensor([int(label) for _, label in items])
    transform = getattr(ds, "device_transform", None)
    return (transform(x) if transform is not None else x.float()), y


def fit_input(x: torch.Tensor, in_shape: Sequence[int]) -> torch.Tensor:
    """Zero-pad images ``(N, C, S, S)`` to a model's larger ``in_shape`` (MNIST 28 → 32)."""
    want = tuple(in_shape)
    if tuple(x.shape[1:]) == want:
        return x
    if x.dim() != 4 or len(want) != 3 or x.shape[1] != want[0] or x.shape[2] > want[1] \
            or x.shape[3] > want[2]:
        raise ValueError(f"images of shape {tuple(x.shape[1:])} do not fit a model taking "
                         f"{want}: channels must match and images may only be zero-padded")
    dh, dw = want[1] - x.shape[2], want[2] - x.shape[3]
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


def relative_error(est: dict, ref: dict, layer: Optional[int] = None) -> float:
    """``‖g − r‖ / ‖r‖`` over all parameters, or over layer ``layer`` (1-based) only."""
    keys = [k for k in ref if layer is None or k.startswith(f"layers.{layer - 1}.")]
    g = torch.cat([est[k].double().flatten() for k in keys])
    r = torch.cat([ref[k].double().flatten() for k in keys])
    return float((g - r).norm() / r.norm())


def log_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log10 y`` against ``log10 x`` (the order of a power law)."""
    return float(np.polyfit(np.log10(xs), np.log10(ys), 1)[0])


def load_run(run_dir: str, n: int = 256):
    """The trained model of a run folder, its config and its first ``n`` test examples.

    Returns ``(net, config, (x, y))``: the model rebuilt from ``config.json`` with the weights of
    ``checkpoint.pt`` (the latest checkpoint; CPU), the run's
    :class:`~workbench.train.TrainConfig`, and test images as the run saw them.
    """
    from . import data, train
    from .runfolder import CHECKPOINT, CONFIG
    folder = Path(run_dir)
    missing = [name for name in (CONFIG, CHECKPOINT) if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a training run folder with a checkpoint: "
                         f"{' and '.join(missing)} missing (a run of `workbench train` or "
                         f"notebooks/03_train.ipynb writes both)")
    cfg = train.TrainConfig.from_dict(json.loads((folder / CONFIG).read_text()))
    size = train.input_size(cfg)
    test = data.build(cfg.dataset, "test", data_root=cfg.data_root, image_size=size,
                      in_channels=cfg.in_channels, num_classes=cfg.num_classes, download=False)
    net = models.build(cfg.model, **data.describe(test, cfg.dataset, size), **cfg.model_args)
    state = torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=True)
    net.load_state_dict(state["model"])
    return net, cfg, examples(test, n)


class Lab:
    """Models, a pool of examples, and the engine calls on them, cached by their settings.

    Args:
        models: name → PCN (copied, moved to ``dtype``) or one PCN; default :func:`default_models`.
        data: ``(x, y)`` pool of examples, images ``(N, C, S, S)`` and labels ``(N,)``; default
            :func:`synthetic_data`. Batches are consecutive slices of ``batch_size`` examples.
        cost: ``ce`` | ``mse``. dtype: the models' dtype (float64: the error shown is algorithmic).
        seed: seeds the ``random`` scheme's signs (the same settings give the same estimate).
    """

    def __init__(self, models=None, data=None, batch_size: int = 16, cost: str = "ce",
                 dtype: torch.dtype = torch.float64, seed: int = 0):
        check_cost(cost)
        self.x, self.y = synthetic_data() if data is None else data
        if models is None:
            models = default_models(max(10, int(self.y.max()) + 1), self.x.shape[1],
                                    self.x.shape[-1])
        elif isinstance(models, torch.nn.Module):
            models = {getattr(models, "name", "model"): models}
        if not models:
            raise ValueError("models must be a PCN or a non-empty dict name -> PCN")
        self.models = {name: copy.deepcopy(net).to(dtype) for name, net in models.items()}
        if self.x.shape[0] != self.y.shape[0] or self.x.shape[0] < 1:
            raise ValueError(f"data must be (x, y) with the same number (>= 1) of examples, got "
                             f"{tuple(self.x.shape)} and {tuple(self.y.shape)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = min(batch_size, self.x.shape[0])
        self.cost, self.dtype, self.seed = cost, dtype, seed
        self._estimates: dict = {}
        self.engine_calls = 0

    @property
    def num_batches(self) -> int:
        return self.x.shape[0] // self.batch_size

    def layers(self, model: str) -> int:
        return len(self.models[model].layers)

    def batch(self, model: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``index`` shaped for ``model``: ``x`` ``(B, *in_shape)``, ``y`` ``(B,)``."""
        if not 0 <= index < self.num_batches:
            raise ValueError(f"batch index must lie in [0, {self.num_batches}), got {index}")
        net = self.models[model]
        sl = slice(index * self.batch_size, (index + 1) * self.batch_size)
        p = next(net.parameters())
        return fit_input(self.x[sl], net.in_shape).to(p.device, self.dtype), self.y[sl].to(p.device)

    def estimate(self, model: str, batch: int, scheme: str, beta: float = 0.0,
                 iterations: int = 0, update: str = "mod_pgd",
                 order: str = "async") -> ep.Estimate:
        """``ep.estimate`` for these settings (``scheme="bp"``: the reference), computed once."""
        kw = {} if scheme == "bp" else dict(
            beta=float(beta), iterations=int(iterations), update=update, order=order)
        key = (model, batch, scheme, *kw.values())
        if key not in self._estimates:
            x, y = self.batch(model, batch)
            if scheme == "random":
                kw["generator"] = torch.Generator().manual_seed(self.seed)
            self.engine_calls += 1
            self._estimates[key] = ep.estimate(self.models[model], x, y, scheme=scheme,
                                               cost=self.cost, accumulate=False, **kw)
        return self._estimates[key]


# ---------------------------------------------------------------------------------------------
# the common controls
# ---------------------------------------------------------------------------------------------
class _Explorer(W.VBox):
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
        kw = {"beta": config.beta, "iterations": config.iterations} | kw
        return cls(models={f"{config.model} ({run_dir})": net}, data=data,
                   batch_size=batch_size, cost=config.cost, **kw)

    @property
    def settings(self) -> dict:
        """The current value of every control."""
        return {k: c.value for k, c in self.controls.items()}

    def _common(self) -> dict:
        """The settings every engine call takes."""
        s = self.settings
        return {k: s[k] for k in ("model", "batch", "beta", "iterations", "update", "order")}

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


def _layer_options(n: int) -> list:
    return [(f"layer {k}", k) for k in range(1, n + 1)]


# ---------------------------------------------------------------------------------------------
# equilibration dynamics
# ---------------------------------------------------------------------------------------------
class EnergyExplorer(_Explorer):
    """Equilibration of one batch: F, E, C per iteration, per-layer energy and state change.

    Controls (``.controls``): ``model``, ``batch``, ``scheme``, ``beta`` (log scale),
    ``iterations`` (K), ``update``, ``order``; view only: ``phase`` (for the heat map and the
    state change) and ``layers`` (the state-change curves shown). Figures (``.figures``):
    ``energy`` (three panels F | E | C, one line per phase, row ``t`` = after iteration ``t``),
    ``heatmap`` (``log10 ½‖ε_k‖²``, layers × iterations), ``change`` (max |Δh_k| per iteration,
    log scale). ``.estimate`` is the engine's result for the current settings.
    """

    def __init__(self, models=None, data=None, *, batch_size: int = 16, cost: str = "ce",
                 beta: float = 0.05, iterations: int = 10, scheme: str = "centered",
                 dtype: torch.dtype = torch.float64, seed: int = 0):
        if scheme not in ep.SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; accepted: {', '.join(ep.SCHEMES)}")
        extra = {
            "scheme": W.Dropdown(options=list(ep.SCHEMES), value=scheme, description="scheme"),
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
        return {k: go.FigureWidget(f) for k, f in
                (("energy", energy), ("heatmap", heat), ("change", change))}

    def _model_changed(self, change=None) -> None:
        n = self.lab.layers(self.controls["model"].value)
        sel = self.controls["layers"]
        sel.options = _layer_options(n)
        sel.value = tuple(range(1, n + 1))

    @property
    def estimate(self) -> ep.Estimate:
        s = self._common()
        return self.lab.estimate(scheme=self.controls["scheme"].value, **s)

    def redraw(self) -> None:
        est = self.estimate
        phases = est.trace.phases
        names = _phase_names(est)
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
            traces.append(go.Scatter(x=t, y=_finite(ph.total.tolist()), name=f"F {name}", xaxis="x",
                                     yaxis="y", **style))
            traces.append(go.Scatter(x=t, y=_positive(ph.energy.sum(1)), name=f"E {name}",
                                     xaxis="x2", yaxis="y2", **style))
            traces.append(go.Scatter(x=t, y=_finite(ph.cost.tolist()), name=f"C {name}", xaxis="x3",
                                     yaxis="y3", **style))
        _replace(fig, traces)

    def _draw_phase(self, ph, name: str) -> None:
        energy = ph.energy.double()
        z = [[math.log10(v) if v > 0 else None for v in row] for row in energy.T.tolist()]
        heat = go.Heatmap(z=z, x=list(range(energy.shape[0])),
                          y=list(range(1, energy.shape[1] + 1)), colorscale="Viridis",
                          colorbar=dict(title="log10"), name=name)
        _replace(self.figures["heatmap"], [heat])
        self.figures["heatmap"].layout.title.text = f"per-layer energy log10 ½‖ε_k‖², {name}"
        change = ph.state_change.double()
        shown = self.controls["layers"].value
        lines = [go.Scatter(x=list(range(1, change.shape[0] + 1)), y=_positive(change[:, k - 1]),
                            mode="lines+markers", name=f"layer {k}") for k in shown]
        _replace(self.figures["change"], lines)
        self.figures["change"].layout.title.text = f"largest state change max|Δh_k|, {name}"


def _phase_names(est: ep.Estimate) -> list[str]:
    if est.scheme == "random":
        return ["±β (random signs)"]
    return {"forward": ["+β"], "backward": ["−β"], "centered": ["+β", "−β"]}[est.scheme]


def _positive(values: torch.Tensor) -> list:
    """Values for a log axis: non-positive entries become gaps (None)."""
    return [float(v) if v > 0 else None for v in values.tolist()]


def _finite(values) -> list:
    """Values for a plot: NaN and ±inf become gaps (None), which JSON and plotly accept."""
    return [v if v is not None and math.isfinite(v) else None for v in values]


def _replace(fig: go.FigureWidget, traces: list) -> None:
    with fig.batch_update():
        fig.data = []
    fig.add_traces(traces)


# ---------------------------------------------------------------------------------------------
# gradient bias
# ---------------------------------------------------------------------------------------------
class GradientBiasExplorer(_Explorer):
    """Each scheme's estimate against the backprop gradient of the same batch.

    Controls: ``model``, ``batch``, ``beta``, ``iterations``, ``update``, ``order``, ``schemes``
    (those compared); view only: ``layer`` (0 = all parameters; else one layer, for the sweeps)
    and ``fit`` (the largest β of the slope fit). Figures: ``layers`` (per-layer cosine and
    relative error, one bar group per scheme, at the current β and K), ``beta`` (relative error
    against β on log–log axes over ``betas``, with the least-squares slope over β ≤ ``fit`` in
    each legend entry and as a dashed line), ``iterations`` (relative error against K over
    ``iterations_sweep`` at the current β). ``.slopes``: scheme → that slope (theory, METHOD.md
    §3: one-sided O(β) → 1, centered O(β²) → 2, while no ReLU unit switches between the free and
    nudged states; the default ``fit`` is the largest β ≤ 1e-3, below the usual first switch).
    """

    def __init__(self, models=None, data=None, *, batch_size: int = 16, cost: str = "ce",
                 beta: float = 0.05, iterations: int = 20,
                 schemes: Sequence[str] = ("forward", "backward", "centered", "random"),
                 betas: Sequence[float] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1),
                 iterations_sweep: Sequence[int] = (1, 2, 4, 8, 16, 32),
                 dtype: torch.dtype = torch.float64, seed: int = 0):
        for s in schemes:
            if s not in ep.SCHEMES:
                raise ValueError(f"unknown scheme {s!r}; accepted: {', '.join(ep.SCHEMES)}")
        if len(betas) < 2 or min(betas) <= 0:
            raise ValueError(f"betas must hold at least two values > 0, got {list(betas)}")
        if not iterations_sweep or min(iterations_sweep) < 1:
            raise ValueError(f"iterations_sweep must hold integers >= 1, got "
                             f"{list(iterations_sweep)}")
        self.betas = sorted(float(b) for b in betas)
        self.iterations_sweep = sorted(int(k) for k in iterations_sweep)
        self.slopes: dict[str, float] = {}
        extra = {
            "schemes": W.SelectMultiple(options=list(ep.SCHEMES), value=tuple(schemes),
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
        return {k: go.FigureWidget(f) for k, f in
                (("layers", per_layer), ("beta", beta), ("iterations", iters))}

    def _model_changed(self, change=None) -> None:
        ctl = self.controls["layer"]
        n = self.lab.layers(self.controls["model"].value)
        ctl.options = [("all", 0)] + _layer_options(n)
        ctl.value = 0

    def _pair(self, scheme: str, settings: dict) -> tuple[ep.Estimate, ep.Estimate]:
        s = self._common() | settings
        return (self.lab.estimate(scheme=scheme, **s),
                self.lab.estimate(s["model"], s["batch"], "bp"))

    def rows(self, scheme: str, **settings) -> list[dict]:
        """``ep.compare`` of one scheme against BP for the given (else the current) settings."""
        est, ref = self._pair(scheme, settings)
        return ep.compare(self.lab.models[self.controls["model"].value], est.grads, ref.grads)

    def error(self, scheme: str, **settings) -> float:
        """Relative error against BP of the sweep layer (or all parameters)."""
        est, ref = self._pair(scheme, settings)
        return relative_error(est.grads, ref.grads, self.controls["layer"].value or None)

    def redraw(self) -> None:
        schemes = [s for s in ep.SCHEMES if s in self.controls["schemes"].value]
        cos, rel = [], []
        for s in schemes:
            rows = self.rows(s)
            layers = [r["layer"] for r in rows]
            style = dict(name=s, marker_color=COLORS[s], legendgroup=s)
            cos.append(go.Bar(x=layers, y=_finite(r["cosine"] for r in rows), xaxis="x",
                              yaxis="y", **style))
            rel.append(go.Bar(x=layers, y=_finite(r["rel_error"] for r in rows), xaxis="x2",
                              yaxis="y2", showlegend=False, **style))
        _replace(self.figures["layers"], cos + rel)
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
        _replace(self.figures["beta"], beta_traces)
        _replace(self.figures["iterations"], k_traces)
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


# ---------------------------------------------------------------------------------------------
# training curves
# ---------------------------------------------------------------------------------------------
class TrainingMonitor(W.VBox):
    """Curves of a training run, live: ``workbench.train.run(config, callback=monitor)``.

    Takes the rows of ``metrics.jsonl`` one by one (:meth:`__call__`). ``.figure`` has three
    panels: train and test loss per epoch; test top-1 and top-5 error per epoch; the probe's
    per-layer cosine between the EP estimate and the BP gradient, against the step. Build one
    from a finished (or running) run folder with :meth:`from_run`.
    """

    EPOCH = (("train_loss", "train loss", "x", "y"), ("test_loss", "test loss", "x", "y"),
             ("test_top1_error", "test top-1 error", "x2", "y2"),
             ("test_top5_error", "test top-5 error", "x2", "y2"))

    def __init__(self):
        fig = make_subplots(rows=1, cols=3, subplot_titles=(
            "loss", "test error", "probe: cosine(EP, BP) per layer"))
        fig.update_xaxes(title_text="epoch", row=1, col=1)
        fig.update_xaxes(title_text="epoch", row=1, col=2)
        fig.update_xaxes(title_text="step", row=1, col=3)
        fig.update_layout(height=330, margin=MARGIN)
        for key, name, xa, ya in self.EPOCH:
            fig.add_scatter(x=[], y=[], name=name, mode="lines+markers", xaxis=xa, yaxis=ya)
        self.figure = go.FigureWidget(fig)
        self.status = W.HTML("waiting for the first row of metrics")
        self.rows: list[dict] = []
        super().__init__([self.status, self.figure])

    @classmethod
    def from_run(cls, run_dir: str) -> "TrainingMonitor":
        """A monitor holding every row of ``run_dir/metrics.jsonl``."""
        path = Path(run_dir) / "metrics.jsonl"
        if not path.is_file():
            raise ValueError(f"{path} does not exist: {run_dir} is not a training run folder")
        monitor = cls()
        for line in path.read_text().splitlines():
            if line.strip():
                monitor(json.loads(line))
        return monitor

    def __call__(self, row: dict) -> None:
        self.rows.append(row)
        kind = row.get("type")
        if kind == "epoch":
            with self.figure.batch_update():
                for trace, (key, *_) in zip(self.figure.data, self.EPOCH):
                    trace.x = (*trace.x, row["epoch"])
                    trace.y = (*trace.y, *_finite([row.get(key)]))
            self.status.value = (
                f"epoch {row['epoch']}, step {row['step']}: train loss {row['train_loss']:.4f}, "
                f"test top-1 error {row['test_top1_error']:.4f}, "
                f"{row['images_per_second']:.0f} images/s")
        elif kind == "probe":
            probes = [t for t in self.figure.data if t.xaxis == "x3"]
            if not probes:
                self.figure.add_traces([
                    go.Scatter(x=[], y=[], name=f"layer {k + 1}", mode="lines+markers",
                               xaxis="x3", yaxis="y3") for k in range(len(row["cosine"]))])
                probes = [t for t in self.figure.data if t.xaxis == "x3"]
            with self.figure.batch_update():
                for trace, c in zip(probes, _finite(row["cosine"])):
                    trace.x = (*trace.x, row["step"])
                    trace.y = (*trace.y, c)

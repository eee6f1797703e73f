"""Interactive explorers for JupyterLab: equilibration dynamics and the bias of EP gradients.

* :class:`EnergyExplorer` — one estimate's nudged phases: ``F``, ``E`` and the cost ``C`` per
  iteration for each phase, a per-layer energy heat map, and the per-layer state change.
* :class:`GradientBiasExplorer` — per-layer cosine and relative error of each scheme's estimate
  against the backprop gradient; the error against β (log–log, with fitted slopes) and against K.
* :class:`TrainingMonitor` — live curves of a training run; :class:`RunsBrowser` — a table,
  overlaid curves and a heat map of finished (or running) runs and sweeps.

Both are ipywidgets boxes (display them as the last expression of a cell) holding plotly
``FigureWidget`` plots (plotly ≥ 6 renders them through anywidget). Both build with no arguments
— three small random models on a seeded synthetic batch, computed on the CPU in a second or two
— from models and data you pass, or from a training run folder with :meth:`from_checkpoint`.

Every control redraws the plots. Engine results are cached by the settings that determine them
(model, batch, scheme, β, K, update rule, order), so view-only controls (the phase shown, the
layers shown) and returning to earlier settings never rerun the equilibration. The models are
copied and run in float64 by default, so that the error shown is the estimator's, not rounding.
"""
from .bias import GradientBiasExplorer
from .energy import EnergyExplorer
from .lab import (Lab, default_models, examples, fit_input, load_run, log_slope, relative_error,
                  synthetic_data)
from .monitor import TrainingMonitor
from .runs import RunsBrowser

__all__ = ["Lab", "EnergyExplorer", "GradientBiasExplorer", "TrainingMonitor", "RunsBrowser",
           "default_models",
           "synthetic_data", "examples", "fit_input", "log_slope", "relative_error", "load_run"]
